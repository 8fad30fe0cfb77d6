"""The learned probe head: self-labels from the SPSD pair equal two separate forward passes; the probe
head's cached decode equals a brute-force decoder applying the probe to a full recompute; training, IO,
oracle alignments."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from proactive_jax.method import probe as P
from proactive_jax.method.decode import stream_decode
from proactive_jax.method.heads import DecisionState, decide_encoded, encode_head
from proactive_jax.method.objective import ObjectiveConfig, batch_schedules, pack_batch, single_view_logits, stream_limits
from proactive_jax.models.attention import MaskVectors
from proactive_jax.method.attention_stats import hidden_and_stats
from proactive_jax.models.qwen import hidden_to_logits
from tests.helpers import tiny_qwen3
from tests.method.util import random_examples, random_params, sharpen
from tests.streaming_util import random_example


@pytest.fixture(scope="module")
def model():
    cfg = tiny_qwen3()
    return cfg, sharpen(cfg, random_params(cfg, 4))


def test_self_labels_equal_two_separate_passes(model):
    cfg, params = model
    rng = np.random.default_rng(5)
    exs = [random_example(rng, max_units=6, max_target=6) for _ in range(6)]
    batch = pack_batch(exs, (32, 12), batch_size=8, m_cap=6)
    jb = jax.tree_util.tree_map(jnp.asarray, batch)
    obj = ObjectiveConfig(schedule="multinomial", trailing_reads=True)
    full = jnp.broadcast_to(jb["source_len"][:, None], jb["target"].shape)
    both = {True: 0, False: 0}
    for phi in [batch_schedules(jb, jax.random.PRNGKey(1), obj), jnp.asarray(P.sweep_schedules(batch, 2))]:
        out = P.dual_view_states(cfg, obj, params, jb, phi)
        kl_all = np.asarray(P.full_kl(out["full_logits"], out["stream_logits"]))
        eps = float(np.median(kl_all[np.asarray(out["valid"])]))  # so that both labels occur
        lab = np.asarray(P.self_labels(out["full_logits"], out["stream_logits"], eps)[0])
        # the reference: the full view and the stream view as two separate sequences
        lf = np.asarray(single_view_logits(cfg, obj, params, jb, full), np.float64)
        ls = np.asarray(single_view_logits(cfg, obj, params, jb, stream_limits(jb, phi)), np.float64)
        lpf = lf - np.log(np.exp(lf - lf.max(-1, keepdims=True)).sum(-1, keepdims=True)) - lf.max(-1, keepdims=True)
        lps = ls - np.log(np.exp(ls - ls.max(-1, keepdims=True)).sum(-1, keepdims=True)) - ls.max(-1, keepdims=True)
        kl = np.sum(np.exp(lpf) * (lpf - lps), -1)
        ref = (lf.argmax(-1) == ls.argmax(-1)) & (kl <= eps)
        valid = np.asarray(out["valid"])
        near = np.abs(kl - eps) < 1e-5  # ties at the threshold itself
        np.testing.assert_array_equal(lab[valid & ~near], ref[valid & ~near])
        np.testing.assert_allclose(kl_all[valid], kl[valid], atol=1e-5, rtol=1e-4)
        # read counts: row r decides y_j at phi(j); n = M+1 states are never labelled
        n = np.asarray(out["n"])
        assert np.all(n[valid] <= batch["num_units"][np.nonzero(valid)[0]])
        for v in (True, False):
            both[v] += int(np.sum(lab[valid] == v))
    assert both[True] > 0 and both[False] > 0


def test_collect_self_and_oracle(model):
    cfg, params = model
    rng = np.random.default_rng(2)
    exs = [random_example(rng, max_units=5, max_target=4) for _ in range(5)]
    d = P.collect(cfg, params, exs, eps=0.05, multinomial_draws=1, batch_size=4)
    assert d.features.shape == (len(d.labels), cfg.hidden_size + P.NUM_STAT_FEATURES)
    assert np.all(d.n <= np.array([exs[e].M for e in d.example]))
    assert set(d.example.tolist()) == set(range(len(exs)))
    # the sweep visits every read count 0..M of every example, for every target token
    sweep_states = sum(e.L * (e.M + 1) for e in exs)
    assert len(d.labels) >= sweep_states
    oracle = [np.full(e.L, 2, np.int32) for e in exs]
    do = P.collect(cfg, params, exs, oracle=oracle, multinomial_draws=1, batch_size=4)
    np.testing.assert_array_equal(do.labels, do.n >= 2)
    np.testing.assert_allclose(do.features, d.features, atol=1e-5)


def test_train_probe_fits_a_separable_rule_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 8 + 3)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 3] - 0.2 > 0)
    data = P.ProbeData(x, y, np.zeros(3000, np.int32), np.arange(3000, dtype=np.int32) // 10)
    for kind in ("linear", "mlp"):
        probe, rep = P.train_probe(data, kind=kind, hidden=16, steps=300, lr=1e-2)
        assert rep["held_out"]["accuracy"] > 0.95, (kind, rep)
        path = P.save_probe(tmp_path / f"{kind}.safetensors", probe, {"kind": kind, "eps": 0.1})
        back, info = P.load_probe(path)
        assert info == {"kind": kind, "eps": 0.1} and set(back) == set(probe)
        np.testing.assert_array_equal(np.asarray(P.probe_logit(back, x[:5])), np.asarray(P.probe_logit(probe, x[:5])))
    assert not P.uses_stats(P.init_probe(jax.random.PRNGKey(0), 11, use_stats=False))
    (tmp_path / "bad.safetensors").write_bytes(b"nope")
    with pytest.raises(P.ProbeError, match="bad.safetensors"):
        P.load_probe(tmp_path / "bad.safetensors")
    with pytest.raises(P.ProbeError, match="no probe file"):
        P.load_probe(tmp_path / "missing.safetensors")


def test_oracle_read_counts():
    from proactive_jax.data.render import TextExample
    wm = TextExample(task="word-map", id="x", prompt_text="translate :",
                     units=["the", " big", " house", " sees", " a", " dog"], target_text="")
    # der haus gross sieht ein ... : the swapped pair needs the noun (3 reads) for both words; eos needs M+1
    np.testing.assert_array_equal(P.oracle_read_counts(wm, 7), [1, 3, 3, 4, 5, 6, 7])
    lk = TextExample(task="lookup", id="y", prompt_text="which fruit ?", units=["a"] * 16, target_text="fig",
                     meta={"evidence_unit": 4})
    np.testing.assert_array_equal(P.oracle_read_counts(lk, 2), [5, 5])
    with pytest.raises(P.ProbeError, match="synthetic"):
        P.oracle_read_counts(TextExample(task="squad", id="z", prompt_text="", units=["a"], target_text=""), 1)


# ---------------------------------------------------------------------------------------------
# decode == brute force for the probe head
# ---------------------------------------------------------------------------------------------

@functools.partial(jax.jit, static_argnums=0)
def _brute(cfg, params, ids, pos, seg, idx, lim, stream_start, row):
    h, stats = hidden_and_stats(cfg, params, ids, pos, MaskVectors(seg, idx, lim), stream_start)
    return h[0, row], hidden_to_logits(cfg, params, h[:, row][:, None])[0, 0], stats[:, 0, row]


_decide = jax.jit(decide_encoded)
_probe_prob = jax.jit(P.probe_prob)


def brute_probe_decode(cfg, params, probe, ex, head, max_new):
    """Greedy streaming decode recomputing the whole sequence at every step (method.md section 3 rows),
    the probe applied to the last row's final hidden state."""
    vals = encode_head(head, cfg.num_hidden_layers)
    V, src, hdr, P_ = ex.visible_counts(), list(ex.source), list(ex.header), len(ex.prompt)
    n, ys, phi = 0, [], []
    while True:
        sv, H = int(V[n]), len(hdr)
        lim = [V[phi[0]] if ys else V[n]] * H + [V[phi[i]] if i < len(ys) else V[n] for i in range(1, len(ys) + 1)]
        ids, tl = src[:sv] + hdr + ys, H + len(ys)
        pad = 48 - len(ids)
        arr = lambda xs, fill: jnp.asarray([xs + [fill] * pad], jnp.int32)
        hid, logits, stats = _brute(cfg, params, arr(ids, 0), arr(list(range(sv)) + list(range(tl)), 0),
                                    arr([0] * sv + [1] * tl, -1), arr(list(range(sv)) + list(range(tl)), 0),
                                    arr([0] * sv + [int(x) for x in lim], 0), jnp.asarray([P_], jnp.int32), len(ids) - 1)
        p = _probe_prob(probe, hid, logits, stats)
        cand = int(np.argmax(np.asarray(logits)))
        st = DecisionState(logits, stats, np.int32(n), np.int32(ex.M), np.int32(len(ys)), np.int32(len(ys)),
                           np.bool_(True), p)
        write, _, _ = _decide(vals, st)
        if bool(write):
            ys.append(cand)
            phi.append(n)
            if len(ys) >= max_new:
                return ys, phi
        else:
            n += 1


def test_probe_head_decode_equals_brute_force(model, use_stats=True):
    cfg, params = model
    rng = np.random.default_rng(9)
    exs = random_examples(rng, 4)
    probe = P.init_probe(jax.random.PRNGKey(3), cfg.hidden_size + 3, "mlp", 16, use_stats=use_stats)
    probe = {**probe, "w2": probe["w2"] * 3.0}
    ps = np.concatenate([r.scores[~r.forced] for r in stream_decode(cfg, params, exs, "probe:tau=0.5", 6,
                                                                     eos_ids=[], probe=probe)])
    tau = float(np.median(ps))  # a tau that interleaves reads and writes
    tau = float((np.max(ps[ps < tau]) + tau) / 2) if np.any(ps < tau) else tau
    res = stream_decode(cfg, params, exs, f"probe:tau={tau:.6f}", 6, eos_ids=[], probe=probe)
    assert any(len(set(r.phi.tolist())) >= 2 for r in res), "trivial traces"
    for ex, r in zip(exs, res):
        ys, phi = brute_probe_decode(cfg, params, probe, ex, f"probe:tau={tau:.6f}", 6)
        np.testing.assert_array_equal(r.tokens, ys)
        np.testing.assert_array_equal(r.phi, phi)
    with pytest.raises(ValueError, match="needs a probe"):
        stream_decode(cfg, params, exs, "probe:tau=0.5", 6, eos_ids=[])
    with pytest.raises(ValueError, match="features"):
        stream_decode(cfg, params, exs, "probe:tau=0.5", 6, eos_ids=[], probe=P.init_probe(jax.random.PRNGKey(0), 7))


def test_a_probe_at_the_majority_class_rate_is_flagged():
    """Held-out accuracy 0.9956 at a positive rate of 0.9959 learned nothing: the summary says so; a probe clearly
    above the base rate is not flagged."""
    from proactive_jax.training.probe_training import at_majority, summary_line

    info = {"labels": "self", "kind": "mlp", "states": 1000, "examples": 50, "positive_rate": 0.99,
            "report": {"held_out": {"accuracy": 0.9956, "positive_rate": 0.9959}, "train": {"accuracy": 0.996}}}
    assert at_majority(info["report"]["held_out"]) and "majority-class rate" in summary_line(info)
    info["report"]["held_out"] = {"accuracy": 0.93, "positive_rate": 0.6}
    assert not at_majority(info["report"]["held_out"]) and "WARNING" not in summary_line(info)
    assert at_majority({"accuracy": 0.35, "positive_rate": 0.6})  # below the base rate is flagged too
