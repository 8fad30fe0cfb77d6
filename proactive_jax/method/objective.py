"""The ProactiveLLM objective (method.md section 4): batch NLL + MSLM NLL + top-k KL (SPSD).

A padded batch (from :func:`pack_batch`) holds, per example, the source ``prompt+units+end`` padded to
``S_cap`` and the target group ``header+target`` padded to ``T_cap``. Inside the jitted loss:

- a read schedule ``phi`` is drawn per example (vmapped; keys ``fold_in(step_key, row_id)``),
- the shift-by-one rule turns it into a visible-source limit per target row,
- ONE forward pass runs the packed dual view ``[source | target (batch copy) | target (stream copy)]``
  (segments 0, 1, 2; both copies carry the same GPE positions and never see each other),
- the loss terms are token sums; dividing by the global token count happens once, at the end, so the
  average is exact under padding, data parallelism and gradient accumulation.

:func:`naive_loss_sums` runs the two views as separate sequences: the slow reference.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from proactive_jax.models.config import ModelConfig
from proactive_jax.models.attention import MaskVectors, row_mesh, shard_rows
from proactive_jax.models.qwen import apply_hidden, embed_ids, hidden_to_logits
from proactive_jax.data.example import ExampleError, StreamExample
from proactive_jax.method.streaming import full_schedule, sample_schedule, target_row_limits, uniform_schedule, validate_phi, wait_k_schedule

SCHEDULES = ("multinomial", "uniform", "full", "wait-k", "given")


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
    """Loss weights and schedule options (frozen: a static argument of jit)."""

    w_batch: float = 1.0
    w_mslm: float = 1.0
    kl_lambda: float = 0.1  # ours: the paper says "very small"
    kl_topk: int = 100
    teacher_stop_grad: bool = True  # ours
    # True: the student is renormalised over the teacher's top-k too, so the term is a true divergence
    # (0 when the views agree; method.md section 4). False: the earlier variant, the student keeps its
    # full-vocabulary log-probs at those k tokens (-log Z_k > 0 with identical views when k < |V|).
    kl_student_renorm: bool = True
    schedule: str = "multinomial"  # multinomial (the paper's budget) | uniform (naive: read counts uniform in 0..M+1) | full | wait-k | given (batch["phi"])
    alpha: float = 0.0  # w_k ∝ (k+1)^alpha
    trailing_reads: bool = False  # ours: a budget cell after the last token, so phi(L) <= M+1 (docs/decisions.md)
    wait_k: int = 3
    target_offset: int | str = 0  # int, or "contiguous"
    # target positions per chunk of the loss: the LM head, log-softmax and top-k run one chunk of
    # [rows, logit_chunk, vocab] logits at a time (recomputed in the backward); 0 = all at once
    logit_chunk: int = 0
    # ours (off by default; the TPU configs turn it on): run the chunk loop with the LM head split over the
    # vocabulary on the fsdp axis (method/vocab_sharded.py). Exact. Measured worse on Qwen2.5-3B v5e-16 while
    # XLA kept all rows of the hidden states on every chip (temporaries 4.20 vs 3.94 GiB); with the activations'
    # row constraints (models/attention.shard_rows) it is what lets the temporaries fall with the slice
    # (3.04 GiB on v5e-16, 1.41 on v5e-32, was 3.94 / 3.49)
    vocab_sharded_head: bool = False

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"objective.schedule={self.schedule!r}; expected one of {SCHEDULES}")
        if not (isinstance(self.target_offset, int) or self.target_offset == "contiguous"):
            raise ValueError(f"objective.target_offset={self.target_offset!r}; expected an int or 'contiguous'")
        if self.kl_topk < 1:
            raise ValueError(f"objective.kl_topk must be >= 1, got {self.kl_topk}")
        if self.logit_chunk < 0:
            raise ValueError(f"objective.logit_chunk must be >= 0 (0 = unchunked), got {self.logit_chunk}")


# ---------------------------------------------------------------------------------------------
# Batching (host side, numpy)
# ---------------------------------------------------------------------------------------------

def pack_batch(examples: Sequence[StreamExample], bucket: tuple[int, int], batch_size: int | None = None,
               m_cap: int | None = None, phi: Sequence | None = None) -> dict[str, np.ndarray]:
    """Collate examples into fixed-shape numpy arrays for bucket ``(S_cap, T_cap)``.

    Rows beyond ``len(examples)`` (up to ``batch_size``) are padding with ``example_mask = 0``.
    ``m_cap`` bounds the unit count (default ``S_cap``); ``phi`` optionally gives explicit schedules.
    """
    s_cap, t_cap = bucket
    b = len(examples) if batch_size is None else batch_size
    m_cap = s_cap if m_cap is None else m_cap
    if len(examples) > b:
        raise ValueError(f"{len(examples)} examples do not fit batch_size={b}")
    out = {
        "source": np.zeros((b, s_cap), np.int32),
        "source_len": np.zeros((b,), np.int32),
        "prompt_len": np.zeros((b,), np.int32),
        "target": np.zeros((b, t_cap), np.int32),
        "header_len": np.zeros((b,), np.int32),
        "target_len": np.zeros((b,), np.int32),
        "num_units": np.zeros((b,), np.int32),
        "vis": np.zeros((b, m_cap + 2), np.int32),
        "example_mask": np.zeros((b,), np.int32),
    }
    if phi is not None:
        out["phi"] = np.zeros((b, t_cap), np.int32)
    for i, ex in enumerate(examples):
        src, tgt = ex.source, ex.header + ex.target
        if len(src) > s_cap or len(tgt) > t_cap or ex.M > m_cap:
            raise ExampleError(
                f"example {i}: source {len(src)} tokens / target group {len(tgt)} tokens / {ex.M} units do not "
                f"fit bucket (S_cap={s_cap}, T_cap={t_cap}, m_cap={m_cap})")
        if ex.L < 1:
            raise ExampleError(f"example {i}: empty target (nothing to predict)")
        if not ex.header:
            raise ExampleError(f"example {i}: empty header; the first target token is predicted from the "
                               "last header row, so the header needs at least one token")
        out["source"][i, :len(src)] = src
        out["source_len"][i] = len(src)
        out["prompt_len"][i] = len(ex.prompt)
        out["target"][i, :len(tgt)] = tgt
        out["header_len"][i] = len(ex.header)
        out["target_len"][i] = ex.L
        out["num_units"][i] = ex.M
        v = ex.visible_counts()
        out["vis"][i, :len(v)] = v
        out["vis"][i, len(v):] = v[-1]
        out["example_mask"][i] = 1
        if phi is not None:
            p = validate_phi(phi[i], ex.M, ex.L, where=f"phi[{i}]")
            out["phi"][i, :len(p)] = p
            out["phi"][i, len(p):] = ex.M + 1
    return out


def num_loss_tokens(batch) -> jax.Array:
    """Number of predicted target tokens in the batch (the normaliser of every loss term)."""
    return jnp.sum(jnp.asarray(batch["target_len"]) * jnp.asarray(batch["example_mask"]))


# ---------------------------------------------------------------------------------------------
# Schedules, limits, positions (traced)
# ---------------------------------------------------------------------------------------------

def batch_schedules(batch, key, obj: ObjectiveConfig):
    """``phi`` [B, T_cap] for every row: sampled (vmapped over rows) or deterministic."""
    b, t_cap = batch["target"].shape
    m_cap = batch["vis"].shape[1] - 2
    m, l = batch["num_units"], batch["target_len"]
    if obj.schedule == "full":
        return jax.vmap(lambda mm: full_schedule(mm, t_cap))(m)
    if obj.schedule == "wait-k":
        return jax.vmap(lambda mm: wait_k_schedule(mm, t_cap, obj.wait_k))(m)
    if obj.schedule == "given":
        return batch["phi"]
    rows = batch.get("row_id", jnp.arange(b))
    keys = jax.vmap(lambda r: jax.random.fold_in(key, r))(rows)
    if obj.schedule == "uniform":
        return jax.vmap(lambda k, mm, ll: uniform_schedule(k, mm, ll, t_cap, obj.trailing_reads))(keys, m, l)
    return jax.vmap(lambda k, mm, ll: sample_schedule(k, mm, ll, t_cap, m_cap, obj.alpha, obj.trailing_reads))(
        keys, m, l)


def stream_limits(batch, phi):
    t_cap = batch["target"].shape[1]
    return jax.vmap(lambda p, v, h, l: target_row_limits(p, v, h, l, t_cap))(
        phi, batch["vis"], batch["header_len"], batch["target_len"])


def target_positions(batch, obj: ObjectiveConfig):
    b, t_cap = batch["target"].shape
    r = jnp.arange(t_cap, dtype=jnp.int32)[None, :]
    if obj.target_offset == "contiguous":
        return (batch["source_len"][:, None] + r).astype(jnp.int32)
    return jnp.broadcast_to(r + int(obj.target_offset), (b, t_cap)).astype(jnp.int32)


def _valid(lengths, cap):
    return jnp.arange(cap)[None, :] < lengths[:, None]


def loss_rows(batch):
    """Labels and loss mask per target row: row r predicts target-group token r+1 when H-1 <= r <= H+L-2."""
    tgt = batch["target"]
    t_cap = tgt.shape[1]
    labels = jnp.concatenate([tgt[:, 1:], jnp.zeros_like(tgt[:, :1])], axis=1)
    r = jnp.arange(t_cap)[None, :]
    h, l = batch["header_len"][:, None], batch["target_len"][:, None]
    mask = (r >= h - 1) & (r <= h + l - 2) & (batch["example_mask"][:, None] > 0)
    return labels, mask


# ---------------------------------------------------------------------------------------------
# Loss terms from logits (shared by the packed and the naive path)
# ---------------------------------------------------------------------------------------------

def nll_sum(logits, labels, mask):
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    ll = jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]
    return -jnp.sum(jnp.where(mask, ll, 0.0))


TOPK_RECALL = 0.95  # recall target of jax.lax.approx_max_k on TPU


def top_k(x, k: int):
    """``(values, indices)`` of the ``k`` largest entries on the last axis: ``jax.lax.approx_max_k`` when
    lowered for TPU (``TOPK_RECALL``), the exact ``jax.lax.top_k`` on every other platform."""
    def local(v):
        return jax.lax.platform_dependent(
            v, tpu=lambda u: jax.lax.approx_max_k(u, k, recall_target=TOPK_RECALL),
            default=lambda u: jax.lax.top_k(u, k))

    # under a mesh the rows are split over it explicitly (shard_map; top-k is row-wise): XLA's partitioner
    # otherwise gathers every row of the [rows, chunk, vocab] logits on every chip for the selection
    mesh = row_mesh(x.shape[0])
    if mesh is None:
        return local(x)
    spec = jax.sharding.PartitionSpec(tuple(mesh.axis_names))
    return tuple(jax.shard_map(lambda v: tuple(local(v)), mesh=mesh, in_specs=spec, out_specs=(spec, spec),
                               check_vma=False)(x))


def topk_kl_sum(teacher_logits, student_logits, mask, k: int, stop_grad: bool = True, *,
                renorm_student: bool = True):
    """Sum over masked rows of KL(P_teacher^topk || P_student^topk) on the teacher's top-k tokens.

    Both distributions are renormalised over the teacher's top-k tokens (a true divergence: 0, with a 0
    gradient, when the two views agree, for any k). ``renorm_student=False`` keeps the student's
    full-vocabulary log-probs at those tokens (the earlier variant: ``-log Z_k`` > 0 with identical views).
    """
    t = teacher_logits.astype(jnp.float32)
    if stop_grad:
        t = jax.lax.stop_gradient(t)
    k = min(k, t.shape[-1])
    top_vals, top_idx = top_k(t, k)
    log_pt = jax.nn.log_softmax(top_vals, axis=-1)
    s = student_logits.astype(jnp.float32)
    if renorm_student:
        log_ps = jax.nn.log_softmax(jnp.take_along_axis(s, top_idx, axis=-1), axis=-1)
    else:
        log_ps = jnp.take_along_axis(jax.nn.log_softmax(s, axis=-1), top_idx, axis=-1)
    kl = jnp.sum(jnp.exp(log_pt) * (log_pt - log_ps), axis=-1)
    return jnp.sum(jnp.where(mask, kl, 0.0))


def sums_from_logits(batch_logits, stream_logits, batch, obj: ObjectiveConfig):
    labels, mask = loss_rows(batch)
    return {
        "batch": nll_sum(batch_logits, labels, mask),
        "mslm": nll_sum(stream_logits, labels, mask),
        "kl": topk_kl_sum(batch_logits, stream_logits, mask, obj.kl_topk, obj.teacher_stop_grad,
                          renorm_student=obj.kl_student_renorm),
    }


def chunked_sums(config: ModelConfig, params, batch_hidden, stream_hidden, batch, obj: ObjectiveConfig):
    """:func:`sums_from_logits` of ``hidden_to_logits`` of both views, ``obj.logit_chunk`` target positions at a
    time: a ``lax.scan`` over chunks whose body is rematerialised, so only one chunk's ``[B, chunk, V]``
    logits (and their cotangents) are ever live. Equal to the unchunked sums (padded positions are masked).
    Under an abstract mesh with an ``fsdp`` axis the loop runs with the head split over the vocabulary
    (:mod:`.vocab_sharded`), so no chip holds the whole head or its gradient. ``stream_hidden`` None: the stream
    view is the batch view (:func:`batch_view_loss_sums`), so each chunk's logits are computed once for both."""
    from proactive_jax.method.vocab_sharded import sharded_chunked_sums, vocab_mesh

    labels, mask = loss_rows(batch)
    b, t, d = batch_hidden.shape
    c = min(obj.logit_chunk, t)
    n = -(-t // c)
    pad = n * c - t

    def split(x):  # [B, T, ...] -> [n, B, c, ...], zero-padded to n*c positions
        x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
        return shard_rows(x.reshape((b, n, c) + x.shape[2:]).swapaxes(0, 1), axis=1)  # rows stay sharded

    @jax.checkpoint
    def body(acc, xs):
        hb, hs, lab, m = (None if x is None else shard_rows(x) for x in xs)
        lb = hidden_to_logits(config, params, hb)
        ls = lb if hs is None else hidden_to_logits(config, params, hs)
        s = {"batch": nll_sum(lb, lab, m), "mslm": nll_sum(ls, lab, m),
             "kl": topk_kl_sum(lb, ls, m, obj.kl_topk, obj.teacher_stop_grad,
                               renorm_student=obj.kl_student_renorm)}
        return jax.tree.map(jnp.add, acc, s), None

    xs = (split(batch_hidden), None if stream_hidden is None else split(stream_hidden), split(labels), split(mask))
    mesh = vocab_mesh(config.vocab_size, b) if obj.vocab_sharded_head else None
    if mesh is not None:  # under a mesh: the head split over the vocabulary on the fsdp axis (vocab_sharded.py)
        return sharded_chunked_sums(mesh, config, params, xs, obj, top_k)
    zero = {name: jnp.zeros((), jnp.float32) for name in ("batch", "mslm", "kl")}
    sums, _ = jax.lax.scan(body, zero, xs)
    return sums


def weighted_total(terms, obj: ObjectiveConfig):
    """``w_batch * batch + w_mslm * mslm + kl_lambda * kl`` (of sums or of averages)."""
    return obj.w_batch * terms["batch"] + obj.w_mslm * terms["mslm"] + obj.kl_lambda * terms["kl"]


def combine(sums, count, obj: ObjectiveConfig):
    """Token-averaged terms and the weighted total."""
    n = jnp.maximum(count, 1).astype(jnp.float32)
    terms = {name: v / n for name, v in sums.items()}
    return weighted_total(terms, obj), terms


# ---------------------------------------------------------------------------------------------
# The packed dual view (one pass) and the naive reference (two passes)
# ---------------------------------------------------------------------------------------------

def packed_inputs(batch, limits, obj: ObjectiveConfig):
    """Token ids, positions and mask vectors of ``[source | target batch copy | target stream copy]``."""
    src, tgt = batch["source"], batch["target"]
    b, s_cap = src.shape
    t_cap = tgt.shape[1]
    src_ok = _valid(batch["source_len"], s_cap)
    tgt_ok = _valid(batch["header_len"] + batch["target_len"], t_cap)
    tokens = jnp.concatenate([src, tgt, tgt], axis=1)
    segment = jnp.concatenate([jnp.where(src_ok, 0, -1), jnp.where(tgt_ok, 1, -1), jnp.where(tgt_ok, 2, -1)], 1)
    index = jnp.broadcast_to(jnp.arange(s_cap + 2 * t_cap, dtype=jnp.int32), tokens.shape)
    limit = jnp.concatenate([jnp.zeros((b, s_cap), jnp.int32),
                             jnp.broadcast_to(batch["source_len"][:, None], (b, t_cap)), limits], axis=1)
    tpos = target_positions(batch, obj)
    positions = jnp.concatenate(
        [jnp.broadcast_to(jnp.arange(s_cap, dtype=jnp.int32), (b, s_cap)), tpos, tpos], axis=1)
    return tokens.astype(jnp.int32), positions, MaskVectors(segment.astype(jnp.int32), index,
                                                            limit.astype(jnp.int32))


def _source_embeds(config: ModelConfig, params, batch, tokens, s_cap: int):
    """Input embeddings when ``batch["source_embeds"]`` (audio units, method.md 7b) replaces the source slots' table
    rows; else None (the ids are embedded by the model)."""
    if "source_embeds" not in batch:
        return None
    t_emb = embed_ids(config, params, tokens[:, s_cap:])
    return jnp.concatenate([batch["source_embeds"].astype(t_emb.dtype), t_emb], axis=1)


def dual_view_loss_sums(config: ModelConfig, obj: ObjectiveConfig, params, batch, key):
    """Loss sums ``{"batch", "mslm", "kl"}`` from ONE forward pass over the packed dual view
    ``[source | target batch copy | target stream copy]``.

    ``batch["source_embeds"]`` (optional, [B, S_cap, D]): input embeddings of the source slots (audio
    units; :mod:`.audio_objective`), fed instead of the source ids' table rows."""
    phi = batch_schedules(batch, key, obj)
    limits = stream_limits(batch, phi)
    tokens, positions, mv = packed_inputs(batch, limits, obj)
    s_cap, t_cap = batch["source"].shape[1], batch["target"].shape[1]
    embeds = _source_embeds(config, params, batch, tokens, s_cap)
    hidden = apply_hidden(config, params, tokens, positions, mv, input_embeds=embeds).hidden
    if obj.logit_chunk:
        return chunked_sums(config, params, hidden[:, s_cap:s_cap + t_cap], hidden[:, s_cap + t_cap:], batch, obj)
    logits = hidden_to_logits(config, params, hidden[:, s_cap:])
    return sums_from_logits(logits[:, :t_cap], logits[:, t_cap:], batch, obj)


def batch_view_loss_sums(config: ModelConfig, obj: ObjectiveConfig, params, batch, key=None):
    """The same sums for ``schedule="full"`` from ``[source | target]`` alone: under the full schedule the stream
    copy sees ``V(M+1)`` = the whole source, exactly what the batch copy sees, so its hidden states ARE the batch
    copy's and one target copy serves as both views (``mslm`` = ``batch``; ``kl`` is the divergence of a
    distribution from itself: 0 with the student renormalised, ``-log Z_k`` without). S + T positions instead of
    S + 2T: batch-mode pretraining pays for one view. Equal to :func:`dual_view_loss_sums` (tested)."""
    if obj.schedule != "full":
        raise ValueError(f"batch_view_loss_sums needs objective.schedule='full', got {obj.schedule!r}")
    s_cap = batch["source"].shape[1]
    tokens, positions, mv = single_view_inputs(batch, batch["source_len"], obj)
    embeds = _source_embeds(config, params, batch, tokens, s_cap)
    hidden = apply_hidden(config, params, tokens, positions, mv, input_embeds=embeds).hidden
    h = hidden[:, s_cap:]
    if obj.logit_chunk:  # stream_hidden None: the chunk loop applies the head once and uses it for both views
        return chunked_sums(config, params, h, None, batch, obj)
    logits = hidden_to_logits(config, params, h)
    return sums_from_logits(logits, logits, batch, obj)


def packed_loss_sums(config: ModelConfig, obj: ObjectiveConfig, params, batch, key):
    """The training objective's loss sums: :func:`batch_view_loss_sums` for ``schedule="full"`` (one view
    suffices), else :func:`dual_view_loss_sums` (the packed dual view, one forward pass)."""
    if obj.schedule == "full":
        return batch_view_loss_sums(config, obj, params, batch, key)
    return dual_view_loss_sums(config, obj, params, batch, key)


def single_view_inputs(batch, limits, obj: ObjectiveConfig):
    """Token ids, positions and mask vectors of ``[source | target]`` as its own sequence, target rows seeing
    ``limits`` ([B, T_cap], or [B] for one limit per row)."""
    src, tgt = batch["source"], batch["target"]
    b, s_cap = src.shape
    t_cap = tgt.shape[1]
    limits = jnp.asarray(limits)
    if limits.ndim == 1:
        limits = jnp.broadcast_to(limits[:, None], (b, t_cap))
    tokens = jnp.concatenate([src, tgt], axis=1).astype(jnp.int32)
    segment = jnp.concatenate([jnp.where(_valid(batch["source_len"], s_cap), 0, -1),
                               jnp.where(_valid(batch["header_len"] + batch["target_len"], t_cap), 1, -1)], 1)
    index = jnp.broadcast_to(jnp.arange(s_cap + t_cap, dtype=jnp.int32), tokens.shape)
    limit = jnp.concatenate([jnp.zeros((b, s_cap), jnp.int32), limits.astype(jnp.int32)], axis=1)
    positions = jnp.concatenate([jnp.broadcast_to(jnp.arange(s_cap, dtype=jnp.int32), (b, s_cap)),
                                 target_positions(batch, obj)], axis=1)
    return tokens, positions, MaskVectors(segment.astype(jnp.int32), index, limit)


def single_view_logits(config: ModelConfig, obj: ObjectiveConfig, params, batch, limits):
    """Target-row logits of ``[source | target]`` as its own sequence, target rows seeing ``limits``."""
    tokens, positions, mv = single_view_inputs(batch, limits, obj)
    hidden = apply_hidden(config, params, tokens, positions, mv).hidden
    return hidden_to_logits(config, params, hidden[:, batch["source"].shape[1]:])


def naive_loss_sums(config: ModelConfig, obj: ObjectiveConfig, params, batch, key):
    """Reference: the batch view and the stream view as two separate forward passes."""
    phi = batch_schedules(batch, key, obj)
    limits = stream_limits(batch, phi)
    t_cap = batch["target"].shape[1]
    full = jnp.broadcast_to(batch["source_len"][:, None], (batch["source"].shape[0], t_cap))
    batch_logits = single_view_logits(config, obj, params, batch, full)
    stream_logits = single_view_logits(config, obj, params, batch, limits)
    return sums_from_logits(batch_logits, stream_logits, batch, obj)


def loss_fn(config: ModelConfig, obj: ObjectiveConfig, params, batch, key, packed: bool = True):
    """``(total, aux)``: the weighted, token-averaged loss and each term (``aux["tokens"]`` the count)."""
    sums = (packed_loss_sums if packed else naive_loss_sums)(config, obj, params, batch, key)
    count = num_loss_tokens(batch)
    total, terms = combine(sums, count, obj)
    return total, {**terms, "tokens": count}


# ---------------------------------------------------------------------------------------------
# Scoring one example under a schedule (public API)
# ---------------------------------------------------------------------------------------------

def _round_up(n: int, m: int = 16) -> int:
    return max(m, -(-n // m) * m)


@partial(jax.jit, static_argnums=(0, 1))
def _score_rows(config, obj, params, batch):
    limits = stream_limits(batch, batch["phi"])
    logits = single_view_logits(config, obj, params, batch, limits)
    labels, mask = loss_rows(batch)
    logp = jax.nn.log_softmax(logits, axis=-1)
    return jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0], mask


def token_logprobs(config: ModelConfig, params, example: StreamExample, phi=None, target_offset=0) -> np.ndarray:
    """Log-probability of each predicted target token ``y_1..y_L`` under read schedule ``phi``.

    ``phi``: L read counts in 0..M+1 (``phi[j-1]`` = reads when y_j is written); None = batch view.
    GPE positions with ``target_offset`` (default 0). Returns float32 ``[L]``.
    """
    if phi is None:
        phi = np.full((example.L,), example.M + 1, np.int32)
    phi = validate_phi(phi, example.M, example.L)
    bucket = (_round_up(example.S), _round_up(example.T))
    batch = pack_batch([example], bucket, phi=[phi])
    obj = ObjectiveConfig(schedule="given", target_offset=target_offset)
    lp, mask = _score_rows(config, obj, params, jax.tree_util.tree_map(jnp.asarray, batch))
    h = len(example.header)
    return np.asarray(lp[0, h - 1:h - 1 + example.L], np.float32)
