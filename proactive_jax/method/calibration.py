"""Quantile thresholds (``tau=qX``) calibrated on the states where a head actually decides (method.md 5).

The calibration pool of a head (ours): for each calibration example, along a reference trajectory (the
``batch`` head's written prefix y_1..y_L), at every read count n from 0 to M, the head's statistic for the
next token y_j given V(n), kept only where the statistic decides: never at n = M+1 (forced WRITE), below
the head's ``min_read`` (forced READ), or for a word-continuation candidate under ``decide_at=word``
(forced WRITE) -- exactly :func:`.heads.decide_encoded`'s ``forced`` flag. The states are computed with
the model's forward, not by decoding: one packed forward per read count over all target rows, every
target row seeing V(n) (the state of a decoder that wrote the prefix at read count n), attention
statistics and the probe's p from the same pass.

Which decided states are pooled (``pool``):

- ``"sufficient"`` (default): only the decided states where V(n) is *sufficient* for the next token by the
  method's own self-label (:func:`.probe.self_labels`: the stream view at V(n) and the full view agree on
  the argmax and ``KL(P_full || P_stream(n)) <= eps``), the states where writing is safe. Both views come
  out of the same packed forward, so this costs nothing extra.
- ``"decided"``: every decided state (the previous meaning; kept as an option).

``qX`` means: **tau such that a fraction X of the pool would WRITE**, whichever direction the head writes
in (:func:`.heads.write_direction`): for entropy (write if <= tau) tau is the X-quantile of the pool, for
``stat=max`` or the probe (write if >= tau) the (1-X)-quantile. With the default pool, q0.9 means "the
head writes at 90% of the calibration states where writing is safe" (its recall of sufficient states is
0.9; it still reads at the insufficient states it can tell apart), q0.1 "at 10% of them". Why not the
whole decided pool: its share of sufficient states depends on the task (on lookup ~56%: the answer needs
one evidence unit anywhere in the stream), so "write at 90% of all decided states" forces writes at
insufficient states whenever fewer than 90% are sufficient -- it measures the pool's composition, not the
head. See docs/decisions.md (quantile calibration) for the measured comparison.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from functools import partial
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from proactive_jax.models.config import ModelConfig
from proactive_jax.method.heads import DecisionState, HeadSpec, decide_encoded, encode_head, parse_head, write_direction
from proactive_jax.method.objective import ObjectiveConfig, pack_batch
from proactive_jax.method.probe import dual_view_states, probe_logit, self_labels, sweep_schedules
from proactive_jax.method.shapes import stream_bucket
from proactive_jax.data.example import StreamExample
from proactive_jax.errors import EvalError

log = logging.getLogger(__name__)

POOLS = ("sufficient", "decided")
DEFAULT_POOL = "sufficient"
DEFAULT_EPS = 0.1  # the self-label KL bound (the probe's default, method.md section 5)


class CalibrationError(EvalError):
    """Calibration cannot run (no states, a probe head without a probe, ...)."""


@dataclasses.dataclass(frozen=True)
class CalibrationPool:
    """The head's statistic at the decided states: ``scores`` [P] and where each came from."""

    spec: str
    scores: np.ndarray  # float32 [P]
    example: np.ndarray  # int32 [P]: calibration example index
    position: np.ndarray  # int32 [P]: j, the target token being decided (1-based)
    reads: np.ndarray  # int32 [P]: the read count n
    sufficient: np.ndarray  # bool [P]: V(n) suffices for the next token (self-label at the pool's eps)

    def __len__(self):
        return int(self.scores.shape[0])


@partial(jax.jit, static_argnums=(0, 1))
def _row_decisions(config: ModelConfig, obj: ObjectiveConfig, params, head_vals, batch, phi, ws_tab, probe, eps):
    """Every target row's decision at the sweep schedule ``phi``: ``(write, score, forced, valid,
    sufficient)`` [B, T]."""
    out = dual_view_states(config, obj, params, batch, phi)
    b, t = batch["target"].shape
    tgt = batch["target"]
    h = batch["header_len"][:, None]
    r = jnp.arange(t)[None, :]
    holds_y = (r >= h) & (r < h + batch["target_len"][:, None])
    starts = holds_y & (ws_tab[tgt] | (r == h))  # the first target token starts word 1
    words = jnp.cumsum(starts.astype(jnp.int32), axis=1)  # words among the written y_1..y_{r-H+1}
    logits = out["stream_logits"]
    cand = jnp.argmax(logits, -1)
    p = None if probe is None else jax.nn.sigmoid(probe_logit(probe, out["features"]))
    m = jnp.broadcast_to(batch["num_units"][:, None], (b, t))
    state = DecisionState(logits, out["stream_stats"], out["n"], m, jnp.maximum(r - h + 1, 0) + 0 * m, words,
                          ws_tab[cand], p)
    dec = jax.vmap(jax.vmap(decide_encoded, in_axes=(None, 0)), in_axes=(None, 0))
    write, score, forced = dec(head_vals, state)
    sufficient, _ = self_labels(out["full_logits"], logits, eps)
    return write, score, forced, out["valid"], sufficient


def check_pool(pool: str, eps: float) -> None:
    if pool not in POOLS:
        raise CalibrationError(f"calibration pool {pool!r}; expected one of {POOLS}")
    if not eps >= 0:
        raise CalibrationError(f"calibration eps={eps}: expected a non-negative KL bound")


def calibration_pool(config: ModelConfig, params, examples: Sequence[StreamExample], prefixes: Sequence,
                     spec: str | HeadSpec, word_starts=None, *, probe: Mapping | None = None, target_offset=0,
                     batch_size: int = 64, return_writes: bool = False, pool: str = DEFAULT_POOL,
                     eps: float = DEFAULT_EPS):
    """The pool of ``spec``'s statistic along the reference ``prefixes`` (one token list per example,
    normally the batch head's output). ``word_starts``: bool per vocabulary id (None: every token starts a
    word). ``pool``/``eps``: which decided states (module docstring). With ``return_writes``, also the
    head's WRITE flag at each pooled state (for tests)."""
    check_pool(pool, eps)
    spec = parse_head(spec)
    if spec.needs_src_attn:  # alignatt's statistic is a lag in units, not a score a quantile can set
        raise CalibrationError(f"head {spec} has no tau to calibrate; sweep f as separate head specs")
    if spec.needs_probe and probe is None:
        raise CalibrationError(f"head {spec} needs a probe (train one with `proactive-jax probe train`)")
    pairs = [(i, dataclasses.replace(ex, target=tuple(int(x) for x in p)))
             for i, (ex, p) in enumerate(zip(examples, prefixes)) if len(p)]
    if len(prefixes) != len(examples):
        raise CalibrationError(f"{len(prefixes)} reference prefixes for {len(examples)} calibration examples")
    if not pairs:
        raise CalibrationError("no calibration example has a non-empty reference prefix")
    V = config.vocab_size
    ws = np.ones(V, bool) if word_starts is None else np.asarray(word_starts, bool)
    if ws.shape[0] < V:
        ws = np.concatenate([ws, np.ones(V - ws.shape[0], bool)])
    exs = [e for _, e in pairs]
    s_cap, t_cap, m_cap = stream_bucket(exs)
    obj = ObjectiveConfig(schedule="given", target_offset=target_offset)
    vals = encode_head(spec, config.num_hidden_layers)
    got = {k: [] for k in ("score", "example", "position", "reads", "write", "sufficient")}
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        batch = pack_batch([e for _, e in chunk], (s_cap, t_cap), batch_size=batch_size, m_cap=m_cap)
        jb = jax.tree_util.tree_map(jnp.asarray, batch)
        for n in range(m_cap + 1):
            write, score, forced, valid, suff = jax.device_get(_row_decisions(
                config, obj, params, vals, jb, jnp.asarray(sweep_schedules(batch, n)), jnp.asarray(ws[:V]), probe,
                jnp.float32(eps)))
            keep = valid & ~forced & (suff if pool == "sufficient" else True)
            bi, ri = np.nonzero(keep)
            got["score"].append(score[bi, ri])
            got["example"].append(np.asarray([chunk[k][0] for k in bi], np.int32))
            got["position"].append((ri - batch["header_len"][bi] + 2).astype(np.int32))
            got["reads"].append(np.full(len(bi), n, np.int32))
            got["write"].append(write[bi, ri])
            got["sufficient"].append(suff[bi, ri])
    cat = {k: np.concatenate(v) if v else np.zeros(0) for k, v in got.items()}
    out = CalibrationPool(str(spec), cat["score"].astype(np.float32), cat["example"].astype(np.int32),
                          cat["position"].astype(np.int32), cat["reads"].astype(np.int32),
                          cat["sufficient"].astype(bool))
    return (out, cat["write"].astype(bool)) if return_writes else out


def quantile_tau(scores, quantile: float, direction: str) -> float:
    """tau such that a fraction ``quantile`` of ``scores`` would WRITE (``direction`` from
    :func:`.heads.write_direction`: ``"low"`` writes if score <= tau, ``"high"`` if score >= tau).

    tau is one of the pool's own values (the ceil(X * P)-th in writing order), so exactly
    ceil(X * P) / P of the pool writes when the scores are distinct; clipped to [0, 1]."""
    if not 0.0 <= quantile <= 1.0:
        raise CalibrationError(f"quantile must be in [0, 1], got {quantile}")
    if direction not in ("low", "high"):
        raise CalibrationError(f"direction must be 'low' or 'high', got {direction!r}")
    s = np.sort(np.asarray(scores, np.float32).reshape(-1))
    if s.size == 0:
        raise CalibrationError("empty calibration pool: the head never decides on these examples")
    if direction == "high":
        s = s[::-1]
    k = math.ceil(quantile * s.size - 1e-9)
    if k == 0:
        tau = np.nextafter(s[0], np.float32(-np.inf if direction == "low" else np.inf))
    else:
        tau = s[k - 1]
    return float(np.clip(tau, 0.0, 1.0))


def calibrate(config: ModelConfig, params, examples, prefixes, spec, quantile: float, word_starts=None, *,
              probe=None, target_offset=0, batch_size: int = 64, pool: str = DEFAULT_POOL,
              eps: float = DEFAULT_EPS) -> dict:
    """``{"tau", "pool", "pool_size", "write_fraction", "reads_histogram"}`` for ``spec`` at
    ``tau=q<quantile>`` (``pool``: which states, see the module docstring)."""
    kind = pool
    pool = calibration_pool(config, params, examples, prefixes, spec, word_starts, probe=probe,
                            target_offset=target_offset, batch_size=batch_size, pool=kind, eps=eps)
    if len(pool) == 0:
        raise CalibrationError(f"empty calibration pool ({kind}): {spec} has no "
                               + ("sufficient " if kind == "sufficient" else "") + "decided state on the "
                               f"{len(examples)} calibration examples" + (f" at eps={eps:g}" if kind == "sufficient"
                                                                           else ""))
    direction = write_direction(spec)
    tau = quantile_tau(pool.scores, quantile, direction)
    writes = pool.scores <= np.float32(tau) if direction == "low" else pool.scores >= np.float32(tau)
    hist = np.bincount(pool.reads).tolist() if len(pool) else []
    log.info("calibrated %s at q%s: tau=%.4g on %d %s states (write fraction %.3f)", spec, quantile, tau,
             len(pool), kind, float(writes.mean()))
    return {"tau": tau, "pool": kind if kind == "decided" else f"{kind}@eps={eps:g}", "pool_size": len(pool),
            "write_fraction": float(writes.mean()), "reads_histogram": hist}
