"""The decision heads' view of the decoder's attention, computed by the model's attention hook
(:data:`proactive_jax.models.qwen.AttentionHook`): per head, the normalised entropy and the largest probability of
the current query's attention over the streamed source tokens (the entropy / attention heads), and each query's
attention over the source keys summed over heads (alignatt)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from proactive_jax.models.attention import MaskVectors
from proactive_jax.models.qwen import apply_hidden

Array = jax.Array


def stream_attention_stats(probs: Array, mask: Array, k_segment: Array, k_index: Array,
                           stream_start: Array) -> Array:
    """Statistics of one query's attention over the streamed source tokens (units, not the prompt).

    ``probs`` [B, KV, G, Tq, Tk] (fp32), ``mask`` [B, Tq, Tk]. The probabilities on visible source keys
    with ``index >= stream_start`` are renormalised; returns ``[B, Tq, H, 2]``: the normalised entropy
    (entropy / log(count); 0 when fewer than two such keys) and the largest renormalised probability.
    """
    b, kv, g, tq, tk = probs.shape
    stream = mask & ((k_segment == 0) & (k_index >= stream_start[:, None]))[:, None, :]  # [B,Tq,Tk]
    p = jnp.where(stream[:, None, None], probs, 0.0)
    mass = jnp.sum(p, axis=-1, keepdims=True)
    q = p / jnp.maximum(mass, 1e-30)
    ent = -jnp.sum(jnp.where(q > 0, q * jnp.log(jnp.maximum(q, 1e-30)), 0.0), axis=-1)
    count = jnp.sum(stream, axis=-1).astype(jnp.float32)[:, None, None, :]  # [B,1,1,Tq]
    norm_ent = jnp.where(count > 1, ent / jnp.log(jnp.maximum(count, 2.0)), 0.0)
    mx = jnp.max(q, axis=-1)
    out = jnp.stack([norm_ent, mx], axis=-1)  # [B,KV,G,Tq,2]
    return out.reshape(b, kv * g, tq, 2).transpose(0, 2, 1, 3)


def source_attention(probs: Array, mask: Array, k_segment: Array) -> Array:
    """Each query's attention probabilities over the visible source keys, summed over heads.

    ``probs`` [B, KV, G, Tq, Tk] (fp32), ``mask`` [B, Tq, Tk]; returns ``[B, Tq, Tk]`` float32, zero on
    target and invisible keys (not renormalised: the alignatt head only takes an argmax of it)."""
    src = mask & (k_segment == 0)[:, None, :]
    return jnp.where(src, jnp.sum(probs, axis=(1, 2)), 0.0)


@dataclasses.dataclass(frozen=True)
class HeadStatistics:
    """The attention hook of the decision heads. Called per layer with ``probe_args`` = ``stream_start`` [B] (the
    first streamed source index, i.e. the prompt length); returns ``(stats, src)``: ``stats`` [B, Tq, H, 2] of
    :func:`stream_attention_stats` when ``stream_stats``, ``src`` [B, Tq, Tk] of :func:`source_attention` when
    ``source``, else None. Stacked over layers by the model: ``[layers, ...]``."""

    stream_stats: bool = True
    source: bool = False

    def __call__(self, probs, mask, k_segment, k_index, stream_start):
        stats = stream_attention_stats(probs, mask, k_segment, k_index, stream_start) if self.stream_stats else None
        src = source_attention(probs, mask, k_segment) if self.source else None
        return stats, src


def hidden_and_stats(config, params, input_ids, positions, mask_vec: MaskVectors, stream_start, *,
                     input_embeds=None) -> tuple[Array, Array]:
    """``(hidden [B, T, D], stats [layers, B, T, H, 2])``: the decoder's output and the heads' statistics over the
    streamed source tokens (those at index >= ``stream_start`` [B])."""
    out = apply_hidden(config, params, input_ids, positions, mask_vec, input_embeds=input_embeds,
                       hook=HeadStatistics(), probe_args=stream_start)
    return out.hidden, out.attention_probe[0]
