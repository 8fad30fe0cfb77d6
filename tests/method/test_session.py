"""Live sessions (method/session.py): units pushed one by one == stream_decode on the whole example."""
import jax
import numpy as np
import pytest

from proactive_jax import SessionBatch, StreamSession
from proactive_jax.method import session_programs as progs
from proactive_jax.method.decode import stream_decode
from proactive_jax.errors import SessionError
from proactive_jax.method.session import session_decode
from proactive_jax.data.example import StreamExample
from tests.method.util import MAX_NEW, compiles, text_setup

M_DEPENDENT = ("batch", "wait-k")  # heads whose score (not decision) uses M, unknown live before finish()
# every one-row session in this file shares these capacities: one compiled prefill and step per model
CAPS = dict(max_source_len=64, unit_capacity=4, prompt_capacity=4, header_capacity=3)


@pytest.fixture(scope="module", params=["qwen2", "qwen3"])
def setup(request):
    return text_setup(request.param)


def _tau(s, base):
    """A tau midway between two observed unforced scores that mixes READs and WRITEs."""
    res = stream_decode(s["cfg"], s["params"], s["exs"], base + ",tau=0.5", MAX_NEW, eos_ids=s["eos"],
                        word_starts=s["ws"])
    pool = np.unique(np.concatenate([r.scores[~r.forced] for r in res]))
    i = len(pool) // 2
    return f"{base},tau={round(float(pool[i - 1] + pool[i]) / 2, 5)}"


HEADS = ["batch", "wait-k:k=2", "wait-k:k=1,decide_at=token", "entropy:decide_at=token",
         "attention:layers=-1:,min_read=2"]


@pytest.mark.parametrize("head", HEADS)
def test_session_equals_stream_decode(setup, head):
    s = setup
    if head.startswith(("entropy", "attention")):
        head = _tau(s, head)
    kw = dict(eos_ids=s["eos"], word_starts=s["ws"])
    ref = stream_decode(s["cfg"], s["params"], s["exs"], head, MAX_NEW, **kw)
    # all six in one SessionBatch (rows finish at different pushes), and one StreamSession per example
    # and once with a host round trip per decision (fused=False) instead of one device loop per push
    runs = [(None, True)] + ([(1, True), (None, False)] if head.startswith("wait-k:k=2") else [])
    for batch_size, fused in runs:
        caps = CAPS if batch_size == 1 else {}
        live = session_decode(s["cfg"], s["params"], s["exs"], head, MAX_NEW, batch_size=batch_size, fused=fused,
                              **kw, **caps)
        for ex, r, l in zip(s["exs"], ref, live):
            np.testing.assert_array_equal(l.tokens, r.tokens, err_msg=head)
            np.testing.assert_array_equal(l.phi, r.phi, err_msg=head)
            np.testing.assert_array_equal(l.writes, r.writes)
            np.testing.assert_array_equal(l.reads, r.reads)
            np.testing.assert_array_equal(l.forced, r.forced)
            assert l.finished == r.finished and l.M == ex.M
            assert l.seconds.shape == l.writes.shape and np.all(l.seconds > 0)
            if not head.startswith(M_DEPENDENT):
                np.testing.assert_allclose(l.scores, r.scores, atol=1e-4, rtol=0)
    if head != "batch":
        assert any(len(set(r.phi.tolist())) >= 2 for r in ref), "trivial traces: reads never interleave writes"


def test_push_returns_writes_and_never_recompiles(setup):
    s = setup
    cfg, params, ex = s["cfg"], s["params"], s["exs"][2]
    make = lambda head: StreamSession(cfg, params, head, prompt=ex.prompt, end=ex.end, header=ex.header,  # noqa
                                      max_new_tokens=MAX_NEW, eos_ids=s["eos"], word_starts=s["ws"], **CAPS)
    ref = stream_decode(cfg, params, s["exs"], "wait-k:k=1", MAX_NEW, eos_ids=s["eos"], word_starts=s["ws"])[2]
    session = make("wait-k:k=1")
    session.push(ex.units[0])
    traces = progs.TRACE_COUNT
    written = [session.tokens[:]]
    for u in ex.units[1:]:
        got = session.push(u)
        assert got == session.tokens[len(sum(written, [])):]
        written.append(got)
    written.append(session.finish())
    assert sum(written, []) == ref.tokens.tolist() == session.tokens and session.phi == ref.phi.tolist()
    # what each push returned was written right after that unit was read (phi = its read count)
    for k, toks in enumerate(written):
        assert all(p == k + 1 for p in session.phi[len(sum(written[:k], [])):][:len(toks)])
    # another session of the same shapes, and another head / tau: nothing is traced again
    for head in ("wait-k:k=3", "entropy:tau=0.2", "batch"):
        other = make(head)
        for u in ex.units:
            other.push(u)
        other.finish()
    assert progs.TRACE_COUNT == traces
    assert len(session.decision_seconds) == len(ref.writes)


def test_never_reencodes_what_it_read(setup):
    """The key/values of source slots already fed are bit-identical after later pushes."""
    s = setup
    ex = max(s["exs"], key=lambda e: e.M)
    sb = SessionBatch(s["cfg"], s["params"], "wait-k:k=1", prompts=[ex.prompt], ends=[ex.end], headers=[ex.header],
                      max_new_tokens=MAX_NEW, eos_ids=[], **CAPS)
    sb.push([ex.units[0]])
    V = len(ex.prompt) + len(ex.units[0])
    before = np.asarray(jax.device_get(sb.state["cache"].k))[:, :, :V]
    for u in ex.units[1:]:
        sb.push([u])
    sb.finish()
    after = np.asarray(jax.device_get(sb.state["cache"].k))[:, :, :V]
    np.testing.assert_array_equal(after, before)


def test_join_a_freed_row_equals_a_fresh_session_without_recompiling(setup):
    """Row 0's session finishes, a new one joins in its slot while row 1 is mid-stream; both equal
    stream_decode, and nothing is compiled for the release / join / the joined session."""
    s = setup
    exs, head = s["exs"], "wait-k:k=1"
    kw = dict(eos_ids=s["eos"], word_starts=s["ws"])
    ref = stream_decode(s["cfg"], s["params"], exs, head, MAX_NEW, **kw)
    a, b, c = exs[0], max(exs[1:], key=lambda e: e.M), exs[5]
    sb = SessionBatch(s["cfg"], s["params"], head, prompts=[a.prompt, b.prompt], ends=[a.end, b.end],
                      headers=[a.header, b.header], max_new_tokens=MAX_NEW, **kw, **CAPS)
    for u in a.units:
        sb.push([u, None])
    sb.finish([0])
    sb.push([None, b.units[0]])
    assert sb.result(0).tokens.tolist() == ref[0].tokens.tolist()

    def reuse():
        sb.join(0, prompt=c.prompt, end=c.end, header=c.header)
        for k in range(max(c.M, b.M - 1)):
            sb.push([c.units[k] if k < c.M else None, b.units[k + 1] if k + 1 < b.M else None])
            if k + 1 == c.M:
                sb.finish([0])
        sb.finish([1])
        sb.release(1)

    assert compiles(reuse) == []
    for row, e in ((0, c), (1, b)):
        r = ref[exs.index(e)]
        assert sb.result(row).tokens.tolist() == r.tokens.tolist() and sb.result(row).phi.tolist() == r.phi.tolist()
        np.testing.assert_array_equal(sb.result(row).writes, r.writes)
    assert sb.done == [True, True] and sb.closed == [True, True]


def test_bad_input_is_refused_and_the_session_stays_usable(setup):
    s = setup
    cfg, params = s["cfg"], s["params"]
    make = lambda head: StreamSession(cfg, params, head, prompt=(5, 6), end=(13,), header=(14,),  # noqa: E731
                                      max_new_tokens=MAX_NEW, eos_ids=[], word_starts=s["ws"], **CAPS)
    session = make("wait-k:k=1")
    session.push((7, 8))
    session.push((9,))
    state = (session.tokens, session.phi, session.units_pushed)
    for bad, msg in [([], "is empty"), ([1, 2, 3, 4, 5], "unit_capacity=4"), ([500], "vocabulary"),
                     ("ab", "token ids")]:
        with pytest.raises(SessionError, match=msg):
            session.push(bad)
        assert (session.tokens, session.phi, session.units_pushed) == state  # nothing changed
    session.push((10,))
    session.finish()
    ex = StreamExample(prompt=(5, 6), units=((7, 8), (9,), (10,)), end=(13,), header=(14,), target=(3,))
    ref = stream_decode(cfg, params, s["exs"][:5] + [ex], "wait-k:k=1", MAX_NEW, eos_ids=[], word_starts=s["ws"])[5]
    assert session.tokens == ref.tokens.tolist() and session.phi == ref.phi.tolist()
    for op in (lambda: session.push([7]), session.finish):
        with pytest.raises(SessionError, match="closed"):
            op()
    # source capacity: 2 + 15 * 4 + end 1 = 63 fits 64; a 16th unit would not
    full = make("batch")
    for _ in range(15):
        assert full.push((7, 8, 9, 10)) == []
    with pytest.raises(SessionError, match="max_source_len=64"):
        full.push((7, 8, 9, 10))
    assert full.units_pushed == 15 and len(full.finish()) > 0 and full.phi[0] == 16
    with pytest.raises(SessionError, match="header is empty"):
        StreamSession(cfg, params, "batch", prompt=[1], end=[2], header=[], max_new_tokens=4, eos_ids=[])
    with pytest.raises(SessionError, match="unit_capacity=2 is smaller than an end marker"):
        StreamSession(cfg, params, "batch", prompt=[1], end=[2, 2, 2], header=[4], max_new_tokens=4,
                      unit_capacity=2)


def test_public_signature():
    import inspect

    import proactive_jax
    sig = inspect.signature(proactive_jax.StreamSession)
    assert list(sig.parameters)[:9] == ["config", "params", "head", "prompt", "end", "header", "max_new_tokens",
                                        "eos_ids", "word_starts"]
    assert all(sig.parameters[k].kind is inspect.Parameter.KEYWORD_ONLY for k in ("prompt", "end", "header"))
    assert sig.parameters["word_starts"].default is None
    assert list(inspect.signature(proactive_jax.StreamSession.from_tokenizer).parameters)[:4] == [
        "config", "params", "head", "tokenizer"]
    assert proactive_jax.SessionBatch is SessionBatch
