"""Input pipeline: cache, buckets, determinism, hosts, resume, bounded shapes."""
import numpy as np
import pytest

from proactive_jax.data import pipeline as pl
from proactive_jax.data import synthetic as syn
from proactive_jax.data.pipeline import Pipeline, prepare_examples
from proactive_jax.data.render import RenderConfig, TextExample
from proactive_jax.data.example import ExampleError

BUCKETS = [(40, 20), (22, 4), (20, 18)]  # lookup: S=22, T=4; word-map: S<=20, T<=18


def simple_collate(examples, bucket):
    """Test collate: right-pad the source group to S and the target group to T with -1."""
    S, T = bucket
    src = np.full((len(examples), S), -1, np.int32)
    tgt = np.full((len(examples), T), -1, np.int32)
    for i, e in enumerate(examples):
        s, t = e.source, e.header + e.target
        assert len(s) <= S and len(t) <= T
        src[i, : len(s)] = s
        tgt[i, : len(t)] = t
    return {"source": src, "target": tgt, "M": np.array([e.M for e in examples], np.int32)}


@pytest.fixture(scope="module")
def tok():
    return syn.load_tokenizer()


@pytest.fixture(scope="module")
def data(tok):
    texts = syn.make_task("lookup", 150, seed=0) + syn.make_task("word-map", 113, seed=0)
    prep = prepare_examples(texts, tok, RenderConfig())
    return prep.examples, prep.ids


def make(data, **kw):
    exs, ids = data
    args = dict(global_batch_size=16, collate=simple_collate, seed=3)
    args.update(kw)
    return Pipeline(exs, BUCKETS, ids=ids, **args)


def _rows(batch):
    return [tuple(r) for r in batch["source"]]


def test_buckets_smallest_fit(data):
    p = make(data)
    assert p.buckets == [(22, 4), (20, 18), (40, 20)]  # ordered by S + T
    for e, b in zip(p.examples, p.bucket_of):
        S, T = p.buckets[b]
        assert e.S <= S and e.T <= T
        assert not any(e.S <= s and e.T <= t for s, t in p.buckets[:b])
    assert p.bucket_counts.tolist() == [150, 113, 0]


def test_same_seed_step_same_batch(data):
    a, b = make(data), make(data)
    for step in (0, 5, 17, 40):
        x, y = a.batch_at(step), b.batch_at(step)
        assert x.keys() == y.keys() and all((x[k] == y[k]).all() for k in x)
    c = make(data, seed=4)
    assert any(not (a.batch_at(s)["example_index"] == c.batch_at(s)["example_index"]).all() for s in range(5))


def test_epoch_covers_every_example_once_and_pads(data):
    p = make(data)
    G = p.global_batch_size
    assert p.steps_per_epoch == -(-113 // G) + -(-150 // G)  # ceil per bucket
    for epoch in (0, 1):
        seen = []
        for s in range(epoch * p.steps_per_epoch, (epoch + 1) * p.steps_per_epoch):
            _, idx, valid = p.global_batch(s)
            seen += idx[valid].tolist()
            assert len(set(p.bucket_of[idx].tolist())) == 1  # one bucket per batch
        assert sorted(seen) == list(range(len(p.examples)))
    orders = [p.global_batch(s)[1].tolist() for s in range(2 * p.steps_per_epoch)]
    assert orders[: p.steps_per_epoch] != orders[p.steps_per_epoch:]  # reshuffled per epoch
    d = make(data, remainder="drop")
    assert d.steps_per_epoch == 113 // 16 + 150 // 16
    assert all(d.batch_at(s)["valid"].all() for s in range(d.steps_per_epoch))


def test_hosts_disjoint_and_covering(data):
    full = make(data)
    hosts = [make(data, host_index=h, host_count=4) for h in range(4)]
    assert all(h.batch_size == 4 for h in hosts)
    for step in range(2 * full.steps_per_epoch):
        bucket, gidx, gvalid = full.global_batch(step)
        parts = [h.batch_at(step) for h in hosts]
        cat = np.concatenate([b["example_index"] for b in parts])
        assert (cat == gidx).all() and (np.concatenate([b["valid"] for b in parts]) == gvalid).all()
        real = [set(b["example_index"][b["valid"]].tolist()) for b in parts]
        for i in range(4):
            for j in range(i + 1, 4):
                assert not real[i] & real[j]
        assert set().union(*real) == set(gidx[gvalid].tolist())
        assert all(b["source"].shape == (4, bucket[0]) for b in parts)
    with pytest.raises(ValueError, match="multiple of host_count"):
        make(data, global_batch_size=10, host_count=4)


def test_resume_equals_uninterrupted(data):
    p = make(data, host_index=1, host_count=2)
    n = 2 * p.steps_per_epoch + 3
    straight = list(p.batches_from(0, n))
    for k in (0, 1, p.steps_per_epoch - 1, p.steps_per_epoch, p.steps_per_epoch + 4):
        fresh = make(data, host_index=1, host_count=2)  # a restarted process
        resumed = list(fresh.batches_from(k, n - k))
        assert len(resumed) == n - k
        for a, b in zip(straight[k:], resumed):
            assert a.keys() == b.keys() and all((a[key] == b[key]).all() for key in a)


def test_shapes_bounded_by_bucket_count(data):
    p = make(data)
    shapes = set()
    for b in p.batches_from(0, 3 * p.steps_per_epoch):
        shapes.add(tuple((k, v.shape) for k, v in sorted(b.items())))
        assert b["valid"].dtype == bool and b["example_index"].dtype == np.int64
    assert len(shapes) <= len(p.buckets)
    assert len(shapes) == 2  # the third bucket holds no example


def test_unfit_examples_error_or_skip(data):
    exs, ids = data
    with pytest.raises(ExampleError, match=r"example 'lookup/train/0/0' \(index 0\) has S=22, T=4 and fits no bucket"):
        Pipeline(exs, [(20, 18)], ids=ids, global_batch_size=8, collate=simple_collate)
    p = Pipeline(exs, [(20, 18)], ids=ids, global_batch_size=8, collate=simple_collate, on_unfit="skip")
    assert p.unfit == 150 and p.bucket_counts.tolist() == [113]
    seen = set()
    for s in range(p.steps_per_epoch):
        b = p.batch_at(s)
        seen |= set(b["example_index"][b["valid"]].tolist())
    assert seen == set(range(150, 263))
    with pytest.raises(ValueError, match="no full batch"):
        Pipeline(exs[:3], [(40, 20)], global_batch_size=8, collate=simple_collate, remainder="drop")


def test_tiny_dataset_pads_with_repeats(data):
    exs, _ = data
    p = Pipeline(exs[:3], [(40, 20)], global_batch_size=8, collate=simple_collate)
    b = p.batch_at(0)
    assert b["valid"].sum() == 3 and set(b["example_index"].tolist()) == {0, 1, 2}
    assert p.steps_per_epoch == 1


def test_collate_contract_checked(data):
    exs, _ = data
    bad = Pipeline(exs, BUCKETS, global_batch_size=8, collate=lambda e, b: {"x": np.zeros((3, 2))})
    with pytest.raises(ValueError, match="leading dim 8"):
        bad.batch_at(0)
    reserved = Pipeline(exs, BUCKETS, global_batch_size=8, collate=lambda e, b: {"valid": np.zeros(8)})
    with pytest.raises(ValueError, match="reserved key 'valid'"):
        reserved.batch_at(0)


def test_cache_rerun_does_not_retokenize(tok, tmp_path, monkeypatch):
    calls = {"load": 0}

    def texts():
        calls["load"] += 1
        return syn.make_task("word-map", 40, seed=9)

    cfg = RenderConfig()
    first = prepare_examples(texts, tok, cfg, dataset_key="synthetic:word-map:40:9", cache_dir=tmp_path)
    assert not first.cache_hit and first.cache_path.exists() and calls["load"] == 1

    def boom(*a, **k):
        raise AssertionError("re-tokenized")

    monkeypatch.setattr(pl, "render_example", boom)
    second = prepare_examples(texts, tok, cfg, dataset_key="synthetic:word-map:40:9", cache_dir=tmp_path)
    assert second.cache_hit and calls["load"] == 1
    assert second.examples == first.examples and second.ids == first.ids
    # another render config or dataset key is another cache entry
    with pytest.raises(AssertionError, match="re-tokenized"):
        prepare_examples(texts, tok, RenderConfig(max_source_tokens=100), dataset_key="synthetic:word-map:40:9",
                         cache_dir=tmp_path)
    with pytest.raises(AssertionError, match="re-tokenized"):
        prepare_examples(texts, tok, cfg, dataset_key="other", cache_dir=tmp_path)


def test_prepare_skips_bad_examples(tok):
    good = syn.make_task("lookup", 3, seed=1)
    bad = TextExample(task="t", id="bad-1", prompt_text="which fruit ?", units=["apple", " "], target_text="x")
    with pytest.raises(ExampleError, match="bad-1"):
        prepare_examples(good + [bad], tok)
    prep = prepare_examples(good + [bad], tok, RenderConfig(max_source_tokens=21), on_bad_example="skip")
    assert prep.examples == [] and prep.skipped == {"over max_source_tokens": 3, "is empty": 1}


def test_save_load_roundtrip(data, tmp_path):
    exs, ids = data
    pl.save_examples(tmp_path / "x.npz", exs, ids, {"a": 1})
    back, back_ids, meta = pl.load_examples(tmp_path / "x.npz")
    assert back == exs and back_ids == ids and meta == {"a": 1}


def test_truncated_cache_is_rebuilt(tok, tmp_path, caplog):
    texts = syn.make_task("word-map", 20, seed=4)
    first = prepare_examples(texts, tok, RenderConfig(), dataset_key="k", cache_dir=tmp_path)
    raw = first.cache_path.read_bytes()
    first.cache_path.write_bytes(raw[: len(raw) // 2])  # a killed copy / full disk: BadZipFile on load
    with caplog.at_level("WARNING"):
        again = prepare_examples(texts, tok, RenderConfig(), dataset_key="k", cache_dir=tmp_path)
    assert not again.cache_hit and again.examples == first.examples and "unreadable" in caplog.text
    assert prepare_examples(texts, tok, RenderConfig(), dataset_key="k", cache_dir=tmp_path).cache_hit


def test_huge_example_rejected_before_tokenizing(tok, monkeypatch):
    good = syn.make_task("word-map", 3, seed=2)
    huge = TextExample(task="t", id="huge", prompt_text="", units=["w"] * 200_000, target_text="x")
    seen = []
    real = pl.render_example

    def counting(tokenizer, ex, *a, **k):
        seen.append(ex.id)
        return real(tokenizer, ex, *a, **k)

    monkeypatch.setattr(pl, "render_example", counting)
    prep = prepare_examples(good + [huge], tok, on_bad_example="skip", source_bound=40)
    assert "huge" not in seen and len(prep.examples) == 3 and prep.skipped == {"over max_source_tokens": 1}
    with pytest.raises(ExampleError, match=r"'huge'.*200000 source words.*not tokenized"):
        prepare_examples([huge], tok, source_bound=40)


def test_no_bucket_fits_names_the_buckets(data):
    exs, ids = data
    with pytest.raises(ExampleError, match=r"no full batch.*263 examples fit no bucket of \[\(4, 4\)\].*enlarge"):
        Pipeline(exs, [(4, 4)], ids=ids, global_batch_size=8, collate=simple_collate, on_unfit="skip")
