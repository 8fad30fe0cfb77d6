"""Decision heads: spec parsing and each head's decision on hand-made logits and attention statistics."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from proactive_jax.method.heads import (HEADS, DecisionState, HeadSpec, decide, encode_head, normalised_entropy,
                                 parse_head, resolve_layers, write_direction)

V, NL, NH = 50, 4, 3


def state(n=1, M=5, written=0, words=0, word_start=True, logits=None, stats=None):
    logits = np.zeros(V, np.float32) if logits is None else np.asarray(logits, np.float32)
    stats = np.zeros((NL, NH, 2), np.float32) if stats is None else np.asarray(stats, np.float32)
    return DecisionState(logits, stats, np.int32(n), np.int32(M), np.int32(written), np.int32(words),
                         np.bool_(word_start))


def peaked(mass=20.0):
    x = np.zeros(V, np.float32)
    x[7] = mass
    return x


def run(spec, **kw):
    write, score, forced = decide(spec, state(**kw), NL)
    return bool(write), float(score), bool(forced)


# ---------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------

def test_parse_examples():
    assert parse_head("batch") == HeadSpec("batch", (("decide_at", "token"),))
    w = parse_head("wait-k:k=3")
    assert w["k"] == 3 and w.decide_at == "word"
    e = parse_head("entropy:tau=0.35")
    assert e["tau"] == 0.35 and e["min_read"] == 0 and e.decide_at == "token"
    a = parse_head("attention:tau=0.5,layers=-4:")
    assert a["layers"] == "-4:" and a["stat"] == "entropy" and a["min_read"] == 2 and a.needs_stats
    assert parse_head("attention:tau=0.5,layers=0,2,stat=max")["layers"] == "0,2"
    assert parse_head("entropy:tau=0.3,decide_at=word").decide_at == "word"
    assert parse_head(" entropy : tau = 0.3 ")["tau"] == 0.3


def test_spec_is_hashable_static_and_round_trips():
    specs = [parse_head(s) for s in ("batch", "wait-k:k=3", "entropy:tau=0.35",
                                     "attention:tau=0.5,layers=0,2,stat=max,min_read=3")]
    assert len({*specs, *[parse_head(str(s)) for s in specs]}) == len(specs)
    assert parse_head(specs[2]) == specs[2]
    with pytest.raises(ValueError, match="outside"):
        parse_head(HeadSpec("entropy", (("tau", 2.0),)))
    assert specs[2].replace(tau=0.5)["tau"] == 0.5
    f = jax.jit(lambda spec, x: x * spec["tau"], static_argnums=0)
    assert float(f(specs[2], jnp.float32(2.0))) == pytest.approx(0.7)


@pytest.mark.parametrize("spec,msg", [
    ("nope", "unknown decision head"),
    ("wait-k:k=abc", "expected an integer"),
    ("wait-k:k=2.5", "expected an integer"),
    ("wait-k:k=0", ">= 1"),
    ("wait-k", "needs parameter 'k'"),
    ("entropy", "needs parameter 'tau'"),
    ("entropy:tau=abc", "expected a number"),
    ("entropy:tau=1.5", "outside"),
    ("entropy:tau=-0.1", "outside"),
    ("entropy:tau=nan", "outside"),
    ("entropy:bogus=1,tau=0.3", "no parameter 'bogus'"),
    ("batch:tau=0.3", "no parameter 'tau'"),
    ("entropy:tau=0.3,tau=0.4", "given twice"),
    ("entropy:tau=0.3,decide_at=sentence", "expected one of"),
    ("entropy:tau=0.3,0.4", "expected key=value"),
    ("attention:tau=0.5,stat=mean", "expected one of"),
    ("attention:tau=0.5,layers=a:b", "bad layer spec"),
    ("attention:tau=0.5,layers=::0", "bad layer spec"),
    ("attention:tau=0.5,min_read=-1", ">= 2"),
    ("attention:tau=0.5,min_read=0", "degenerate"),
    ("attention:tau=0.5,min_read=1", "needs min_read >= 2"),
    ("probe", "needs parameter 'tau'"),
])
def test_parse_errors(spec, msg):
    with pytest.raises(ValueError, match=msg):
        parse_head(spec)


def test_resolve_layers():
    assert resolve_layers("-2:", 2) == (0, 1)
    with pytest.raises(ValueError, match=r"slice bound -4 out of range for a model with 2 layers"):
        resolve_layers("-4:", 2)  # a bound beyond the model is a mistake, not "all layers"
    assert resolve_layers("-2:", 4) == (2, 3)
    assert resolve_layers("0,2", 4) == (0, 2)
    assert resolve_layers(":", 3) == (0, 1, 2)
    assert resolve_layers("::2", 5) == (0, 2, 4)
    assert resolve_layers("-1", 4) == (3,)
    with pytest.raises(ValueError, match="out of range"):
        resolve_layers("5", 4)
    with pytest.raises(ValueError, match="selects no layer"):
        resolve_layers("3:1", 4)
    w = encode_head("attention:tau=0.5,layers=1,3", 4)["layers"]
    np.testing.assert_allclose(w, [0, 0.5, 0, 0.5])


# ---------------------------------------------------------------------------------------------
# Decisions
# ---------------------------------------------------------------------------------------------

def test_everything_read_always_writes():
    for spec in ("batch", "wait-k:k=100", "entropy:tau=0.0", "attention:tau=0.0,min_read=50", "probe:tau=1.0"):
        write, _, forced = run(spec, n=6, M=5)  # n = M+1
        assert write and forced, spec


def test_batch():
    assert not run("batch", n=5, M=5)[0]
    assert run("batch", n=6, M=5)[0]


def test_wait_k_word_level():
    # first word (w = 1): needs n >= k
    assert not run("wait-k:k=3", n=2, written=0)[0]
    assert run("wait-k:k=3", n=3, written=0)[0]
    # the first target token starts word 1 even if the table says continuation
    w, _, forced = run("wait-k:k=3", n=2, written=0, word_start=False)
    assert not w and not forced
    # word 3 (two words written) needs n >= k + 2
    assert not run("wait-k:k=2", n=3, written=5, words=2, word_start=True)[0]
    assert run("wait-k:k=2", n=4, written=5, words=2, word_start=True)[0]
    # a continuation is written without reading
    w, _, forced = run("wait-k:k=2", n=0, written=5, words=2, word_start=False)
    assert w and forced
    # capped at M+1 (handled by the always-write rule) and score = n - required
    assert run("wait-k:k=2", n=3, written=5, words=2)[1] == -1.0
    assert run("wait-k:k=9", n=2, M=1, written=0)[0]


def test_wait_k_token_level():
    # decide_at=token: every token is a word, counted by tokens written
    assert not run("wait-k:k=2,decide_at=token", n=4, written=3, words=1, word_start=False)[0]
    assert run("wait-k:k=2,decide_at=token", n=5, written=3, words=1, word_start=False)[0]


def test_entropy():
    flat = run("entropy:tau=0.9", n=1)
    assert not flat[0] and flat[1] == pytest.approx(1.0, abs=1e-6)
    sharp = run("entropy:tau=0.1", n=1, logits=peaked())
    assert sharp[0] and sharp[1] < 0.01
    np.testing.assert_allclose(float(normalised_entropy(jnp.asarray(peaked(2.0)))),
                               _np_entropy(peaked(2.0)), rtol=1e-5)
    # threshold is inclusive: WRITE iff H <= tau
    h = float(normalised_entropy(jnp.asarray(peaked(2.0))))
    assert run(f"entropy:tau={h + 1e-6}", logits=peaked(2.0))[0]
    assert not run(f"entropy:tau={h - 1e-4}", logits=peaked(2.0))[0]
    # min_read
    assert not run("entropy:tau=0.1,min_read=3", n=2, logits=peaked())[0]


def _np_entropy(x):
    p = np.exp(x - x.max())
    p /= p.sum()
    return float(-(p * np.log(p)).sum() / np.log(len(x)))


def test_entropy_decide_at_word():
    # a continuation candidate is written without deciding, however uncertain
    w, score, forced = run("entropy:tau=0.1,decide_at=word", written=2, word_start=False)
    assert w and forced and score == pytest.approx(1.0, abs=1e-6)
    assert not run("entropy:tau=0.1,decide_at=word", written=2, word_start=True)[0]
    assert not run("entropy:tau=0.1,decide_at=token", written=2, word_start=False)[0]
    # the first target token is always decided
    assert not run("entropy:tau=0.1,decide_at=word", written=0, word_start=False)[0]


def attn_stats(entropy_per_layer, max_per_layer):
    s = np.zeros((NL, NH, 2), np.float32)
    s[..., 0] = np.asarray(entropy_per_layer, np.float32)[:, None]
    s[..., 1] = np.asarray(max_per_layer, np.float32)[:, None]
    return s


def test_attention_entropy_stat():
    st = attn_stats([0.9, 0.9, 0.2, 0.2], [0.1, 0.1, 0.8, 0.8])
    # last two layers focused -> write; first two dispersed -> read; all layers: mean 0.55
    assert run("attention:tau=0.3,layers=-2:", n=3, stats=st)[:2] == (True, pytest.approx(0.2))
    assert not run("attention:tau=0.3,layers=0,1", n=3, stats=st)[0]
    assert run("attention:tau=0.6", n=3, stats=st)[1] == pytest.approx(0.55)
    # averaged over heads too
    st2 = st.copy()
    st2[3, 0, 0] = 0.8
    assert run("attention:tau=0.3,layers=3", n=3, stats=st2)[1] == pytest.approx(0.4)
    # min_read (default 2) blocks early writes on the degenerate statistic; a blocked state is forced
    assert run("attention:tau=0.3,layers=-2:", n=1, stats=st)[::2] == (False, True)
    assert run("attention:tau=0.3,layers=-2:", n=2, stats=st)[::2] == (True, False)
    assert run("attention:tau=0.3,layers=-2:,min_read=3", n=2, stats=st)[::2] == (False, True)


def test_min_read_blocked_states_are_forced_reads():
    """States blocked by min_read are marked forced (so they stay out of the calibration pool)."""
    w, _, forced = run("entropy:tau=0.1,min_read=3", n=2, logits=peaked())
    assert not w and forced
    w, _, forced = run("entropy:tau=0.1,min_read=3", n=3, logits=peaked())
    assert w and not forced
    # n = M+1 wins over min_read (everything read: write)
    w, _, forced = run("entropy:tau=0.1,min_read=9", n=6, M=5)
    assert w and forced
    # heads without min_read are never blocked
    assert run("wait-k:k=1", n=1)[::2] == (True, False)


def test_probe_head():
    s = lambda p, **kw: state(**kw)._replace(probe=np.float32(p))
    for p, tau, want in ((0.7, 0.5, True), (0.5, 0.5, True), (0.3, 0.5, False)):
        write, score, forced = decide(f"probe:tau={tau}", s(p), NL)
        assert bool(write) == want and float(score) == pytest.approx(p) and not bool(forced)
    assert not bool(decide("probe:tau=0.5,min_read=2", s(0.9, n=1), NL)[0])
    assert parse_head("probe:tau=0.5").needs_probe and not parse_head("entropy:tau=0.5").needs_probe
    # the demo sweeps the probe's tau evenly in logit space (0, -4, -8, -12): tiny taus are resolved in
    # float32 (no underflow), so those points are distinct decisions: p = sigmoid(z) writes iff z >= logit(tau)
    for z_tau in (0.0, -4.0, -8.0, -12.0):
        tau = 1.0 / (1.0 + np.exp(-z_tau))
        for dz in (-0.5, 0.5):
            p = 1.0 / (1.0 + np.exp(-(z_tau + dz)))
            assert bool(decide(f"probe:tau={tau:.6g}", s(p), NL)[0]) == (dz > 0), (z_tau, dz)


def test_write_direction():
    assert write_direction("entropy:tau=0.1") == "low"
    assert write_direction("attention:tau=0.1") == "low"
    assert write_direction("attention:tau=0.1,stat=max") == "high"
    assert write_direction("probe:tau=0.5") == "high"
    assert parse_head("probe:tau=0.5").writes_high and not parse_head("entropy:tau=0.5").writes_high


def test_attention_max_stat():
    st = attn_stats([0.9, 0.9, 0.2, 0.2], [0.1, 0.1, 0.8, 0.8])
    # max mass: focused = high, WRITE iff score >= tau
    assert run("attention:tau=0.7,layers=-2:,stat=max", n=3, stats=st)[:2] == (True, pytest.approx(0.8))
    assert not run("attention:tau=0.7,layers=:2,stat=max", n=3, stats=st)[0]


def test_registry_is_the_extension_point():
    assert set(HEADS) >= {"batch", "wait-k", "entropy", "attention", "probe"}
    # every head encodes into the same structure (so the jitted loop never retraces across heads)
    structs = {jax.tree_util.tree_structure(encode_head(parse_head(s), NL))
               for s in ("batch", "wait-k:k=1", "entropy:tau=0.1", "attention:tau=0.1", "probe:tau=0.5")}
    assert len(structs) == 1
