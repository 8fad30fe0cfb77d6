"""Small utilities over trees of arrays: reading a replicated value on the host, per-leaf digests and leaf names
(used by checkpoints to verify what they read back, and by evaluation to fingerprint parameters)."""

from __future__ import annotations

import jax
import numpy as np


def host_value(x) -> np.ndarray:
    """The value of a replicated array (multi-host safe: read from a local shard)."""
    if isinstance(x, jax.Array):
        return np.asarray(x.addressable_data(0))
    return np.asarray(x)


_MIX = (0x9E3779B9, 0x85EBCA6B)


def _mix32(v):
    """lowbias32: a bijection of uint32 with good avalanche (so digests catch any changed bit)."""
    import jax.numpy as jnp

    v = v ^ (v >> 16)
    v = v * jnp.uint32(0x7FEB352D)
    v = v ^ (v >> 15)
    v = v * jnp.uint32(0x846CA68B)
    return v ^ (v >> 16)


def _leaf_digest(x):
    import jax.numpy as jnp

    if x.dtype.itemsize == 4:
        u = jax.lax.bitcast_convert_type(x, jnp.uint32)
    elif x.dtype.itemsize == 2:
        u = jax.lax.bitcast_convert_type(x, jnp.uint16).astype(jnp.uint32)
    elif x.dtype == jnp.bool_ or x.dtype.itemsize == 1:
        u = x.astype(jnp.uint32)
    else:  # 8-byte leaves do not occur (x64 is off); fold both halves
        u = jax.lax.bitcast_convert_type(x, jnp.uint32).sum(-1, dtype=jnp.uint32)
    pos = jnp.zeros(u.shape, jnp.uint32)
    stride = 1
    for d in range(u.ndim - 1, -1, -1):  # the linear index, from iotas (fused, never materialised)
        pos = pos + jax.lax.broadcasted_iota(jnp.uint32, u.shape, d) * jnp.uint32(stride & 0xFFFFFFFF)
        stride *= u.shape[d]
    a = _mix32(u + pos * jnp.uint32(_MIX[0]))
    b = _mix32(u ^ _mix32(pos + jnp.uint32(_MIX[1])))
    return jnp.stack([jnp.sum(a, dtype=jnp.uint32), jnp.sum(b, dtype=jnp.uint32)])


_digest_fn = None


def tree_digests(tree) -> dict[str, str]:
    """``{leaf path: 16 hex digits}`` of a tree of arrays (jitted on the devices the arrays live on)."""
    global _digest_fn

    if _digest_fn is None:
        _digest_fn = jax.jit(lambda t: jax.tree.map(_leaf_digest, t))
    flat = jax.tree_util.tree_flatten_with_path(_digest_fn(tree))[0]
    out = {}
    for path, d in flat:
        v = host_value(d)
        out[leaf_name(path)] = f"{int(v[0]):08x}{int(v[1]):08x}"
    return out


def leaf_name(path) -> str:
    """``layers/mlp/up_proj/kernel`` for a tree path (dict keys, sequence indices, attributes)."""
    parts = []
    for k in path:
        parts.append(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))))
    return "/".join(parts)
