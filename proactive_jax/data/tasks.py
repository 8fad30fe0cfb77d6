"""Task adapters: one dataset row (a dict, in the dataset's own schema) -> ``TextExample`` (method.md 1b).

| task       | dataset (Hub id)        | prompt (always visible)                  | streamed units | target            |
|------------|-------------------------|------------------------------------------|----------------|-------------------|
| iwslt2017  | IWSLT/iwslt2017         | "Translate the following English text    | source, words  | translation       |
|            |                         |  into German."                           |                |                   |
| squad      | rajpurkar/squad (v1.1)  | instruction + question                   | context, words | first gold answer |
| mctest     | sagnikrayc/mctest       | instruction + question + options A-D     | story, words   | option letter     |
| dialogsum  | knkarthick/dialogsum    | instruction                              | dialogue       | summary           |
| generic    | any                     | instruction + configured prompt fields   | source field   | target field      |

Row schemas (as the Hub serves them, also through their parquet conversion):
- IWSLT 2017: ``{"translation": {"en": str, "de": str}}`` (config ``iwslt2017-en-de``; also fr, ...).
- SQuAD v1.1: ``{"id", "title", "context", "question", "answers": {"text": [str], "answer_start": [int]}}``
  (tfds ``squad`` has the same fields, as bytes; the tfds loader decodes them).
- MCTest: ``{"idx": {"story": str, "question": int}, "question", "story", "properties", "answer_options":
  {"A": str, "B": str, "C": str, "D": str}, "answer": "A".."D", "question_is_multiple"}``; stories mark
  paragraph breaks with a literal ``\\newline`` (replaced by ``newline``, default "\\n").
- DialogSum: ``{"id", "dialogue", "summary", "topic"}``.

A bad row (missing field, wrong type, empty source or target, unknown answer letter) raises ``DataError``
naming the dataset, split and row index. ``adapt_rows(..., on_bad_example="skip")`` counts and skips them
instead and reports the counts (returned and logged) once the rows are done.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from typing import Any, Callable, Iterable, Mapping

from proactive_jax.errors import DataError
from proactive_jax.data.render import TextExample, split_words

log = logging.getLogger(__name__)

LANGUAGE_NAMES = {
    "en": "English", "de": "German", "fr": "French", "it": "Italian", "nl": "Dutch", "ro": "Romanian",
    "ar": "Arabic", "ja": "Japanese", "ko": "Korean", "zh": "Chinese",
}
MT_INSTRUCTION = "Translate the following {src} text into {tgt}."
SQUAD_INSTRUCTION = "Read the passage and answer the question with a short span copied from the passage."
MCTEST_INSTRUCTION = ("Read the story and answer the question by choosing one of the options. "
                      "Reply with the option letter only.")
DIALOGSUM_INSTRUCTION = "Summarize the following dialogue."
MCTEST_LETTERS = ("A", "B", "C", "D")


@dataclasses.dataclass(frozen=True)
class RowRef:
    """Where a row comes from (for ids and error messages)."""

    dataset: str = "?"
    split: str = "?"
    index: int = -1

    def __str__(self) -> str:
        return f"dataset {self.dataset!r} split {self.split!r} row {self.index}"

    def error(self, what: str, reason: str) -> DataError:
        return DataError(f"{self}: {what}", reason=reason)

    def default_id(self) -> str:
        return f"{self.dataset}/{self.split}/{self.index}"


def get_field(row: Mapping, path: str, ref: RowRef) -> Any:
    """``row[path]`` with dotted paths (``translation.en``); a missing key raises ``DataError``."""
    cur: Any = row
    for part in path.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            raise ref.error(f"missing field {path!r} (row keys: {sorted(row) if isinstance(row, Mapping) else '?'})",
                            reason=f"missing field {path}")
        cur = cur[part]
    return cur


def text_field(row: Mapping, path: str, ref: RowRef, *, allow_empty: bool = False) -> str:
    """A string field; non-text values and (unless allowed) empty/whitespace-only strings raise ``DataError``."""
    v = get_field(row, path, ref)
    if not isinstance(v, str):
        raise ref.error(f"field {path!r} is {type(v).__name__}, expected text", reason=f"non-text {path}")
    if not allow_empty and not v.strip():
        raise ref.error(f"field {path!r} is empty", reason=f"empty {path}")
    return v


def _row_id(row: Mapping, ref: RowRef, field: str | None = "id") -> str:
    if field and isinstance(row, Mapping) and field in row and isinstance(row[field], (str, int)):
        return str(row[field])
    return ref.default_id()


# ----------------------------------------------------------------------------------------------- adapters

def iwslt2017(row: Mapping, ref: RowRef = RowRef(), *, src: str = "en", tgt: str = "de",
              instruction: str | None = None) -> TextExample:
    """IWSLT 2017 (either direction): ``translation[src]`` streamed by word, target ``translation[tgt]``."""
    source = text_field(row, f"translation.{src}", ref)
    target = text_field(row, f"translation.{tgt}", ref)
    if instruction is None:
        instruction = MT_INSTRUCTION.format(src=LANGUAGE_NAMES.get(src, src), tgt=LANGUAGE_NAMES.get(tgt, tgt))
    return TextExample(task=f"iwslt2017-{src}-{tgt}", id=_row_id(row, ref), prompt_text=instruction,
                       units=split_words(source), target_text=target.strip(), references=[target.strip()],
                       meta={"src": src, "tgt": tgt})


def squad(row: Mapping, ref: RowRef = RowRef(), *, instruction: str = SQUAD_INSTRUCTION) -> TextExample:
    """SQuAD v1.1: context streamed, instruction + question up front, target = first gold answer."""
    context = text_field(row, "context", ref)
    question = text_field(row, "question", ref)
    answers = get_field(row, "answers", ref)
    texts = answers.get("text") if isinstance(answers, Mapping) else None
    if not isinstance(texts, (list, tuple)) or not texts:
        raise ref.error("field 'answers.text' has no gold answer", reason="no answer")
    if not all(isinstance(t, str) for t in texts):
        raise ref.error("field 'answers.text' holds non-text values", reason="non-text answers.text")
    refs = [t.strip() for t in texts]
    if not refs[0]:
        raise ref.error("the first gold answer is empty", reason="empty answers.text")
    prompt = f"{instruction}\nQuestion: {question.strip()}\nPassage:"
    return TextExample(task="squad", id=_row_id(row, ref), prompt_text=prompt, units=split_words(context),
                       target_text=refs[0], references=[r for r in refs if r],
                       meta={"title": row.get("title", "") if isinstance(row, Mapping) else ""})


def mctest(row: Mapping, ref: RowRef = RowRef(), *, instruction: str = MCTEST_INSTRUCTION,
           newline: str = "\n") -> TextExample:
    """MCTest: story streamed, question + the four options up front, target = the option letter."""
    story = text_field(row, "story", ref).replace("\\newline", newline)
    if not story.strip():
        raise ref.error("field 'story' is empty", reason="empty story")
    question = text_field(row, "question", ref)
    options = get_field(row, "answer_options", ref)
    if not isinstance(options, Mapping):
        raise ref.error(f"field 'answer_options' is {type(options).__name__}, expected a dict A-D",
                        reason="bad answer_options")
    opts = {}
    for letter in MCTEST_LETTERS:
        opts[letter] = text_field(row, f"answer_options.{letter}", ref)
    answer = text_field(row, "answer", ref).strip()
    if answer not in opts:
        raise ref.error(f"answer {answer!r} is not one of {MCTEST_LETTERS}", reason="bad answer letter")
    lines = [instruction, f"Question: {question.strip()}"]
    lines += [f"{letter}. {opts[letter].strip()}" for letter in MCTEST_LETTERS]
    lines.append("Story:")
    idx = row.get("idx") if isinstance(row, Mapping) else None
    if isinstance(idx, Mapping) and "story" in idx:
        ex_id = f"{idx['story']}#{idx.get('question', '')}"
    else:
        ex_id = _row_id(row, ref)
    return TextExample(task="mctest", id=ex_id, prompt_text="\n".join(lines), units=split_words(story),
                       target_text=answer, references=[answer],
                       meta={"options": opts, "answer_text": opts[answer]})


def dialogsum(row: Mapping, ref: RowRef = RowRef(), *, instruction: str = DIALOGSUM_INSTRUCTION) -> TextExample:
    """DialogSum: the dialogue streamed by word, target = the summary."""
    dialogue = text_field(row, "dialogue", ref)
    summary = text_field(row, "summary", ref).strip()
    meta = {"topic": row["topic"]} if isinstance(row.get("topic"), str) else {}
    return TextExample(task="dialogsum", id=_row_id(row, ref), prompt_text=instruction,
                       units=split_words(dialogue), target_text=summary, references=[summary], meta=meta)


def generic(row: Mapping, ref: RowRef = RowRef(), *, source_field: str, target_field: str,
            prompt_fields: Iterable[str] = (), instruction: str = "", references_field: str | None = None,
            id_field: str | None = "id", task: str = "generic") -> TextExample:
    """Any dataset: ``source_field`` streamed, ``target_field`` the target; ``prompt_fields`` (dotted paths)
    are shown after ``instruction``, one per line as ``"<name>: <value>"``; ``references_field`` may hold a
    string or a list of strings (default: the target)."""
    source = text_field(row, source_field, ref)
    target = text_field(row, target_field, ref).strip()
    lines = [instruction] if instruction else []
    for f in prompt_fields:
        name = f.split(".")[-1]
        lines.append(f"{name[:1].upper() + name[1:]}: {text_field(row, f, ref).strip()}")
    refs = [target]
    if references_field:
        v = get_field(row, references_field, ref)
        vals = [v] if isinstance(v, str) else v
        if not isinstance(vals, (list, tuple)) or not all(isinstance(x, str) for x in vals):
            raise ref.error(f"field {references_field!r} must be text or a list of text",
                            reason=f"non-text {references_field}")
        refs = [x.strip() for x in vals if x.strip()] or [target]
    return TextExample(task=task, id=_row_id(row, ref, id_field), prompt_text="\n".join(lines),
                       units=split_words(source), target_text=target, references=refs)


TASKS: dict[str, Callable[..., TextExample]] = {
    "iwslt2017": iwslt2017,
    "mt": iwslt2017,
    "squad": squad,
    "mctest": mctest,
    "dialogsum": dialogsum,
    "generic": generic,
}


# ------------------------------------------------------------------------------------------ many rows

@dataclasses.dataclass
class AdaptReport:
    """What happened to the rows of one (dataset, split): kept, and skipped by reason."""

    dataset: str
    split: str
    total: int = 0
    kept: int = 0
    skipped: dict = dataclasses.field(default_factory=dict)
    first_errors: list = dataclasses.field(default_factory=list)

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        s = f"{self.dataset} [{self.split}]: {self.kept}/{self.total} rows kept"
        if self.skipped:
            s += ", skipped: " + ", ".join(f"{k}: {v}" for k, v in sorted(self.skipped.items()))
        return s


def get_task(task: str | Callable[..., TextExample]) -> Callable[..., TextExample]:
    if callable(task):
        return task
    if task not in TASKS:
        raise DataError(f"unknown task {task!r}; expected one of {sorted(TASKS)}", reason="unknown task")
    return TASKS[task]


def _decoded(rows: Iterable, dataset: str, split: str):
    """``rows``, with a row that is not valid UTF-8 (decoded lazily by ``datasets``/pyarrow) named."""
    it = iter(rows)
    i = 0
    while True:
        try:
            row = next(it)
        except StopIteration:
            return
        except UnicodeDecodeError as e:
            raise DataError(f"dataset {dataset!r} split {split!r} row {i}: text is not valid UTF-8 ({e.reason} at "
                            f"byte {e.start}); expected UTF-8 files", reason="not utf-8") from None
        yield row
        i += 1


def _check_options(fn: Callable, task, options: Mapping) -> None:
    """Unknown adapter options are a ``DataError`` naming the task and its options (not a TypeError per row)."""
    import inspect

    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return
    known = [n for n, p in list(params.items())[2:] if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    bad = sorted(set(options) - set(known))
    if bad:
        raise DataError(f"task {getattr(fn, '__name__', task)!r}: unknown option(s) {bad} (adapter_options); "
                        f"expected some of {known}", reason="bad option")


def adapt_rows(rows: Iterable[Mapping], task: str | Callable[..., TextExample], *, dataset: str = "?",
               split: str = "?", on_bad_example: str = "error", max_errors_kept: int = 5,
               **task_options) -> tuple[list[TextExample], AdaptReport]:
    """Apply the task adapter to every row. ``on_bad_example``: "error" (raise the first ``DataError``) or
    "skip" (count per reason, keep the first few messages, log the summary at the end)."""
    if on_bad_example not in ("error", "skip"):
        raise ValueError(f"on_bad_example={on_bad_example!r}; expected 'error' or 'skip'")
    fn = get_task(task)
    _check_options(fn, task, task_options)
    report = AdaptReport(dataset=dataset, split=split)
    counts: collections.Counter = collections.Counter()
    out = []
    for i, row in enumerate(_decoded(rows, dataset, split)):
        report.total += 1
        ref = RowRef(dataset, split, i)
        try:
            if not isinstance(row, Mapping):
                raise ref.error(f"row is {type(row).__name__}, expected a dict", reason="row not a dict")
            out.append(fn(row, ref, **task_options))
        except DataError as e:
            if on_bad_example == "error":
                raise
            counts[e.reason] += 1
            if len(report.first_errors) < max_errors_kept:
                report.first_errors.append(str(e))
    report.kept = len(out)
    report.skipped = dict(counts)
    if report.skipped:
        log.warning("%s", report.summary())
    else:
        log.info("%s", report.summary())
    return out, report
