"""Speech training data: audio items -> token layout + waveform -> fixed-shape batches with log-mel features.

An :class:`AudioTrainExample` is a :class:`~proactive_jax.method.streaming.StreamExample` whose units are
chunks of K ``<|AUDIO|>`` placeholders (K = ``audio.chunk_ms`` / 40 ms; the last chunk may be shorter, as in
streaming) and which carries its mono 16 kHz waveform. The placeholder count is what the encoder gives for
the waveform's valid mel frames (``models.audio.output_lengths``), so the layout is known before any
feature is computed. Features are computed in the collate (:class:`AudioCollate`: one encoder window per
example, ``audio.clamp``), so host memory holds waveforms, never features; batches come out of the same
deterministic :class:`~proactive_jax.data.pipeline.Pipeline` as text (buckets over ``(S, T)``, resume by
step, per-host rows) and hold ``method.audio_objective.pack_audio_batch``'s arrays: ``pack_batch``'s plus
``features`` [B, bins, frames], ``valid_frames`` [B], ``audio_tokens`` [B].

Tasks (``data.task``): ``speech-transcribe`` / ``speech-lookup`` (the demo's synthetic tone-words, ids of the
demo's word vocabulary, no tokenizer), ``librispeech`` / ``spoken-squad`` (``data.audio_tasks``; rows from
``data.dataset`` or the default Hub dataset, audio decoded offline) and ``audio-jsonl`` (a local WAV + JSONL
manifest, ``audio.manifest``); real tasks use the Qwen2-Audio chat layout (``method.audio_decode_cli.audio_parts``)
and end the target with ``<|im_end|>``.

**Bounded memory** (``audio.stream``): :class:`StreamedAudioBatches` draws the train batches from this host's
``data.audio_stream.audio_example_stream`` over a ``prepare-audio`` directory (features computed in the loader
workers, per-host shards); each step's bucket is the smallest of ``data.buckets`` holding every host's rows, and
the stream state of every host goes into the checkpoint meta (``STREAM_META_KEY``) so resume is exact even
when rows were skipped. :class:`StreamedBatches` stays as the generic plug point for any
``open_stream(position) -> iterator of AudioTrainExample`` (one bucket, position = examples consumed).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Iterator, Sequence

import numpy as np

from ..method.streaming import ExampleError, StreamExample

log = logging.getLogger(__name__)

SAMPLES_PER_FRAME = 160  # 10 ms at 16 kHz
SYNTHETIC_SPEECH = ("speech-lookup", "speech-transcribe")


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class AudioTrainExample(StreamExample):
    """A StreamExample of audio placeholder units that carries its waveform (mono float32, 16 kHz)."""

    waveform: np.ndarray
    id: str = ""


def audio_tokens_for(num_samples: int) -> int:
    """Encoder output tokens of ``num_samples`` samples in one window (valid frames = ceil(n / 160))."""
    from ..models.audio import output_lengths

    frames = max(1, -(-int(num_samples) // SAMPLES_PER_FRAME))
    return int(output_lengths(np.int64(frames))[1])


def max_samples(acfg, max_seconds: float | None) -> int:
    """The longest waveform a training example may have: one encoder window, or ``audio.max_seconds``."""
    window = acfg.encoder.num_frames * SAMPLES_PER_FRAME
    return window if max_seconds is None else min(window, int(max_seconds * 16000))


def train_example(waveform, prompt, end, header, target, *, chunk: int, audio_id: int, limit: int,
                  id: str = "") -> AudioTrainExample:
    """The token layout of one utterance: ``prompt`` (ends with ``<|audio_bos|>``), chunks of ``chunk``
    placeholders, ``end``, ``header``, ``target``. Audio over ``limit`` samples is an ``ExampleError``."""
    wave = np.asarray(waveform, np.float32)
    if wave.size > limit:
        raise ExampleError(f"example {id!r}: {wave.size / 16000:.2f} s of audio is over the {limit / 16000:.2f} s "
                           "limit (audio.max_seconds or one encoder window); it is never truncated")
    n = audio_tokens_for(wave.size)
    units = tuple((audio_id,) * min(chunk, n - s) for s in range(0, n, chunk))
    return AudioTrainExample(prompt=tuple(prompt), units=units, end=tuple(end), header=tuple(header),
                             target=tuple(target), waveform=wave, id=id)


def features_of(waveform, acfg, clamp: str = "running", name: str = "waveform") -> tuple[np.ndarray, int]:
    """``(log-mel [bins, frames] of one encoder window, valid frames)``."""
    from ..data.audio import log_mel_windows

    enc = acfg.encoder
    f, m = log_mel_windows(waveform, 16000, enc.num_mel_bins, clamp=clamp, window_frames=enc.num_frames, name=name)
    if f.shape[0] != 1:
        raise ExampleError(f"{name}: {f.shape[0]} encoder windows; a training example holds one")
    return f[0], int(m[0].sum())


class AudioCollate:
    """The pipeline's collate for audio: features computed here, one window per row (padding rows: zeros)."""

    def __init__(self, acfg, clamp: str = "running", m_cap: int | None = None):
        self.acfg, self.clamp, self.m_cap = acfg, clamp, m_cap

    def __call__(self, examples: Sequence[AudioTrainExample], bucket) -> dict:
        from ..method.audio_objective import pack_audio_batch

        feats, valid = zip(*(features_of(e.waveform, self.acfg, self.clamp, e.id or f"row {i}")
                             for i, e in enumerate(examples))) if examples else ((), ())
        enc = self.acfg.encoder
        return pack_audio_batch(examples, feats, valid, tuple(bucket), batch_size=len(examples),
                                m_cap=self.m_cap or bucket[0], feature_shape=(enc.num_mel_bins, enc.num_frames))


def empty_batch(acfg, bucket, rows: int, m_cap: int | None = None) -> dict:
    """The arrays (all padding) of a batch of ``rows`` rows for ``bucket``: the shapes the step is compiled for."""
    from ..method.audio_objective import pack_audio_batch

    enc = acfg.encoder
    return pack_audio_batch([], [], [], tuple(bucket), batch_size=rows, m_cap=m_cap or bucket[0],
                            feature_shape=(enc.num_mel_bins, enc.num_frames))


# ---------------------------------------------------------------------------------------------
# Items -> examples
# ---------------------------------------------------------------------------------------------

def synthetic_speech_examples(items, acfg, *, limit: int | None = None) -> list[AudioTrainExample]:
    """The demo's tone-word items (``data.synthetic_audio``) in the demo's word vocabulary."""
    from ..demo_speech import ASSISTANT, AUDIO, BOS_A, EOS, EOS_A, T_LOOKUP, T_TRANSCRIBE, USER_END, vocabulary

    if acfg.audio_token_index != AUDIO or acfg.text.vocab_size < len(vocabulary()):
        raise ExampleError(f"the synthetic speech tasks need audio_token_index={AUDIO} and vocab_size >= "
                           f"{len(vocabulary())} (model.preset=tiny-audio), got {acfg.audio_token_index} and "
                           f"{acfg.text.vocab_size}")
    word_id = {w: i for i, w in enumerate(vocabulary())}
    lim = limit or max_samples(acfg, None)
    out = []
    for it in items:
        prompt = ((T_TRANSCRIBE,) if it.question is None else (T_LOOKUP, word_id[it.question])) + (BOS_A,)
        target = tuple(word_id[w] for w in it.target_words) + (EOS,)
        out.append(train_example(it.waveform, prompt, (EOS_A, USER_END), (ASSISTANT,), target, chunk=acfg.chunk,
                                 audio_id=AUDIO, limit=lim, id=it.id))
    return out


def tokenized_examples(items, tok, acfg, *, system: str | None, limit: int, on_bad: str = "skip"):
    """Real audio items (``data.audio_tasks.AudioItem``) in the Qwen2-Audio chat layout; ``(examples, skipped)``."""
    from ..method.audio_decode_cli import audio_parts

    end_turn = tok.convert_tokens_to_ids("<|im_end|>")
    out, skipped = [], {}
    for it in items:
        try:
            question = it.prompt_text
            p = audio_parts(tok, question, system)
            if p["audio_id"] != acfg.audio_token_index:
                raise ExampleError(f"the tokenizer's <|AUDIO|> id {p['audio_id']} is not the model's "
                                   f"audio_token_index {acfg.audio_token_index}")
            target = tuple(tok.encode(it.target_text, add_special_tokens=False)) + (end_turn,)
            out.append(train_example(it.waveform, p["prompt"], p["end"], p["header"], target, chunk=acfg.chunk,
                                     audio_id=p["audio_id"], limit=limit, id=it.id))
        except ExampleError as e:
            if on_bad == "error" or "audio_token_index" in str(e):
                raise
            reason = "over max_seconds" if "limit" in str(e) else "bad example"
            skipped[reason] = skipped.get(reason, 0) + 1
    return out, skipped


def load_items(run, split: str, max_rows: int | None):
    """The audio items of ``run``'s task and ``split`` (synthetic, datasets / tfds rows, or a manifest)."""
    from ..data import audio_tasks
    from ..data.synthetic_audio import make_speech_task

    data, a = run.data, run.audio
    if data.task in SYNTHETIC_SPEECH:
        split = {"validation": "valid"}.get(split, split)
        n = a.n_train if split == "train" else a.n_valid
        secs = (a.max_seconds or 30.0)
        return make_speech_task(data.task, n if max_rows is None else min(n, max_rows), data.seed, split, secs)
    if data.task == "audio-jsonl":
        path = a.manifest if split == data.split else a.valid_manifest
        if path is None:
            return []
        return audio_tasks.load_manifest(path)[:max_rows]
    if data.dataset is not None:
        spec = dataclasses.replace(data.dataset, split=split, max_rows=max_rows)
    elif data.task == "librispeech":
        spec = audio_tasks.librispeech_spec("clean", split, max_rows=max_rows)
    else:
        from ..data.loaders import DatasetSpec

        spec = DatasetSpec(source="hub", path="AudioLLMs/spoken_squad_test_v1", split=split, max_rows=max_rows)
    rows = audio_tasks.load_audio_rows(spec, data.cache_dir)
    return audio_tasks.adapt_audio_rows(rows, data.task, dataset=spec.label, split=split)


# ---------------------------------------------------------------------------------------------
# The run's data
# ---------------------------------------------------------------------------------------------

def build_audio_data(run, acfg, *, host_index: int = 0, host_count: int = 1, n_devices: int = 1):
    """``training.data.DataBundle`` of a speech run: tokenizer (real tasks), examples, the per-host pipelines."""
    from ..data import pipeline as pl
    from .data import DataBundle
    from .run_config import RunConfigError

    data, a = run.data, run.audio
    if getattr(acfg, "model_type", None) != "qwen2_audio":
        raise RunConfigError(f"data.task={data.task!r} is a speech task: it needs a qwen2_audio model "
                             f"(model.preset=tiny-audio, a Qwen2-Audio model.hf_dir or config_json)")
    micro = data.micro_batch_size or data.global_batch_size
    if micro % n_devices:
        raise RunConfigError(f"the (micro)batch of {micro} rows must be a multiple of the {n_devices} devices")
    limit = max_samples(acfg, a.max_seconds)
    tok, tok_dir = None, None
    if data.task not in SYNTHETIC_SPEECH:
        from transformers import AutoTokenizer

        tok_dir = data.tokenizer or run.model.hf_dir
        tok = AutoTokenizer.from_pretrained(str(tok_dir))

    def examples(split, max_rows):
        items = load_items(run, split, max_rows)
        if tok is None:
            return synthetic_speech_examples(items, acfg, limit=limit), {}
        return tokenized_examples(items, tok, acfg, system=a.system, limit=limit, on_bad=data.on_bad_example)

    def pipeline(split, max_rows, batch_size):
        exs, skipped = examples(split, max_rows)
        if skipped:
            log.warning("%s split %s: skipped %s", data.task, split, skipped)
        if not exs:
            raise RunConfigError(f"data.task={data.task!r} split {split!r}: no usable examples (skipped: "
                                 f"{skipped or 'none'})")
        return pl.Pipeline(exs, [tuple(b) for b in data.buckets], global_batch_size=batch_size,
                           collate=AudioCollate(acfg, a.clamp, data.m_cap), seed=data.seed, host_index=host_index,
                           host_count=host_count, remainder=data.remainder, on_unfit=data.on_unfit,
                           ids=[e.id for e in exs])

    if a.stream is not None:  # bounded memory: this host's Grain stream (validation stays in memory, bounded)
        train = build_audio_stream(run, acfg, tok, host_index=host_index, host_count=host_count)
    else:
        train = pipeline(data.split, data.max_train_rows, data.global_batch_size)
    valid = None
    if run.eval_every > 0 and data.valid_batches > 0 and data.valid_split:
        if data.task == "audio-jsonl" and a.valid_manifest is None:
            valid = None
        elif data.task not in SYNTHETIC_SPEECH or a.n_valid > 0:
            valid = pipeline(data.valid_split, data.max_valid_rows, micro)
    vocab = acfg.text.vocab_size if tok is None else len(tok)
    return DataBundle(train, valid, None if tok_dir is None else str(tok_dir), vocab)


class StreamedBatches:
    """Batches of a stream of examples in ONE bucket (the plug point of a bounded-memory loader).

    ``open_stream(position)`` yields :class:`AudioTrainExample` s (already fitting ``bucket``) from example
    ``position`` on; step s consumes examples ``[s * G, (s + 1) * G)`` (this host takes its rows of them), so
    :meth:`batches_from` resumes exactly. ``steps_per_epoch`` is what the loop's epoch count and logs use.
    """

    def __init__(self, open_stream: Callable[[int], Iterator[AudioTrainExample]], bucket, *, global_batch_size: int,
                 collate: Callable, steps_per_epoch: int, host_index: int = 0, host_count: int = 1):
        self.open_stream, self.bucket, self.collate = open_stream, tuple(bucket), collate
        self.global_batch_size, self.steps_per_epoch = int(global_batch_size), int(steps_per_epoch)
        self.batch_size = self.global_batch_size // host_count
        self.lo = host_index * self.batch_size

    def batches_from(self, step: int = 0) -> Iterator[dict]:
        it = self.open_stream(int(step) * self.global_batch_size)
        while True:
            rows = [next(it, None) for _ in range(self.global_batch_size)]
            if rows[0] is None:
                return
            real = [e for e in rows[self.lo:self.lo + self.batch_size] if e is not None]
            fill = real[:1] or [next(e for e in rows if e is not None)]  # a short last batch: flagged repeats
            out = self.collate(real + fill * (self.batch_size - len(real)), self.bucket)
            out["valid"] = np.arange(self.batch_size) < len(real)
            yield out

    def batch_at(self, step: int) -> dict:
        return next(self.batches_from(step))


# ---------------------------------------------------------------------------------------------
# The bounded-memory stream (audio.stream)
# ---------------------------------------------------------------------------------------------

STREAM_META_KEY = "audio_stream"


def prompt_text(task: str, question: str) -> str:
    """The user turn's text before ``<|audio_bos|>``, as ``data.audio_tasks`` builds it for the in-memory path:
    the ASR instruction (librispeech, audio-jsonl) or the spoken-QA instruction (spoken-squad), then
    ``Question: ...`` when the row has a question (method.md section 1b: the question is in the prompt)."""
    from ..data.audio_tasks import ASR_INSTRUCTION, SPOKEN_QA_INSTRUCTION

    q = question.strip()
    return (SPOKEN_QA_INSTRUCTION if task == "spoken-squad" else ASR_INSTRUCTION) + (f"\nQuestion: {q}" if q else "")


class StreamLayout:
    """A stream example dict (``data.audio_stream.MakeExample``) -> the :class:`StreamExample` of the chat layout
    (prompt with the question, chunks of K ``<|AUDIO|>`` placeholders, end, header, target + ``<|im_end|>``).
    The tokenized prompt parts are cached per question (ASR: one entry)."""

    def __init__(self, tok, acfg, task: str, system: str | None):
        from ..method.audio_decode_cli import audio_parts

        self.tok, self.task, self.system, self.chunk = tok, task, system, acfg.chunk
        self._parts, self._cache = audio_parts, {}
        p = audio_parts(tok, "", system)
        if p["audio_id"] != acfg.audio_token_index:
            raise ExampleError(f"the tokenizer's <|AUDIO|> id {p['audio_id']} is not the model's audio_token_index "
                               f"{acfg.audio_token_index}")
        self.audio_id = p["audio_id"]

    def parts(self, question: str):
        got = self._cache.get(question)
        if got is None:
            if len(self._cache) > 4096:
                self._cache.clear()
            p = self._parts(self.tok, prompt_text(self.task, question), self.system)
            got = self._cache[question] = (tuple(p["prompt"]), tuple(p["end"]), tuple(p["header"]))
        return got

    def __call__(self, ex: dict) -> StreamExample:
        prompt, end, header = self.parts(str(ex.get("question") or ""))
        n = int(ex["audio_tokens"])
        units = tuple((self.audio_id,) * min(self.chunk, n - s) for s in range(0, n, self.chunk))
        return StreamExample(prompt=prompt, units=units, end=end, header=header,
                             target=tuple(int(t) for t in ex["target"]))


def _allgather_max(values: np.ndarray) -> np.ndarray:
    """Elementwise max of an int vector over all processes (one small collective per step, multi-host only)."""
    import jax
    from jax.experimental import multihost_utils

    if jax.process_count() == 1:
        return values
    return np.asarray(multihost_utils.process_allgather(np.asarray(values, np.int64))).max(axis=0)


def _allgather_json(obj, size: int = 16384) -> list:
    """Every process's JSON-able ``obj`` (index = process), for the checkpoint meta (written by one process)."""
    import json

    import jax
    from jax.experimental import multihost_utils

    if jax.process_count() == 1:
        return [obj]
    raw = json.dumps(obj, sort_keys=True).encode()
    if len(raw) > size:
        raise ExampleError(f"audio stream state of {len(raw)} bytes exceeds {size}")
    buf = np.zeros(size, np.uint8)
    buf[:len(raw)] = np.frombuffer(raw, np.uint8)
    got = np.asarray(multihost_utils.process_allgather(buf))
    return [json.loads(bytes(r).rstrip(b"\0")) for r in got]


class StreamedAudioBatches:
    """This host's train batches from a bounded-memory example stream (``audio.stream``).

    ``open_stream(state or None, position)`` -> a ``data.audio_stream.AudioExampleStream`` of this host (per-host
    shard, features computed in its workers); ``layout`` turns its dicts into StreamExamples. Each step takes
    the host's next ``B = global_batch_size / host_count`` examples that fit a bucket, in stream order (an
    example fitting no bucket is counted and skipped under ``on_unfit="skip"``, else an ``ExampleError``); the
    step's bucket is the smallest of ``buckets`` that holds every host's rows (their max S and T, agreed by one
    tiny all-gather on multi-host runs), so every host feeds the same shape and a run sees at most
    ``len(buckets)`` shapes. No buffering across steps: the state after step s is the stream's state
    (:meth:`stream_state`, saved in the checkpoint meta) and :meth:`batches_from` with it resumes exactly.
    ``steps_per_epoch`` = rows / global batch (the stream itself repeats epochs forever)."""

    def __init__(self, open_stream: Callable, layout: Callable, buckets, *, global_batch_size: int, host_count: int,
                 rows: int, feature_shape, m_cap: int | None = None, on_unfit: str = "skip", host_index: int = 0,
                 agree: Callable = _allgather_max, gather: Callable = _allgather_json):
        from ..data.pipeline import normalize_buckets

        self.open_stream, self.layout, self.buckets = open_stream, layout, normalize_buckets(buckets)
        self.max_s, self.max_t = max(b[0] for b in self.buckets), max(b[1] for b in self.buckets)
        if (self.max_s, self.max_t) not in self.buckets:
            raise ExampleError(f"audio.stream needs one bucket that covers all the others (max S and max T), got "
                               f"{self.buckets}: add [{self.max_s}, {self.max_t}]")
        if global_batch_size % host_count:
            raise ExampleError(f"global batch {global_batch_size} is not a multiple of the {host_count} hosts")
        self.global_batch_size, self.batch_size = int(global_batch_size), int(global_batch_size) // int(host_count)
        self.host_index, self.host_count = int(host_index), int(host_count)
        self.steps_per_epoch = max(1, int(rows) // self.global_batch_size)
        self.feature_shape, self.m_cap, self.on_unfit = tuple(feature_shape), m_cap, on_unfit
        self.agree, self.gather = agree, gather
        self._resume: dict | None = None
        self._state: dict | None = None

    # -- state ---------------------------------------------------------------------------------------
    def restore_stream(self, meta_entry: dict | None, step: int) -> None:
        """Take this host's state out of a checkpoint's ``meta[STREAM_META_KEY]`` (``{"hosts": [...]}``)."""
        if meta_entry is None:
            log.warning("the checkpoint of step %d holds no audio stream state; the stream restarts at position "
                        "step x batch (exact only if no row was skipped)", step)
            self._resume = None
            return
        hosts = meta_entry.get("hosts", [])
        if len(hosts) != self.host_count:
            raise ExampleError(f"the checkpoint's audio stream state is for {len(hosts)} hosts, this run has "
                               f"{self.host_count}; resume with the same host count")
        st = hosts[self.host_index]
        if int(st.get("step", -1)) != int(step):
            raise ExampleError(f"the checkpoint's audio stream state is of step {st.get('step')}, not {step}")
        self._resume = st

    def stream_state(self) -> dict:
        """``{"hosts": [state of each host]}`` after the batches consumed so far (every process must call it)."""
        return {"hosts": self.gather(self._state)}

    # -- batches -------------------------------------------------------------------------------------
    def _fits(self, ex) -> bool:
        if ex.S <= self.max_s and ex.T <= self.max_t:
            return True
        if self.on_unfit == "error":
            raise ExampleError(f"audio example S={ex.S}, T={ex.T} fits no bucket of {self.buckets} "
                               "(data.on_unfit=skip skips such examples)")
        return False

    def batches_from(self, step: int = 0) -> Iterator[dict]:
        from ..method.audio_objective import pack_audio_batch

        step = int(step)
        st = self._resume if (self._resume is not None and int(self._resume["step"]) == step) else None
        if st is None and step > 0:
            log.warning("audio stream: starting at step %d without a saved state (position = step x batch)", step)
        stream = self.open_stream(None if st is None else st["stream"], step * self.batch_size)
        unfit = 0 if st is None else int(st["unfit"])
        self._state = {"step": step, "stream": stream.get_state(), "unfit": unfit}
        try:
            while True:
                rows, feats, valid = [], [], []
                while len(rows) < self.batch_size:
                    ex = next(stream)
                    se = self.layout(ex)
                    if not self._fits(se):
                        unfit += 1
                        continue
                    rows.append(se)
                    feats.append(ex["features"])
                    valid.append(int(ex["valid_frames"]))
                need = self.agree(np.asarray([max(e.S for e in rows), max(e.T for e in rows)], np.int64))
                bucket = next(b for b in self.buckets if b[0] >= need[0] and b[1] >= need[1])
                out = pack_audio_batch(rows, feats, valid, bucket, batch_size=self.batch_size,
                                       m_cap=self.m_cap or bucket[0], feature_shape=self.feature_shape)
                out["valid"] = np.ones(self.batch_size, bool)
                step += 1
                self._state = {"step": step, "stream": stream.get_state(), "unfit": unfit}
                yield out
        finally:
            stream.close()

    def batch_at(self, step: int) -> dict:
        it = self.batches_from(step)
        try:
            return next(it)
        finally:
            it.close()


def build_audio_stream(run, acfg, tok, *, host_index: int, host_count: int) -> StreamedAudioBatches:
    """``audio.stream``: this host's :class:`StreamedAudioBatches` over ``audio.stream.dir``."""
    from ..data.audio_stream import AudioFeatures, as_source, audio_example_stream
    from .run_config import RunConfigError

    data, a, s = run.data, run.audio, run.audio.stream
    enc = acfg.encoder
    window_s = enc.num_frames * SAMPLES_PER_FRAME / 16000
    feats = AudioFeatures(num_mel_bins=enc.num_mel_bins, window_frames=enc.num_frames, clamp=a.clamp,
                          resample=s.resample, max_seconds=min(window_s, a.max_seconds or window_s))
    try:
        source = as_source(s.dir)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"audio.stream.dir={s.dir}: {e}") from None
    layout = StreamLayout(tok, acfg, data.task, a.system)
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    policy = s.on_bad_audio or data.on_bad_example
    if len(source) == 0:
        raise RunConfigError(f"audio.stream.dir={s.dir}: no rows")

    def open_stream(state, position):
        return audio_example_stream(source, tokenizer=tok, features=feats, host_index=host_index,
                                    host_count=host_count, seed=data.seed, state=state, position=position,
                                    num_workers=s.num_workers, on_bad_audio=policy, eos_id=eos,
                                    read_threads=s.read_threads, prefetch=s.prefetch,
                                    require_question=data.task == "spoken-squad")

    return StreamedAudioBatches(open_stream, layout, data.buckets, global_batch_size=data.global_batch_size,
                                host_count=host_count, host_index=host_index, rows=len(source),
                                feature_shape=(enc.num_mel_bins, enc.num_frames), m_cap=data.m_cap,
                                on_unfit=data.on_unfit)
