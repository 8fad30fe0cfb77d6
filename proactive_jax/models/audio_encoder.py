"""Qwen2-Audio's Whisper-style audio encoder and projector in Flax linen.

:class:`AudioEncoder` holds ``audio_tower`` (:class:`AudioTower`: the conv front end ``conv1`` / ``conv2`` with
kernels ``[3, in, out]``, the stored ``embed_positions`` table, ``layers`` stacked on a leading axis by
``nn.scan`` like the decoder's, the final ``layer_norm``) and ``multi_modal_projector`` (``linear``); the
parameter names mirror the HF tensors (see :mod:`.hf_names`). fp32 master weights; ``EncoderConfig.dtype``
"bfloat16" computes in bf16 with fp32 LayerNorm statistics and softmax.

The encoder is written once, for a KV cache of ``slots`` positions (:class:`EncoderState`): encoding a whole
window is the case "empty cache, write every position" and encoding chunk by chunk writes each chunk's
positions after the earlier ones. Masks are data: every position carries a block id; key k is visible to
query q iff k lies below the call's ``limit`` and ``block[k] <= block[q]``, with block = 0 (``bidirectional``,
the released model), the position itself (``causal``, over the attention positions, 50 per second) or the
position's chunk of K output tokens (``block:K``). The conv front end is three shifted matmuls per conv, so
that a chunk can start from the frames before it and see a zero in place of the frame after selected frames.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

from proactive_jax.models.attention import dense_attention, shard_rows
from proactive_jax.models.audio_config import EncoderConfig, parse_encoder_mask
from proactive_jax.models.qwen import remat_policy

Array = jax.Array


class EncoderState(NamedTuple):
    """What the encoder carries from one stretch of a window to the next."""

    k: Array  # [layers, B, slots, heads, head_dim]
    v: Array
    left_mel: Array  # [B, bins]: the last mel frame encoded so far
    left_h1: Array  # [B, d]: the last conv1 output so far
    pos: Array  # [] int32 (one window position for the batch) or [B] (per row): attention positions written


def empty_state(enc: EncoderConfig, batch: int, slots: int) -> EncoderState:
    """An :class:`EncoderState` at the start of a window, with K/V caches of ``slots`` positions."""
    dtype = jnp.dtype(enc.dtype)
    shape = (enc.encoder_layers, batch, slots, enc.encoder_attention_heads, enc.head_dim)
    return EncoderState(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros((batch, enc.num_mel_bins), dtype),
                        jnp.zeros((batch, enc.d_model), dtype), jnp.zeros((), jnp.int32))


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> np.ndarray:
    """Whisper's sinusoid table (only for random init; checkpoints store theirs and it is loaded)."""
    inc = np.log(max_timescale) / (channels // 2 - 1)
    inv = np.exp(-inc * np.arange(channels // 2))
    t = np.arange(length)[:, None] * inv[None, :]
    return np.concatenate([np.sin(t), np.cos(t)], axis=1).astype(np.float32)


def sinusoid_init(key, shape, dtype=jnp.float32):
    """``nn.Embed`` initializer of the position table: Whisper's sinusoids (deterministic)."""
    del key
    return jnp.asarray(sinusoids(*shape), dtype)


def layer_norm(x: Array, scale: Array, bias: Array, eps: float, dtype) -> Array:
    """LayerNorm with fp32 statistics, the result in ``dtype``."""
    xf = x.astype(jnp.float32)
    mu = jnp.mean(xf, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(xf - mu), axis=-1, keepdims=True)
    return ((xf - mu) * jax.lax.rsqrt(var + eps) * scale + bias).astype(dtype)


def gelu(x: Array) -> Array:
    """Exact (erf) GELU, Whisper's activation."""
    return jax.nn.gelu(x, approximate=False)


def mask_blocks(mask: str, positions: Array) -> Array:
    """The block id of every attention position under an encoder mask (see the module docstring)."""
    kind, k = parse_encoder_mask(mask)
    if kind == "bidirectional":
        return jnp.zeros_like(positions)
    if kind == "causal":
        return positions
    return positions // (2 * k)


def write_slots(cache: Array, new: Array, start: Array) -> Array:
    """``cache`` [B, P, ...] with ``new`` [B, T, ...] written at slots ``start..start+T``: one scalar start
    for every row, or one per row (``start`` [B]: a select over the slots, no scatter; each row's other
    slots keep their values)."""
    new = new.astype(cache.dtype)
    if jnp.ndim(start) == 0:
        return jax.lax.dynamic_update_slice_in_dim(cache, new, start, axis=1)
    t, slots = new.shape[1], cache.shape[1]
    rel = jnp.arange(slots, dtype=jnp.int32)[None, :] - start[:, None]  # [B, P]: slot - row start
    picked = jnp.take_along_axis(new, jnp.clip(rel, 0, t - 1).reshape(rel.shape + (1,) * (new.ndim - 2)), axis=1)
    inside = ((rel >= 0) & (rel < t)).reshape(rel.shape + (1,) * (new.ndim - 2))
    return jnp.where(inside, picked, cache)


def _dense(features: int, dtype, name: str, bias: bool = True) -> nn.Dense:
    return nn.Dense(features, use_bias=bias, dtype=dtype, param_dtype=jnp.float32,
                    kernel_init=nn.initializers.normal(0.02), name=name)


class LayerNorm(nn.Module):
    """Whisper's LayerNorm (``scale`` ones, ``bias`` zeros) with fp32 statistics."""

    eps: float
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (x.shape[-1],), jnp.float32)
        return layer_norm(x, scale, bias, self.eps, self.dtype)


class ConvTaps(nn.Module):
    """A kernel-3 ``Conv1d`` given its three input taps (the frame before, the frame, the frame after), as three
    matmuls: ``kernel`` [3, in, out] (``nn.Conv``'s layout), ``bias`` [out]."""

    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, before, here, after):
        kernel = self.param("kernel", nn.initializers.normal(0.02), (3, here.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        w = kernel.astype(self.dtype)
        return before @ w[0] + here @ w[1] + after @ w[2] + bias.astype(self.dtype)


class EncoderAttention(nn.Module):
    """Multi-head self-attention over a KV cache (no bias on ``k_proj``, as Whisper)."""

    config: EncoderConfig

    @nn.compact
    def __call__(self, x, layer_cache, start, visible):
        enc = self.config
        dtype = jnp.dtype(enc.dtype)
        b, t, d = x.shape
        h, hd = enc.encoder_attention_heads, enc.head_dim
        q = shard_rows(_dense(d, dtype, "q_proj")(x).reshape(b, t, h, hd))
        k = shard_rows(_dense(d, dtype, "k_proj", bias=False)(x).reshape(b, t, h, hd))
        v = shard_rows(_dense(d, dtype, "v_proj")(x).reshape(b, t, h, hd))
        k_cache, v_cache = (write_slots(c, new, start) for c, new in zip(layer_cache, (k, v)))
        out, _ = dense_attention(q, k_cache.astype(dtype), v_cache.astype(dtype), visible)
        out = checkpoint_name(shard_rows(out.reshape(b, t, d)), "attention_out")
        return shard_rows(_dense(d, dtype, "out_proj")(out)), (k_cache, v_cache)


class EncoderLayer(nn.Module):
    """One pre-LN encoder layer; a scan body: ``(x, layer_cache) -> (x, new layer_cache)``, the fed positions'
    keys/values written at slots ``start..start+T`` of the layer's caches."""

    config: EncoderConfig

    @nn.compact
    def __call__(self, x, layer_cache, start, visible):
        enc = self.config
        dtype = jnp.dtype(enc.dtype)
        x = shard_rows(x)  # the scan carry: rows sharded over the mesh (see shard_rows)
        hsa, layer_cache = EncoderAttention(enc, name="self_attn")(
            LayerNorm(enc.layer_norm_eps, dtype, name="self_attn_layer_norm")(x), layer_cache, start, visible)
        x = x + hsa
        y = LayerNorm(enc.layer_norm_eps, dtype, name="final_layer_norm")(x)
        y = shard_rows(gelu(_dense(enc.encoder_ffn_dim, dtype, "fc1")(y)))
        return shard_rows(x + _dense(enc.d_model, dtype, "fc2")(y)), layer_cache


class AudioTower(nn.Module):
    """The Whisper-style encoder over one stretch of a window: mel frames -> pooled, normed states [B, T/4, d]."""

    config: EncoderConfig
    mask: str = "causal"  # static: "bidirectional" | "causal" | "block:K"

    def setup(self):
        enc = self.config
        dtype = jnp.dtype(enc.dtype)
        self.conv1 = ConvTaps(enc.d_model, dtype)
        self.conv2 = ConvTaps(enc.d_model, dtype)
        self.embed_positions = nn.Embed(enc.max_source_positions, enc.d_model, dtype=dtype, param_dtype=jnp.float32,
                                        embedding_init=sinusoid_init)
        layer = EncoderLayer
        if enc.remat_policy != "none":
            layer = nn.remat(EncoderLayer, prevent_cse=not enc.scan_layers, policy=remat_policy(enc.remat_policy))
        self.layers = nn.scan(
            layer,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=(0, nn.broadcast, nn.broadcast),
            length=enc.encoder_layers,
            unroll=1 if enc.scan_layers else enc.encoder_layers,
        )(enc)
        self.layer_norm = LayerNorm(enc.layer_norm_eps, dtype)

    def __call__(self, mel, state: EncoderState, zero_next, limit=None):
        """``mel`` [B, F, bins] (time-major) continuing ``state``; ``zero_next`` [F] bool: frames whose right
        neighbour is replaced by zero (always the last one: the frame after the stretch is not given);
        ``limit`` [B] (or a scalar): keys at positions from ``limit`` on are not visible (default: the end of
        this stretch). Returns ``(states [B, F/4, d], new state)``."""
        dtype = jnp.dtype(self.config.dtype)
        h2, left_mel, left_h1 = self.conv_front(mel, state.left_mel, state.left_h1, zero_next)
        b, t, _ = h2.shape
        end = state.pos + t
        x = shard_rows(h2 + self.positions(state.pos, t).astype(dtype))
        q_pos = jnp.broadcast_to(jnp.asarray(state.pos)[..., None] + jnp.arange(t, dtype=jnp.int32), (b, t))
        slots = state.k.shape[2]
        k_pos = jnp.broadcast_to(jnp.arange(slots, dtype=jnp.int32), (b, slots))
        limit = jnp.broadcast_to(end if limit is None else limit, (b,))
        visible = (k_pos < limit[:, None])[:, None, :] & (
            mask_blocks(self.mask, k_pos)[:, None, :] <= mask_blocks(self.mask, q_pos)[:, :, None])
        x, (k, v) = self.layers(x, (state.k, state.v), state.pos, visible)
        new_state = EncoderState(k, v, left_mel.astype(dtype), left_h1.astype(dtype), end)
        x = x.reshape(b, t // 2, 2, x.shape[-1]).astype(jnp.float32).mean(axis=2).astype(dtype)  # AvgPool1d(2, 2)
        return shard_rows(self.layer_norm(x)), new_state

    def conv_front(self, mel, left_mel, left_h1, zero_next):
        """conv1 (k3, s1) + GELU, conv2 (k3, s2) + GELU. ``left_mel`` [B, bins] / ``left_h1`` [B, d]: the frame
        and the conv1 output just before ``mel`` (zeros at the start of a window). Returns
        ``(h2 [B, F/2, d], last mel frame, last conv1 output)``."""
        dtype = jnp.dtype(self.config.dtype)
        x = mel.astype(dtype)
        before = jnp.concatenate([left_mel[:, None].astype(dtype), x[:, :-1]], axis=1)
        after = jnp.concatenate([x[:, 1:], jnp.zeros_like(x[:, :1])], axis=1)
        after = jnp.where(zero_next[None, :, None], 0.0, after).astype(dtype)
        h1 = gelu(self.conv1(before, x, after))
        ext = jnp.concatenate([left_h1[:, None].astype(dtype), h1], axis=1)  # ext[i] = h1[i - 1]
        h2 = gelu(self.conv2(ext[:, 0:-1:2], ext[:, 1::2], ext[:, 2::2]))
        return h2, mel[:, -1], h1[:, -1]

    def positions(self, start, t: int):
        """Rows ``start..start+t`` of the position table: [t, d] for a scalar ``start``, [B, t, d] for ``start`` [B]."""
        table = self.embed_positions.embedding
        if jnp.ndim(start) == 0:
            return jax.lax.dynamic_slice_in_dim(table, start, t)
        return jnp.take(table, start[:, None] + jnp.arange(t, dtype=jnp.int32)[None, :], axis=0)


class Projector(nn.Module):
    """Qwen2-Audio's multi-modal projector: one ``linear`` from ``d_model`` to the decoder's hidden size."""

    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        return _dense(self.features, self.dtype, "linear")(x)


class AudioEncoder(nn.Module):
    """Audio tower + projector: mel frames -> audio embeddings [B, F/4, hidden] (float32) and the new state."""

    config: EncoderConfig
    hidden_size: int  # the decoder's
    mask: str = "causal"  # static: see AudioTower

    def setup(self):
        self.audio_tower = AudioTower(self.config, self.mask)
        self.multi_modal_projector = Projector(self.hidden_size, jnp.dtype(self.config.dtype))

    def __call__(self, mel, state: EncoderState, zero_next, limit=None):
        x, state = self.audio_tower(mel, state, zero_next, limit)
        return shard_rows(self.multi_modal_projector(x)).astype(jnp.float32), state
