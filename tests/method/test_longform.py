"""Long-form sessions (method/longform.py): a stream of many segments on a fixed window; every segment equals a
brute-force recomputation of the model over its windowed context (tokens, phi, decisions, scores)."""
import dataclasses

import numpy as np
import pytest

from proactive_jax.errors import SessionError
from proactive_jax.method import session_programs as progs
from proactive_jax.method.decode import stream_decode
from proactive_jax.method.longform import LongForm, LongFormBatch
from proactive_jax.method.session import StreamSession
from tests.method.test_decode import reference_decode
from tests.method.util import text_setup

MAX_NEW = 6
PROMPT, END, HEADER = [5, 6, 7], [8, 9], [10, 11]
UNITS = 40


@pytest.fixture(scope="module")
def setup():
    s = text_setup("qwen3")
    rng = np.random.default_rng(3)
    s["units"] = [[int(x) for x in rng.integers(4, 97, int(rng.integers(1, 4)))] for _ in range(UNITS)]
    s["lf"] = LongForm(window=32, carry_source=6, carry_target=4, keep_segments=1000,
                       boundary_ids=tuple(int(x) for x in rng.choice(97, 12, replace=False)))
    return s


def _session(s, head, **kw):
    return StreamSession(s["cfg"], s["params"], head, prompt=PROMPT, end=END, header=HEADER, max_new_tokens=MAX_NEW,
                         eos_ids=s["eos"], word_starts=s["ws"], long_form=kw.pop("lf", s["lf"]), unit_capacity=4,
                         **kw)


def _tau(s, base):
    res = stream_decode(s["cfg"], s["params"], s["exs"], base + ",tau=0.5", 10, eos_ids=s["eos"], word_starts=s["ws"])
    pool = np.unique(np.concatenate([r.scores[~r.forced] for r in res]))
    i = len(pool) // 2
    return f"{base},tau={round(float(pool[i - 1] + pool[i]) / 2, 5)}"


HEADS = ["batch", "wait-k:k=2", "entropy:decide_at=token", "attention:layers=-1:,min_read=2"]


def _check_segments(s, sess, head, units):
    """Every segment == brute force over its windowed example (and == the offline decoder); every unit read once."""
    segs = sess.segments
    read = [u for g in segs for u in ([g.absorbed] if g.absorbed is not None else []) + g.units]
    assert read == units
    lf = sess._batch.long_form
    written, groups = [], {}
    for g in segs:
        assert len(g.prompt) <= len(PROMPT) + lf.carry_source + 4 and len(g.header) <= len(HEADER) + lf.carry_target
        written += g.tokens
        ex = sess._batch.segment_example(g)
        if ex is None:  # a segment that read only an end marker (M = 0)
            assert g.reason in ("finish", "turn")
            continue
        assert ex.S <= lf.window
        ys, phi, rec = reference_decode(s["cfg"], s["params"], ex, head, MAX_NEW, list(g.stops), s["ws"])
        assert min(rec["gaps"]) > 1e-4, "near-tie in the argmax: pick other seeds"
        np.testing.assert_array_equal(g.tokens, ys, err_msg=f"{head} {g.reason}")
        np.testing.assert_array_equal(g.phi, phi, err_msg=head)
        np.testing.assert_array_equal(g.writes, rec["writes"])
        np.testing.assert_array_equal(g.reads, rec["reads"])
        if not head.startswith(("batch", "wait-k")):  # M-dependent scores differ before the end is known
            np.testing.assert_allclose(g.scores, rec["scores"], atol=1e-4, rtol=0)
        assert g.ended == (g.reason in ("window", "finish", "turn"))
        groups.setdefault(g.stops, []).append((g, ex))
    assert written == sess.tokens
    for stops, pairs in groups.items():  # the offline decoder on the same windowed examples writes the same
        offline = stream_decode(s["cfg"], s["params"], [e for _, e in pairs], head, MAX_NEW, eos_ids=list(stops),
                                word_starts=s["ws"])
        for (g, _), r in zip(pairs, offline):
            assert g.tokens == r.tokens.tolist() and g.phi == r.phi.tolist()
    return segs


@pytest.mark.parametrize("head", HEADS)
def test_every_segment_equals_brute_force_over_its_window(setup, head):
    s = setup
    if head.startswith(("entropy", "attention")):
        head = _tau(s, head)
    sess = _session(s, head)
    for u in s["units"]:
        sess.push(u)
    sess.finish()
    segs = _check_segments(s, sess, head, s["units"])
    assert len(segs) >= 3, f"{head}: one long segment only"
    r = sess.result()
    assert r.M == UNITS and np.all(np.diff(r.phi) >= 0) and r.phi[-1] <= UNITS + 1
    if head != "batch":  # writes throughout the stream, not only at its end
        assert r.phi[0] < UNITS // 2 and len({g.reason for g in segs}) >= 2


@pytest.mark.parametrize("head", ["wait-k:k=2", "entropy:decide_at=token"])
def test_turns_keep_their_history_and_equal_brute_force(setup, head):
    s = setup
    if head.startswith("entropy"):
        head = _tau(s, head)
    sep = (12, 13)
    sess = _session(s, head, lf=dataclasses.replace(s["lf"], turn_separator=sep, carry_source=12))
    turns = [s["units"][:14], s["units"][14:26], s["units"][26:]]
    for k, turn in enumerate(turns):
        for u in turn:
            sess.push(u)
        sess.end_turn() if k < 2 else sess.finish()
    segs = _check_segments(s, sess, head, s["units"])
    ends = [k for k, g in enumerate(segs) if g.reason in ("turn", "finish")]
    assert len(ends) == 3 and segs[ends[0]].stops == tuple(s["eos"])
    nxt = segs[ends[0] + 1]  # the next turn's first segment: the finished turn in its prompt, in the chat layout
    answer_tail = [t for t in segs[ends[0]].tokens if t not in s["eos"]][-3:]
    p = nxt.prompt
    assert p[:3] == PROMPT and nxt.header == HEADER and p[len(p) - len(nxt.absorbed):] == nxt.absorbed
    assert _contains(p, END + HEADER) and _contains(p, answer_tail + list(sep))


def _contains(seq, sub):
    return any(seq[k:k + len(sub)] == sub for k in range(len(seq) - len(sub) + 1))


def test_bounded_and_never_recompiles(setup):
    s = setup
    sess = _session(s, "wait-k:k=2")
    shape = sess._batch.cache_shape
    for u in s["units"][:10]:
        sess.push(u)
    traces = progs.TRACE_COUNT
    for u in s["units"] * 3:  # 120 more units: many segments, the same caches and programs
        sess.push(u)
    assert progs.TRACE_COUNT == traces and sess._batch.cache_shape == shape
    assert sess._batch.inner.shapes.source_cap == s["lf"].window
    assert len(sess.segments) > 10 and sess.units_pushed == 130


def test_rows_of_a_batch_equal_single_sessions(setup):
    s = setup
    b = LongFormBatch(s["cfg"], s["params"], "wait-k:k=2", prompts=[PROMPT, PROMPT[:2]], ends=[END, END],
                      headers=[HEADER, HEADER], max_new_tokens=MAX_NEW, long_form=s["lf"], eos_ids=s["eos"],
                      word_starts=s["ws"], unit_capacity=4)
    other = s["units"][::-1]
    for k in range(UNITS):
        b.push([s["units"][k], other[k] if k % 3 else None])
    b.finish()
    for i, (prompt, units) in enumerate(((PROMPT, s["units"]), (PROMPT[:2], [u for k, u in enumerate(other) if k % 3]))):
        one = StreamSession(s["cfg"], s["params"], "wait-k:k=2", prompt=prompt, end=END, header=HEADER,
                            max_new_tokens=MAX_NEW, eos_ids=s["eos"], word_starts=s["ws"], long_form=s["lf"],
                            unit_capacity=4)
        for u in units:
            one.push(u)
        one.finish()
        assert b.tokens[i] == one.tokens and b.phi[i] == one.phi


def test_a_unit_over_the_window_is_refused_and_nothing_is_lost(setup):
    s = setup
    sess = _session(s, "wait-k:k=1")
    for u in s["units"][:8]:
        sess.push(u)
    before = (sess.tokens, sess.phi, sess.units_pushed)
    with pytest.raises(SessionError, match="window=32"):
        sess.push([4] * 5)
    assert (sess.tokens, sess.phi, sess.units_pushed) == before
    sess.push(s["units"][8])  # the session carries on
    with pytest.raises(SessionError, match="window=8 .* too small"):
        _session(s, "wait-k:k=1", lf=LongForm(window=8, carry_source=6))
