"""Quantile calibration along reference trajectories: the pool holds the head's
statistic exactly at the states where it decides (by default only those where V(n) is sufficient by the
self-label), recomputed here by brute force with separate stream-view and full-view passes; qX writes at X
of the pool."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from proactive_jax.method.calibration import CalibrationError, calibrate, calibration_pool, quantile_tau
from proactive_jax.method.decode import stream_decode
from proactive_jax.method.heads import DecisionState, decide, parse_head
from proactive_jax.method.probe import full_kl, init_probe, probe_prob
from proactive_jax.models.attention import MaskVectors
from proactive_jax.method.attention_stats import hidden_and_stats
from proactive_jax.models.qwen import hidden_to_logits
from tests.helpers import tiny_qwen3
from tests.method.util import random_examples, random_params, sharpen

MAX_NEW = 6
T_PAD = 40
EPS = 0.5  # self-label KL bound for the random tiny model (both labels occur; checked below)


@pytest.fixture(scope="module")
def setup():
    cfg = tiny_qwen3()
    params = sharpen(cfg, random_params(cfg, 2))
    rng = np.random.default_rng(3)
    exs = random_examples(rng, 5)
    ws = rng.random(cfg.vocab_size) < 0.6
    prefixes = [r.tokens for r in stream_decode(cfg, params, exs, "batch", MAX_NEW, eos_ids=[], word_starts=ws)]
    probe = init_probe(jax.random.PRNGKey(0), cfg.hidden_size + 3, "mlp", 8)
    probe = {**probe, "b2": probe["b2"] + 0.3}
    return dict(cfg=cfg, params=params, exs=exs, ws=ws, prefixes=prefixes, probe=probe)


@functools.partial(jax.jit, static_argnums=0)
def _brute(cfg, params, ids, pos, seg, idx, lim, stream_start, row):
    h, stats = hidden_and_stats(cfg, params, ids, pos, MaskVectors(seg, idx, lim), stream_start)
    logits = hidden_to_logits(cfg, params, h[:, row][:, None])[0, 0]
    return h[0, row], logits, stats[:, 0, row]


def _brute_state(s, ex, prev, n):
    """``(hidden, logits, stats)`` of the next token after ``prev`` given V(n), as its own sequence
    [source[:V(n)] | header + prev] (n = M+1: the full view)."""
    V, src, hdr, P = ex.visible_counts(), list(ex.source), list(ex.header), len(ex.prompt)
    sv, tl = int(V[n]), len(hdr) + len(prev)
    ids = src[:sv] + hdr + prev
    pad = T_PAD - len(ids)
    arr = lambda xs, fill: jnp.asarray([xs + [fill] * pad], jnp.int32)  # noqa: E731
    return _brute(s["cfg"], s["params"], arr(ids, 0), arr(list(range(sv)) + list(range(tl)), 0),
                  arr([0] * sv + [1] * tl, -1), arr(list(range(sv)) + list(range(tl)), 0),
                  arr([0] * sv + [sv] * tl, 0), jnp.asarray([P], jnp.int32), len(ids) - 1)


def brute_pool(s, spec):
    """``{(example, j, n): (score, sufficient)}`` over every decided (not forced) state, by brute force:
    each state rebuilt as its own sequence; sufficiency from a separate full-view pass (same argmax and
    KL(P_full || P_stream) <= EPS). Cached per spec in the module's setup."""
    cache = s.setdefault("brute", {})
    if spec not in cache:
        cache[spec] = _brute_pool(s, spec)
    return cache[spec]


def _brute_pool(s, spec):
    cfg, ws = s["cfg"], s["ws"]
    head = parse_head(spec)
    out = {}
    for e, (ex, ys) in enumerate(zip(s["exs"], s["prefixes"])):
        for j in range(1, len(ys) + 1):
            prev = [int(t) for t in ys[:j - 1]]
            words = sum(1 for k, t in enumerate(prev) if k == 0 or ws[t])
            _, full, _ = _brute_state(s, ex, prev, ex.M + 1)
            for n in range(ex.M + 1):
                hid, logits, stats = _brute_state(s, ex, prev, n)
                p = probe_prob(s["probe"], hid, logits, stats) if head.needs_probe else None
                st = DecisionState(np.asarray(logits), np.asarray(stats), np.int32(n), np.int32(ex.M),
                                   np.int32(len(prev)), np.int32(words), np.bool_(ws[int(np.argmax(logits))]), p)
                _, score, forced = decide(head, st, cfg.num_hidden_layers)
                if not bool(forced):
                    suff = int(np.argmax(full)) == int(np.argmax(logits)) and float(full_kl(full, logits)) <= EPS
                    out[(e, j, n)] = (float(score), suff)
    return out


@pytest.mark.parametrize("pool_kind", ["sufficient", "decided"])
@pytest.mark.parametrize("spec", ["entropy:tau=0.5", "entropy:tau=0.5,decide_at=word,min_read=2",
                                  "attention:tau=0.5,stat=max", "probe:tau=0.5,min_read=1"])
def test_pool_is_exactly_the_decided_states(setup, spec, pool_kind):
    s = setup
    pool = calibration_pool(s["cfg"], s["params"], s["exs"], s["prefixes"], spec, s["ws"],
                            probe=s["probe"], batch_size=4, pool=pool_kind, eps=EPS)  # two chunks
    got = {(int(e), int(j), int(n)): (float(v), bool(f)) for e, j, n, v, f in
           zip(pool.example, pool.position, pool.reads, pool.scores, pool.sufficient)}
    decided = brute_pool(s, spec)
    want = {k: v for k, v in decided.items() if pool_kind == "decided" or v[1]}
    assert len(got) == len(pool), "a state pooled twice"
    assert set(got) == set(want)
    keys = sorted(want)
    np.testing.assert_allclose([got[k][0] for k in keys], [want[k][0] for k in keys], atol=2e-5)
    assert [got[k][1] for k in keys] == [want[k][1] for k in keys], "self-labels differ from two separate passes"
    suff = [v[1] for v in decided.values()]
    assert 0.1 < np.mean(suff) < 0.9, "both labels must occur for the test to mean anything"
    head = parse_head(spec)
    min_read = head.get("min_read", 0)
    M = np.array([s["exs"][e].M for e in pool.example])
    assert np.all((pool.reads >= min_read) & (pool.reads <= M)), "forced states in the pool"
    if pool_kind == "decided":
        # the pool is spread over every read count, not just the prompt-only states
        assert set(pool.reads.tolist()) == set(range(min_read, max(M) + 1))
    else:
        assert pool.sufficient.all() and len(pool) < len(decided)
    if head.decide_at == "word":
        n_all = sum(len(y) * (ex.M + 1 - min_read) for ex, y in zip(s["exs"], s["prefixes"]))
        assert len(decided) < n_all, "word continuations must be left out"


@pytest.fixture(scope="module")
def wide(setup):
    """More calibration examples (no brute force here), so every pool has enough states for +-2%; a milder
    probe (the fixture's saturates to p = 0.0 in float32 on these states: ties no tau can split)."""
    s = dict(setup)
    s["probe"] = {**s["probe"], "w2": s["probe"]["w2"] * 0.02, "b2": s["probe"]["b2"] * 0.02}
    s["exs"] = random_examples(np.random.default_rng(5), 24)
    s["prefixes"] = [r.tokens for r in stream_decode(s["cfg"], s["params"], s["exs"], "batch", MAX_NEW, eos_ids=[],
                                                     word_starts=s["ws"])]
    return s


@pytest.mark.parametrize("pool_kind", ["sufficient", "decided"])
@pytest.mark.parametrize("q", [0.9, 0.5, 0.1])
def test_quantile_means_write_fraction_for_both_directions(wide, q, pool_kind):
    """qX: the resolved head (decided by the decoder's own rule) WRITEs at X +- 2% of the pool's states,
    whichever direction the statistic writes in."""
    s = wide
    fracs = {}
    for spec in ("entropy:tau=0.5", "attention:tau=0.5", "attention:tau=0.5,stat=max", "probe:tau=0.5"):
        cal = calibrate(s["cfg"], s["params"], s["exs"], s["prefixes"], spec, q, s["ws"], probe=s["probe"],
                        pool=pool_kind, eps=EPS)
        resolved = parse_head(spec).replace(tau=cal["tau"])
        pool, writes = calibration_pool(s["cfg"], s["params"], s["exs"], s["prefixes"], resolved, s["ws"],
                                        probe=s["probe"], return_writes=True, pool=pool_kind, eps=EPS)
        fracs[spec] = float(writes.mean())
        assert abs(fracs[spec] - q) <= 0.02, (spec, fracs[spec], cal)
        assert abs(cal["write_fraction"] - fracs[spec]) < 1e-6
        assert cal["pool_size"] == len(pool) > 80
        assert cal["pool"] == ("decided" if pool_kind == "decided" else f"sufficient@eps={EPS:g}")


def test_default_pool_is_the_sufficient_states(setup):
    """The default pool is the decided pool restricted to its sufficient states; a larger eps admits more."""
    s = setup
    args = (s["cfg"], s["params"], s["exs"], s["prefixes"], "entropy:tau=0.5", s["ws"])
    default = calibration_pool(*args)
    decided = calibration_pool(*args, pool="decided")
    loose = calibration_pool(*args, eps=EPS)
    key = lambda p, m=None: {(int(e), int(j), int(n)) for e, j, n, k in  # noqa: E731
                             zip(p.example, p.position, p.reads, p.sufficient if m is None else m) if k}
    assert key(default) == key(decided, decided.sufficient) == key(default, np.ones(len(default), bool))
    assert key(default) <= key(loose) <= key(decided, np.ones(len(decided), bool))
    with pytest.raises(CalibrationError, match="calibration pool"):
        calibration_pool(*args, pool="everything")
    with pytest.raises(CalibrationError, match="eps"):
        calibration_pool(*args, eps=-1.0)


def test_quantile_tau_edges():
    x = np.linspace(0.05, 0.95, 100).astype(np.float32)
    assert np.mean(x <= quantile_tau(x, 0.9, "low")) == pytest.approx(0.9)
    assert np.mean(x >= quantile_tau(x, 0.9, "high")) == pytest.approx(0.9)
    assert np.mean(x <= quantile_tau(x, 0.0, "low")) == 0.0
    assert np.mean(x >= quantile_tau(x, 1.0, "high")) == 1.0
    with pytest.raises(CalibrationError, match="empty calibration pool"):
        quantile_tau([], 0.5, "low")
    with pytest.raises(CalibrationError, match="quantile"):
        quantile_tau(x, 1.5, "low")


def test_probe_head_without_probe_is_an_error(setup):
    s = setup
    with pytest.raises(CalibrationError, match="needs a probe"):
        calibration_pool(s["cfg"], s["params"], s["exs"], s["prefixes"], "probe:tau=0.5")
