"""Read schedules and the visibility they imply (method.md sections 3-4); the examples themselves are
:class:`proactive_jax.data.example.StreamExample`.

Everything here is a pure function of token counts: no tokenizer, no model.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np

from proactive_jax.data.example import ExampleError



# ---------------------------------------------------------------------------------------------
# Read schedules (method.md sections 3-4). All jnp functions work on one example with static caps
# (``l_cap`` target tokens, ``m_cap`` units) and are vmapped over a padded batch by the caller.
# ---------------------------------------------------------------------------------------------

def budget_weights(l_cap: int, num_tokens, alpha: float = 0.0, trailing: bool = False):
    """Cell weights ``w_k ∝ (k+1)^alpha`` for k = 0..L (0..L+1 with ``trailing``); cells past the
    example's own count get weight 0. Returns ``[l_cap + 1 + trailing]``."""
    k = jnp.arange(l_cap + 1 + int(trailing), dtype=jnp.float32)
    w = (k + 1.0) ** alpha
    return jnp.where(k <= num_tokens + int(trailing), w, 0.0)


def sample_schedule(key, num_units, num_tokens, l_cap: int, m_cap: int, alpha: float = 0.0,
                    trailing: bool = False):
    """One draw of ``phi`` (int32 ``[l_cap]``; entries j >= L are padding, set to M+1).

    ``Delta ~ Multinomial(M+1, w)`` over the L+1 cells 0..L, ``phi(j) = Delta_0 + ... + Delta_j`` for
    j = 1..L, so ``phi`` is non-decreasing and ``phi(L) = M+1`` (method.md section 4).
    ``trailing=True`` (ours) adds a cell L+1 for reads after the last token, so ``phi(L) <= M+1``: the
    end-of-turn token is then also trained under partial input (the stream may go on after the answer
    is complete), which the default never does. ``m_cap`` bounds M (static). Implemented as M+1
    categorical draws by inverse CDF, counted per cell; draws past M+1 are masked.
    """
    w = budget_weights(l_cap, num_tokens, alpha, trailing)
    cdf = jnp.cumsum(w) / jnp.sum(w)
    u = jax.random.uniform(key, (m_cap + 1,), jnp.float32)
    cells = jnp.clip(jnp.searchsorted(cdf, u, side="right"), 0, num_tokens + int(trailing))
    valid = jnp.arange(m_cap + 1) < num_units + 1
    delta = jnp.zeros((l_cap + 1 + int(trailing),), jnp.int32).at[cells].add(valid.astype(jnp.int32))
    phi = jnp.cumsum(delta)[1:l_cap + 1]  # phi(j) for j = 1..l_cap
    j = jnp.arange(1, l_cap + 1)
    return jnp.where(j <= num_tokens, phi, num_units + 1).astype(jnp.int32)


def uniform_schedule(key, num_units, num_tokens, l_cap: int, trailing: bool = False):
    """The naive baseline the paper compares its budget with: each token's read count drawn uniformly from 0..M+1
    independently, then sorted (monotone), ``phi(L) = M+1`` unless ``trailing``; padding entries are M+1. Unlike
    the multinomial budget, the read rates it trains on are spread evenly, short contexts included."""
    draws = jax.random.randint(key, (l_cap,), 0, num_units + 2)
    j = jnp.arange(1, l_cap + 1)
    phi = jnp.sort(jnp.where(j <= num_tokens, draws, num_units + 1))
    if not trailing:
        phi = jnp.where(j == num_tokens, num_units + 1, phi)
    return phi.astype(jnp.int32)


def full_schedule(num_units, l_cap: int):
    """The batch view: every token written after everything (end marker included) was read."""
    return jnp.full((l_cap,), num_units + 1, jnp.int32)


def wait_k_schedule(num_units, l_cap: int, k: int, word_index=None):
    """Wait-k: token j (1-based) of target word w is written after ``min(k + w - 1, M+1)`` reads.

    ``word_index`` ([l_cap], 1-based word number of each target token) makes it word level; None means
    every token is its own word (token level).
    """
    w = jnp.arange(1, l_cap + 1) if word_index is None else jnp.asarray(word_index)
    return jnp.minimum(k + w - 1, num_units + 1).astype(jnp.int32)


def target_row_limits(phi, vis, header_len, num_tokens, t_cap: int):
    """Visible source tokens for each target-group row (header + target), by the shift-by-one rule.

    Row r holds target-group token r. Header rows (r < H) see ``V(phi(1))``; the row holding y_{j-1}
    (r = H + j - 2) predicts y_j and sees ``V(phi(j))``; the last row (y_L) sees ``V(phi(L))``.
    ``phi`` [l_cap] (entry j-1 is phi(j)), ``vis`` [m_cap + 2] is V(0..M+1). Returns int32 ``[t_cap]``.
    """
    r = jnp.arange(t_cap)
    j = jnp.clip(r - header_len + 2, 1, jnp.maximum(num_tokens, 1))
    return vis[phi[j - 1]].astype(jnp.int32)


def validate_phi(phi, num_units: int, num_tokens: int, where: str = "phi") -> np.ndarray:
    """Check an explicit schedule: length L, non-decreasing, values in 0..M+1."""
    p = np.asarray(phi)
    if p.ndim != 1 or p.shape[0] != num_tokens:
        raise ExampleError(f"{where}: expected {num_tokens} read counts (one per target token), got shape {p.shape}")
    if not np.issubdtype(p.dtype, np.integer):
        if not np.all(np.equal(np.mod(p, 1), 0)):
            raise ExampleError(f"{where}: read counts must be integers, got {p.tolist()}")
        p = p.astype(np.int64)
    if p.size and (p.min() < 0 or p.max() > num_units + 1):
        raise ExampleError(f"{where}: read counts must lie in 0..M+1 = 0..{num_units + 1}, got {p.tolist()}")
    if p.size > 1 and np.any(np.diff(p) < 0):
        raise ExampleError(f"{where}: read counts must be non-decreasing, got {p.tolist()}")
    return p.astype(np.int32)
