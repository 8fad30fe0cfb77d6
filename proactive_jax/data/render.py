"""Rendering a task example (text) into a ``StreamExample`` (token ids), method.md sections 1 and 1b.

Text side: ``TextExample`` holds the task text shown up front (``prompt_text``), the streamed source as a list
of text units, the target text and the references used for scoring.

**Unit convention (ours).** ``split_words(text)`` strips the text and cuts it into whitespace words; every unit
after the first carries the whitespace that precedes it, verbatim (usually one space, sometimes a newline
or several characters). Hence ``''.join(units) == text.strip()`` exactly, and no whitespace is lost: a
byte-level BPE tokenizer (Qwen) tokenizes ``" world"`` into ``Ġworld``, the same token it produces inside the
running text.

Token side: the prompt/end/header strings come from the tokenizer's own chat template
(``template_parts``): it is rendered with a placeholder user message and split at the placeholder:

    prompt_prefix = everything before the user message (system turn + user-turn header)
    end           = what follows the user message without a generation prompt (``<|im_end|>\\n``)
    header        = what the generation prompt adds (``<|im_start|>assistant\\n``; Qwen3 with
                    ``thinking=False``: plus ``<think>\\n\\n</think>\\n\\n``)
    eot           = the end-of-turn token, the first token after an assistant message (``<|im_end|>``)

``render_example`` then builds, with ``add_special_tokens=False`` everywhere (the template already holds
every special token it wants):

    prompt = tokens(prompt_prefix + prompt_text + "\\n")   ("\\n" only when prompt_text is non-empty)
    units  = [tokens(u) for u in units]                   each unit on its own: exact boundaries
    end    = tokens(end);  header = tokens(header)
    target = tokens(target_text) + [eot]

Units are encoded as standalone strings (one encode per unit, batched in one call), never by tokenizing
the joined text and hoping the counts agree. For tokenizers that add a prefix space to every encoded
string (some SentencePiece set-ups) this differs from joint tokenization; Qwen's byte-level BPE does not.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any, Sequence

import numpy as np

from proactive_jax.data.example import ExampleError, StreamExample

UNIT_KINDS = ("word", "token", "sentence")
PLACEHOLDER = "\u2063PJ_PLACEHOLDER_7Q\u2063"
_ASSISTANT_PLACEHOLDER = "\u2063PJ_ANSWER_7Q\u2063"
_WORD_RE = re.compile(r"\s*\S+")
_SENTENCE_END_RE = re.compile(r"[.!?][\"')\]]*$")


def split_words(text: str) -> list[str]:
    """Whitespace words of ``text.strip()``, each unit after the first keeping its leading whitespace."""
    return _WORD_RE.findall(text.strip())


@dataclasses.dataclass
class TextExample:
    """One task example as text (before tokenization).

    ``units``: the streamed source as text units (``''.join(units)`` is the source text, see the module doc);
    ``prompt_text``: the task text always visible up front (instruction, question, options);
    ``target_text``: what the model must write; ``references``: the strings quality is scored against
    (all SQuAD gold answers, the option letter, the reference translation, ...).
    """

    task: str
    id: str
    prompt_text: str
    units: list
    target_text: str
    references: list = dataclasses.field(default_factory=list)
    meta: dict = dataclasses.field(default_factory=dict)

    @property
    def source(self) -> str:
        return "".join(self.units)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TextExample":
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


@dataclasses.dataclass(frozen=True)
class TemplateParts:
    """The chat-template strings around the streamed source (see the module doc)."""

    prompt_prefix: str
    end: str
    header: str
    eot: str = "<|im_end|>"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _render_chat(tokenizer, messages, *, add_generation_prompt: bool, thinking: bool, chat_template=None) -> str:
    out = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt, enable_thinking=thinking,
        chat_template=chat_template,
    )
    if not isinstance(out, str):
        raise TypeError(f"apply_chat_template(tokenize=False) returned {type(out).__name__}, expected str")
    return out


def template_parts(tokenizer, system: str | None = None, thinking: bool = False, *, chat_template: str | None = None,
                   prompt_prefix: str | None = None, end: str | None = None, header: str | None = None,
                   eot: str | None = None) -> TemplateParts:
    """Derive ``TemplateParts`` from the tokenizer's chat template (or ``chat_template``).

    ``system``: content of a system turn (None: the template's default, e.g. Qwen2.5's "You are Qwen, ...";
    Qwen3 has none). ``thinking`` is passed as ``enable_thinking`` (Qwen3: False adds the empty think block
    to the header). Any of ``prompt_prefix``, ``end``, ``header``, ``eot`` given explicitly overrides the
    derived string (config override); if all four are given, the template is not rendered at all.
    """
    overrides = dict(prompt_prefix=prompt_prefix, end=end, header=header, eot=eot)
    if all(v is not None for v in overrides.values()):
        return TemplateParts(**overrides)
    template = chat_template if chat_template is not None else getattr(tokenizer, "chat_template", None)
    if not template:
        missing = [k for k, v in overrides.items() if v is None]
        raise ValueError(f"tokenizer has no chat_template; give {missing} explicitly (config override)")
    if thinking and "enable_thinking" not in template:
        raise ValueError("thinking=True but the chat template has no 'enable_thinking' switch")
    msgs = ([{"role": "system", "content": system}] if system is not None else []) + [
        {"role": "user", "content": PLACEHOLDER}]
    gen = _render_chat(tokenizer, msgs, add_generation_prompt=True, thinking=thinking, chat_template=template)
    nogen = _render_chat(tokenizer, msgs, add_generation_prompt=False, thinking=thinking, chat_template=template)
    if gen.count(PLACEHOLDER) != 1 or nogen.count(PLACEHOLDER) != 1:
        raise ValueError("the chat template does not render the user message verbatim exactly once; "
                         "give prompt_prefix/end/header explicitly")
    i = gen.index(PLACEHOLDER)
    d_prefix, after_gen = gen[:i], gen[i + len(PLACEHOLDER):]
    j = nogen.index(PLACEHOLDER)
    after_nogen = nogen[j + len(PLACEHOLDER):]
    if nogen[:j] != d_prefix or not after_gen.startswith(after_nogen):
        raise ValueError("the chat template's generation prompt is not a pure suffix of the conversation; "
                         "give prompt_prefix/end/header explicitly")
    d_end, d_header = after_nogen, after_gen[len(after_nogen):]
    if not d_header:
        raise ValueError("the chat template adds no generation prompt (empty header); give header explicitly")
    d_eot = eot if eot is not None else _derive_eot(tokenizer, msgs, thinking, template)
    return TemplateParts(
        prompt_prefix=d_prefix if prompt_prefix is None else prompt_prefix,
        end=d_end if end is None else end,
        header=d_header if header is None else header,
        eot=d_eot,
    )


def _derive_eot(tokenizer, msgs, thinking, template) -> str:
    """The end-of-turn token: the first token the template writes after an assistant message."""
    conv = msgs + [{"role": "assistant", "content": _ASSISTANT_PLACEHOLDER}]
    try:
        text = _render_chat(tokenizer, conv, add_generation_prompt=False, thinking=thinking, chat_template=template)
    except Exception:  # noqa: BLE001 - templates may refuse some conversations; fall back to eos
        text = ""
    if text.count(_ASSISTANT_PLACEHOLDER) == 1:
        suffix = text.split(_ASSISTANT_PLACEHOLDER, 1)[1]
        ids = tokenizer(suffix, add_special_tokens=False)["input_ids"] if suffix else []
        if ids:
            first = tokenizer.convert_ids_to_tokens(ids[0])
            specials = set(getattr(tokenizer, "all_special_tokens", [])) | set(
                getattr(tokenizer, "get_added_vocab", lambda: {})())
            if first in specials:
                return first
    if getattr(tokenizer, "eos_token", None):
        return tokenizer.eos_token
    raise ValueError("cannot derive the end-of-turn token from the chat template and the tokenizer has no "
                     "eos_token; give eot explicitly")


@dataclasses.dataclass(frozen=True)
class RenderConfig:
    """Everything that decides how text becomes tokens (part of the tokenization cache key)."""

    unit: str = "word"
    max_source_tokens: int | None = None
    max_target_tokens: int | None = None
    system: str | None = None
    thinking: bool = False
    # explicit template strings (override the derived ones)
    prompt_prefix: str | None = None
    end: str | None = None
    header: str | None = None
    eot: str | None = None

    def __post_init__(self):
        if self.unit not in UNIT_KINDS:
            raise ValueError(f"RenderConfig.unit={self.unit!r}; expected one of {UNIT_KINDS}")

    def parts(self, tokenizer) -> TemplateParts:
        return template_parts(tokenizer, self.system, self.thinking, prompt_prefix=self.prompt_prefix,
                              end=self.end, header=self.header, eot=self.eot)

    def key(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


def _encode_many(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Each text encoded on its own (``add_special_tokens=False``), in one batched call.

    Fast tokenizers go straight to their ``tokenizers`` backend (what ``tokenizer(texts)`` calls too, minus
    the ``BatchEncoding`` overhead); others go through ``tokenizer(texts)``."""
    if not texts:
        return []
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return [e.ids for e in backend.encode_batch(list(texts), add_special_tokens=False)]
    return [list(x) for x in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def _sentences(units: Sequence[str]) -> list[str]:
    out, cur = [], ""
    for u in units:
        cur += u
        if _SENTENCE_END_RE.search(u):
            out.append(cur)
            cur = ""
    if cur:
        out.append(cur)
    return out


def _token_id(tokenizer, token: str) -> int:
    tid = tokenizer.convert_tokens_to_ids(token)
    if tid is None or (getattr(tokenizer, "unk_token_id", None) is not None and tid == tokenizer.unk_token_id
                       and token != tokenizer.unk_token):
        raise ValueError(f"end-of-turn token {token!r} is not in the tokenizer's vocabulary")
    return int(tid)


def render_example(tokenizer, ex: TextExample, parts: TemplateParts, *, unit: str = "word",
                   max_source_tokens: int | None = None, max_target_tokens: int | None = None) -> StreamExample:
    """Tokenize one ``TextExample`` into a ``StreamExample`` (see the module doc for the exact recipe).

    ``unit``: "word" (the example's units), "token" (every token of the source is a unit) or "sentence"
    (words grouped up to sentence-final punctuation). ``max_source_tokens`` bounds ``S`` (prompt + units +
    end) and ``max_target_tokens`` bounds ``T`` (header + target), the same quantities the pipeline buckets
    on. Problems raise ``ExampleError`` naming the example; nothing is truncated silently.
    """
    where = f"example {ex.id!r} (task {ex.task!r})"
    if unit not in UNIT_KINDS:
        raise ValueError(f"unit={unit!r}; expected one of {UNIT_KINDS}")
    if not ex.units:
        raise ExampleError(f"{where}: the source has no units")
    for i, u in enumerate(ex.units):
        if not isinstance(u, str) or not u.strip():
            raise ExampleError(f"{where}: source unit {i} is empty ({u!r})")
    if not isinstance(ex.target_text, str) or not ex.target_text.strip():
        raise ExampleError(f"{where}: the target text is empty")

    prompt_str = parts.prompt_prefix + (ex.prompt_text + "\n" if ex.prompt_text else "")
    if unit == "token":
        src_ids = _encode_many(tokenizer, [ex.source])[0]
        unit_ids = [[t] for t in src_ids]
        texts = None
        head = _encode_many(tokenizer, [prompt_str, parts.end, parts.header, ex.target_text])
    else:
        texts = list(ex.units) if unit == "word" else _sentences(ex.units)
        enc = _encode_many(tokenizer, [prompt_str, parts.end, parts.header, ex.target_text] + texts)
        head, unit_ids = enc[:4], enc[4:]
    prompt, end, header, target = head
    if not unit_ids:
        raise ExampleError(f"{where}: the source tokenizes to no tokens")
    for i, ids in enumerate(unit_ids):
        if not ids:
            raise ExampleError(f"{where}: source unit {i} ({texts[i]!r}) tokenizes to no tokens")
    if not target:
        raise ExampleError(f"{where}: the target text {ex.target_text!r} tokenizes to no tokens")
    if not end:
        raise ExampleError(f"{where}: the end marker {parts.end!r} tokenizes to no tokens")
    target = target + [_token_id(tokenizer, parts.eot)]
    S = len(prompt) + sum(len(u) for u in unit_ids) + len(end)
    T = len(header) + len(target)
    if max_source_tokens is not None and S > max_source_tokens:
        raise ExampleError(f"{where}: source group is {S} tokens (prompt {len(prompt)}, {len(unit_ids)} units, "
                           f"end {len(end)}), over max_source_tokens={max_source_tokens}")
    if max_target_tokens is not None and T > max_target_tokens:
        raise ExampleError(f"{where}: target group is {T} tokens (header {len(header)} + target {len(target)}), "
                           f"over max_target_tokens={max_target_tokens}")
    return StreamExample(prompt=prompt, units=unit_ids, end=end, header=header, target=target)


def render_with_config(tokenizer, ex: TextExample, cfg: RenderConfig, parts: TemplateParts | None = None):
    parts = parts if parts is not None else cfg.parts(tokenizer)
    return render_example(tokenizer, ex, parts, unit=cfg.unit, max_source_tokens=cfg.max_source_tokens,
                          max_target_tokens=cfg.max_target_tokens)


# ---------------------------------------------------------------------------------------------- word starts

def _byte_decoder() -> dict:
    """Inverse of the GPT-2 byte-to-unicode table used by byte-level BPE vocabularies."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[chr(b)] = b
        else:
            table[chr(256 + extra)] = b
            extra += 1
    return table


def _backend_json(tokenizer) -> dict:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return {}
    try:
        return json.loads(backend.to_str())
    except Exception:  # noqa: BLE001
        return {}


def _contains_type(node: Any, name: str) -> bool:
    if isinstance(node, dict):
        return node.get("type") == name or any(_contains_type(v, name) for v in node.values())
    if isinstance(node, list):
        return any(_contains_type(v, name) for v in node)
    return False


def word_start_table(tokenizer, vocab_size: int | None = None) -> np.ndarray:
    """Boolean ``[vocab]`` table: True where a token starts a word (method.md section 5, wait-k).

    - word-level tokenizers (a WordLevel model): every token is a word, so all True;
    - byte-level BPE (Qwen): the token's bytes start with whitespace (``Ġ`` space, ``Ċ`` newline, ...)
      or decode to text starting with a Unicode space;
    - SentencePiece-style vocabularies: the token starts with ``▁``;
    - otherwise: the single-token decode starts with whitespace.
    Special and added tokens are True. ``vocab_size`` (e.g. the model's padded embedding size) pads the table
    with True rows for ids the tokenizer never produces.
    """
    n = len(tokenizer)
    size = max(n, vocab_size or 0)
    table = np.ones(size, dtype=bool)
    spec = _backend_json(tokenizer)
    model_type = spec.get("model", {}).get("type") if spec else None
    special_ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    added = getattr(tokenizer, "get_added_vocab", lambda: {})()
    special_ids |= set(added.values())
    if model_type == "WordLevel":
        return table
    tokens = tokenizer.convert_ids_to_tokens(list(range(n)))
    byte_level = _contains_type(spec.get("pre_tokenizer"), "ByteLevel") or _contains_type(spec.get("decoder"),
                                                                                          "ByteLevel")
    dec = _byte_decoder() if byte_level else None
    for i, tok in enumerate(tokens):
        if i in special_ids or tok is None:
            continue
        if dec is not None:
            bs = bytes(dec.get(c, 0x3F) for c in tok)
            text = bs.decode("utf-8", errors="replace")
            table[i] = bool(text) and text[0].isspace()
        elif tok.startswith("\u2581"):
            table[i] = True
        else:
            text = tokenizer.decode([i])
            table[i] = bool(text) and text[0].isspace()
    return table


def eos_ids_for(tokenizer, config) -> list[int]:
    """End-of-turn ids: ``<|im_end|>`` when the tokenizer has it, plus the config's eos ids."""
    ids = set(config.eos_ids)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
        ids.add(int(im_end))
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return sorted(i for i in ids if i < config.vocab_size)


# ---------------------------------------------------------------------------------------------
# The audio chat layout (Qwen2-Audio)
# ---------------------------------------------------------------------------------------------

AUDIO_SPECIALS = ("<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>")


def audio_parts(tok, question: str = "", system: str | None = "You are a helpful assistant.") -> dict:
    """Token lists of the audio chat layout: prompt (system, user header, question, ``<|audio_bos|>``),
    end (``<|audio_eos|>`` + the end of the user turn), header (the assistant turn)."""
    missing = [t for t in AUDIO_SPECIALS if tok.convert_tokens_to_ids(t) in (None, tok.unk_token_id)]
    if missing:
        raise ValueError(f"tokenizer has no {missing} tokens (a Qwen2-Audio tokenizer is needed)")
    sys_turn = f"<|im_start|>system\n{system}<|im_end|>\n" if system else ""
    q = f"{question.strip()}\n" if question.strip() else ""
    enc = lambda s: tok.encode(s, add_special_tokens=False)  # noqa: E731
    return {"prompt": enc(f"{sys_turn}<|im_start|>user\n{q}<|audio_bos|>"), "end": enc("<|audio_eos|><|im_end|>\n"),
            "header": enc("<|im_start|>assistant\n"), "audio_id": tok.convert_tokens_to_ids("<|AUDIO|>")}
