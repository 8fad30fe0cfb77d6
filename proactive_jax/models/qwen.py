"""Qwen2 / Qwen2.5 / Qwen3 decoder in Flax linen, with attention driven by per-token mask vectors.

The attention rule (segment, index, limit) and the attention functions live in :mod:`.attention`.
Positions (RoPE, GPE) are a separate per-token vector. With everything in segment 0 and
``index = arange`` this is plain causal attention.

Parameters are a nested dict whose names mirror the Hugging Face tensor names (see :mod:`.hf`); layers
are always stacked along a leading axis (``layers``), scanned or unrolled by ``config.scan_layers``.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

from proactive_jax.models.attention import (MaskVectors, attend, causal_vectors, dense_attention,
                                            dense_attention_parts, shard_rows, visibility_mask)
from proactive_jax.models.config import ModelConfig, rope_frequencies

Array = jax.Array


@flax.struct.dataclass
class KVCache:
    """A fixed-capacity KV cache: ``k``, ``v`` [layers, B, C, KV, hd] and ``segment`` [B, C], the segment of every
    slot (-1 empty, 0 source, 1/2 target) after the call's writes; a slot's index is its position in the cache."""

    k: Array
    v: Array
    segment: Array

    @classmethod
    def empty(cls, config: ModelConfig, batch: int, capacity: int, dtype=None) -> "KVCache":
        """An empty cache of ``capacity`` slots (every segment -1)."""
        dt = jnp.dtype(dtype or config.dtype)
        shape = (config.num_hidden_layers, batch, capacity, config.num_key_value_heads, config.head_dim)
        return cls(jnp.zeros(shape, dt), jnp.zeros(shape, dt), jnp.full((batch, capacity), -1, jnp.int32))

    def put(self, fed: "KVCache", index: Array) -> "KVCache":
        """This cache with ``fed``'s entries (``k``/``v`` [layers, B, T, KV, hd], ``segment`` [B, T]; entries with
        segment -1 are dropped) written at slots ``index`` [B, T]: one scatter over all layers (in place under jit
        when this cache is not used afterwards). ``segment`` is kept (it already holds every slot's segment)."""
        cap = self.k.shape[2]
        slot = jnp.where(fed.segment >= 0, index, cap)  # out of range -> dropped
        b = jnp.arange(slot.shape[0])[:, None]
        return KVCache(self.k.at[:, b, slot].set(fed.k.astype(self.k.dtype), mode="drop"),
                       self.v.at[:, b, slot].set(fed.v.astype(self.v.dtype), mode="drop"), self.segment)


@flax.struct.dataclass
class DecoderOutput:
    """What the decoder returns: final normed ``hidden`` [B, T, D], the updated ``cache`` (None without one) and
    ``attention_probe``: the attention hook's output stacked over layers (leading axis ``layers``; None without a
    hook)."""

    hidden: Array
    cache: KVCache | None = None
    attention_probe: Any = None


@flax.struct.dataclass
class CacheWindow:
    """Attend over part of a :class:`KVCache` only (an option of :func:`apply_hidden`): the slots
    ``[0, a) ∪ [split, split + b)`` for ``(a, b) = sizes[index]``; ``split``, ``sizes`` and ``write`` are static (one
    attention branch per size, chosen by ``lax.switch`` in every layer), ``index`` is a traced int32 scalar.

    The caller guarantees that every fed token's slot and every slot a fed token may see lie in the window (e.g. a
    decode whose source group fills slots from 0 and whose target group fills slots from ``split``): the result
    then equals attention over the whole cache up to float rounding (fewer masked keys in the sums). The layers
    only read the cache (each reads its window and adds the fed tokens' own keys/values to that copy); the fed
    entries are written once at the end (:meth:`KVCache.put`), or, with ``write=False``, returned instead as
    ``DecoderOutput.cache``: a :class:`KVCache` of the fed tokens only (``k``/``v`` [layers, B, T, KV, hd], ``segment``
    = the fed tokens' segment [B, T]) for the caller to ``put`` (e.g. outside a ``lax.cond``, whose branches would
    otherwise copy the whole cache). No layer copies or writes the cache: each attends to its window in place and to
    the fed tokens' own keys/values in one softmax. An attention hook still sees ``[.., capacity]``-wide probabilities (zero
    outside the window)."""

    index: Array
    split: int = flax.struct.field(pytree_node=False, default=0)
    sizes: tuple = flax.struct.field(pytree_node=False, default=())
    write: bool = flax.struct.field(pytree_node=False, default=True)


# The attention hook: ``hook(probs, mask, k_segment, k_index, probe_args) -> pytree``, called in every layer with
# the dense attention probabilities ``probs`` [B, KV, G, Tq, Tk] (fp32), the boolean visibility ``mask`` [B, Tq, Tk],
# the keys' ``k_segment`` / ``k_index`` [B, Tk] and the call's ``probe_args``. A model built with a hook runs the
# dense attention path (the kernels never materialise the probabilities) and returns the hook's outputs, stacked
# over layers, as ``DecoderOutput.attention_probe``. The decision heads' statistics are such a hook
# (``proactive_jax.method.attention_stats``); the model itself knows nothing of them.
AttentionHook = Callable[..., Any]



def rms_norm(x: Array, weight: Array, eps: float, dtype) -> Array:
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return weight.astype(dtype) * xf.astype(dtype)


class RMSNorm(nn.Module):
    eps: float
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        w = self.param("weight", nn.initializers.ones, (x.shape[-1],), jnp.float32)
        return rms_norm(x, w, self.eps, self.dtype)


def apply_rope(x: Array, positions: Array, inv_freq: np.ndarray, scale: float) -> Array:
    """Rotate-half RoPE. ``x`` [B, T, H, D], ``positions`` [B, T]; angles in float32."""
    ang = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)[None, None, :]
    emb = jnp.concatenate([ang, ang], axis=-1)[:, :, None, :]
    cos = (jnp.cos(emb) * scale).astype(x.dtype)
    sin = (jnp.sin(emb) * scale).astype(x.dtype)
    half = x.shape[-1] // 2
    rot = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rot * sin


def remat_policy(name: str):
    """The ``jax.checkpoint`` policy of a ``model.remat`` name (None = save nothing: full recomputation)."""
    cp = jax.checkpoint_policies
    return {"full": None, "dots_saveable": cp.dots_saveable,
            "dots_with_no_batch_dims_saveable": cp.dots_with_no_batch_dims_saveable,
            "save_attention_out": cp.save_only_these_names("attention_out")}[name]


class Attention(nn.Module):
    config: ModelConfig
    hook: AttentionHook | None = None  # see AttentionHook

    @nn.compact
    def __call__(self, x, positions, mask_vec: MaskVectors, layer_cache=None, cache_segment=None,
                 probe_args=None, cache_window: CacheWindow | None = None):
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)
        h, kv, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        dense = lambda n, bias, name: nn.Dense(n, use_bias=bias, dtype=dtype, param_dtype=jnp.float32,
                                               kernel_init=nn.initializers.normal(0.02), name=name)
        b, t, _ = x.shape
        # rows stay sharded over the mesh (shard_rows): XLA gathers the FSDP weights, not the batch
        q = shard_rows(dense(h * hd, cfg.qkv_bias, "q_proj")(x).reshape(b, t, h, hd))
        k = shard_rows(dense(kv * hd, cfg.qkv_bias, "k_proj")(x).reshape(b, t, kv, hd))
        v = shard_rows(dense(kv * hd, cfg.qkv_bias, "v_proj")(x).reshape(b, t, kv, hd))
        if cfg.qk_norm:
            q = RMSNorm(cfg.rms_norm_eps, dtype, name="q_norm")(q)
            k = RMSNorm(cfg.rms_norm_eps, dtype, name="k_norm")(k)
        inv_freq, scale = rope_frequencies(cfg)
        q = apply_rope(q, positions, inv_freq, scale)
        k = apply_rope(k, positions, inv_freq, scale)

        if cache_window is not None:  # layer_cache = this layer's (k, v), read only
            out, probe = self._windowed(q, k, v, mask_vec, layer_cache, cache_segment, probe_args, cache_window)
            y = shard_rows(dense(cfg.hidden_size, cfg.o_bias, "o_proj")(
                checkpoint_name(shard_rows(out.reshape(b, t, h * hd)), "attention_out")))
            return y, (k, v), probe
        if layer_cache is None:
            keys, values = k, v
            k_segment, k_index = mask_vec.segment, mask_vec.index
            new_cache = None
        else:
            # write the fed tokens into their slots (padding tokens are dropped), then attend to the cache
            ck, cv = layer_cache
            cap = ck.shape[1]
            slot = jnp.where(mask_vec.segment >= 0, mask_vec.index, cap)  # out of range -> dropped
            bidx = jnp.arange(b)[:, None]
            ck = ck.at[bidx, slot].set(k.astype(ck.dtype), mode="drop")
            cv = cv.at[bidx, slot].set(v.astype(cv.dtype), mode="drop")
            keys, values = ck.astype(dtype), cv.astype(dtype)
            k_segment = cache_segment
            k_index = jnp.broadcast_to(jnp.arange(cap, dtype=jnp.int32), (b, cap))
            new_cache = (ck, cv)

        probe = None
        if self.hook is not None or cfg.attention == "dense":  # a hook reads the dense probabilities
            mask = visibility_mask(mask_vec, k_segment, k_index)  # [B,Tq,Tk]
            out, probs = dense_attention(q, keys, values, mask)
            if self.hook is not None:
                probe = self.hook(probs, mask, k_segment, k_index, probe_args)
        else:
            out = attend(cfg.attention, q, keys, values, mask_vec, k_segment, k_index)
        out = checkpoint_name(shard_rows(out.reshape(b, t, h * hd)), "attention_out")
        y = shard_rows(dense(cfg.hidden_size, cfg.o_bias, "o_proj")(out))
        return y, new_cache, probe

    def _windowed(self, q, k, v, mask_vec, layer_cache, cache_segment, probe_args, win: CacheWindow):
        """Attention of the fed tokens over a :class:`CacheWindow` of the cache plus their own keys/values:
        one softmax over the window's slots (read in place; the slots this call feeds are masked there) and the
        fed tokens (:func:`dense_attention_parts`), so no layer copies or writes the cache. Always the dense
        path: a decode step feeds a few tokens."""
        ck, cv = layer_cache  # [B, C, KV, hd] x2, read only
        b, cap = ck.shape[:2]
        seg, idx = mask_vec.segment, mask_vec.index
        fed_here = (seg >= 0)[:, :, None] & (idx[:, :, None] == jnp.arange(cap, dtype=jnp.int32))  # [B, T, C]
        stale = jnp.any(fed_here, axis=1)  # [B, C]: slots whose cached entry this call replaces
        fed_mask = visibility_mask(mask_vec, seg, idx)  # [B, Tq, T]: the fed tokens among themselves

        def attend_window(size_a, size_b):
            spans = [(s0, n) for s0, n in ((0, size_a), (win.split, size_b)) if n]
            parts = []
            for s0, n in spans:
                k_index = jnp.broadcast_to(jnp.arange(s0, s0 + n, dtype=jnp.int32), (b, n))
                m = visibility_mask(mask_vec, cache_segment[:, s0:s0 + n], k_index) & ~stale[:, None, s0:s0 + n]
                parts.append((ck[:, s0:s0 + n], cv[:, s0:s0 + n], m))
            parts.append((k.astype(ck.dtype), v.astype(cv.dtype), fed_mask))
            out, probs = dense_attention_parts(q, parts)
            if self.hook is None:
                return out, None
            # the hook sees [.., capacity]-wide probabilities and mask: each fed token's at its slot, zero outside
            onehot = fed_here.astype(jnp.float32)
            full = jnp.einsum("bkgqt,btc->bkgqc", probs[..., -seg.shape[1]:], onehot)
            mask = jnp.einsum("bqt,btc->bqc", fed_mask.astype(jnp.float32), onehot) > 0
            o = 0
            for (s0, n), (_, _, m) in zip(spans, parts):
                full = jax.lax.dynamic_update_slice_in_dim(full, full[..., s0:s0 + n] + probs[..., o:o + n], s0, 4)
                mask = jax.lax.dynamic_update_slice_in_dim(mask, mask[..., s0:s0 + n] | m, s0, 2)
                o += n
            full_index = jnp.broadcast_to(jnp.arange(cap, dtype=jnp.int32), (b, cap))
            return out, self.hook(full, mask, cache_segment, full_index, probe_args)

        if len(win.sizes) == 1:
            return attend_window(*win.sizes[0])
        return jax.lax.switch(win.index, [lambda a=a, c=c: attend_window(a, c) for a, c in win.sizes])


class MLP(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)
        dense = lambda n, name: nn.Dense(n, use_bias=False, dtype=dtype, param_dtype=jnp.float32,
                                         kernel_init=nn.initializers.normal(0.02), name=name)
        gate = shard_rows(dense(cfg.intermediate_size, "gate_proj")(x))
        up = shard_rows(dense(cfg.intermediate_size, "up_proj")(x))
        return shard_rows(dense(cfg.hidden_size, "down_proj")(nn.silu(gate) * up))


class Block(nn.Module):
    """One decoder layer; a scan body: ``(x, layer_cache) -> (x, (new_layer_cache, hook output))``."""

    config: ModelConfig
    hook: AttentionHook | None = None

    @nn.compact
    def __call__(self, x, layer_cache, positions, mask_vec, cache_segment, probe_args, window=None):
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)
        cache_window = window  # a CacheWindow: layer_cache (this layer's k, v) is only read
        x = shard_rows(x)  # the scan carry: rows sharded over the mesh (see shard_rows)
        hsa, new_cache, probe = Attention(cfg, self.hook, name="self_attn")(
            RMSNorm(cfg.rms_norm_eps, dtype, name="input_layernorm")(x), positions, mask_vec,
            layer_cache, cache_segment, probe_args, cache_window)
        x = x + hsa
        x = shard_rows(x + MLP(cfg, name="mlp")(RMSNorm(cfg.rms_norm_eps, dtype, name="post_attention_layernorm")(x)))
        return x, (new_cache, probe)


class Transformer(nn.Module):
    """The decoder. ``__call__`` returns final normed hidden states; :meth:`logits` maps them to logits."""

    config: ModelConfig
    hook: AttentionHook | None = None  # static: the attention hook (see AttentionHook)

    def setup(self):
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)
        self.embed_tokens = nn.Embed(cfg.vocab_size, cfg.hidden_size, dtype=dtype, param_dtype=jnp.float32,
                                     embedding_init=nn.initializers.normal(0.02))
        block = Block
        if cfg.remat_policy != "none":
            block = nn.remat(Block, prevent_cse=not cfg.scan_layers, policy=remat_policy(cfg.remat_policy))
        self.layers = nn.scan(
            block,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
            length=cfg.num_hidden_layers,
            unroll=1 if cfg.scan_layers else cfg.num_hidden_layers,
        )(cfg, self.hook)
        self.norm = RMSNorm(cfg.rms_norm_eps, dtype)
        if not cfg.tie_word_embeddings:
            self.lm_head = nn.Dense(cfg.vocab_size, use_bias=False, dtype=dtype, param_dtype=jnp.float32,
                                    kernel_init=nn.initializers.normal(0.02))

    def __call__(self, input_ids, positions, mask_vec: MaskVectors, cache: KVCache | None = None, probe_args=None,
                 input_embeds=None, cache_window: CacheWindow | None = None) -> DecoderOutput:
        """The decoder over one chunk of tokens (see :class:`DecoderOutput`).

        ``input_embeds`` [B, T, D]: input embeddings used instead of embedding ``input_ids`` (which is then
        ignored): e.g. projected audio features; :meth:`embed` gives the table rows of token ids.
        ``cache``: a :class:`KVCache` whose ``segment`` already holds the segment of every slot after this
        call's writes (the fed tokens are written at their ``index``; padding is dropped), or None.
        ``probe_args``: passed to the attention hook (see :data:`AttentionHook`). ``cache_window``: attend over
        part of ``cache`` only (see :class:`CacheWindow`).
        """
        x = self.embed(input_ids) if input_embeds is None else input_embeds.astype(self.embed_tokens.dtype)
        x = shard_rows(x)
        cache_segment = None if cache is None else cache.segment
        if cache is not None and cache_window is not None:
            x, (fed_kv, probe) = self.layers(x, (cache.k, cache.v), positions, mask_vec, cache_segment, probe_args,
                                             cache_window)
            x = shard_rows(self.norm(x))
            fed = KVCache(fed_kv[0], fed_kv[1], mask_vec.segment)
            return DecoderOutput(x, cache.put(fed, mask_vec.index) if cache_window.write else fed, probe)
        layer_cache = None if cache is None else (cache.k, cache.v)
        x, (new_kv, probe) = self.layers(x, layer_cache, positions, mask_vec, cache_segment, probe_args, None)
        x = shard_rows(self.norm(x))
        new_cache = None if cache is None else KVCache(new_kv[0], new_kv[1], cache_segment)
        return DecoderOutput(x, new_cache, probe)

    def embed(self, input_ids):
        """Input embeddings of token ids (the embedding-table rows, in the compute dtype)."""
        return self.embed_tokens(input_ids)

    def logits(self, hidden):
        if self.config.tie_word_embeddings:
            out = self.embed_tokens.attend(hidden)
        else:
            out = self.lm_head(hidden)
        return shard_rows(out).astype(jnp.float32)

    def init_all(self, input_ids):
        """Initialise every parameter (the lm head included)."""
        b, t = input_ids.shape
        return self.logits(self(input_ids, jnp.zeros((b, t), jnp.int32), causal_vectors(b, t)).hidden)


# ---------------------------------------------------------------------------------------------
# Functional entry points
# ---------------------------------------------------------------------------------------------

def make_model(config: ModelConfig, hook: AttentionHook | None = None) -> Transformer:
    return Transformer(config, hook)


def init_params(config: ModelConfig, rng: Array | int = 0) -> dict:
    """Random parameters (normal(0.02), norms at one), as a plain nested dict."""
    if isinstance(rng, int):
        rng = jax.random.PRNGKey(rng)
    return _init_jit(config, rng)


def _init_fn(config: ModelConfig, rng):
    variables = make_model(config).init(rng, jnp.zeros((1, 2), jnp.int32), method=Transformer.init_all)
    return dict(variables["params"])


_init_jit = jax.jit(_init_fn, static_argnums=0)


def abstract_params(config: ModelConfig) -> dict:
    """Parameter shapes/dtypes without allocating (``jax.eval_shape``)."""
    return jax.eval_shape(lambda: init_params(config, jax.random.PRNGKey(0)))


def apply_hidden(config: ModelConfig, params, input_ids, positions, mask_vec: MaskVectors,
                 cache: KVCache | None = None, *, input_embeds=None, hook: AttentionHook | None = None,
                 probe_args=None, cache_window: CacheWindow | None = None) -> DecoderOutput:
    """The decoder's :class:`DecoderOutput` under arbitrary mask vectors and positions; ``input_embeds`` [B, T, D]
    replaces the embedding of ``input_ids``; ``hook`` (static) / ``probe_args``: see :data:`AttentionHook`;
    ``cache_window``: attend over part of ``cache`` only (:class:`CacheWindow`). ``params`` may hold the layers
    unstacked (:func:`unstack_layers`): the same result, the layers unrolled."""
    if isinstance(params["layers"], tuple):
        return _apply_unstacked(config, hook, params, input_ids, positions, mask_vec, cache, probe_args,
                                input_embeds, cache_window)
    return make_model(config, hook).apply({"params": params}, input_ids, positions, mask_vec, cache, probe_args,
                                          input_embeds, cache_window)


def unstack_layers(params) -> dict:
    """``params`` with ``layers`` as a tuple of per-layer trees (each leaf its own array) instead of leaves stacked
    over a leading ``layers`` axis. Under jit, call it once outside a loop: :func:`apply_hidden` then runs the
    layers unrolled on separate weight buffers (XLA:CPU copies a layer's slice of a stacked weight before every
    matmul; inside a decode loop that doubled the weight traffic of every step)."""
    n = jax.tree.leaves(params["layers"])[0].shape[0]
    return dict(params, layers=tuple(jax.tree.map(lambda a, i=i: a[i], params["layers"]) for i in range(n)))


def _apply_unstacked(config, hook, params, input_ids, positions, mask_vec, cache, probe_args, input_embeds,
                     cache_window) -> DecoderOutput:
    """:meth:`Transformer.__call__` for :func:`unstack_layers`' params: the same modules, layer by layer."""
    model, block = make_model(config, hook), Block(config, hook)
    top = {"params": {k: v for k, v in params.items() if k != "layers"}}
    x = model.apply(top, input_ids, method=Transformer.embed) if input_embeds is None \
        else input_embeds.astype(jnp.dtype(config.dtype))
    x = shard_rows(x)
    segment = None if cache is None else cache.segment
    kvs, probes = [], []
    for i, layer in enumerate(params["layers"]):
        layer_cache = None if cache is None else (cache.k[i], cache.v[i])
        window = cache_window if cache is not None else None
        x, (kv, probe) = block.apply({"params": layer}, x, layer_cache, positions, mask_vec, segment, probe_args,
                                     window)
        kvs.append(kv)
        probes.append(probe)
    x = shard_rows(model.apply(top, x, method=lambda m, h: m.norm(h)))
    probe = None if hook is None else jax.tree.map(lambda *a: jnp.stack(a), *probes)
    if cache is None:
        return DecoderOutput(x, None, probe)
    k, v = (jnp.stack([kv[j] for kv in kvs]) for j in (0, 1))
    if cache_window is None:
        return DecoderOutput(x, KVCache(k, v, segment), probe)
    fed = KVCache(k, v, mask_vec.segment)
    return DecoderOutput(x, cache.put(fed, mask_vec.index) if cache_window.write else fed, probe)


def embed_ids(config: ModelConfig, params, input_ids):
    """The input embeddings of token ids [B, T] -> [B, T, D] (what the model feeds for ids)."""
    return make_model(config).apply({"params": params}, input_ids, method=Transformer.embed)


def hidden_to_logits(config: ModelConfig, params, hidden):
    return make_model(config).apply({"params": params}, hidden, method=Transformer.logits)


def apply_logits(config: ModelConfig, params, input_ids, positions, mask_vec: MaskVectors):
    """Logits ``[B, T, V]`` (float32) under arbitrary mask vectors and positions."""
    return hidden_to_logits(config, params, apply_hidden(config, params, input_ids, positions, mask_vec).hidden)


def forward(config: ModelConfig, params, input_ids, positions=None):
    """Plain causal forward: ``input_ids`` [B, T] -> logits [B, T, V] (float32).

    ``positions`` defaults to ``0..T-1``; any (e.g. non-contiguous) position ids may be given.
    """
    input_ids = jnp.asarray(input_ids, jnp.int32)
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be [batch, length], got shape {input_ids.shape}")
    b, t = input_ids.shape
    if positions is None:
        positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    positions = jnp.broadcast_to(jnp.asarray(positions, jnp.int32), (b, t))
    return _forward_jit(config, params, input_ids, positions)


def _forward_fn(config, params, input_ids, positions):
    b, t = input_ids.shape
    return apply_logits(config, params, input_ids, positions, causal_vectors(b, t))


_forward_jit = jax.jit(_forward_fn, static_argnums=0)


def init_cache(config: ModelConfig, batch: int, capacity: int, dtype=None) -> KVCache:
    """An empty :class:`KVCache` of ``capacity`` slots (all segments -1)."""
    return KVCache.empty(config, batch, capacity, dtype)
