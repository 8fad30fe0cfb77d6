"""The chunked loss with the LM head sharded over the vocabulary (``objective.logit_chunk`` under a mesh).

Under FSDP the LM head (the tied embedding table or ``lm_head``) is sharded on its hidden axis, so an XLA-
partitioned ``hidden @ W.T`` gathers the whole ``[V, D]`` matrix on every chip and accumulates its whole
gradient there: a per-chip footprint that does not fall as the slice grows (Qwen2.5-3B: 151,936 x 2,048).
Here the chunk loop runs inside ``shard_map``: chip ``j`` of the ``fsdp`` axis holds vocabulary rows
``[j V/n, (j+1) V/n)`` of the head (one bf16 reshard of the matrix per step) and gathers the chunk's hidden
states of its data group (``[rows, chunk, D]``, small), so it computes the ``[rows, chunk, V/n]`` slice of the
logits and the gradient of its own rows of the head only. The loss terms need three cross-shard steps:

- log-sum-exp: a ``pmax`` of the (stop-gradient) row maxima and a ``psum`` of the shifted exponentials;
- the label's logit: each shard picks it when the label is in its range, a ``psum`` adds;
- the teacher's top-k: a top-k per shard (the global top-k is a subset of their union), the ``n k``
  candidates (teacher and student logits) sent to the chip that owns the rows (``all_to_all``), an exact
  top-k there.

Each chip then sums the terms of its own rows; a ``psum`` over the mesh gives the batch sums. Equal to
:func:`.objective.chunked_sums` without the mesh (tests/method/test_objective_sharded.py).
"""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

log = logging.getLogger(__name__)

VOCAB_AXIS = "fsdp"  # the mesh axis the head's vocabulary is split over (training.mesh.MESH_AXES)


def head_matrix(config, params):
    """The LM head as ``[V, D]`` in the compute dtype: the tied embedding table or ``lm_head.kernel.T``."""
    w = params["embed_tokens"]["embedding"] if config.tie_word_embeddings else params["lm_head"]["kernel"].T
    return w.astype(jnp.dtype(config.dtype))


def vocab_mesh(vocab_size: int, rows: int):
    """The abstract mesh when the head can be split over its ``fsdp`` axis, else None (plain chunked path)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or VOCAB_AXIS not in mesh.axis_names or mesh.shape[VOCAB_AXIS] <= 1:
        return None
    n = mesh.shape[VOCAB_AXIS]
    if vocab_size % n or rows % mesh.size:
        log.warning("LM head not split over the vocabulary: vocab %d / %d rows do not divide by fsdp=%d / %d "
                    "devices (the head is gathered whole on every chip)", vocab_size, rows, n, mesh.size)
        return None
    return mesh


def _logsumexp(x):
    """Row log-sum-exp of vocabulary-sharded logits ``[R, c, V/n]`` (invariant over the shards)."""
    mx = jax.lax.pmax(jax.lax.stop_gradient(jnp.max(x, axis=-1)), VOCAB_AXIS)
    return mx + jnp.log(jax.lax.psum(jnp.sum(jnp.exp(x - mx[..., None]), axis=-1), VOCAB_AXIS))


def _pick(x, labels, start):
    """``x[..., labels]`` of vocabulary-sharded logits whose shard begins at ``start``."""
    idx = labels - start
    ok = (idx >= 0) & (idx < x.shape[-1])
    v = jnp.take_along_axis(x, jnp.clip(idx, 0, x.shape[-1] - 1)[..., None], axis=-1)[..., 0]
    return jax.lax.psum(jnp.where(ok, v, 0.0), VOCAB_AXIS)


def _chunk_terms(w, hb, hs, lab, m, obj, top_k, n: int):
    """Sums over this chip's rows of one chunk: ``{"batch", "mslm", "kl"}`` (see the module docstring)."""
    j = jax.lax.axis_index(VOCAB_AXIS)
    b, vl = hb.shape[0], w.shape[0]
    gather = lambda x: jax.lax.all_gather(x, VOCAB_AXIS, axis=0, tiled=True)  # noqa: E731 - rows of the group
    own = lambda x: jax.lax.dynamic_slice_in_dim(x, j * b, b, axis=0)  # noqa: E731 - this chip's rows
    logits = lambda h: jnp.einsum("rcd,vd->rcv", gather(h), w).astype(jnp.float32)  # noqa: E731
    lt = logits(hb)
    ls = lt if hs is None else logits(hs)  # hs None: the stream view is the batch view (schedule full)
    labels = gather(lab)
    lse_t, lse_s = _logsumexp(lt), _logsumexp(ls)
    nll_t = own(lse_t - _pick(lt, labels, j * vl))
    nll_s = own(lse_s - _pick(ls, labels, j * vl))
    t = jax.lax.stop_gradient(lt) if obj.teacher_stop_grad else lt
    k = min(obj.kl_topk, n * vl)
    tv, ti = top_k(t, min(k, vl))
    sv = jnp.take_along_axis(ls, ti, axis=-1)
    to_owner = lambda x: jax.lax.all_to_all(x, VOCAB_AXIS, 0, 2, tiled=True)  # noqa: E731 - [b, c, n k]
    tv, sv = to_owner(tv), to_owner(sv)
    top_vals, pos = jax.lax.top_k(tv, k)
    log_pt = jax.nn.log_softmax(top_vals, axis=-1)
    s_at = jnp.take_along_axis(sv, pos, axis=-1)
    log_ps = jax.nn.log_softmax(s_at, axis=-1) if obj.kl_student_renorm else s_at - own(lse_s)[..., None]
    kl = jnp.sum(jnp.exp(log_pt) * (log_pt - log_ps), axis=-1)
    zero = jnp.zeros_like(kl)
    return {"batch": jnp.sum(jnp.where(m, nll_t, zero)), "mslm": jnp.sum(jnp.where(m, nll_s, zero)),
            "kl": jnp.sum(jnp.where(m, kl, zero))}


def sharded_chunked_sums(mesh, config, params, xs, obj, top_k):
    """Loss sums of the chunks ``xs = (batch_hidden, stream_hidden, labels, mask)``, each ``[n_chunks, B, c, ...]``
    with rows sharded over the whole mesh, the head split over the vocabulary on ``fsdp`` (one scan, each
    chunk rematerialised in the backward)."""
    rows = P(None, tuple(mesh.axis_names))
    same = xs[1] is None  # stream_hidden None: one set of logits per chunk serves both views
    xs = tuple(x for x in xs if x is not None)

    def local(w, *arrays):
        @jax.checkpoint
        def body(acc, x):
            hb, hs, lab, m = (x[0], None, *x[1:]) if same else x
            return jax.tree.map(jnp.add, acc, _chunk_terms(w, hb, hs, lab, m, obj, top_k,
                                                            mesh.shape[VOCAB_AXIS])), None

        axes = tuple(mesh.axis_names)
        zero = {name: jax.lax.pcast(jnp.zeros((), jnp.float32), axes, to="varying") for name in ("batch", "mslm", "kl")}
        sums, _ = jax.lax.scan(body, zero, arrays)
        return jax.tree.map(lambda s: jax.lax.psum(s, axes), sums)

    w = head_matrix(config, params)
    return jax.shard_map(local, mesh=mesh, in_specs=(P(VOCAB_AXIS, None),) + (rows,) * len(xs), out_specs=P())(
        w, *xs)
