"""Speech training batches: the per-host pipelines of a speech run (:func:`build_audio_data`, over the examples
of :mod:`proactive_jax.training.audio_examples`).

**Bounded memory** (``audio.stream``): :class:`StreamedAudioBatches` draws the train batches from this host's
``data.audio_stream.audio_example_stream`` over a ``prepare-audio`` directory (features computed in the loader
workers, per-host shards); each step's bucket is the smallest of ``data.buckets`` holding every host's rows, and
the stream state of every host goes into the checkpoint meta (``STREAM_META_KEY``) so resume is exact even
when rows were skipped. :class:`StreamedBatches` stays as the generic plug point for any
``open_stream(position) -> iterator of AudioTrainExample`` (one bucket, position = examples consumed).

"""

from __future__ import annotations

import logging
from typing import Callable, Iterator

import numpy as np

from proactive_jax.data.example import ExampleError, StreamExample

from proactive_jax.training.audio_examples import (SAMPLES_PER_FRAME, SYNTHETIC_SPEECH, AudioCollate, AudioTrainExample,
                                                   load_items, max_samples, synthetic_speech_examples,
                                                   tokenized_examples)
from proactive_jax.training.mesh import allgather_json, allgather_max
from proactive_jax.models.kinds import is_audio

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# The run's data
# ---------------------------------------------------------------------------------------------

def build_audio_data(run, acfg, *, host_index: int = 0, host_count: int = 1, n_devices: int = 1):
    """``training.batches.DataBundle`` of a speech run: tokenizer (real tasks), examples, the per-host pipelines."""
    from proactive_jax.data import pipeline as pl
    from proactive_jax.training.batches import DataBundle
    from proactive_jax.errors import ConfigError

    data, a = run.data, run.audio
    if not is_audio(acfg):
        raise ConfigError(f"data.task={data.task!r} is a speech task: it needs a qwen2_audio model "
                             f"(model.preset=tiny-audio, a Qwen2-Audio model.hf_dir or config_json)")
    micro = data.micro_batch_size or data.global_batch_size
    if micro % n_devices:
        raise ConfigError(f"the (micro)batch of {micro} rows must be a multiple of the {n_devices} devices")
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
            raise ConfigError(f"data.task={data.task!r} split {split!r}: no usable examples (skipped: "
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
    from proactive_jax.data.audio_tasks import ASR_INSTRUCTION, SPOKEN_QA_INSTRUCTION

    q = question.strip()
    return (SPOKEN_QA_INSTRUCTION if task == "spoken-squad" else ASR_INSTRUCTION) + (f"\nQuestion: {q}" if q else "")


class StreamLayout:
    """A stream example dict (``data.audio_stream.MakeExample``) -> the :class:`StreamExample` of the chat layout
    (prompt with the question, chunks of K ``<|AUDIO|>`` placeholders, end, header, target + ``<|im_end|>``).
    The tokenized prompt parts are cached per question (ASR: one entry)."""

    def __init__(self, tok, acfg, task: str, system: str | None):
        from proactive_jax.data.render import audio_parts

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
                 agree: Callable = allgather_max, gather: Callable = allgather_json):
        from proactive_jax.data.pipeline import normalize_buckets

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
        from proactive_jax.method.audio_objective import pack_audio_batch

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
    from proactive_jax.data.audio_stream import AudioFeatures, as_source, audio_example_stream
    from proactive_jax.errors import ConfigError

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
        raise ConfigError(f"audio.stream.dir={s.dir}: no rows")

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
