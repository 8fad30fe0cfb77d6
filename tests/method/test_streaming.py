"""Read schedules, visibility limits and the packed mask vectors against brute-force references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from proactive_jax.models.attention import visibility_mask
from proactive_jax.method.objective import ObjectiveConfig, batch_schedules, pack_batch, packed_inputs, stream_limits
from proactive_jax.data.example import ExampleError, StreamExample, visible_counts
from proactive_jax.method.streaming import sample_schedule, validate_phi, wait_k_schedule
from tests.streaming_util import random_example, random_phi

L_CAP, M_CAP = 12, 20


@pytest.fixture(scope="module")
def draw_many():
    f = jax.jit(jax.vmap(lambda k, m, l, a: sample_schedule(k, m, l, L_CAP, M_CAP, a), in_axes=(0, None, None, None)),
                static_argnums=())

    def draw(m, l, alpha=0.0, n=4000, seed=0):
        keys = jax.random.split(jax.random.PRNGKey(seed), n)
        return np.asarray(f(keys, m, l, alpha))
    return draw


@pytest.mark.parametrize("m,l", [(1, 1), (5, 3), (9, 9), (20, 12), (3, 10)])
def test_sampled_schedules_are_valid(draw_many, m, l):
    phi = draw_many(m, l, n=500)
    assert phi.shape == (500, L_CAP)
    assert np.all(np.diff(phi, axis=1) >= 0), "phi must be non-decreasing"
    assert np.all(phi[:, l - 1] == m + 1), "phi(L) must equal the budget M+1"
    assert np.all(phi >= 0) and np.all(phi <= m + 1)
    assert np.all(phi[:, l:] == m + 1), "padded positions j > L hold M+1"


def test_uniform_mean_matches_multinomial_expectation(draw_many):
    m, l, n = 15, 7, 6000
    phi = draw_many(m, l, n=n)
    j = np.arange(1, l + 1)
    expected = (j + 1) * (m + 1) / (l + 1)
    # std of a binomial sum <= sqrt(B/4); 5 standard errors
    tol = 5 * np.sqrt((m + 1) / 4) / np.sqrt(n)
    np.testing.assert_allclose(phi[:, :l].mean(0), expected, atol=tol)


def test_trailing_reads_leave_budget_after_the_last_token():
    m, l, n = 15, 4, 6000
    keys = jax.random.split(jax.random.PRNGKey(9), n)
    f = jax.jit(jax.vmap(lambda k: sample_schedule(k, m, l, L_CAP, M_CAP, 0.0, True)))
    phi = np.asarray(f(keys))
    assert np.all(np.diff(phi[:, :l], axis=1) >= 0) and phi.min() >= 0 and phi[:, :l].max() <= m + 1
    assert np.all(phi[:, l:] == m + 1)
    assert (phi[:, l - 1] < m + 1).mean() > 0.5, "the last token must often see less than everything"
    j = np.arange(1, l + 1)
    tol = 5 * np.sqrt((m + 1) / 4) / np.sqrt(n)
    np.testing.assert_allclose(phi[:, :l].mean(0), (j + 1) * (m + 1) / (l + 2), atol=tol)


def test_alpha_shifts_reads(draw_many):
    m, l = 15, 7
    base = draw_many(m, l, 0.0, n=3000)[:, :l - 1].mean(0)
    later = draw_many(m, l, 2.0, n=3000)[:, :l - 1].mean(0)  # weight on late cells: fewer reads early
    earlier = draw_many(m, l, -2.0, n=3000)[:, :l - 1].mean(0)
    assert np.all(later < base - 0.3)
    assert np.all(earlier > base + 0.3)


def test_same_key_same_draws_and_fold_in_step(draw_many):
    a = draw_many(6, 5, n=50, seed=3)
    b = draw_many(6, 5, n=50, seed=3)
    c = draw_many(6, 5, n=50, seed=4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_batched_schedules_with_padding_rows():
    rng = np.random.default_rng(0)
    exs = [random_example(rng) for _ in range(5)]
    batch = pack_batch(exs, (32, 16), batch_size=8)
    key = jax.random.fold_in(jax.random.PRNGKey(0), 7)
    phi = np.asarray(jax.jit(batch_schedules, static_argnums=2)(batch, key, ObjectiveConfig()))
    for i, ex in enumerate(exs):
        p = phi[i, :ex.L]
        assert np.all(np.diff(p) >= 0) and p[-1] == ex.M + 1 and p.min() >= 0
    # padding rows (M = 0, L = 0) still produce finite valid numbers
    assert np.all(phi[5:] >= 0)
    # per-row keys: a row's draw does not depend on the other rows in the batch
    batch2 = pack_batch(exs[:1] + exs[1:3], (32, 16), batch_size=8)
    phi2 = np.asarray(jax.jit(batch_schedules, static_argnums=2)(batch2, key, ObjectiveConfig()))
    np.testing.assert_array_equal(phi2[:3], phi[:3])


def test_wait_k_schedule_formula():
    phi = np.asarray(wait_k_schedule(4, 8, 3))
    np.testing.assert_array_equal(phi, [3, 4, 5, 5, 5, 5, 5, 5])
    word = np.array([1, 1, 2, 3, 3, 3, 4, 4])
    np.testing.assert_array_equal(np.asarray(wait_k_schedule(10, 8, 2, word)), [2, 2, 3, 4, 4, 4, 5, 5])


def test_validate_phi_errors():
    with pytest.raises(ExampleError, match="non-decreasing"):
        validate_phi([2, 1], 3, 2)
    with pytest.raises(ExampleError, match=r"0\.\.M\+1 = 0\.\.4"):
        validate_phi([0, 5], 3, 2)
    with pytest.raises(ExampleError, match="expected 3 read counts"):
        validate_phi([0, 1], 3, 3)


def test_example_validation():
    with pytest.raises(ExampleError, match=r"units\[1\] is empty"):
        StreamExample(prompt=[1], units=[[2], []], end=[3], header=[4], target=[5])
    with pytest.raises(ExampleError, match="units is empty"):
        StreamExample(prompt=[1], units=[], end=[3], header=[4], target=[5])
    np.testing.assert_array_equal(visible_counts(2, [1, 3], 2), [2, 3, 6, 8])


def brute_force_visibility(ex: StreamExample, phi, s_cap: int, t_cap: int) -> np.ndarray:
    """Per query, per key, from the method.md rules (independent of the library's vectors)."""
    S, H, L, T = ex.S, len(ex.header), ex.L, ex.T
    V = [len(ex.prompt) + sum(len(u) for u in ex.units[:min(n, ex.M)]) + (len(ex.end) if n == ex.M + 1 else 0)
         for n in range(ex.M + 2)]
    n_all = s_cap + 2 * t_cap
    allowed = np.zeros((n_all, n_all), bool)

    def role(i):
        if i < s_cap:
            return ("src", i) if i < S else None
        c, r = divmod(i - s_cap, t_cap)
        return (("batch", "stream")[c], r) if r < T else None

    for qi in range(n_all):
        q = role(qi)
        if q is None:
            continue
        for ki in range(n_all):
            k = role(ki)
            if k is None:
                continue
            if q[0] == "src":
                allowed[qi, ki] = k[0] == "src" and k[1] <= q[1]
            elif k[0] == q[0]:
                allowed[qi, ki] = k[1] <= q[1]
            elif k[0] == "src":
                if q[0] == "batch":
                    allowed[qi, ki] = True
                else:
                    r = q[1]
                    j = 1 if r < H else min(r - H + 2, L)  # header rows: phi(1); row of y_{j-1}: phi(j)
                    allowed[qi, ki] = k[1] < V[phi[j - 1]]
    return allowed


@pytest.mark.parametrize("seed", range(6))
def test_packed_mask_vectors_equal_brute_force(seed):
    rng = np.random.default_rng(seed)
    exs = [random_example(rng) for _ in range(3)]
    phis = [random_phi(rng, ex) for ex in exs]
    s_cap, t_cap = 24, 12
    batch = pack_batch(exs, (s_cap, t_cap), batch_size=4, phi=phis)
    jb = jax.tree_util.tree_map(jnp.asarray, batch)
    obj = ObjectiveConfig(schedule="given")
    limits = stream_limits(jb, batch_schedules(jb, None, obj))
    _, _, mv = packed_inputs(jb, limits, obj)
    mask = np.asarray(visibility_mask(mv, mv.segment, mv.index))
    for i, (ex, phi) in enumerate(zip(exs, phis)):
        np.testing.assert_array_equal(mask[i], brute_force_visibility(ex, phi, s_cap, t_cap))
    assert not mask[3].any(), "padding rows see nothing"


def test_uniform_schedule_is_monotone_ends_at_m_plus_1_and_spreads_reads_evenly():
    """The naive baseline: each read count uniform in 0..M+1 (sorted). With one token and trailing reads its
    marginal is flat over the M+2 values; the multinomial budget with L = 1 instead puts the read count at M+1
    or below it binomially (a different distribution: the test tells them apart)."""
    from proactive_jax.method.streaming import uniform_schedule

    M, L, cap = 6, 4, 8
    keys = jax.random.split(jax.random.PRNGKey(3), 4000)
    phi = np.asarray(jax.jit(jax.vmap(lambda k: uniform_schedule(k, M, L, cap)))(keys))
    assert np.all(np.diff(phi[:, :L], axis=1) >= 0) and np.all(phi[:, L - 1] == M + 1) and np.all(phi[:, L:] == M + 1)
    assert phi.min() == 0
    one = np.asarray(jax.jit(jax.vmap(lambda k: uniform_schedule(k, M, 1, cap, trailing=True)))(keys))[:, 0]
    freq = np.bincount(one, minlength=M + 2) / one.size
    assert np.allclose(freq, 1 / (M + 2), atol=0.025), freq
    multi = np.asarray(jax.jit(jax.vmap(lambda k: sample_schedule(k, M, 1, cap, M, trailing=True)))(keys))[:, 0]
    assert abs(np.bincount(multi, minlength=M + 2)[0] / multi.size - freq[0]) > 0.05
    rng = np.random.default_rng(0)
    batch = pack_batch([random_example(rng) for _ in range(3)], (32, 16), batch_size=4)
    p = np.asarray(jax.jit(batch_schedules, static_argnums=2)(batch, jax.random.PRNGKey(0),
                                                               ObjectiveConfig(schedule="uniform")))
    assert np.all(np.diff(p[:3], axis=1) >= 0)
