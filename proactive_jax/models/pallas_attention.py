"""A block-sparse flash-attention kernel in Pallas whose mask comes from the mask vectors (model.attention=splash).

Splash attention (``jax.experimental.pallas.ops.tpu.splash_attention``) takes a mask fixed at trace time
(numpy block tables) plus segment ids; our visibility rule has a per-row, data-dependent ``limit`` (what a
target row of the stream copy may read), so no static mask describes it. This kernel computes the rule of
:func:`.attention.visibility_mask` block by block from the ``(segment, index, limit)`` vectors instead and
skips every block in which no query sees any key (in the packed dual view: the source rows' whole target
range and the stream copy's view of the batch copy; in a decode cache, the empty slots).

- forward: grid ``(batch, query head, query block)``; a loop over key blocks with the online softmax (fp32
  statistics), ``lax.cond`` skipping empty blocks; saves ``logsumexp`` per row;
- backward (``jax.custom_vjp``): a dq kernel (grid over query blocks) and a dk/dv kernel (grid over key
  blocks, then the query heads of its key/value head as a sequential axis accumulating in float32), both
  recomputing probabilities from
  ``logsumexp`` (FlashAttention-2), skipping empty blocks the same way.

Rows that see no key at all (padding) output 0 (the dense path outputs the mean of the values there; such
rows are masked out of every loss). Off TPU the kernels run in Pallas interpret mode (tests); on TPU they are
compiled by Mosaic; the choice is made at lowering time (``jax.lax.platform_dependent``), and under a mesh
(``jax.sharding.use_abstract_mesh``, set by training.step) the call is wrapped in ``shard_map`` over the batch axis, as Pallas TPU kernels need.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.sharding import PartitionSpec as P

NEG_INF = float(np.finfo(np.float32).min)
BLOCK = 128


def _visible(qvec, kvec):
    """The rule of ``visibility_mask`` on one block: ``qvec`` [bq, 3] (segment, index, limit), ``kvec`` [2, bk]."""
    qs, qi, ql = qvec[:, 0:1], qvec[:, 1:2], qvec[:, 2:3]
    ks, ki = kvec[0:1, :], kvec[1:2, :]
    same = (ks == qs) & (ki <= qi)
    src = (ks == 0) & (qs > 0) & (ki < ql)
    return (same | src) & (ks >= 0)


def _dot(a, b, contract=(1, 0)):
    return jax.lax.dot_general(a, b, (((contract[0],), (contract[1],)), ((), ())),
                               preferred_element_type=jnp.float32)


def _fwd_kernel(qv_ref, kv_ref, q_ref, k_ref, v_ref, o_ref, lse_ref, *, bk, nk, scale):
    q = q_ref[0, 0]
    qvec = qv_ref[0]
    bq, d = q.shape

    def body(j, carry):
        start = pl.multiple_of(j * bk, bk)
        vis = _visible(qvec, kv_ref[0, :, pl.ds(start, bk)])

        def compute(c):
            m, l, acc = c
            k, v = k_ref[0, 0, pl.ds(start, bk), :], v_ref[0, 0, pl.ds(start, bk), :]
            s = jnp.where(vis, _dot(q, k, (1, 1)) * scale, NEG_INF)
            m_new = jnp.maximum(m, jnp.max(s, axis=1, keepdims=True))
            p = jnp.where(vis, jnp.exp(s - m_new), 0.0)
            alpha = jnp.exp(m - m_new)
            return m_new, alpha * l + jnp.sum(p, axis=1, keepdims=True), alpha * acc + _dot(p.astype(v.dtype), v)

        return jax.lax.cond(jnp.any(vis), compute, lambda c: c, carry)

    init = (jnp.full((bq, 1), NEG_INF, jnp.float32), jnp.zeros((bq, 1), jnp.float32), jnp.zeros((bq, d), jnp.float32))
    m, l, acc = jax.lax.fori_loop(0, nk, body, init)
    seen = l > 0
    o_ref[0, 0] = (acc / jnp.where(seen, l, 1.0)).astype(o_ref.dtype)
    lse_ref[0, 0] = jnp.where(seen, m + jnp.log(jnp.where(seen, l, 1.0)), 0.0)


def _dq_kernel(qv_ref, kv_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dq_ref, *, bk, nk, scale):
    q, do = q_ref[0, 0], do_ref[0, 0]
    qvec, lse, delta = qv_ref[0], lse_ref[0, 0], delta_ref[0, 0]

    def body(j, dq):
        start = pl.multiple_of(j * bk, bk)
        vis = _visible(qvec, kv_ref[0, :, pl.ds(start, bk)])

        def compute(dq):
            k, v = k_ref[0, 0, pl.ds(start, bk), :], v_ref[0, 0, pl.ds(start, bk), :]
            p = jnp.where(vis, jnp.exp(_dot(q, k, (1, 1)) * scale - lse), 0.0)
            ds = p * (_dot(do, v, (1, 1)) - delta)
            return dq + _dot(ds.astype(k.dtype), k) * scale

        return jax.lax.cond(jnp.any(vis), compute, lambda x: x, dq)

    dq = jax.lax.fori_loop(0, nk, body, jnp.zeros(q.shape, jnp.float32))
    dq_ref[0, 0] = dq.astype(dq_ref.dtype)


def _dkv_kernel(qv_ref, kv_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dk_ref, dv_ref, *, bq, nq, scale):
    """One key block and ONE query head of its group per grid step; the group axis (last, sequential) accumulates
    into the float32 dk/dv blocks, so only one head's queries are in VMEM at a time."""
    @pl.when(pl.program_id(3) == 0)
    def _init():
        dk_ref[...] = jnp.zeros(dk_ref.shape, dk_ref.dtype)
        dv_ref[...] = jnp.zeros(dv_ref.shape, dv_ref.dtype)

    k, v = k_ref[0, 0], v_ref[0, 0]
    kvec = kv_ref[0]

    def body(i, carry):
        start = pl.multiple_of(i * bq, bq)
        vis = _visible(qv_ref[0, pl.ds(start, bq), :], kvec)

        def compute(c):
            dk, dv = c
            q, do = q_ref[0, 0, pl.ds(start, bq), :], do_ref[0, 0, pl.ds(start, bq), :]
            lse, delta = lse_ref[0, 0, pl.ds(start, bq), :], delta_ref[0, 0, pl.ds(start, bq), :]
            p = jnp.where(vis, jnp.exp(_dot(q, k, (1, 1)) * scale - lse), 0.0)
            dv = dv + _dot(p.astype(do.dtype), do, (0, 0))
            ds = p * (_dot(do, v, (1, 1)) - delta)
            return dk + _dot(ds.astype(q.dtype), q, (0, 0)) * scale, dv

        return jax.lax.cond(jnp.any(vis), compute, lambda c: c, carry)

    zeros = jnp.zeros(k.shape, jnp.float32)
    dk, dv = jax.lax.fori_loop(0, nq, body, (zeros, zeros))
    dk_ref[0, 0] += dk
    dv_ref[0, 0] += dv


# ---------------------------------------------------------------------------------------------
# pallas_call wrappers on the kernel layout: q [B, H, Tq, D], k/v [B, KV, Tk, D], qvec [B, Tq, 3], kvec [B, 2, Tk]
# ---------------------------------------------------------------------------------------------

def _call(kernel, grid, in_specs, out_specs, out_shape, args, interpret):
    return pl.pallas_call(kernel, grid=grid, in_specs=in_specs, out_specs=out_specs, out_shape=out_shape,
                          interpret=interpret)(*args)


def _fwd(qvec, kvec, q, k, v, bq, bk, interpret):
    b, h, tq, d = q.shape
    kvh, tk = k.shape[1], k.shape[2]
    g = h // kvh
    kern = functools.partial(_fwd_kernel, bk=bk, nk=tk // bk, scale=1.0 / np.sqrt(d))
    in_specs = [pl.BlockSpec((1, bq, 3), lambda i, j, n: (i, n, 0)),
                pl.BlockSpec((1, 2, tk), lambda i, j, n: (i, 0, 0)),
                pl.BlockSpec((1, 1, bq, d), lambda i, j, n: (i, j, n, 0)),
                pl.BlockSpec((1, 1, tk, d), lambda i, j, n: (i, j // g, 0, 0)),
                pl.BlockSpec((1, 1, tk, d), lambda i, j, n: (i, j // g, 0, 0))]
    out_specs = [pl.BlockSpec((1, 1, bq, d), lambda i, j, n: (i, j, n, 0)),
                 pl.BlockSpec((1, 1, bq, 1), lambda i, j, n: (i, j, n, 0))]
    out_shape = [jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((b, h, tq, 1), jnp.float32)]
    return _call(kern, (b, h, tq // bq), in_specs, out_specs, out_shape, (qvec, kvec, q, k, v), interpret)


def _bwd(qvec, kvec, q, k, v, o, lse, do, bq, bk, interpret):
    b, h, tq, d = q.shape
    kvh, tk = k.shape[1], k.shape[2]
    g = h // kvh
    scale = 1.0 / np.sqrt(d)
    delta = jnp.sum(o.astype(jnp.float32) * do.astype(jnp.float32), axis=-1, keepdims=True)
    row = lambda i, j, n: (i, j, n, 0)  # noqa: E731
    whole_kv = pl.BlockSpec((1, 1, tk, d), lambda i, j, n: (i, j // g, 0, 0))
    dq = _call(functools.partial(_dq_kernel, bk=bk, nk=tk // bk, scale=scale), (b, h, tq // bq),
               [pl.BlockSpec((1, bq, 3), lambda i, j, n: (i, n, 0)), pl.BlockSpec((1, 2, tk), lambda i, j, n: (i, 0, 0)),
                pl.BlockSpec((1, 1, bq, d), row), whole_kv, whole_kv, pl.BlockSpec((1, 1, bq, d), row),
                pl.BlockSpec((1, 1, bq, 1), row), pl.BlockSpec((1, 1, bq, 1), row)],
               pl.BlockSpec((1, 1, bq, d), row), jax.ShapeDtypeStruct(q.shape, q.dtype),
               (qvec, kvec, q, k, v, do, lse, delta), interpret)
    head = lambda i, j, n, gg: (i, j * g + gg, 0, 0)  # noqa: E731 - query head gg of key/value head j
    kblk = pl.BlockSpec((1, 1, bk, d), lambda i, j, n, gg: (i, j, n, 0))
    dk, dv = _call(functools.partial(_dkv_kernel, bq=bq, nq=tq // bq, scale=scale), (b, kvh, tk // bk, g),
                   [pl.BlockSpec((1, tq, 3), lambda i, j, n, gg: (i, 0, 0)),
                    pl.BlockSpec((1, 2, bk), lambda i, j, n, gg: (i, 0, n)),
                    pl.BlockSpec((1, 1, tq, d), head), kblk, kblk, pl.BlockSpec((1, 1, tq, d), head),
                    pl.BlockSpec((1, 1, tq, 1), head), pl.BlockSpec((1, 1, tq, 1), head)],
                   [kblk, kblk], [jax.ShapeDtypeStruct(k.shape, jnp.float32), jax.ShapeDtypeStruct(v.shape, jnp.float32)],
                   (qvec, kvec, q, k, v, do, lse, delta), interpret)
    dk, dv = dk.astype(k.dtype), dv.astype(v.dtype)
    return dq, dk, dv


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _flash(qvec, kvec, q, k, v, bq, bk, interpret):
    return _fwd(qvec, kvec, q, k, v, bq, bk, interpret)[0]


def _flash_fwd(qvec, kvec, q, k, v, bq, bk, interpret):
    o, lse = _fwd(qvec, kvec, q, k, v, bq, bk, interpret)
    return o, (qvec, kvec, q, k, v, o, lse)


def _flash_bwd(bq, bk, interpret, res, do):
    qvec, kvec, q, k, v, o, lse = res
    dq, dk, dv = _bwd(qvec, kvec, q, k, v, o, lse, do, bq, bk, interpret)
    zero = lambda x: np.zeros(x.shape, jax.dtypes.float0)  # noqa: E731 - integer inputs have no cotangent
    return zero(qvec), zero(kvec), dq, dk, dv


_flash.defvjp(_flash_fwd, _flash_bwd)


# ---------------------------------------------------------------------------------------------
# The model-layout entry point
# ---------------------------------------------------------------------------------------------

def _pad_to(x, axis: int, size: int, value=0):
    pad = size - x.shape[axis]
    if pad == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, pad)
    return jnp.pad(x, widths, constant_values=value)


def _block(t: int, block: int | None) -> int:
    if block is not None:
        return block
    return BLOCK if t >= BLOCK else -(-t // 8) * 8


def flash_local(q, keys, values, q_segment, q_index, q_limit, k_segment, k_index, *, block_q=None, block_k=None,
                interpret: bool | None = None):
    """Per-device attention ``[B, Tq, KV, G, D]`` (model layout in and out); pads the sequences to the blocks."""
    b, tq, h, d = q.shape
    kvh, tk = keys.shape[2], keys.shape[1]
    bq, bk = _block(tq, block_q), _block(tk, block_k)
    tq_p, tk_p = -(-tq // bq) * bq, -(-tk // bk) * bk
    qvec = _pad_to(jnp.stack([q_segment, q_index, q_limit], axis=-1).astype(jnp.int32), 1, tq_p, -1)
    kvec = _pad_to(jnp.stack([k_segment, k_index], axis=1).astype(jnp.int32), 2, tk_p, -1)
    qt = _pad_to(q.transpose(0, 2, 1, 3), 2, tq_p)
    kt = _pad_to(keys.transpose(0, 2, 1, 3), 2, tk_p)
    vt = _pad_to(values.transpose(0, 2, 1, 3), 2, tk_p)
    if interpret is None:
        out = jax.lax.platform_dependent(
            qvec, kvec, qt, kt, vt, tpu=lambda *a: _flash(*a, bq, bk, False),
            default=lambda *a: _flash(*a, bq, bk, True))
    else:
        out = _flash(qvec, kvec, qt, kt, vt, bq, bk, interpret)
    return out[:, :, :tq].transpose(0, 2, 1, 3).reshape(b, tq, kvh, h // kvh, d)


def flash_attention(q, keys, values, q_segment, q_index, q_limit, k_segment, k_index, **kw):
    """:func:`flash_local`, under ``shard_map`` over the batch axis when an abstract mesh is set."""
    mesh = jax.sharding.get_abstract_mesh()
    f = functools.partial(flash_local, **kw)
    if mesh.empty or mesh.size == 1:
        return f(q, keys, values, q_segment, q_index, q_limit, k_segment, k_index)
    spec = P(tuple(mesh.axis_names))
    return jax.shard_map(f, mesh=mesh, in_specs=(spec,) * 8, out_specs=spec, check_vma=False)(
        q, keys, values, q_segment, q_index, q_limit, k_segment, k_index)
