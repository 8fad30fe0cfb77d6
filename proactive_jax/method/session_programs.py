"""The device programs of live sessions (:mod:`.session`): jitted, on fixed-shape caches.

- :func:`advance`: one push = a ``lax.while_loop`` over :func:`.decode.decision_step` (the batch decoder's
  step) while some row can advance; ``step_jit`` is that step alone (one dispatch per decision).
- :func:`rejoin`: :func:`.decode.prefill` kept only for some rows: creating a batch (every row) and a row
  released or joining later run the same program, so a server reusing slots never recompiles.
- :func:`unit_embeds`: a READ's input embeddings in audio sessions (audio chunks, or the end marker's ids).

``TRACE_COUNT`` counts the traces of these programs (a trace = a compilation for new shapes).
"""

from __future__ import annotations

import logging
from functools import partial

import jax
import jax.numpy as jnp

from proactive_jax.models.config import ModelConfig
from proactive_jax.models.qwen import embed_ids
from proactive_jax.method.decode import StepShapes, decision_step, prefill

log = logging.getLogger(__name__)

TRACE_COUNT = 0  # incremented each time a session program is traced (compiled for new shapes)


def _traced(fn):
    def run(*args, **kw):
        global TRACE_COUNT
        TRACE_COUNT += 1
        return fn(*args, **kw)
    return run


step_jit = jax.jit(_traced(decision_step), static_argnums=0, donate_argnums=4)
PENDING = ("cand", "write", "score", "forced", "done")


def advance(sh: StepShapes, params, head_vals, rows, state, unit, unit_len, has_unit, unit_embeds=None):
    """``lax.while_loop`` over :func:`.decode.decision_step`: every row advances while its pending decision
    is WRITE, or READ with its unit (``has_unit``) not yet read; records each decision (at most
    ``max_new + 1`` per row: one READ and the writes). Returns (state, records, decisions per row, steps,
    the pending decisions)."""
    B, K = unit.shape[0], sh.max_new + 1
    bi = jnp.arange(B)
    rec = dict(cand=jnp.zeros((B, K), jnp.int32), write=jnp.zeros((B, K), bool),
               score=jnp.zeros((B, K), jnp.float32), forced=jnp.zeros((B, K), bool))

    def can_go(st, has):
        return ~st["done"] & (st["write"] | has)

    def cond(c):
        st, has, _, _, it = c
        return jnp.any(can_go(st, has)) & (it < K)

    def body(c):
        st, has, r, k, it = c
        go = can_go(st, has)
        slot = jnp.where(go, k, K)
        r = {name: r[name].at[bi, slot].set(st[name], mode="drop") for name in r}
        has = has & ~(go & ~st["write"])
        st = decision_step(sh, params, head_vals, rows, st, unit, unit_len, go, unit_embeds)
        return st, has, r, k + go.astype(jnp.int32), it + 1

    st, _, rec, k, steps = jax.lax.while_loop(cond, body, (state, has_unit, rec, jnp.zeros((B,), jnp.int32),
                                                           jnp.zeros((), jnp.int32)))
    return st, rec, k, steps, {name: st[name] for name in PENDING}


advance_jit = jax.jit(_traced(advance), static_argnums=0, donate_argnums=4)


def rejoin(sh: StepShapes, params, head_vals, rows, state, prompt, mask):
    """:func:`.decode.prefill` of the whole batch, kept only for the rows in ``mask`` [B] (a row joining or
    released); the other rows keep their state. Cache K/V are ``[layers, B, ...]``, the rest ``[B, ...]``."""
    new = prefill(sh, params, head_vals, rows, prompt)

    def pick(path, a, b):
        axis = 1 if getattr(path[0], "key", None) == "cache" and getattr(path[-1], "name", None) in ("k", "v") else 0
        shape = [1] * a.ndim
        shape[axis] = -1
        return jnp.where(mask.reshape(shape), a, b)

    return jax.tree_util.tree_map_with_path(pick, new, state)


rejoin_jit = jax.jit(_traced(rejoin), static_argnums=0, donate_argnums=4)
_BLANK: dict = {}


def blank_state(shapes: StepShapes, batch: int, params, head_vals, rows, prompt):
    """Zeros shaped like the prefill's state (the state that :func:`rejoin` fills on creation)."""
    key = (shapes, batch, jax.tree_util.tree_structure(head_vals))
    if key not in _BLANK:
        _BLANK[key] = jax.eval_shape(partial(prefill, shapes), params, head_vals, rows, prompt)
    return jax.tree_util.tree_map(lambda a: jnp.zeros(a.shape, a.dtype), _BLANK[key])


def unit_embeds(config: ModelConfig, params, unit, chunk_embeds, from_ids):
    """The input embeddings of a READ's units [B, U, D]: audio chunks (padded to U), or the table rows of
    the unit ids (the end marker) when ``from_ids``, as the batch decoder's ``src_embeds`` holds them."""
    pad = unit.shape[1] - chunk_embeds.shape[1]
    chunk = jnp.pad(chunk_embeds.astype(jnp.float32), ((0, 0), (0, pad), (0, 0)))
    return jnp.where(from_ids, embed_ids(config, params, unit).astype(jnp.float32), chunk)


unit_embeds_jit = jax.jit(unit_embeds, static_argnums=0)
