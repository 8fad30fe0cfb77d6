"""The KV-cached streaming decode loop against an independent brute-force decoder (method.md sections 3, 6)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from proactive_jax.method import decode as dec
from proactive_jax.method.decode import stream_decode
from proactive_jax.method.trace import calibrate_tau, format_events, format_trace, interleave
from proactive_jax.method.heads import DecisionState, decide_encoded, encode_head, parse_head
from proactive_jax.models.attention import MaskVectors
from proactive_jax.method.attention_stats import hidden_and_stats
from proactive_jax.models.qwen import forward, hidden_to_logits
from proactive_jax.data.example import StreamExample

from tests.helpers import tiny_qwen3
from tests.method.util import MAX_NEW, T_PAD, brute_rows, random_params, text_setup



# ---------------------------------------------------------------------------------------------
# The independent reference: whole sequence recomputed at every step, no cache
# ---------------------------------------------------------------------------------------------

@functools.partial(jax.jit, static_argnums=0)
def _brute(cfg, params, ids, pos, seg, idx, lim, stream_start, row):
    h, stats = hidden_and_stats(cfg, params, ids, pos, MaskVectors(seg, idx, lim), stream_start)
    logits = hidden_to_logits(cfg, params, h[:, row][:, None])[0, 0]
    return logits, stats[:, 0, row]  # [V], [layers, H, 2]


_decide = jax.jit(decide_encoded)


def reference_decode(cfg, params, ex, head, max_new, eos_ids, ws, target_offset=0):
    """Greedy streaming decode by brute force. Visibility per method.md section 3, built here from phi:
    header rows see V(phi(1)) (V(n) while nothing is written), the row holding y_i sees V(phi(i+1)), and
    the last row (the one predicting now) sees the current V(n)."""
    vals = encode_head(head, cfg.num_hidden_layers)
    V = ex.visible_counts()
    P = len(ex.prompt)
    off = ex.S if target_offset == "contiguous" else target_offset
    n, ys, phi, words = 0, [], [], 0
    rec = dict(logits=[], scores=[], writes=[], reads=[], gaps=[])
    while True:
        r = brute_rows(ex, V, n, ys, phi, off)
        ids = r["ids"]
        pad = T_PAD - len(ids)
        assert pad >= 0
        arr = lambda xs, fill: jnp.asarray([xs + [fill] * pad], jnp.int32)
        logits, stats = _brute(cfg, params, arr(ids, 0), arr(r["pos"], 0), arr(r["seg"], -1), arr(r["idx"], 0),
                               arr(r["lim"], 0), jnp.asarray([P], jnp.int32), len(ids) - 1)
        logits = np.asarray(logits)
        cand = int(np.argmax(logits))
        top2 = np.sort(logits)[-2:]
        state = DecisionState(logits, stats, np.int32(n), np.int32(ex.M), np.int32(len(ys)), np.int32(words),
                              np.bool_(ws[cand]))
        write, score, _ = _decide(vals, state)
        rec["logits"].append(logits)
        rec["scores"].append(float(score))
        rec["writes"].append(bool(write))
        rec["reads"].append(n)
        rec["gaps"].append(float(top2[1] - top2[0]))
        if write:
            words += int(bool(ws[cand]) or not ys)
            ys.append(cand)
            phi.append(n)
            if cand in eos_ids or len(ys) >= max_new:
                break
        else:
            n += 1
    return np.array(ys), np.array(phi), rec


# ---------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module", params=["qwen2", "qwen3"])
def setup(request):
    return text_setup(request.param)


def run(s, head, **kw):
    return stream_decode(s["cfg"], s["params"], s["exs"], head, MAX_NEW, eos_ids=s["eos"], word_starts=s["ws"],
                         return_logits=True, **kw)


def interleaved(results):
    """Some example wrote before reading everything and read again afterwards."""
    return any(len(set(r.phi.tolist())) >= 2 for r in results)


def choose_tau(s, base, **kw):
    """A tau that mixes READs and WRITEs and keeps every unforced score away from it (no near-ties)."""
    pool = np.unique(np.concatenate([r.scores[~r.forced] for r in run(s, f"{base},tau=0.5", **kw)]))
    for q in (0.5, 0.35, 0.65, 0.25, 0.75, 0.15, 0.85, 0.45, 0.55):
        i = min(int(q * (len(pool) - 1)), len(pool) - 2)
        tau = round(float(pool[i] + pool[i + 1]) / 2, 5)  # midway between two observed scores
        if not 0 < tau < 1:
            continue
        res = run(s, f"{base},tau={tau}", **kw)
        sc = np.concatenate([r.scores[~r.forced] for r in res])
        if interleaved(res) and np.min(np.abs(sc - tau)) > 1e-4:
            return f"{base},tau={tau}"
    pytest.fail(f"no tau found for {base} that interleaves reads and writes")


HEADS = ["batch", "wait-k:k=2", "wait-k:k=1,decide_at=token", "entropy", "entropy:decide_at=word",
         "attention:layers=-1:", "attention:stat=max,min_read=2"]


@pytest.mark.parametrize("head", HEADS)
def test_decode_equals_brute_force(setup, head):
    s = setup
    kw = {"target_offset": "contiguous"} if head == "entropy:decide_at=word" else {}
    if head.startswith(("entropy", "attention")):
        head = choose_tau(s, head if ":" in head else head + ":decide_at=token", **kw)
    res = run(s, head, **kw)
    if not head.startswith("batch"):
        assert interleaved(res), f"{head}: trivial traces {[r.phi.tolist() for r in res]}"
    cfg = s["cfg"]
    for ex, r in zip(s["exs"], res):
        ys, phi, rec = reference_decode(cfg, s["params"], ex, head, MAX_NEW, s["eos"], s["ws"],
                                        kw.get("target_offset", 0))
        assert min(rec["gaps"]) > 1e-4, "near-tie in the argmax: pick other seeds"
        np.testing.assert_array_equal(r.tokens, ys, err_msg=head)
        np.testing.assert_array_equal(r.phi, phi, err_msg=head)
        np.testing.assert_array_equal(r.writes, rec["writes"])
        np.testing.assert_array_equal(r.reads, rec["reads"])
        np.testing.assert_allclose(r.logits, np.stack(rec["logits"]), atol=1e-4, rtol=0)
        np.testing.assert_allclose(r.scores, rec["scores"], atol=1e-4, rtol=0)
        assert np.all(np.diff(r.phi) >= 0) and np.all((r.phi >= 0) & (r.phi <= ex.M + 1))
        assert len(r.writes) == len(r.tokens) + (r.phi[-1] if len(r.phi) else 0)


def test_batch_head_equals_full_recompute(setup):
    """batch head == greedy decoding of the batch view (all source visible), by plain causal forward."""
    s = setup
    cfg, params = s["cfg"], s["params"]
    res = run(s, "batch")
    assert any(r.finished for r in res) and not all(r.finished for r in res)
    for ex, r in zip(s["exs"], res):
        seq = list(ex.source) + list(ex.header)
        pos = list(range(ex.S)) + list(range(len(ex.header)))
        ys = []
        while len(ys) < MAX_NEW:
            # padding at the end does not change earlier rows of a causal forward: one compilation
            ids = np.zeros((1, T_PAD), np.int32)
            p = np.zeros((1, T_PAD), np.int32)
            ids[0, :len(seq)], p[0, :len(seq)] = seq, pos
            y = int(np.argmax(np.asarray(forward(cfg, params, ids, p))[0, len(seq) - 1]))
            ys.append(y)
            seq.append(y)
            pos.append(pos[-1] + 1)
            if y in s["eos"]:
                break
        np.testing.assert_array_equal(r.tokens, ys)
        assert np.all(r.phi == ex.M + 1)
        assert r.finished == (ys[-1] in s["eos"])


@pytest.mark.parametrize("head,word_level", [("wait-k:k=2", True), ("wait-k:k=1", True),
                                             ("wait-k:k=3,decide_at=token", False)])
def test_wait_k_follows_formula(setup, head, word_level):
    s = setup
    k = parse_head(head)["k"]
    res = run(s, head)
    saw_continuation = False
    for ex, r in zip(s["exs"], res):
        starts = s["ws"][r.tokens] if word_level else np.ones(len(r.tokens), bool)
        starts[:1] = True  # the first target token always starts word 1
        saw_continuation |= not starts.all()
        w = np.cumsum(starts)
        required = np.minimum(k + w - 1, ex.M + 1)
        # a word-starting token is written exactly when word w's requirement is met
        np.testing.assert_array_equal(r.phi[starts], required[starts], err_msg=f"{head} {r.tokens}")
        # a continuation is written without its own reads; reads before it can only come from a
        # word-starting candidate that turned into a continuation after the read (never beyond word w+1)
        cont = ~starts
        assert np.all(r.phi[cont] <= np.minimum(k + w[cont], ex.M + 1))
        assert np.all(r.forced[r.writes][cont]), "continuations are written without a decision"
        if not word_level:
            np.testing.assert_array_equal(r.phi, np.minimum(k + np.arange(len(r.phi)), ex.M + 1))
    if word_level:
        assert saw_continuation, "the word-start table should make some tokens continuations"


def _make(prompt_len, unit_lens, end_len, header_len, seed):
    r = np.random.default_rng(seed)
    t = lambda n: tuple(r.integers(4, 97, n).tolist())
    return StreamExample(prompt=t(prompt_len), units=tuple(t(u) for u in unit_lens), end=t(end_len),
                         header=t(header_len), target=(3,))


def test_compiles_once_per_bucket():
    cfg = tiny_qwen3()
    params = random_params(cfg, 3)
    # two batches of different lengths, chunked by 2: all four chunks fall into one shape bucket
    a = [_make(4, (1, 2, 3), 1, 2, 0), _make(2, (2,), 2, 1, 1), _make(3, (3, 1, 1), 2, 2, 2), _make(4, (1, 1), 1, 1, 3)]
    b = [_make(1, (3, 3, 2), 1, 2, 4), _make(4, (1,), 3, 1, 5), _make(4, (3, 2), 2, 1, 6), _make(2, (1, 1, 1), 1, 2, 7)]
    keys = {dec.shape_key(ch) for ch in (a[:2], a[2:], b[:2], b[2:])}
    assert len(keys) == 1, keys
    before = dec.TRACE_COUNT
    ra = stream_decode(cfg, params, a, "entropy:tau=0.2", 7, eos_ids=[], batch_size=2)
    assert dec.TRACE_COUNT - before == 1
    rb = stream_decode(cfg, params, b, "entropy:tau=0.9", 7, eos_ids=[], batch_size=2)
    stream_decode(cfg, params, a, "wait-k:k=2", 7, eos_ids=[5], batch_size=2)  # another head: same program
    assert dec.TRACE_COUNT - before == 1
    assert len(ra) == len(rb) == 4 and all(len(r.tokens) == 7 for r in ra + rb)


def test_bad_input_raises_before_compiling(qwen3_cfg):
    cfg = qwen3_cfg
    params = None  # never reached: every error is raised before the parameters are used
    ok = StreamExample(prompt=(1, 2), units=((4,), (5, 6)), end=(7,), header=(8,), target=(3,))
    before = dec.TRACE_COUNT
    cases = [
        (dict(head="nope"), "unknown decision head"),
        (dict(head="entropy:tau=1.5"), "outside"),
        (dict(head="entropy:tau=x"), "expected a number"),
        (dict(head="attention:tau=0.5,layers=5"), "out of range"),
        (dict(examples=[ok, StreamExample(prompt=(1,), units=((4,),), end=(7,), header=(), target=(3,))]),
         "header is empty"),
        (dict(examples=[StreamExample(prompt=(1,) * 600, units=((4,),), end=(7,), header=(8,), target=(3,))]),
         "max_position_embeddings"),
        (dict(max_new_tokens=600), "max_position_embeddings"),
        (dict(examples=[StreamExample(prompt=(1,), units=((400,),), end=(7,), header=(8,), target=(3,))]),
         "vocabulary"),
        (dict(max_source_len=3), "max_source_len"),
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(eos_ids=[1000]), "eos_ids"),
    ]
    for over, msg in cases:
        kw = dict(examples=[ok], head="batch", max_new_tokens=4, eos_ids=[3])
        kw.update(over)
        with pytest.raises(ValueError, match=msg):
            stream_decode(cfg, params, kw.pop("examples"), kw.pop("head"), kw.pop("max_new_tokens"), **kw)
    assert dec.TRACE_COUNT == before


def test_interleave_and_calibration(setup):
    s = setup
    res = run(s, "wait-k:k=2")
    ex, r = s["exs"][0], res[0]
    ev = interleave(ex, r, detokenize=lambda ts: "|".join(map(str, ts)))
    reads = [e for e in ev if e.kind == "READ"]
    writes = [e for e in ev if e.kind == "WRITE"]
    assert [e.tokens[0] for e in writes] == r.tokens.tolist()
    assert [e.n for e in writes] == r.phi.tolist()
    assert [e.tokens for e in reads] == [tuple(u) for u in (ex.units + (ex.end,))[:len(reads)]]
    assert "WRITE" in format_events(ev)
    if reads and reads[-1].n == ex.M + 1:  # the end marker is named, not shown as a bare string
        assert reads[-1].end and "[end of source]" in format_events(ev).splitlines()[ev.index(reads[-1])]
    assert all(not e.end for e in reads if e.n <= ex.M)
    text = format_trace(ex, ev, lambda ts: "|".join(map(str, ts)))
    assert text.startswith("legend: READ n") and f"prompt: {'|'.join(map(str, ex.prompt))!r}" in text
    tau = calibrate_tau(run(s, "entropy:tau=0.5"), 0.9)
    assert 0 <= tau <= 1


def test_embeddings_path_and_hidden_state(setup):
    """Source fed as input embeddings (the table rows) == fed as ids; the kept hidden state gives the logits."""
    s = setup
    cfg, params, exs = s["cfg"], s["params"], s["exs"]
    if not cfg.tie_word_embeddings:
        pytest.skip("CI time: run on the tied-embedding model (qwen2), where input and output share the table")
    spec = parse_head("wait-k:k=2")
    vals = encode_head(spec, cfg.num_hidden_layers)
    ws = np.asarray(s["ws"], bool)
    eos = np.zeros(cfg.vocab_size, bool)
    eos[s["eos"]] = True
    key = dec.shape_key(exs)
    batch, P_cap, U = dec.host_batch(exs, dec.bucket(len(exs)), MAX_NEW, 0, ws, eos, key)
    sh = dec.StepShapes(cfg, False, False, MAX_NEW, P_cap, U, key[1], key[3])
    ids_out = jax.device_get(dec._decode_jit(sh, True, params, vals, batch))
    emb = dict(batch, src_embeds=np.asarray(dec.embed_ids(cfg, params, jnp.asarray(batch["src"]))))
    emb_out = jax.device_get(dec._decode_jit(sh, True, params, vals, emb))
    for k in ("tokens", "phi", "j", "d", "rwrite", "rn"):
        np.testing.assert_array_equal(emb_out[k], ids_out[k], err_msg=k)
    np.testing.assert_allclose(emb_out["rlogits"], ids_out["rlogits"], atol=1e-5, rtol=0)
    # with_hidden: the state keeps the final hidden state of the decision row
    shh = sh._replace(with_hidden=True)
    rows = {k: jnp.asarray(batch[k]) for k in dec.ROW_KEYS}
    st = jax.jit(dec.prefill, static_argnums=0)(shh, params, vals, rows, jnp.asarray(batch["src"][:, :P_cap]))
    B = batch["src"].shape[0]
    st = jax.jit(dec.decision_step, static_argnums=0)(shh, params, vals, rows, st,
                                                      jnp.asarray(batch["src"][:, P_cap:P_cap + U]),
                                                      jnp.ones((B,), jnp.int32), jnp.ones((B,), bool))
    np.testing.assert_allclose(hidden_to_logits(cfg, params, st["hidden"][:, None])[:, 0], st["logits"],
                               atol=1e-5, rtol=0)


def _direct(s, head, **over):
    """The decode loop called directly with ``StepShapes`` fields overridden (a fresh trace: the jit cache of
    ``stream_decode`` is not reused). Returns (outputs, shapes)."""
    cfg, exs = s["cfg"], s["exs"]
    spec = parse_head(head)
    vals = encode_head(spec, cfg.num_hidden_layers)
    eos = np.zeros(cfg.vocab_size, bool)
    eos[s["eos"]] = True
    key = dec.shape_key(exs)
    batch, P_cap, U = dec.host_batch(exs, dec.bucket(len(exs)), MAX_NEW, 0, np.asarray(s["ws"], bool), eos, key)
    sh = dec.StepShapes(cfg, spec.needs_stats, False, MAX_NEW, P_cap, U, key[1], key[3], spec.needs_src_attn)
    sh = sh._replace(**over)
    run_ = jax.jit(lambda sh_, p, v, b: dec._decode_impl(sh_, True, p, v, b), static_argnums=0)
    return jax.device_get(run_(sh, s["params"], vals, batch)), sh


@pytest.mark.parametrize("head", ["wait-k:k=2", "attention:layers=-1:,tau=0.8", "alignatt:f=1"])
def test_attention_windows_equal_the_whole_cache(setup, head):
    """Attention over the filled part of the cache (window sizes switched as the source and the answer grow)
    == attention over the whole cache (which equals the brute-force decoder, tests above)."""
    s = setup
    win, sh = _direct(s, head, window_min=4)
    full, _ = _direct(s, head, window_levels=1)
    src_sizes, tgt_sizes = sorted({a for a, _ in sh.windows}), sorted({b for _, b in sh.windows})
    # the decodes cross window sizes in both cache groups
    assert len(src_sizes) >= 3 and max(e.S for e in s["exs"]) > src_sizes[1], (sh.windows, [e.S for e in s["exs"]])
    assert len(tgt_sizes) >= 2 and max(len(e.header) for e in s["exs"]) + int(win["j"].max()) > tgt_sizes[0]
    for k in ("tokens", "phi", "j", "d", "rwrite", "rn", "rforced"):
        np.testing.assert_array_equal(win[k], full[k], err_msg=k)
    # float rounding only (fewer masked keys in the softmax sums): the tolerance of the brute-force tests
    np.testing.assert_allclose(win["rlogits"], full["rlogits"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(win["score"], full["score"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("head", ["wait-k:k=2", "attention:layers=-1:,tau=0.8"])
def test_unstacked_layers_decode_as_the_stacked_model(setup, head):
    """The decode loop over per-layer weight buffers (``decode_params`` on CPU: the layers unrolled) == the
    model's scanned layers over stacked weights (no decode here unstacks them: ``_direct`` passes params as
    given), with the cache windows and the attention hook in play."""
    from proactive_jax.models.qwen import unstack_layers

    s = setup
    stacked, _ = _direct(s, head, window_min=4)
    assert not isinstance(s["params"]["layers"], tuple)
    unstacked, _ = _direct(dict(s, params=unstack_layers(s["params"])), head, window_min=4)
    for k in ("tokens", "phi", "j", "d", "rwrite", "rn", "rforced"):
        np.testing.assert_array_equal(unstacked[k], stacked[k], err_msg=k)
    np.testing.assert_allclose(unstacked["rlogits"], stacked["rlogits"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(unstacked["score"], stacked["score"], atol=1e-5, rtol=0)


def test_a_write_step_feeds_one_row(setup, monkeypatch):
    """At batch 1 every executed step feeds exactly what its decision needs: a WRITE one target row, a READ
    its unit plus the re-fed last token, or plus the whole header while nothing is written yet (recorded from
    inside the branch the step runs)."""
    s = setup
    fed = []
    model = dec._model

    def recording(sh, params, chunk, cache, row, plen, window, embeds=None):
        if not window.write:  # a decision step (the prefill writes its chunk itself)
            jax.debug.callback(functools.partial(fed.append, chunk[0].shape[1]), ordered=True)
        return model(sh, params, chunk, cache, row, plen, window, embeds)

    monkeypatch.setattr(dec, "_model", recording)
    ex = max(s["exs"], key=lambda e: (len(e.header), e.M))
    assert len(ex.header) > 1
    one = dict(s, exs=[ex])
    out, sh = _direct(one, "wait-k:k=2")
    D = int(out["d"][0])
    writes, reads = out["rwrite"][0, :D], out["rn"][0, :D]
    written_before = np.concatenate([[0], np.cumsum(writes)[:-1]])
    U, Hc = sh.unit_cap, sh.header_cap
    expected = np.where(writes, 1, np.where(written_before == 0, U + Hc, U + 1))
    assert writes.any() and (~writes).any() and ((~writes) & (written_before > 0)).any()
    np.testing.assert_array_equal(fed, expected)
    assert [dec.chunk_rows(sh, k) for k in range(3)] == [1, U + 1, U + Hc]
