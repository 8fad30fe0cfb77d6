"""Audio training examples at scale: a bounded-memory, deterministic, per-host, resumable stream (Grain).

LibriSpeech's 960 h (~281k utterances) do not fit in host memory as features (one 30 s window of 128
mel bins is 1.5 MB in float32: ~430 GB padded). This module streams them:

    rows (random access) -> [shuffle, repeat, host slice: Grain MapDataset over row indices]
         -> worker: decode audio -> checks -> log-mel window -> tokenized transcript -> example dict
         -> Grain iterator (optionally ``num_workers`` processes) -> :class:`AudioExampleStream`

**Sources** (:func:`as_source`) are random access (``len`` + ``[i]`` -> row dict): a directory of
ArrayRecord shards written by :func:`prepare_audio`, a WAV + JSONL manifest, or any map-style object
(tfds ``data_source``, a ``datasets.Dataset`` loaded with ``Audio(decode=False)``). A streaming
(iterable-only) dataset has no random access, hence no exact global shuffle and no O(1) resume: convert it
once with :func:`prepare_audio`, which copies each row's *encoded* audio bytes (FLAC stays FLAC) into
ArrayRecord shards in one bounded-memory pass.

**Features on the fly, not cached.** Cached features would be larger than the audio (float32 valid frames
of 960 h ~180 GB, padded windows ~430 GB, vs ~60 GB of FLAC) and tied to ``num_mel_bins``/clamp/window;
computing them in the workers costs tens of ms per utterance (eval/bench_audio_loader.py), far below a 7B
train step's budget per example. :func:`window_features` is the fast path (only frames that see audio go
through the STFT; the all-zero padded tail is filled exactly) of ``log_mel_windows``, tested against it.

**Order.** A pure function of ``(seed, number of rows)``: epoch e is a Grain global shuffle of the row
indices (seeded with ``seed``, folded with e by ``repeat``); the global stream is epoch 0, 1, ... in order.
Host h of H takes global positions ``h, h + H, h + 2H, ...`` (disjoint, covering). The number of worker
processes does not change the order (each map is one-to-one; skips are markers, dropped after the workers).

**State.** ``get_state()`` is a small JSON dict ``{"position": p, "skipped": {...}, ...}``: p host-local
elements consumed. ``set_state`` (or ``state=``) rebuilds the Grain dataset from position p, so a resumed
stream yields exactly what an uninterrupted one would, whatever ``num_workers`` is (Grain's own multi-worker
state depends on the worker count; ours does not). Put it in the checkpoint's JSON ``meta``.

**Bad rows** (undecodable bytes, wrong sampling rate, stereo array, empty, NaN, longer than one encoder
window, empty transcript): ``on_bad_audio="error"`` (default, as the text pipeline's ``on_bad_example``)
raises a one-line :class:`~proactive_jax.errors.DataError` naming the source and row; ``"skip"`` counts
them by reason in ``stream.skipped`` (and in the state) and goes on.

**Memory.** Bounded by (prefetch buffer + workers x per-worker buffer) x one example, independent of the
dataset's length (tested: peak RSS after 200 and after 2,000 utterances).

"""

from __future__ import annotations

import dataclasses
import json
import logging
import struct
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import numpy as np

from .tasks import DataError  # errors.DataError with a `reason` (the skip counts use it)
from ..models.audio import output_lengths
from .audio import HOP, SAMPLING_RATE, AudioError, check_waveform, log_mel_windows, read_audio, window_features

logger = logging.getLogger(__name__)

RECORD_MAGIC = b"PJAR1"
STATE_VERSION = 1
BAD_AUDIO_POLICIES = ("error", "skip")


# --------------------------------------------------------------------------------------------- features

@dataclasses.dataclass(frozen=True)
class AudioFeatures:
    """How an utterance becomes encoder input: one window of ``window_frames`` frames (3000 = 30 s for
    Qwen2-Audio; ``2 * max_source_positions`` for a small encoder), ``clamp`` ``running`` (what streaming
    sees; the default of training and eval) or ``utterance``. Longer audio is a bad row (never truncated);
    another sampling rate is a bad row unless ``resample``."""

    num_mel_bins: int = 128
    window_frames: int = 3000
    clamp: str = "running"
    resample: bool = False
    max_seconds: float | None = None

    @classmethod
    def from_encoder(cls, enc, **kw) -> "AudioFeatures":
        return cls(num_mel_bins=enc.num_mel_bins, window_frames=enc.num_frames, **kw)


def reference_features(x: np.ndarray, num_mel_bins: int, window_frames: int, clamp: str) -> np.ndarray:
    """The slow reference of :func:`window_features` (the whole padded window through the STFT)."""
    f, _ = log_mel_windows(x, SAMPLING_RATE, num_mel_bins, clamp=clamp, window_frames=window_frames)
    return f[0]


# --------------------------------------------------------------------------------------------- records

def encode_record(row: Mapping) -> bytes:
    """One row as bytes: magic, u32 header length, JSON header, audio payload (no pickles).

    ``row["audio"]`` is encoded file bytes (``{"bytes"}``: stored as they are), or samples (``{"array",
    "sampling_rate"}`` or a bare array: stored as little-endian float32 / int16)."""
    audio = row.get("audio")
    header = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in row.items()
              if k != "audio" and isinstance(v, (str, bytes, int, float, bool, type(None)))}
    if isinstance(audio, Mapping) and audio.get("bytes"):
        payload, header["encoding"] = bytes(audio["bytes"]), "file"
    else:
        arr = audio.get("array") if isinstance(audio, Mapping) else audio
        if arr is None:
            raise DataError(f"row {row.get('id', '?')!r}: no audio bytes or samples to store", reason="bad audio")
        a = np.asarray(arr)
        a = a.astype("<i2") if a.dtype.kind in "iu" and a.dtype.itemsize <= 2 else a.astype("<f4")
        payload = a.tobytes()
        header.update(encoding=str(a.dtype), shape=list(a.shape),
                      sampling_rate=int(audio.get("sampling_rate") or SAMPLING_RATE)
                      if isinstance(audio, Mapping) else SAMPLING_RATE)
    h = json.dumps(header, sort_keys=True).encode()
    return RECORD_MAGIC + struct.pack("<I", len(h)) + h + payload


def decode_record(data: bytes, where: str = "record") -> dict:
    """The row of :func:`encode_record` (audio as ``{"bytes"}`` or ``{"array", "sampling_rate"}``)."""
    if data[:len(RECORD_MAGIC)] != RECORD_MAGIC:
        raise DataError(f"{where}: not a proactive-jax audio record (magic {data[:5]!r})", reason="bad record")
    (n,) = struct.unpack("<I", data[5:9])
    header = json.loads(data[9:9 + n])
    payload = data[9 + n:]
    enc = header.pop("encoding")
    if enc == "file":
        header["audio"] = {"bytes": payload}
    else:
        shape = header.pop("shape")
        header["audio"] = {"array": np.frombuffer(payload, enc).reshape(shape),
                           "sampling_rate": header.pop("sampling_rate")}
    return header


def _first_answer(answer):
    """Spoken-SQuAD's ``answer`` (text or a list of text) -> the first non-empty one (the training target)."""
    answers = [answer] if isinstance(answer, (str, bytes)) else list(answer) if isinstance(answer, (list, tuple)) else []
    answers = [a.decode() if isinstance(a, bytes) else a for a in answers]
    return next((a.strip() for a in answers if isinstance(a, str) and a.strip()), None)


def _librispeech_row(row: Mapping) -> dict:
    """datasets / tfds rows -> the stored schema ``{"audio", "text", "id", "question"?, ...}``.

    LibriSpeech (datasets ``audio`` / tfds ``speech``) keeps its fields; Spoken-SQuAD in the AudioLLMs layout
    (``{"context": audio, "instruction": question, "answer": text or list}``, as ``data.audio_tasks.spoken_squad``
    reads it) becomes ``audio`` = the context, ``question`` = the instruction, ``text`` = the first answer."""
    out = dict(row)
    if "audio" not in out and "speech" in out:  # tfds: int16 samples at 16 kHz
        out["audio"] = {"array": np.asarray(out.pop("speech")), "sampling_rate": SAMPLING_RATE}
    if "audio" not in out and "context" in out:  # AudioLLMs Spoken-SQuAD: the context is the audio
        out["audio"] = out.pop("context")
        if "instruction" in out and "question" not in out:
            q = out.pop("instruction")
            out["question"] = q.decode() if isinstance(q, bytes) else q
        if "answer" in out and "text" not in out:
            out["text"] = _first_answer(out.pop("answer"))
    audio = out.get("audio")
    if isinstance(audio, Mapping) and not audio.get("bytes") and audio.get("array") is None and audio.get("path"):
        out["audio"] = {"bytes": Path(audio["path"]).read_bytes()}
    return out


def prepare_audio(rows: Iterable[Mapping], out_dir: str | Path, *, rows_per_shard: int = 2048,
                  name: str = "audio") -> dict:
    """Copy rows (an iterable, e.g. a streaming ``datasets`` split with ``Audio(decode=False)``, tfds rows,
    manifest rows) into ArrayRecord shards ``<out_dir>/<name>-NNNNN.array_record`` + ``index.json``.

    One pass, one row in memory at a time; audio bytes are copied, not decoded (checks happen when
    streaming, under ``on_bad_audio``). Returns the index (shard names and row counts)."""
    from array_record.python.array_record_module import ArrayRecordWriter

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shards, counts, writer, n = [], [], None, 0
    try:
        for row in rows:
            if writer is None or counts[-1] >= rows_per_shard:
                if writer is not None:
                    writer.close()
                shards.append(f"{name}-{len(shards):05d}.array_record")
                writer = ArrayRecordWriter(str(out / shards[-1]), "group_size:1")
                counts.append(0)
            writer.write(encode_record(_librispeech_row(row)))
            counts[-1] += 1
            n += 1
    finally:
        if writer is not None:
            writer.close()
    if n == 0:
        raise DataError(f"prepare_audio: no rows to write to {out}", reason="empty source")
    index = {"format": 1, "rows": n, "shards": shards, "counts": counts}
    (out / "index.json").write_text(json.dumps(index, indent=1) + "\n")
    logger.info("prepare_audio: %d rows in %d ArrayRecord shards under %s", n, len(shards), out)
    return index


# --------------------------------------------------------------------------------------------- sources

class ArrayRecordAudioSource:
    """Random access over the shards of :func:`prepare_audio` (opened lazily: picklable to workers)."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        p = self.directory / "index.json"
        if not p.is_file():
            raise DataError(f"{self.directory}: no index.json (write the shards with prepare_audio)",
                            reason="missing index")
        self.index = json.loads(p.read_text())
        self.name = str(self.directory)
        self._src = None

    def __len__(self) -> int:
        return int(self.index["rows"])

    def __getstate__(self):
        return {"directory": self.directory, "index": self.index, "name": self.name, "_src": None}

    def __getitem__(self, i: int) -> dict:
        if self._src is None:
            import grain

            self._src = grain.sources.ArrayRecordDataSource([str(self.directory / s) for s in self.index["shards"]])
        return decode_record(self._src[int(i)], f"{self.name} row {i}")


class ManifestSource:
    """A WAV + JSONL manifest (``{"audio": path, "text", "id"?, "question"?}`` a line), read by byte offset:
    memory holds one int64 per line, not the rows."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: manifest does not exist")
        offsets, lines, pos = [], [], 0
        with open(self.path, "rb") as f:
            for no, line in enumerate(f, 1):
                if line.strip():
                    offsets.append(pos)
                    lines.append(no)
                pos += len(line)
        if not offsets:
            raise DataError(f"{self.path}: manifest holds no rows", reason="empty manifest")
        self.offsets, self.lines = np.asarray(offsets, np.int64), np.asarray(lines, np.int64)
        self.name = str(self.path)

    def __len__(self) -> int:
        return int(self.offsets.size)

    def __getitem__(self, i: int) -> dict:
        with open(self.path, "rb") as f:
            f.seek(int(self.offsets[i]))
            line = f.readline()
        where = f"{self.path}:{int(self.lines[i])}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: not valid JSON ({e.msg})", reason="bad json") from None
        if not isinstance(row, dict) or not isinstance(row.get("audio"), str):
            raise DataError(f"{where}: expected a JSON object with an 'audio' path", reason="bad json")
        row["audio"] = {"path": str(self.path.parent / row["audio"])}
        row.setdefault("id", f"{self.path.stem}/{int(self.lines[i])}")
        return row


class RowSource:
    """Any map-style rows (tfds ``data_source``, ``datasets.Dataset``, a list) with a name for errors."""

    def __init__(self, rows, name: str = "rows"):
        self.rows, self.name = rows, name

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return _librispeech_row(self.rows[int(i)])


class SyntheticAudioSource:
    """``n`` deterministic utterances of ``min_seconds``-``max_seconds`` (chords + noise; row i depends on
    ``(seed, i)`` only, nothing is held in memory): the tests' and the benchmark's source."""

    WORDS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")

    def __init__(self, n: int, seed: int = 0, min_seconds: float = 10.0, max_seconds: float = 15.0):
        self.n, self.seed, self.min_seconds, self.max_seconds = int(n), int(seed), min_seconds, max_seconds
        self.name = f"synthetic(n={n}, seed={seed})"

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        rng = np.random.default_rng([self.seed, int(i)])
        n = int(rng.uniform(self.min_seconds, self.max_seconds) * SAMPLING_RATE)
        t = np.arange(n) / SAMPLING_RATE
        f0, f1 = rng.uniform(150, 400), rng.uniform(900, 3000)
        x = 0.3 * np.sin(2 * np.pi * f0 * t) + 0.1 * np.sin(2 * np.pi * f1 * t) + 0.01 * rng.standard_normal(n)
        words = " ".join(rng.choice(self.WORDS, int(rng.integers(5, 30))))
        return {"audio": {"array": x.astype(np.float32), "sampling_rate": SAMPLING_RATE}, "text": words,
                "id": f"synthetic/{int(i)}"}


def as_source(source):
    """A random-access source: a :func:`prepare_audio` directory, a ``.jsonl`` manifest, or map-style rows."""
    if isinstance(source, (str, Path)):
        p = Path(source)
        if p.is_dir():
            return ArrayRecordAudioSource(p)
        if p.suffix == ".jsonl":
            return ManifestSource(p)
        raise DataError(f"{p}: expected a prepare_audio directory (index.json + ArrayRecord shards) or a .jsonl "
                        "manifest", reason="bad source")
    if hasattr(source, "__len__") and hasattr(source, "__getitem__"):
        if isinstance(source, (ArrayRecordAudioSource, ManifestSource, RowSource, SyntheticAudioSource)):
            return source
        return RowSource(source, str(getattr(source, "name", None) or type(source).__name__))
    raise DataError(f"{type(source).__name__}: an iterable-only (streaming) source has no random access; write it "
                    "to ArrayRecord shards once with prepare_audio(rows, out_dir) and stream that directory",
                    reason="bad source")


# --------------------------------------------------------------------------------------------- examples

_DECODE_ERRORS = (AudioError, DataError, RuntimeError, ValueError, OSError, EOFError, struct.error)


def row_waveform(row: Mapping, where: str, features: AudioFeatures) -> np.ndarray:
    """The checked mono float32 16 kHz waveform of a row, or an ``AudioError``/``DataError`` naming ``where``.

    Encoded files (bytes or a path; WAV, FLAC via soundfile) are decoded offline; a multichannel *file* is
    mixed down by :func:`~.audio.read_audio`, a multichannel *array* is an error."""
    audio = row.get("audio")
    if isinstance(audio, Mapping) and audio.get("array") is not None:
        x, sr = np.asarray(audio["array"]), int(audio.get("sampling_rate") or SAMPLING_RATE)
    elif isinstance(audio, Mapping) and audio.get("bytes"):
        x, sr = read_audio(data=bytes(audio["bytes"]))
    elif isinstance(audio, Mapping) and audio.get("path"):
        x, sr = read_audio(Path(audio["path"]))
    elif isinstance(audio, (np.ndarray, list)):
        x, sr = np.asarray(audio), SAMPLING_RATE
    else:
        raise DataError(f"{where}: field 'audio' is {type(audio).__name__}, expected bytes, a path or samples",
                        reason="bad audio")
    max_s = features.max_seconds if features.max_seconds is not None else features.window_frames * HOP / SAMPLING_RATE
    return check_waveform(x, sr, name=where, resample=features.resample, max_seconds=max_s)


def _reason(msg: str) -> str:
    for key in ("sampling rate", "stereo", "empty audio", "silent", "NaN", "longer than", "transcript",
                "question", "expected bytes"):
        if key in msg:
            return key
    return "undecodable"


class MakeExample:
    """Source row index -> example dict, run in the loader's workers (picklable: source, tokenizer, config).

    Example keys: ``features`` float32 [bins, window_frames] (one encoder window, padded), ``valid_frames``
    and ``audio_tokens`` (int, the ``<|AUDIO|>`` slots: ``models.audio.output_lengths``), ``target`` int32 [n]
    (the tokenized transcript, + ``eos_id`` if given), ``text``, ``question`` (``""`` for ASR), ``id``,
    ``index`` (the source row), ``seconds``; ``waveform`` (float32, 16 kHz) with ``keep_waveform``. A bad
    row becomes ``{"bad": message, "reason": ...}``, acted on by the consumer (so errors read the same with
    and without worker processes). ``require_question`` (spoken QA): a row without a question is bad."""

    def __init__(self, source, tokenizer, features: AudioFeatures, eos_id: int | None = None,
                 keep_waveform: bool = False, require_question: bool = False):
        self.source, self.tokenizer, self.features, self.eos_id = source, tokenizer, features, eos_id
        self.keep_waveform, self.require_question = bool(keep_waveform), bool(require_question)

    def _tokens(self, text: str) -> list:
        enc = getattr(self.tokenizer, "encode", None)
        ids = enc(text, add_special_tokens=False) if enc is not None else self.tokenizer(text)
        return list(ids) + ([int(self.eos_id)] if self.eos_id is not None else [])

    def __call__(self, index) -> dict:
        index = int(index)
        where = f"{getattr(self.source, 'name', 'source')} row {index}"
        try:
            row = self.source[index]
            rid = row.get("id")
            where += f" (id {rid.decode() if isinstance(rid, bytes) else rid!r})" if rid is not None else ""
            x = row_waveform(row, where, self.features)
            text = row.get("text")
            text = text.decode() if isinstance(text, bytes) else text
            if not isinstance(text, str) or not text.strip():
                raise DataError(f"{where}: transcript field 'text' is missing or empty", reason="transcript")
            target = self._tokens(text.strip())
            if not target:
                raise DataError(f"{where}: transcript tokenizes to no tokens", reason="transcript")
            question = row.get("question")
            question = (question.decode() if isinstance(question, bytes) else str(question or "")).strip()
            if self.require_question and not question:
                raise DataError(f"{where}: field 'question' is missing or empty (spoken QA puts it in the "
                                "prompt)", reason="question")
        except _DECODE_ERRORS as e:
            msg = str(e) if where in str(e) else f"{where}: {e}"
            return {"bad": msg.splitlines()[0] if msg else where, "reason": _reason(msg), "index": index}
        f = self.features
        valid = max(1, -(-x.size // HOP))
        out = {"features": window_features(x, f.num_mel_bins, f.window_frames, f.clamp),
               "valid_frames": np.int32(valid), "audio_tokens": np.int32(output_lengths(int(valid))[1]),
               "target": np.asarray(target, np.int32), "text": text.strip(),
               "question": question, "id": str(rid if rid is not None else where),
               "index": np.int64(index), "seconds": np.float32(x.size / SAMPLING_RATE)}
        if self.keep_waveform:
            out["waveform"] = x
        return out


def _grain():
    """``grain``, with absl's flags marked parsed: outside ``absl.app`` (pytest, the CLI) Grain's first
    flag read otherwise raises ``UnparsedFlagAccessError`` (every flag keeps its default)."""
    import grain
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    return grain


class AudioExampleStream:
    """The host's examples in order (see the module doc); ``get_state``/``set_state`` resume exactly."""

    def __init__(self, source, *, tokenizer, features: AudioFeatures = AudioFeatures(), host_index: int = 0,
                 host_count: int = 1, seed: int = 0, num_epochs: int | None = None, num_workers: int = 0,
                 on_bad_audio: str = "error", eos_id: int | None = None, keep_waveform: bool = False,
                 read_threads: int = 1, prefetch: int = 4, require_question: bool = False):
        if host_count < 1 or not 0 <= host_index < host_count:
            raise ValueError(f"host_index={host_index} must be in [0, host_count={host_count})")
        if on_bad_audio not in BAD_AUDIO_POLICIES:
            raise ValueError(f"on_bad_audio={on_bad_audio!r}; expected one of {BAD_AUDIO_POLICIES}")
        if not 0 <= int(seed) < 2 ** 32:
            raise ValueError(f"seed={seed} must be in [0, 2**32)")
        self.source = as_source(source)
        self.rows = len(self.source)
        if self.rows == 0:
            raise DataError(f"{getattr(self.source, 'name', 'source')}: no rows", reason="empty source")
        self.make = MakeExample(self.source, tokenizer, features, eos_id, keep_waveform, require_question)
        self.host_index, self.host_count, self.seed = int(host_index), int(host_count), int(seed)
        self.num_epochs, self.num_workers, self.on_bad_audio = num_epochs, int(num_workers), on_bad_audio
        self.read_threads, self.prefetch = int(read_threads), int(prefetch)
        self.position, self.examples, self.skipped = 0, 0, {}
        self._it = None

    # -- the Grain pipeline -------------------------------------------------------------------------
    def dataset(self):
        """The host's Grain ``IterDataset`` from ``self.position`` on."""
        grain = _grain()
        ds = grain.MapDataset.range(self.rows).shuffle(seed=self.seed).repeat(self.num_epochs)
        ds = ds[self.host_index::self.host_count][self.position:].map(self.make)
        it = ds.to_iter_dataset(grain.ReadOptions(num_threads=self.read_threads, prefetch_buffer_size=self.prefetch))
        if self.num_workers > 0:
            it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=self.num_workers, per_worker_buffer_size=2))
        return it

    def __iter__(self) -> Iterator[dict]:
        return self

    def __next__(self) -> dict:
        if self._it is None:
            self._it = iter(self.dataset())
        while True:
            ex = next(self._it)
            self.position += 1
            if "bad" not in ex:
                self.examples += 1
                return ex
            if self.on_bad_audio == "error":
                raise DataError(ex["bad"] + " (on_bad_audio='skip' counts and skips such rows)",
                                reason=ex["reason"])
            self.skipped[ex["reason"]] = self.skipped.get(ex["reason"], 0) + 1
            logger.warning("skipping bad audio row (%d skipped so far): %s", sum(self.skipped.values()), ex["bad"])

    # -- state --------------------------------------------------------------------------------------
    def get_state(self) -> dict:
        """JSON-able: where this host's stream stands (put it in the checkpoint's ``meta``)."""
        return {"version": STATE_VERSION, "position": self.position, "examples": self.examples,
                "skipped": dict(self.skipped), "seed": self.seed, "host_index": self.host_index,
                "host_count": self.host_count, "rows": self.rows}

    def set_state(self, state: Mapping) -> None:
        """Continue from ``state`` (of a stream over the same rows, seed and hosts; any worker count)."""
        for key in ("version", "seed", "host_index", "host_count", "rows"):
            want = STATE_VERSION if key == "version" else getattr(self, key)
            if state.get(key) != want:
                raise DataError(f"audio stream state: {key}={state.get(key)!r}, this stream has {want!r} (a state "
                                "from another dataset, seed or host layout cannot resume this one)",
                                reason="bad state")
        self.close()
        self.position, self.examples = int(state["position"]), int(state["examples"])
        self.skipped = {str(k): int(v) for k, v in state["skipped"].items()}

    def close(self) -> None:
        if self._it is not None:
            close = getattr(self._it, "close", None)
            if close is not None:
                close()
            self._it = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def audio_example_stream(source, *, tokenizer, features: AudioFeatures = AudioFeatures(), host_index: int = 0,
                         host_count: int = 1, seed: int = 0, state: Mapping | None = None, position: int = 0,
                         **kw) -> AudioExampleStream:
    """The trainer's entry point: this host's audio examples (dicts, see :class:`MakeExample`) as an
    iterator with ``get_state()``/``set_state()``; ``state`` (from ``get_state``) resumes exactly.
    ``position`` instead starts after that many of this host's rows (== examples consumed when nothing is
    skipped, e.g. ``step * global_batch / host_count`` under ``on_bad_audio="error"``; with skips, save the
    state). ``kw``: ``num_epochs`` (None = forever), ``num_workers`` (processes; 0 = in process),
    ``on_bad_audio`` (``error`` | ``skip``), ``eos_id``, ``keep_waveform``, ``read_threads``, ``prefetch``,
    ``require_question`` (spoken QA: a row without ``question`` is bad)."""
    stream = AudioExampleStream(source, tokenizer=tokenizer, features=features, host_index=host_index,
                                host_count=host_count, seed=seed, **kw)
    if state is not None:
        stream.set_state(state)
    elif position:
        stream.position = stream.examples = int(position)
    return stream


# --------------------------------------------------------------------------------------------- CLI

def spec_rows(spec: str, *, config: str | None = None, split: str = "train", max_rows: int | None = None,
              cache_dir: str | None = None, data_dir: str | None = None):
    """``(rows iterable, label)`` of a ``proactive-jax prepare-audio`` SPEC: a ``.jsonl`` manifest, ``tfds:NAME``,
    ``disk:DIR`` or ``[hub:]ID`` (a Hub id or a local dataset directory), with ``config`` / ``split``."""
    from .audio_tasks import load_audio_rows
    from .loaders import DatasetSpec

    if spec.endswith(".jsonl"):
        src = ManifestSource(spec)  # FileNotFoundError / DataError: one line naming the file
        n = len(src) if max_rows is None else min(len(src), max_rows)

        def manifest_rows():
            for i in range(n):
                row = src[i]
                path = Path(row["audio"]["path"])
                if not path.is_file():
                    raise DataError(f"{spec}:{int(src.lines[i])}: audio file {path} does not exist", reason="bad audio")
                yield row

        return manifest_rows(), spec
    source, _, path = spec.partition(":") if spec.split(":", 1)[0] in ("hub", "tfds", "disk") else ("hub", "", spec)
    if not path:
        raise DataError(f"prepare-audio SPEC {spec!r}: empty dataset name", reason="bad spec")
    ds = DatasetSpec(source=source, path=path, name=config, split=split, max_rows=max_rows, data_dir=data_dir)
    rows = load_audio_rows(ds, cache_dir)
    if hasattr(rows, "__len__") and hasattr(rows, "__getitem__"):
        return (rows[i] for i in range(len(rows))), ds.label
    return iter(rows), ds.label


def run_prepare_audio(args) -> int:
    out = Path(args.out_dir)
    if args.rows_per_shard < 1:
        raise DataError(f"--rows-per-shard={args.rows_per_shard}: expected >= 1", reason="bad option")
    if args.max_rows is not None and args.max_rows < 1:
        raise DataError(f"--max-rows={args.max_rows}: expected >= 1", reason="bad option")
    if (out / "index.json").exists() and not args.overwrite:
        raise DataError(f"{out}: already holds a prepared set (index.json); choose another OUT_DIR or --overwrite",
                        reason="exists")
    rows, label = spec_rows(args.spec, config=args.config, split=args.split, max_rows=args.max_rows,
                            cache_dir=args.cache_dir, data_dir=args.data_dir)
    if args.overwrite and (out / "index.json").exists():
        old = json.loads((out / "index.json").read_text())
        for s in old.get("shards", []):
            (out / s).unlink(missing_ok=True)
        (out / "index.json").unlink()
    index = prepare_audio(rows, out, rows_per_shard=args.rows_per_shard)
    print(f"prepare-audio: {index['rows']} rows of {label} in {len(index['shards'])} ArrayRecord shards under {out} "
          f"(stream it with audio.stream.dir={out})")
    return 0
