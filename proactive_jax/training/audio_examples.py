"""Speech training data: audio items -> token layout + waveform -> fixed-shape batches with log-mel features.

An :class:`AudioTrainExample` is a :class:`~proactive_jax.data.example.StreamExample` whose units are
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
manifest, ``audio.manifest``); real tasks use the Qwen2-Audio chat layout (``data.render.audio_parts``)
and end the target with ``<|im_end|>``.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Sequence

import numpy as np

from proactive_jax.data.example import ExampleError, StreamExample

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
    from proactive_jax.models.audio import output_lengths

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
    from proactive_jax.data.audio import log_mel_windows

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
        from proactive_jax.method.audio_objective import pack_audio_batch

        feats, valid = zip(*(features_of(e.waveform, self.acfg, self.clamp, e.id or f"row {i}")
                             for i, e in enumerate(examples))) if examples else ((), ())
        enc = self.acfg.encoder
        return pack_audio_batch(examples, feats, valid, tuple(bucket), batch_size=len(examples),
                                m_cap=self.m_cap or bucket[0], feature_shape=(enc.num_mel_bins, enc.num_frames))


def empty_batch(acfg, bucket, rows: int, m_cap: int | None = None) -> dict:
    """The arrays (all padding) of a batch of ``rows`` rows for ``bucket``: the shapes the step is compiled for."""
    from proactive_jax.method.audio_objective import pack_audio_batch

    enc = acfg.encoder
    return pack_audio_batch([], [], [], tuple(bucket), batch_size=rows, m_cap=m_cap or bucket[0],
                            feature_shape=(enc.num_mel_bins, enc.num_frames))


# ---------------------------------------------------------------------------------------------
# Items -> examples
# ---------------------------------------------------------------------------------------------

def synthetic_speech_examples(items, acfg, *, limit: int | None = None) -> list[AudioTrainExample]:
    """The tone-word items (``data.synthetic_audio``) in its word vocabulary."""
    from proactive_jax.data.synthetic_audio import (ASSISTANT, AUDIO, BOS_A, EOS, EOS_A, T_LOOKUP, T_TRANSCRIBE, USER_END,
                                                  speech_vocabulary)

    if acfg.audio_token_index != AUDIO or acfg.text.vocab_size < len(speech_vocabulary()):
        raise ExampleError(f"the synthetic speech tasks need audio_token_index={AUDIO} and vocab_size >= "
                           f"{len(speech_vocabulary())} (model.preset=tiny-audio), got {acfg.audio_token_index} and "
                           f"{acfg.text.vocab_size}")
    word_id = {w: i for i, w in enumerate(speech_vocabulary())}
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
    from proactive_jax.data.render import audio_parts

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
    from proactive_jax.data import audio_tasks
    from proactive_jax.data.synthetic_audio import make_speech_task

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
        from proactive_jax.data.loaders import DatasetSpec

        spec = DatasetSpec(source="hub", path="AudioLLMs/spoken_squad_test_v1", split=split, max_rows=max_rows)
    rows = audio_tasks.load_audio_rows(spec, data.cache_dir)
    return audio_tasks.adapt_audio_rows(rows, data.task, dataset=spec.label, split=split)
