"""Attention from mask vectors: the visibility rule, the dense reference attention, and where fused kernels plug in.

Masks are data, not matrices (method.md section 4). Every token carries three integers:

- ``segment``: -1 padding, 0 source group, 1, 2, ... a target copy (the packed dual view uses 1 for the
  batch copy and 2 for the stream copy);
- ``index``: the token's order index (its slot in the packed sequence or in the KV cache);
- ``limit``: for target tokens, how many source tokens are visible (source keys with ``index < limit``).

Key ``k`` is visible to query ``q`` iff ``seg[k] >= 0`` and
``(seg[k] == seg[q] and idx[k] <= idx[q]) or (seg[k] == 0 and seg[q] > 0 and idx[k] < limit[q])``.
Source tokens therefore never see target tokens, and the source must occupy indices ``0..S-1``.
The boolean mask exists only inside :func:`visibility_mask`, called from the attention function.

:func:`dense_attention` is the reference XLA path (fp32 scores and softmax); fused kernels (Pallas
on TPU, cuDNN on GPU) take the same ``(q, keys, values)`` plus the mask vectors and must equal it.
"""

from __future__ import annotations

import functools
import logging
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
NEG_INF = float(np.finfo(np.float32).min)


class MaskVectors(NamedTuple):
    segment: Array  # [B, T] int32
    index: Array  # [B, T] int32
    limit: Array  # [B, T] int32


def row_mesh(rows: int):
    """The abstract mesh whose axes split the batch rows (all its axes, as ``training.mesh.BATCH_AXES``), or
    None: no mesh, one device, inside ``shard_map`` (manual axes), or ``rows`` not a multiple of its size."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1 or mesh.manual_axes or rows % mesh.size:
        return None
    return mesh


def shard_rows(x: Array, axis: int = 0) -> Array:
    """``x`` with its row axis (``axis``) sharded over every axis of the abstract mesh (``training.step`` traces
    the train step under ``jax.sharding.use_abstract_mesh``; all its axes split the batch). Without a mesh, on
    one device, or when the rows do not divide by the mesh size: ``x`` unchanged.

    XLA's sharding propagation otherwise follows the FSDP-sharded weights into the activations (e.g. the MLP
    intermediate split over its features, attention over its heads) and keeps every row of the global batch on
    every chip; constraining the activations keeps them data parallel and makes XLA gather the weights instead
    (the cotangents follow the same constraint in the backward)."""
    mesh = row_mesh(x.shape[axis])
    if mesh is None:
        return x
    parts = [None] * x.ndim
    parts[axis] = tuple(mesh.axis_names)
    return jax.lax.with_sharding_constraint(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*parts)))


def causal_vectors(batch: int, length: int) -> MaskVectors:
    """Plain causal attention: one source segment, index 0..length-1."""
    idx = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
    z = jnp.zeros((batch, length), jnp.int32)
    return MaskVectors(z, idx, z)


def visibility_mask(q: MaskVectors, k_segment: Array, k_index: Array) -> Array:
    """Dense boolean mask ``[B, Tq, Tk]`` from the per-token vectors (the one place the rule lives)."""
    qs, qi, ql = q.segment[:, :, None], q.index[:, :, None], q.limit[:, :, None]
    ks, ki = k_segment[:, None, :], k_index[:, None, :]
    same = (ks == qs) & (ki <= qi)
    src = (ks == 0) & (qs > 0) & (ki < ql)
    return (same | src) & (ks >= 0)


def dense_attention(q: Array, keys: Array, values: Array, mask: Array) -> tuple[Array, Array]:
    """Grouped-query attention with a dense boolean mask: the reference path.

    ``q`` [B, Tq, H, D], ``keys`` / ``values`` [B, Tk, KV, D] (H a multiple of KV), ``mask`` [B, Tq, Tk].
    Returns ``(out [B, Tq, KV, H/KV, D] in q's dtype, probs [B, KV, H/KV, Tq, Tk] float32)``.
    """
    return dense_attention_parts(q, [(keys, values, mask)])


def dense_attention_parts(q: Array, parts) -> tuple[Array, Array]:
    """:func:`dense_attention` over keys given in parts ``[(keys_i, values_i, mask_i)]`` (``Tk = sum Tk_i``):
    one softmax over every part's scores, without concatenating the keys (e.g. a window of a KV cache read in
    place plus the fed tokens' own keys). Returns ``(out, probs [B, KV, H/KV, Tq, Tk])``, probs in part order."""
    b, t, h, hd = q.shape
    kv = parts[0][0].shape[2]
    qg = q.reshape(b, t, kv, h // kv, hd)
    scores = [jnp.where(m[:, None, None], jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32)
                        * (1.0 / np.sqrt(hd)), NEG_INF) for k, _, m in parts]
    probs = jax.nn.softmax(scores[0] if len(parts) == 1 else jnp.concatenate(scores, -1), axis=-1)
    out, o = 0, 0
    for k, v, _ in parts:
        n = k.shape[1]
        out = out + jnp.einsum("bkgts,bskd->btkgd", probs[..., o:o + n].astype(q.dtype), v)
        o += n
    return out, probs


# ---------------------------------------------------------------------------------------------
# Fused attention paths (model.attention); each takes the mask vectors and must equal dense_attention
# ---------------------------------------------------------------------------------------------

log = logging.getLogger(__name__)


def dense_from_vectors(q: Array, keys: Array, values: Array, qv: MaskVectors, k_segment: Array,
                       k_index: Array) -> Array:
    """The reference path from mask vectors: ``out [B, Tq, KV, G, D]``."""
    return dense_attention(q, keys, values, visibility_mask(qv, k_segment, k_index))[0]


def cudnn_attention(q: Array, keys: Array, values: Array, qv: MaskVectors, k_segment: Array,
                    k_index: Array) -> Array:
    """cuDNN flash attention (``jax.nn.dot_product_attention(implementation="cudnn")``) with the boolean mask
    built from the vectors; bf16/fp16 only (cuDNN's constraint): float32 falls back to the dense path."""
    b, t, h, hd = q.shape
    kv = keys.shape[2]
    if q.dtype not in (jnp.bfloat16, jnp.float16):
        _log_once(f"model.attention=cudnn: {q.dtype} compute is not supported by cuDNN flash attention; "
                  "using the dense XLA path")
        return dense_from_vectors(q, keys, values, qv, k_segment, k_index)
    mask = visibility_mask(qv, k_segment, k_index)[:, None]  # [B,1,Tq,Tk]
    out = jax.nn.dot_product_attention(q, keys, values, mask=mask, implementation="cudnn")
    return out.reshape(b, t, kv, h // kv, hd)


def pallas_attention(q: Array, keys: Array, values: Array, qv: MaskVectors, k_segment: Array,
                     k_index: Array, **kw) -> Array:
    """The block-sparse Pallas flash-attention kernel fed by the mask vectors (see :mod:`.pallas_attention`):
    compiled by Mosaic on TPU, Pallas interpret mode elsewhere; ``shard_map`` over the batch under a mesh."""
    from proactive_jax.models.pallas_attention import flash_attention

    return flash_attention(q, keys, values, qv.segment, qv.index, qv.limit, k_segment, k_index, **kw)


@functools.lru_cache(maxsize=None)
def _log_once(msg: str) -> None:
    log.warning(msg)


def attend(impl: str, q: Array, keys: Array, values: Array, qv: MaskVectors, k_segment: Array,
           k_index: Array) -> Array:
    """Attention output ``[B, Tq, KV, G, D]`` by ``model.attention``: "dense" (reference), "pallas" (the
    block-sparse Pallas kernel, :func:`pallas_attention`), "cudnn" (GPU), "auto" (pallas on TPU, cuDNN on GPU,
    dense elsewhere; chosen at lowering time by ``jax.lax.platform_dependent``)."""
    args = (q, keys, values, qv, k_segment, k_index)
    if impl == "dense":
        return dense_from_vectors(*args)
    if impl == "pallas":
        return pallas_attention(*args)
    if impl == "cudnn":
        return cudnn_attention(*args)
    if impl == "auto":
        return jax.lax.platform_dependent(*args, tpu=pallas_attention, cuda=cudnn_attention,
                                          default=dense_from_vectors)
    raise ValueError(f"model.attention={impl!r}; expected dense, pallas, cudnn or auto")
