"""KV-cached streaming decode: one jitted ``lax.while_loop`` over a batch of examples (method.md section 6).

Cache layout (capacity ``C = S_cap + T_cap``): slots ``0 .. S_cap-1`` hold the source group (segment 0,
slot = source index), slots ``S_cap ..`` the target group (header, then the written tokens). The cache's
key segments are set once (0 for source slots, 1 for target slots): the visibility rule never lets a
query see a slot that has not been written yet.

1. Prefill: the prompt into source slots (positions 0..) and the header into target slots (positions
   ``target_offset + 0..``), with ``n = 0`` (header rows see ``V(0) = |prompt|``).
2. Loop: the greedy candidate is the argmax of the logits of the last fed target token; the head decides.
   WRITE emits the candidate ``y_j`` (``phi(j) = n``) and feeds it into the next target slot (its row sees
   ``V(n)``). READ feeds the next unit (or, at ``n = M``, the end marker) into the next source slots and
   re-feeds into their own slots the target tokens whose visibility grew: the whole header while nothing
   is written, afterwards the last written token, all with limit ``V(n+1)``.
3. An example stops at an eos id or after ``max_new_tokens``; the loop ends when all have stopped.

Every iteration feeds each example one chunk, unused positions masked with segment -1, so one batch mixes
examples that read, write, or are finished. The chunk is as small as the batch's decisions allow
(:func:`step_kind`, one ``lax.switch`` per step on the whole batch): one target row when no example reads
(a WRITE needs one row), ``[unit (U) | 1]`` when examples read after their first write, ``[unit | header
(Hc)]`` only while a reading example has written nothing (its header rows see the new source: re-fed). The
header is thus re-fed only by READs before the first write, as method.md section 6 requires for exactness.

Attention spans only the filled part of the cache: the source slots and the target slots each in one of a few
window sizes (:attr:`StepShapes.windows`, chosen per call by :func:`_window`; a ``lax.switch`` inside every
layer, :class:`~proactive_jax.models.qwen.CacheWindow`). The layers only read the cache; the step writes the
fed entries once, after the chunk switch (:meth:`~proactive_jax.models.qwen.KVCache.put`), so no step copies
the cache (a switch whose branches wrote it would copy all of it at every step). Chunk layouts and windows are
chosen on CPU only; elsewhere every step feeds the widest chunk over the whole cache (:func:`_on_cpu_only`).

The pieces are module-level pure functions: :func:`prefill` (step 1) and :func:`decision_step` (one
decision of step 2, for every row of a batch), and :func:`_decode_impl`, the ``lax.while_loop`` over that
step; a live session (:mod:`.session`) calls the same two functions. Optional, behind static flags /
arguments: the final hidden state of the decision row (``StepShapes.with_hidden``, for probe heads), its
head-summed attention over the source slots with each slot's unit number (``StepShapes.with_src_attn``,
for ``alignatt``) and source units fed as input embeddings instead of ids (``unit_embeds``,
``batch["src_embeds"]``; audio).

Shapes are bucketed (:func:`~proactive_jax.method.shapes.bucket`: ``2^k`` or ``3 * 2^(k-1)``) so a new compilation happens per shape
bucket, not per example; the head's name and parameters are traced values (see :mod:`.heads`), so a tau
sweep never recompiles. Only "does the head need attention statistics / the hidden state / the source
attention" is static.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from proactive_jax.models.config import ModelConfig
from proactive_jax.method.attention_stats import HeadStatistics
from proactive_jax.method.probe import check_probe, probe_prob, uses_stats
from proactive_jax.method.shapes import bucket
from proactive_jax.method.heads import DecisionState, HeadSpec, decide_encoded, encode_head, parse_head
from proactive_jax.models.attention import MaskVectors
from proactive_jax.models.qwen import (CacheWindow, KVCache, apply_hidden, embed_ids, hidden_to_logits, init_cache,
                                       unstack_layers)
from proactive_jax.method import audio_stream
from proactive_jax.data.example import StreamExample
from proactive_jax.method.decode_inputs import check_ids, host_batch, shape_key, validate_examples, vocab_table
from proactive_jax.method.program_store import call_stored

TRACE_COUNT = 0  # incremented every time the decode loop is traced (i.e. compiled for a new bucket)


@dataclasses.dataclass(frozen=True)
class DecodeResult:
    """One example's decode.

    ``tokens`` [L] int32: emitted tokens (header excluded, eos included if emitted);
    ``phi`` [L] int32: read count (0..M+1) when each token was written;
    per decision (D of them, READs and WRITEs in order): ``scores`` [D] float32 (the head's statistic),
    ``writes`` [D] bool (True = WRITE), ``reads`` [D] int32 (n at the decision), ``forced`` [D] bool (the
    statistic did not decide: n = M+1, or a continuation token under decide_at=word);
    ``M``: content units; ``finished``: stopped at an eos id (else at max_new_tokens);
    ``logits`` [D, V] float32: the next-token logits at each decision (only with ``return_logits``);
    ``seconds`` [D] float64: wall-clock time of each decision (live sessions, :mod:`.session`; else None).
    """

    tokens: np.ndarray
    phi: np.ndarray
    scores: np.ndarray
    writes: np.ndarray
    reads: np.ndarray
    forced: np.ndarray
    M: int
    finished: bool
    logits: np.ndarray | None = None
    seconds: np.ndarray | None = None


# ---------------------------------------------------------------------------------------------
# The decoder as pure functions: prefill, one decision step, and the batch loop over that step
#
# ``sh`` (:class:`StepShapes`) is the static part (one compilation per value); ``rows`` holds the
# per-example values that never change during a stream (``M`` aside, which a live session learns at
# the end); ``state`` (:func:`prefill`'s dict) is the loop carry. The state always holds the *pending*
# decision (``cand``, ``write``, ``score``, ``forced``) for its current logits: :func:`decision_step`
# executes it (READ or WRITE), runs the model on the fed chunk and makes the next decision. A caller
# that has no next unit for a row that wants to READ leaves that row out (``go`` False): nothing of it
# changes. The batch decoder (:func:`_decode_impl`) and a live session (:mod:`.session`) run this same
# step.
# ---------------------------------------------------------------------------------------------

ROW_KEYS = ("M", "plen", "header", "hlen", "off", "valid", "word_start", "eos")


class StepShapes(NamedTuple):
    """The static part of prefill and step. Cache capacity ``C = source_cap + header_cap + max_new``."""

    config: ModelConfig
    with_stats: bool  # compute the attention statistics of the decision row (attention heads)
    with_hidden: bool  # keep the final hidden state of the decision row in ``state["hidden"]`` (probe heads)
    max_new: int  # target slots for written tokens
    prompt_cap: int  # P: prompt tokens fed by the prefill
    unit_cap: int  # U: source tokens fed by one READ (the longest unit or end marker)
    source_cap: int  # S_cap: source slots
    header_cap: int  # Hc: header slots (also the target part of a chunk that re-feeds the header)
    # keep the decision row's head-summed attention over source slots (``state["src_attn"]``) and each
    # slot's unit number (``state["src_unit"]``) (alignatt heads)
    with_src_attn: bool = False
    # attention spans only the filled part of the cache: each group's slots (source, target) in up to this
    # many window sizes, halving from the group's capacity down to ``window_min`` slots; 1 = the whole cache
    window_levels: int = 4
    window_min: int = 64

    @property
    def capacity(self) -> int:
        return self.source_cap + self.header_cap + self.max_new

    @property
    def windows(self) -> tuple:
        """The attention windows ``(source slots, target slots)`` a step chooses from (:func:`_window`)."""
        return tuple((a, b) for a in _ladder(self.source_cap, self.window_levels, self.window_min)
                     for b in _ladder(self.header_cap + self.max_new, self.window_levels, self.window_min))


def _ladder(n: int, levels: int, smallest: int) -> list[int]:
    """Window sizes for a cache group of ``n`` slots: n, n/2, ... (multiples of 8, >= smallest), ascending."""
    sizes = [n]
    while len(sizes) < levels and sizes[-1] // 2 >= smallest:
        sizes.append(-(-sizes[-1] // 16) * 8)
    return sorted(set(sizes))


def _window(sh: StepShapes, src_need, tgt_need, write: bool = True) -> CacheWindow:
    """The smallest window that holds ``src_need`` source slots and ``tgt_need`` target slots (int32 scalars:
    every slot a fed token of this call may see or write); ``write=False``: the model returns the fed entries
    instead of writing them (see :class:`~proactive_jax.models.qwen.CacheWindow`)."""
    sizes = sh.windows
    a = jnp.asarray([w[0] for w in sizes], jnp.int32)
    b = jnp.asarray([w[1] for w in sizes], jnp.int32)
    fits = (a >= src_need) & (b >= tgt_need)
    cost = jnp.where(fits, a + b, jnp.iinfo(jnp.int32).max)  # the whole cache always fits
    return CacheWindow(_on_cpu_only(jnp.argmin(cost).astype(jnp.int32), len(sizes) - 1), sh.source_cap, sizes,
                       write)


def _on_cpu_only(choice, widest: int):
    """``choice`` (a branch index: a cache window, a chunk layout) on CPU, the constant ``widest`` elsewhere.

    Narrow windows and small chunks pay where a step's compute grows with what it reads and feeds (CPU). On an
    accelerator a decode step is bound by reading the weights and the cache anyway, and XLA kept copies of the
    cache for the switches over them (a v5e decode plan's temporaries grew from 1.1x to 15x the KV cache); a
    constant index leaves one branch after XLA's simplification."""
    return jax.lax.platform_dependent(choice, cpu=lambda c: c, default=lambda c: jnp.full_like(c, widest))


def _model(sh: StepShapes, params, chunk, cache, row, plen, window, embeds=None):
    """Run the model on one fed chunk; return (logits, stats, hidden, src_attn, cache) of row ``row`` [B].

    ``chunk`` = (ids, positions, segment, index, limit), each [B, T]; ``window``: the part of the cache the
    chunk attends to (:func:`_window`); ``embeds`` [B, T, D]: input
    embeddings instead of ``ids`` (None: embed ``ids``). ``stats`` [B, layers, H, 2] (zeros unless
    ``sh.with_stats``), ``hidden`` [B, D] float32 (None unless ``sh.with_hidden``), ``src_attn``
    [B, layers, S_cap] float32 (None unless ``sh.with_src_attn``)."""
    cfg = sh.config
    ids, pos, seg, idx, lim = chunk
    B = ids.shape[0]
    bi = jnp.arange(B)
    hook = HeadStatistics(sh.with_stats, sh.with_src_attn) if (sh.with_stats or sh.with_src_attn) else None
    out = apply_hidden(cfg, params, ids, pos, MaskVectors(seg, idx, lim), cache, input_embeds=embeds, hook=hook,
                       probe_args=plen, cache_window=window)
    hidden, cache = out.hidden, out.cache
    stats, src = out.attention_probe if hook is not None else (None, None)
    if sh.with_src_attn:  # [layers, B, T, C] -> the decision row's source slots [B, layers, S_cap]
        src = jnp.transpose(src[:, bi, row, :sh.source_cap], (1, 0, 2)).astype(jnp.float32)
    h = hidden[bi, row]
    logits = hidden_to_logits(cfg, params, h[:, None])[:, 0]
    if sh.with_stats:
        st = jnp.transpose(stats[:, bi, row], (1, 0, 2, 3)).astype(jnp.float32)  # [B, layers, H, 2]
    else:
        st = jnp.zeros((B, cfg.num_hidden_layers, cfg.num_attention_heads, 2), jnp.float32)
    return logits, st, (h.astype(jnp.float32) if sh.with_hidden else None), src, cache


def _decide(head_vals, rows, state) -> dict:
    """The pending decision for the state's logits: greedy candidate, then the head (vmapped over rows).
    A probe head reads ``state["hidden"]`` here (present when ``StepShapes.with_hidden``)."""
    cand = jnp.argmax(state["logits"], axis=-1).astype(jnp.int32)
    p = None  # a probe head's p(sufficient): the probe (head_vals["probe"]) on the decision row's hidden state
    if "probe" in head_vals:
        p = probe_prob(head_vals["probe"], state["hidden"], state["logits"], state["stats"])
    ds = DecisionState(state["logits"], state["stats"], state["n"], rows["M"], state["j"], state["words"],
                       rows["word_start"][cand], p, state.get("src_attn"), state.get("src_unit"))
    write, score, forced = jax.vmap(decide_encoded, in_axes=(None, 0))(head_vals, ds)
    return dict(cand=cand, write=write, score=score, forced=forced)


def prefill(sh: StepShapes, params, head_vals, rows, prompt):
    """Prompt [B, P] into source slots (positions 0..), header into target slots (positions off + 0..),
    n = 0 (header rows see V(0) = |prompt|); returns the loop state with the first pending decision."""
    i32 = jnp.int32
    B, P, Hc, S_cap = prompt.shape[0], sh.prompt_cap, sh.header_cap, sh.source_cap
    plen, hlen, valid, off = rows["plen"], rows["hlen"], rows["valid"], rows["off"]
    p = jnp.arange(P, dtype=i32)[None]
    h = jnp.arange(Hc, dtype=i32)[None]
    p_ok = valid[:, None] & (p < plen[:, None])
    h_ok = valid[:, None] & (h < hlen[:, None])
    cache = init_cache(sh.config, B, sh.capacity)
    cache = cache.replace(segment=jnp.broadcast_to((jnp.arange(sh.capacity) >= S_cap).astype(i32), (B, sh.capacity)))
    chunk = (jnp.concatenate([prompt, rows["header"]], 1),
             jnp.concatenate([jnp.broadcast_to(p, (B, P)), off[:, None] + h], 1),
             jnp.concatenate([jnp.where(p_ok, 0, -1), jnp.where(h_ok, 1, -1)], 1).astype(i32),
             jnp.concatenate([jnp.broadcast_to(p, (B, P)), jnp.broadcast_to(S_cap + h, (B, Hc))], 1),
             jnp.concatenate([jnp.zeros((B, P), i32), jnp.broadcast_to(plen[:, None], (B, Hc))], 1))
    window = _window(sh, jnp.max(jnp.where(valid, plen, 0)), jnp.max(jnp.where(valid, hlen, 0)))
    logits, stats, hidden, src, cache = _model(sh, params, chunk, cache, P + hlen - 1, plen, window)
    zeros = jnp.zeros((B,), i32)
    state = dict(cache=cache, logits=logits, stats=stats, n=zeros, v=plen.astype(i32), j=zeros, words=zeros,
                 done=~valid, tokens=jnp.zeros((B, sh.max_new), i32), phi=jnp.zeros((B, sh.max_new), i32))
    if sh.with_hidden:
        state["hidden"] = hidden
    if sh.with_src_attn:  # nothing streamed yet: every slot is unit 0 (prompt or unread)
        state["src_attn"], state["src_unit"] = src, jnp.zeros((B, S_cap), i32)
    state.update(_decide(head_vals, rows, state))
    return state


def step_kind(sh: StepShapes, rows, state, go):
    """Which chunk layout this step feeds (one value for the whole batch, :data:`CHUNK_KINDS`): 0 = a WRITE
    row only (no row reads), 1 = ``[unit | 1]`` (some row reads, none re-feeds the header), 2 = ``[unit | header]``
    (some row reads while nothing is written yet: the whole header is re-fed)."""
    read = go & ~state["done"] & ~state["write"]
    header = jnp.any(read & (state["j"] == 0)) & (sh.header_cap > 1)  # a 1-token header fits [unit | 1]
    return jnp.where(header, 2, jnp.where(jnp.any(read), 1, 0)).astype(jnp.int32)


# (source part, target part) of each chunk layout: the source part is 0 or ``unit_cap`` tokens, the target
# part 1 or ``header_cap`` (see :func:`step_kind`)
CHUNK_KINDS = ((False, False), (True, False), (True, True))


def chunk_rows(sh: StepShapes, kind: int) -> int:
    """Tokens per row that a step of chunk layout ``kind`` feeds."""
    with_src, with_header = CHUNK_KINDS[kind]
    return (sh.unit_cap if with_src else 0) + (sh.header_cap if with_header else 1)


def decision_step(sh: StepShapes, params, head_vals, rows, state, unit, unit_len, go, unit_embeds=None):
    """Execute the pending decision of every row with ``go & ~done``, then decide again.

    WRITE feeds the candidate into target slot ``|header| + j`` (limit V(n)). READ feeds ``unit`` [B, U]
    (its first ``unit_len`` [B] tokens: the next unit or the end marker) into source slots V(n).., and
    re-feeds into their own slots the whole header (nothing written yet) or the last written token, with
    limit V(n+1). ``unit_embeds`` [B, U, D]: the unit's input embeddings instead of its ids (audio);
    target tokens are then embedded with the model's table (:func:`embed_ids`).

    The fed chunk is as small as the batch's decisions allow (:func:`step_kind`, one ``lax.switch`` on the
    whole batch): one target row when no row reads (every WRITE step at batch 1), ``[unit | 1]`` when rows
    read after their first write, ``[unit | header]`` only while a reading row has written nothing."""
    i32 = jnp.int32
    B, U, S_cap, max_new = unit.shape[0], sh.unit_cap, sh.source_cap, sh.max_new
    bi = jnp.arange(B)
    hlen, off = rows["hlen"], rows["off"]
    n, j, v_now = state["n"], state["j"], state["v"]
    active = go & ~state["done"]
    cand = state["cand"]
    write = state["write"] & active
    read = active & ~state["write"]

    # source part: the unit into source slots V(n) .. V(n+1)-1
    u = jnp.arange(U, dtype=i32)[None]
    v_next = v_now + unit_len.astype(i32)
    sidx = v_now[:, None] + u
    s_ok = read[:, None] & (u < unit_len[:, None])

    # target part: WRITE feeds the candidate (limit V(n)); READ re-feeds the header or the last written token
    refeed_header = read & (j == 0)
    prev = state["tokens"][bi, jnp.maximum(j - 1, 0)]
    one_tok = jnp.where(write, cand, prev)
    one_slot = hlen + jnp.where(write, j, j - 1)
    t_lim = jnp.where(write, v_now, v_next)
    # every slot a fed token may see: the source up to V(n+1), the target group up to the fed slot
    # the layers only read the cache; the fed entries are written after the switch (a switch whose branches
    # wrote the cache would copy all of it at every step)
    window = _window(sh, jnp.max(jnp.where(active, v_next, 0)), jnp.max(jnp.where(active, hlen + j + 1, 0)),
                     write=False)
    T_max = U + sh.header_cap

    def feed(kind):
        with_src, with_header = CHUNK_KINDS[kind]
        Ht = sh.header_cap if with_header else 1
        h = jnp.arange(Ht, dtype=i32)[None]
        # a [.. | 1] chunk only runs when no row re-feeds a header longer than one token (step_kind)
        rf = refeed_header[:, None]
        t_tok = jnp.where(rf, rows["header"][:, :Ht], one_tok[:, None])
        t_slot = jnp.where(rf, h, one_slot[:, None])
        t_ok = jnp.where(rf, h < hlen[:, None], (h == 0) & active[:, None])
        parts = [(t_tok, off[:, None] + t_slot, jnp.where(t_ok, 1, -1), S_cap + t_slot,
                  jnp.broadcast_to(t_lim[:, None], (B, Ht)))]
        if with_src:
            parts.insert(0, (unit.astype(i32), sidx, jnp.where(s_ok, 0, -1), sidx, jnp.zeros((B, U), i32)))
        chunk = tuple(jnp.concatenate([p[k] for p in parts], 1).astype(i32) for k in range(5))
        embeds = None
        if unit_embeds is not None:
            t_emb = embed_ids(sh.config, params, t_tok)
            embeds = jnp.concatenate([unit_embeds.astype(t_emb.dtype), t_emb], 1) if with_src else t_emb
        Us = U if with_src else 0
        row = jnp.where(refeed_header, Us + hlen - 1, Us) if with_header else jnp.full((B,), Us, i32)
        logits, stats, hidden, src, fed = _model(sh, params, chunk, state["cache"], row, rows["plen"], window,
                                                 embeds)
        pad = T_max - chunk[0].shape[1]  # one shape out of every branch: padding entries are dropped
        fed = KVCache(*(jnp.pad(a, ((0, 0), (0, 0), (0, pad), (0, 0), (0, 0))) for a in (fed.k, fed.v)),
                      jnp.pad(fed.segment, ((0, 0), (0, pad)), constant_values=-1))
        return logits, stats, hidden, src, fed, jnp.pad(chunk[3], ((0, 0), (0, pad)))

    kinds = [0, 1] if sh.header_cap == 1 else [0, 1, 2]
    kind = _on_cpu_only(jnp.minimum(step_kind(sh, rows, state, go), len(kinds) - 1), len(kinds) - 1)
    logits, stats, hidden, src, fed, index = jax.lax.switch(kind, [lambda k=k: feed(k) for k in kinds])
    cache = state["cache"].put(fed, index)

    def keep(new, old):  # rows that did not advance keep everything
        return jnp.where(active.reshape((B,) + (1,) * (new.ndim - 1)), new, old)

    out = dict(state, cache=cache, logits=keep(logits, state["logits"]), stats=keep(stats, state["stats"]))
    if sh.with_hidden:
        out["hidden"] = keep(hidden, state["hidden"])
    if sh.with_src_attn:  # a READ's slots belong to unit n+1 (the end marker: M+1)
        out["src_attn"] = keep(src, state["src_attn"])
        out["src_unit"] = state["src_unit"].at[bi[:, None], jnp.where(s_ok, sidx, S_cap)].set(
            jnp.broadcast_to((n + 1)[:, None], sidx.shape), mode="drop")
    wslot = jnp.where(write, j, max_new)
    out["tokens"] = state["tokens"].at[bi, wslot].set(cand, mode="drop")
    out["phi"] = state["phi"].at[bi, wslot].set(n, mode="drop")
    out["words"] = state["words"] + (write & (rows["word_start"][cand] | (j == 0))).astype(i32)
    out["j"] = j + write.astype(i32)
    out["n"] = n + read.astype(i32)
    out["v"] = jnp.where(read, v_next, v_now)
    stop = rows["eos"][cand] if rows["eos"].ndim == 1 else rows["eos"][bi, cand]  # one table, or one per row
    out["done"] = state["done"] | (write & (stop | (out["j"] >= max_new)))
    nxt = _decide(head_vals, rows, out)
    out.update({k: keep(x, state[k]) for k, x in nxt.items()})
    return out


def decode_params(params):
    """The decoder's parameters as the decode loop takes them: on CPU with the layers unstacked (separate
    buffers: :func:`~proactive_jax.models.qwen.unstack_layers`), elsewhere as they are (an unstacked copy would
    double the weights in device memory)."""
    if jax.devices()[0].platform != "cpu" or "layers" not in params or isinstance(params["layers"], tuple):
        return params
    return unstack_layers(params)


def _decode_impl(sh: StepShapes, return_logits: bool, params, head_vals, batch):
    """The batch decoder: prefill, then ``lax.while_loop`` over :func:`decision_step` until every example
    stopped; every decision is recorded. ``batch`` holds ``src`` [B, S_cap], ``vis`` [B, M_cap+2] and the
    :data:`ROW_KEYS`; optionally ``src_embeds`` [B, S_cap, D] (source input embeddings fed instead of ids
    by READs; the prompt is always fed as ids)."""
    global TRACE_COUNT
    TRACE_COUNT += 1
    i32 = jnp.int32
    src, vis = batch["src"], batch["vis"]
    src_embeds = batch.get("src_embeds")
    rows = {k: batch[k] for k in ROW_KEYS}
    B, S_cap = src.shape
    n_vis = vis.shape[1]  # M_cap + 2
    D = n_vis - 1 + sh.max_new  # decisions per example: at most M+1 reads and max_new writes
    bi = jnp.arange(B)
    u = jnp.arange(sh.unit_cap, dtype=i32)[None]
    state = prefill(sh, params, head_vals, rows, src[:, :sh.prompt_cap])
    rec = dict(d=jnp.zeros((B,), i32), score=jnp.zeros((B, D), jnp.float32), rn=jnp.zeros((B, D), i32),
               rwrite=jnp.zeros((B, D), bool), rforced=jnp.zeros((B, D), bool))
    if return_logits:
        rec["rlogits"] = jnp.zeros((B, D, state["logits"].shape[-1]), jnp.float32)

    def cond(c):
        return jnp.any(~c[1]["done"]) & (c[0] < D + 1)

    def body(c):
        it, st, r = c
        active = ~st["done"]
        dslot = jnp.where(active, r["d"], D)  # finished examples record nothing (index dropped)
        put = lambda a, x: a.at[bi, dslot].set(x, mode="drop")  # noqa: E731
        r = dict(r, d=r["d"] + active.astype(i32), score=put(r["score"], st["score"]), rn=put(r["rn"], st["n"]),
                 rwrite=put(r["rwrite"], st["write"] & active), rforced=put(r["rforced"], st["forced"]))
        if return_logits:
            r["rlogits"] = put(r["rlogits"], st["logits"])
        n = st["n"]
        unit_len = vis[bi, jnp.minimum(n + 1, n_vis - 1)] - vis[bi, n]
        sidx = jnp.clip(st["v"][:, None] + u, 0, S_cap - 1)
        unit = jnp.take_along_axis(src, sidx, axis=1)
        emb = None if src_embeds is None else jnp.take_along_axis(src_embeds, sidx[..., None], axis=1)
        st = decision_step(sh, params, head_vals, rows, st, unit, unit_len, active, emb)
        return it + 1, st, r

    _, st, r = jax.lax.while_loop(cond, body, (jnp.zeros((), i32), state, rec))
    return dict(r, tokens=st["tokens"], phi=st["phi"], j=st["j"])


_decode_jit = jax.jit(_decode_impl, static_argnums=(0, 1))


def stream_decode(config: ModelConfig, params, examples: Sequence[StreamExample], head: str | HeadSpec,
                  max_new_tokens: int, eos_ids=None, word_starts=None, batch_size: int | None = None, *,
                  target_offset: int | str = 0, return_logits: bool = False,
                  max_source_len: int | None = None, sort_by_length: bool = True,
                  probe=None) -> list[DecodeResult]:
    """Greedy streaming decode of ``examples`` with a decision head; one :class:`DecodeResult` per example.

    ``head``: a spec string (``"wait-k:k=3"``, ``"entropy:tau=0.3"``, ...) or a :class:`HeadSpec`.
    ``eos_ids``: int or ints that stop an example (None: ``config.eos_ids``). ``word_starts``: bool per
    vocabulary id, True if the token starts a word (None: every token does); shorter tables are padded
    with True. ``batch_size``: examples per jitted loop (None: all at once). ``target_offset``: first GPE
    position of the target group (int, or ``"contiguous"`` for classic positions continuing after the
    source). ``return_logits``: also return the logits at every decision ([D, V] per example: for tests
    and small vocabularies). ``max_source_len``: refuse examples with a longer source.
    ``sort_by_length``: with several batches, group examples of similar M and S (results keep the input
    order). ``probe``: the learned probe's parameters (:mod:`.probe`) for a ``probe`` head (the decoder
    then keeps the decision row's hidden state). All input errors raise ValueError before anything is
    compiled. Audio examples (:class:`~.audio_stream.AudioStreamExample`) feed their units as the carried
    embeddings.

    Shapes are bucketed once per call (:func:`shape_key` over all the examples; batch size rounded by
    :func:`bucket`), so one call compiles at most once, and later calls in the same bucket not at all.
    Split a very heterogeneous dataset into calls by length to keep the caches small.
    """
    spec = parse_head(head)
    head_vals = encode_head(spec, config.num_hidden_layers)
    with_stats = spec.needs_stats
    if spec.needs_probe:
        if probe is None:
            raise ValueError(f"head {spec} needs a probe: pass probe= (train one with `proactive-jax probe train`)")
        check_probe(probe, config)
        head_vals["probe"] = {k: jnp.asarray(v, jnp.float32) for k, v in probe.items()}
        with_stats = with_stats or uses_stats(probe)
    examples = list(examples)
    validate_examples(config, examples, max_new_tokens, target_offset, max_source_len)
    V = config.vocab_size
    ws = np.ones(V, bool) if word_starts is None else vocab_table(word_starts, V, "word_starts", True)
    if eos_ids is None:
        eos_ids = config.eos_ids
    eos_ids = [int(eos_ids)] if np.ndim(eos_ids) == 0 else [int(x) for x in eos_ids]
    check_ids(eos_ids, V, "eos_ids")
    eos = np.zeros(V, bool)
    eos[eos_ids] = True
    if batch_size is not None and (not isinstance(batch_size, (int, np.integer)) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")
    size = len(examples) if batch_size is None else min(int(batch_size), len(examples))
    B = bucket(size)
    # one shape bucket for the whole call (one compilation), and batches of similar length (fewer idle
    # rows: a batch loops until its longest example is done); results come back in the input order
    key = shape_key(examples)
    order = (sorted(range(len(examples)), key=lambda i: (examples[i].M, examples[i].S))
             if sort_by_length and size < len(examples) else list(range(len(examples))))

    results: list[DecodeResult | None] = [None] * len(examples)
    loop_params = decode_params(params)
    for start in range(0, len(examples), size):
        ids = order[start:start + size]
        chunk = [examples[i] for i in ids]
        batch, P_cap, U = host_batch(chunk, B, int(max_new_tokens), target_offset, ws, eos, key)
        if audio_stream.has_audio(chunk):  # audio units are fed as their embeddings (method.md section 7b)
            batch["src_embeds"] = audio_stream.source_embeds(config, params, chunk, B, key[1], batch["src"])
        sh = StepShapes(config, with_stats, spec.needs_probe, int(max_new_tokens), P_cap, U, key[1], key[3],
                        spec.needs_src_attn)
        out = call_stored(_decode_impl, (sh, bool(return_logits)), loop_params, head_vals, batch, jitted=_decode_jit)
        out = jax.device_get(out)
        for b, (i, e) in enumerate(zip(ids, chunk)):
            L, D = int(out["j"][b]), int(out["d"][b])
            toks = np.asarray(out["tokens"][b, :L], np.int32)
            results[i] = DecodeResult(
                tokens=toks, phi=np.asarray(out["phi"][b, :L], np.int32),
                scores=np.asarray(out["score"][b, :D], np.float32), writes=np.asarray(out["rwrite"][b, :D]),
                reads=np.asarray(out["rn"][b, :D], np.int32), forced=np.asarray(out["rforced"][b, :D]),
                M=e.M, finished=bool(L > 0 and eos[toks[-1]]),
                logits=np.asarray(out["rlogits"][b, :D]) if return_logits else None)
    return results
