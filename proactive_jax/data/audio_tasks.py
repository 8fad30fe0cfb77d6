"""Speech datasets: LibriSpeech (ASR), Spoken-SQuAD (spoken QA), local WAV + JSONL; offline decoding.

| task          | source                                              | prompt (always visible)       | target      |
|---------------|-----------------------------------------------------|-------------------------------|-------------|
| librispeech   | datasets ``openslr/librispeech_asr`` (clean / other | ASR instruction               | transcript  |
|               | / all), tfds ``librispeech``                        |                               |             |
| spoken-squad  | datasets ``AudioLLMs/spoken_squad_test_v1``         | QA instruction + the question | the answer  |
| audio-files   | a JSONL manifest of local audio files               | instruction (+ ``question``)  | ``text``    |

Row schemas:
- ``openslr/librispeech_asr``: ``{"file", "audio": {"path", "array", "sampling_rate"}, "text", "speaker_id",
  "chapter_id", "id"}``; loaded with ``Audio(decode=False)`` the audio is ``{"path", "bytes"}`` (FLAC,
  decoded here with soundfile: no torchcodec, no network).
- tfds ``librispeech``: ``{"speech": int16/int64 samples at 16 kHz, "text": bytes, "speaker_id", "chapter_id",
  "id"}``.
- ``AudioLLMs/spoken_squad_test_v1`` (split ``test``, 5.35k rows): ``{"context": audio, "instruction": str,
  "answer": str}`` as its dataset card lists them (the AudioBench layout). This adapter was written from
  those documented fields only: the dataset could not be downloaded here, so it is tested on rows built in
  that schema, not on the real files.
- JSONL manifest: one object per line, ``{"audio": "relative/or/absolute.wav", "text": "...", "id"?,
  "question"?}``; paths are relative to the manifest.

Every adapter returns an :class:`AudioItem` (mono float32 16 kHz waveform + texts); bad rows raise
``DataError`` naming dataset, split and row (or the manifest file and line).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from proactive_jax.data.audio import AudioError, check_waveform, read_audio
from proactive_jax.data.tasks import RowRef, get_field, text_field
from proactive_jax.errors import DataError

logger = logging.getLogger(__name__)

ASR_INSTRUCTION = "Transcribe the speech."
SPOKEN_QA_INSTRUCTION = "Listen to the passage and answer the question with a short span from it."
LIBRISPEECH_CONFIGS = ("clean", "other", "all")


@dataclasses.dataclass(frozen=True)
class AudioItem:
    task: str
    id: str
    prompt_text: str  # instruction (+ question)
    waveform: np.ndarray  # mono float32, 16 kHz
    target_text: str
    references: tuple
    meta: dict = dataclasses.field(default_factory=dict)


def decode_audio_field(value: Any, ref: RowRef, field: str = "audio", *, base: Path | None = None) -> np.ndarray:
    """A datasets ``Audio`` value (decoded ``{"array", "sampling_rate"}`` or undecoded ``{"path", "bytes"}``),
    a raw sample array (16 kHz) or a file path, as a checked mono float32 16 kHz waveform."""
    try:
        if isinstance(value, Mapping) and value.get("array") is not None:
            x, sr = np.asarray(value["array"]), int(value.get("sampling_rate") or 16000)
        elif isinstance(value, Mapping) and value.get("bytes"):
            x, sr = read_audio(data=bytes(value["bytes"]), name=f"field {field!r} (audio bytes)")
        elif isinstance(value, Mapping) and value.get("path"):
            x, sr = read_audio(Path(base or ".") / value["path"])
        elif isinstance(value, (str, Path)):
            x, sr = read_audio(Path(base or ".") / value)
        elif isinstance(value, (np.ndarray, list)):
            x, sr = np.asarray(value), 16000
        else:
            raise ref.error(f"field {field!r} is {type(value).__name__}, expected audio (array, bytes or path)",
                            reason=f"bad {field}")
        return check_waveform(x, sr, name=f"{ref}: field {field!r}", resample=True)
    except (AudioError, FileNotFoundError) as e:
        raise ref.error(str(e), reason=f"bad {field}") from None


def librispeech(row: Mapping, ref: RowRef = RowRef(), *, instruction: str = ASR_INSTRUCTION) -> AudioItem:
    """LibriSpeech (datasets or tfds rows): the utterance, target = the transcript (as given, upper case)."""
    audio = row.get("audio") if "audio" in row else get_field(row, "speech", ref)
    wave = decode_audio_field(audio, ref, "audio" if "audio" in row else "speech")
    text = row.get("text")
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    if not isinstance(text, str) or not text.strip():
        raise ref.error("field 'text' is missing or empty", reason="empty text")
    rid = row.get("id")
    rid = rid.decode() if isinstance(rid, bytes) else rid
    return AudioItem("librispeech", str(rid) if rid is not None else ref.default_id(), instruction, wave,
                     text.strip(), (text.strip(),), {"speaker_id": _py(row.get("speaker_id"))})


def spoken_squad(row: Mapping, ref: RowRef = RowRef(), *, instruction: str = SPOKEN_QA_INSTRUCTION) -> AudioItem:
    """Spoken-SQuAD (AudioLLMs layout): audio ``context``, question ``instruction``, target ``answer``."""
    wave = decode_audio_field(get_field(row, "context", ref), ref, "context")
    question = text_field(row, "instruction", ref).strip()
    answer = get_field(row, "answer", ref)
    answers = [answer] if isinstance(answer, str) else answer
    if not isinstance(answers, (list, tuple)) or not answers or not all(isinstance(a, str) for a in answers):
        raise ref.error("field 'answer' must be text or a list of text", reason="bad answer")
    answers = tuple(a.strip() for a in answers if a.strip())
    if not answers:
        raise ref.error("field 'answer' is empty", reason="empty answer")
    return AudioItem("spoken-squad", ref.default_id(), f"{instruction}\nQuestion: {question}", wave, answers[0],
                     answers)


def _py(x):
    return x.item() if isinstance(x, np.generic) else x


def load_manifest(path: str | Path, *, instruction: str = ASR_INSTRUCTION, task: str = "audio-files") -> list[AudioItem]:
    """Local audio + JSONL: every line ``{"audio": path, "text": str, "id"?: str, "question"?: str}``."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: manifest does not exist")
    items = []
    for line_no, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip():
            continue
        ref = RowRef(str(p), "manifest", line_no)
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{p}:{line_no}: not valid JSON ({e.msg})", reason="bad json") from None
        if not isinstance(row, Mapping):
            raise DataError(f"{p}:{line_no}: expected a JSON object", reason="bad json")
        wave = decode_audio_field(get_field(row, "audio", ref), ref, "audio", base=p.parent)
        text = text_field(row, "text", ref).strip()
        prompt = instruction + (f"\nQuestion: {row['question'].strip()}" if isinstance(row.get("question"), str) else "")
        items.append(AudioItem(task, str(row.get("id", f"{p.stem}/{line_no}")), prompt, wave, text, (text,)))
    if not items:
        raise DataError(f"{p}: manifest holds no rows", reason="empty manifest")
    return items


def librispeech_spec(config: str = "clean", split: str = "test", **kw):
    """The datasets spec of ``openslr/librispeech_asr`` (configs clean / other / all)."""
    from proactive_jax.data.loaders import DatasetSpec

    if config not in LIBRISPEECH_CONFIGS:
        raise ValueError(f"librispeech config {config!r}: expected one of {LIBRISPEECH_CONFIGS}")
    return DatasetSpec(source="hub", path="openslr/librispeech_asr", name=config, split=split, **kw)


def load_audio_rows(spec, cache_dir: str | None = None):
    """Rows of an audio dataset with its audio left undecoded (``Audio(decode=False)``: bytes + path, decoded
    here offline with soundfile / the WAV reader); tfds rows as they come."""
    from proactive_jax.data.loaders import load_rows

    if spec.source == "openslr":  # the raw LibriSpeech tree (FLAC + trans.txt), read directly
        from proactive_jax.data.librispeech import load_librispeech

        return load_librispeech(spec.path, spec.split, config=spec.name, max_rows=spec.max_rows)
    rows = load_rows(spec, cache_dir)
    cast = getattr(rows, "cast_column", None)
    if cast is not None:
        import datasets

        for col in ("audio", "context"):
            if col in getattr(rows, "column_names", ()):
                rows = rows.cast_column(col, datasets.Audio(decode=False))
    return rows


AUDIO_TASKS = {"librispeech": librispeech, "spoken-squad": spoken_squad}


def adapt_audio_rows(rows: Iterable[Mapping], task: str, *, dataset: str = "?", split: str = "?") -> list[AudioItem]:
    if task not in AUDIO_TASKS:
        raise KeyError(f"unknown audio task {task!r}; expected one of {sorted(AUDIO_TASKS)}")
    fn = AUDIO_TASKS[task]
    return [fn(row, RowRef(dataset, split, i)) for i, row in enumerate(rows)]
