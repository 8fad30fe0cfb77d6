"""Audio training examples at scale: a bounded-memory, deterministic, per-host, resumable stream (Grain).

LibriSpeech's 960 h (~281k utterances) do not fit in host memory as features (one 30 s window of 128
mel bins is 1.5 MB in float32: ~430 GB padded). This module streams them:

    rows (random access) -> [shuffle, repeat, host slice: Grain MapDataset over row indices]
         -> worker: decode audio -> checks -> log-mel window -> tokenized transcript -> example dict
         -> Grain iterator (optionally ``num_workers`` processes) -> :class:`AudioExampleStream`

**Sources** (:func:`~proactive_jax.data.audio_sources.as_source`) are random access (``len`` + ``[i]`` -> row dict): a directory of
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
import logging
import struct
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np

from proactive_jax.errors import DataError
from proactive_jax.models.audio import output_lengths
from proactive_jax.data.audio import HOP, SAMPLING_RATE, AudioError, check_waveform, log_mel_windows, read_audio, window_features
from proactive_jax.data.audio_sources import as_source

logger = logging.getLogger(__name__)

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
        x, sr = read_audio(data=bytes(audio["bytes"]), name=where)
    elif isinstance(audio, Mapping) and audio.get("path"):
        x, sr = read_audio(Path(audio["path"]), name=where)
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
