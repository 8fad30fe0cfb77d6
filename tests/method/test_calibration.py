"""Quantile calibration along reference trajectories (issue 14, defects 1-2): the pool holds the head's
statistic exactly at the states where it decides, recomputed here by brute force; qX writes at X."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from proactive_jax.method.calibration import CalibrationError, calibrate, calibration_pool, quantile_tau
from proactive_jax.method.decode import stream_decode
from proactive_jax.method.heads import DecisionState, decide, parse_head
from proactive_jax.method.probe import init_probe, probe_prob
from proactive_jax.models.attention import MaskVectors
from proactive_jax.models.qwen import apply_hidden, hidden_to_logits
from tests.conftest import tiny_qwen3
from tests.method.test_decode import random_examples, random_params, sharpen

MAX_NEW = 6
T_PAD = 40


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
    h, _, stats = apply_hidden(cfg, params, ids, pos, MaskVectors(seg, idx, lim), stream_start=stream_start)
    logits = hidden_to_logits(cfg, params, h[:, row][:, None])[0, 0]
    return h[0, row], logits, stats[:, 0, row]


def brute_pool(s, spec):
    """Every (example, j, n <= M) state rebuilt as its own sequence [source[:V(n)] | header + y_<j], all
    target rows seeing V(n); kept where decide() says the statistic decided (not forced)."""
    cfg, params, ws = s["cfg"], s["params"], s["ws"]
    head = parse_head(spec)
    out = {}
    for e, (ex, ys) in enumerate(zip(s["exs"], s["prefixes"])):
        V, src, hdr, P = ex.visible_counts(), list(ex.source), list(ex.header), len(ex.prompt)
        for j in range(1, len(ys) + 1):
            prev = [int(t) for t in ys[:j - 1]]
            words = sum(1 for k, t in enumerate(prev) if k == 0 or ws[t])
            for n in range(ex.M + 1):
                sv, tl = int(V[n]), len(hdr) + len(prev)
                ids = src[:sv] + hdr + prev
                pad = T_PAD - len(ids)
                arr = lambda xs, fill: jnp.asarray([xs + [fill] * pad], jnp.int32)
                hid, logits, stats = _brute(cfg, params, arr(ids, 0), arr(list(range(sv)) + list(range(tl)), 0),
                                            arr([0] * sv + [1] * tl, -1), arr(list(range(sv)) + list(range(tl)), 0),
                                            arr([0] * sv + [sv] * tl, 0), jnp.asarray([P], jnp.int32), len(ids) - 1)
                p = probe_prob(s["probe"], hid, logits, stats) if head.needs_probe else None
                st = DecisionState(np.asarray(logits), np.asarray(stats), np.int32(n), np.int32(ex.M),
                                   np.int32(len(prev)), np.int32(words), np.bool_(ws[int(np.argmax(logits))]), p)
                _, score, forced = decide(head, st, cfg.num_hidden_layers)
                if not bool(forced):
                    out[(e, j, n)] = float(score)
    return out


@pytest.mark.parametrize("spec", ["entropy:tau=0.5", "entropy:tau=0.5,decide_at=word,min_read=2",
                                  "attention:tau=0.5,stat=max", "probe:tau=0.5,min_read=1"])
def test_pool_is_exactly_the_decided_states(setup, spec):
    s = setup
    pool = calibration_pool(s["cfg"], s["params"], s["exs"], s["prefixes"], spec, s["ws"],
                            probe=s["probe"], batch_size=4)  # two chunks
    got = {(int(e), int(j), int(n)): float(v) for e, j, n, v in zip(pool.example, pool.position, pool.reads,
                                                                    pool.scores)}
    want = brute_pool(s, spec)
    assert len(got) == len(pool), "a state pooled twice"
    assert set(got) == set(want)
    np.testing.assert_allclose([got[k] for k in sorted(want)], [want[k] for k in sorted(want)], atol=2e-5)
    head = parse_head(spec)
    min_read = head.get("min_read", 0)
    M = np.array([s["exs"][e].M for e in pool.example])
    assert np.all((pool.reads >= min_read) & (pool.reads <= M)), "forced states in the pool"
    # defect 1: the pool is spread over every read count, not just the prompt-only states
    assert set(pool.reads.tolist()) == set(range(min_read, max(M) + 1))
    if head.decide_at == "word":
        n_all = sum(len(y) * (ex.M + 1 - min_read) for ex, y in zip(s["exs"], s["prefixes"]))
        assert len(pool) < n_all, "word continuations must be left out"


@pytest.mark.parametrize("q", [0.9, 0.5, 0.1])
def test_quantile_means_write_fraction_for_both_directions(setup, q):
    s = setup
    fracs = {}
    for spec in ("entropy:tau=0.5", "attention:tau=0.5", "attention:tau=0.5,stat=max", "probe:tau=0.5"):
        cal = calibrate(s["cfg"], s["params"], s["exs"], s["prefixes"], spec, q, s["ws"], probe=s["probe"])
        resolved = parse_head(spec).replace(tau=cal["tau"])
        pool, writes = calibration_pool(s["cfg"], s["params"], s["exs"], s["prefixes"], resolved, s["ws"],
                                        probe=s["probe"], return_writes=True)
        fracs[spec] = float(writes.mean())
        assert abs(fracs[spec] - q) <= 0.02, (spec, fracs[spec], cal)
        assert abs(cal["write_fraction"] - fracs[spec]) < 1e-6
        assert cal["pool_size"] == len(pool) > 50


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
