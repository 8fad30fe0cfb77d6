"""Audio streaming examples (method.md section 7b): units are chunks of K encoder tokens.

An :class:`AudioStreamExample` is a :class:`~proactive_jax.data.example.StreamExample` whose units are K ``<|AUDIO|>``
placeholder ids each (the last chunk may be shorter) and which carries ``unit_embeds``: the projected
encoder outputs that are fed at those placeholder positions. ``prompt`` ends with ``<|audio_bos|>`` (and
holds the question for spoken QA), ``end`` is ``<|audio_eos|>`` + the end of the user turn. Everything
else (visibility, schedules, losses, the decode loop, heads, metrics) is the text method unchanged; a
READ feeds the next chunk's embeddings into the source cache.

With the causal encoder and ``conv_edge="zero"`` chunk i's embeddings depend only on chunks <= i, so
:func:`audio_embeddings` computes them once per utterance (window by window); the chunk-by-chunk encoder
(:func:`proactive_jax.models.audio.encode_chunk`) gives the same numbers incrementally.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Sequence

import jax.numpy as jnp
import numpy as np

from proactive_jax.data.example import ExampleError, StreamExample

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class AudioStreamExample(StreamExample):
    """A StreamExample whose unit tokens are audio placeholders fed as ``unit_embeds`` [tokens, D]."""

    unit_embeds: np.ndarray
    seconds_per_unit: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        e = np.asarray(self.unit_embeds, np.float32)
        n = sum(len(u) for u in self.units)
        if e.ndim != 2 or e.shape[0] != n:
            raise ExampleError(f"AudioStreamExample.unit_embeds: expected [{n}, hidden] (one row per unit token), "
                               f"got {list(e.shape)}")
        object.__setattr__(self, "unit_embeds", e)


def audio_example(prompt: Sequence[int], embeds, chunk_tokens: int, end: Sequence[int], header: Sequence[int],
                  target: Sequence[int], audio_token_id: int) -> AudioStreamExample:
    """Split ``embeds`` [N, D] (the valid audio tokens of one utterance) into chunks of ``chunk_tokens``."""
    e = np.asarray(embeds, np.float32)
    if e.ndim != 2 or e.shape[0] == 0:
        raise ExampleError(f"audio embeddings: expected [tokens > 0, hidden], got {list(e.shape)}")
    if not isinstance(chunk_tokens, (int, np.integer)) or chunk_tokens <= 0:
        raise ExampleError(f"chunk_tokens={chunk_tokens!r}: expected a positive whole number of encoder tokens")
    n = e.shape[0]
    units = tuple((audio_token_id,) * min(chunk_tokens, n - s) for s in range(0, n, chunk_tokens))
    return AudioStreamExample(prompt=tuple(prompt), units=units, end=tuple(end), header=tuple(header),
                              target=tuple(target), unit_embeds=e, seconds_per_unit=chunk_tokens * 0.04)


def audio_embeddings(config, params, waveform, *, sampling_rate: int = 16000, mask: str = "causal",
                     conv_edge: str = "zero", clamp: str = "running", chunk_tokens: int | None = None,
                     max_seconds: float | None = None, name: str = "waveform") -> np.ndarray:
    """The projected encoder outputs [valid tokens, hidden] of one utterance, window by window."""
    from proactive_jax.data.audio import log_mel_windows
    from proactive_jax.models.audio import encode, output_lengths

    enc = config.encoder
    feats, fam = log_mel_windows(waveform, sampling_rate, enc.num_mel_bins, clamp=clamp, max_seconds=max_seconds,
                                 window_frames=enc.num_frames, name=name)
    _, n_out = output_lengths(fam.sum(-1))
    # one window per call: one compilation whatever the utterance's length
    return np.concatenate([np.asarray(encode(config, params, feats[w:w + 1], fam[w:w + 1], mask=mask,
                                             conv_edge=conv_edge, chunk_tokens=chunk_tokens))[0, :int(n)]
                           for w, n in enumerate(n_out)], axis=0)


def source_embeds(config, params, examples: Sequence[StreamExample], batch: int, source_cap: int, src) -> np.ndarray:
    """Input embeddings of every source slot [batch, source_cap, D]: table rows for token ids, the
    examples' ``unit_embeds`` at the unit positions of audio examples (used by the decode loop's READs)."""
    from proactive_jax.models.qwen import embed_ids

    out = np.array(embed_ids(config, params, jnp.asarray(src)), np.float32)
    for b, e in enumerate(examples):
        if getattr(e, "unit_embeds", None) is not None:
            p = len(e.prompt)
            if e.unit_embeds.shape[1] != out.shape[-1]:
                raise ExampleError(f"examples[{b}].unit_embeds: hidden size {e.unit_embeds.shape[1]}, the model's "
                                   f"is {out.shape[-1]}")
            out[b, p:p + e.unit_embeds.shape[0]] = e.unit_embeds
    return out


def has_audio(examples: Sequence[StreamExample]) -> bool:
    return any(getattr(e, "unit_embeds", None) is not None for e in examples)
