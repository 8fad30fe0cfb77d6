"""Synthetic tasks: determinism, disjoint splits, the evidence / look-ahead guarantees, the word-level tokenizer."""
import itertools
import json

import pytest

from proactive_jax.data import synthetic as syn
from proactive_jax.data.render import render_example, template_parts


@pytest.fixture(scope="module")
def wl():
    return syn.load_tokenizer()


@pytest.mark.parametrize("name", ["lookup", "word-map"])
def test_deterministic_per_seed(name):
    a = syn.make_task(name, 50, seed=7, split="train")
    b = syn.make_task(name, 50, seed=7, split="train")
    c = syn.make_task(name, 50, seed=8, split="train")
    assert [e.to_dict() for e in a] == [e.to_dict() for e in b]
    assert [e.source for e in a] != [e.source for e in c]
    assert syn.make_task(name, 10, seed=7)[:10] == a[:10]  # a prefix of a longer draw


@pytest.mark.parametrize("name", ["lookup", "word-map"])
def test_splits_disjoint(name):
    seen = {}
    for split, n in (("train", 1500), ("valid", 200), ("test", 200)):
        keys = {(e.prompt_text, e.source) for e in syn.make_task(name, n, seed=0, split=split)}
        for other, ks in seen.items():
            assert not keys & ks, (split, other)
        seen[split] = keys
    with pytest.raises(ValueError, match="split"):
        syn.make_task(name, 1, split="dev")


def test_lookup_structure():
    cfg = syn.LookupConfig()
    for ex in syn.make_task("lookup", 200, seed=1):
        words = ex.source.split(" ")
        assert len(words) == cfg.n_units == len(ex.units)
        cat = ex.meta["category"]
        assert ex.prompt_text == f"which {cat} ?"
        for c in cfg.categories:
            assert sum(w in cfg.items(c) for w in words) == 1
        assert sum(w in cfg.fillers for w in words) == cfg.n_units - cfg.n_categories
        assert words[ex.meta["evidence_unit"]] == ex.target_text and ex.target_text in cfg.items(cat)
        assert ex.references == [ex.target_text]


def test_lookup_answer_determined_exactly_at_evidence():
    """For every prefix of the stream, the answers consistent with it number 1 iff the evidence is in it."""
    cfg = syn.LookupConfig()
    for ex in syn.make_task("lookup", 200, seed=2, split="valid"):
        words = [u.strip() for u in ex.units]
        ev = ex.meta["evidence_unit"]
        for k in range(len(words) + 1):
            cands = syn.lookup_answers_consistent(ex.meta["category"], words[:k], cfg)
            assert ex.target_text in cands
            assert (len(cands) == 1) == (k > ev), (k, ev, cands)
            if k <= ev:
                assert cands == set(cfg.items(ex.meta["category"]))


def test_lookup_consistency_against_exhaustive_enumeration():
    """Independent brute force on a tiny config: enumerate every stream the generator can produce."""
    cfg = syn.LookupConfig(n_units=4, n_categories=2, n_items=2, n_fillers=2)
    cats = cfg.categories
    streams = []
    for pos in itertools.permutations(range(cfg.n_units), len(cats)):
        for items in itertools.product(*(cfg.items(c) for c in cats)):
            for fill in itertools.product(cfg.fillers, repeat=cfg.n_units - len(cats)):
                w, it = [None] * cfg.n_units, iter(fill)
                for p, item in zip(pos, items):
                    w[p] = item
                streams.append(tuple(x if x is not None else next(it) for x in w))
    streams = sorted(set(streams))
    for cat in cats:
        answer = {s: next(x for x in s if x in cfg.items(cat)) for s in streams}
        for s in streams:
            for k in range(cfg.n_units + 1):
                brute = {answer[t] for t in streams if t[:k] == s[:k]}
                assert brute == syn.lookup_answers_consistent(cat, list(s[:k]), cfg)
                assert (len(brute) == 1) == (answer[s] in s[:k])
    # the generator's draws are in this support
    import numpy as np
    rng = np.random.default_rng(0)
    for _ in range(50):
        _, words, _, _ = syn.lookup_sample(rng, cfg)
        assert tuple(words) in set(streams)


def test_word_map_translation_and_lookahead_exhaustive():
    """Target words 0..k-1 are a function of source words 0..k-1+LOOKAHEAD (and LOOKAHEAD is tight)."""
    L = syn.WORD_MAP_MAX_LOOKAHEAD
    assert L == 1
    cfg = syn.WordMapConfig(n_det=1, n_adj=2, n_noun=2, n_verb=1, max_clauses=2)
    sources = list(syn.enumerate_word_map_sources(cfg))
    assert len(sources) == 36 + 36 * 36
    table: dict = {}
    tight_violation = False
    by_prefix: dict = {}
    for src in sources:
        tgt = syn.word_map_translate(src)
        assert len(tgt) == len(src)
        for k in range(len(tgt) + 1):
            key = (k, tuple(src[: k + L]))
            assert table.setdefault(key, tuple(tgt[:k])) == tuple(tgt[:k]), (src, k)
            prev = by_prefix.setdefault((k, tuple(src[:k])), tuple(tgt[:k]))
            tight_violation |= prev != tuple(tgt[:k])
    assert tight_violation, "look-ahead 0 would suffice; the constant is not tight"


def test_word_map_examples():
    for ex in syn.make_task("word-map", 200, seed=3):
        src = ex.source.split(" ")
        assert ex.target_text.split(" ") == syn.word_map_translate(src)
        assert 5 <= len(src) <= 15 and ex.prompt_text == syn.WORD_MAP_PROMPT
        for i, w in enumerate(src[:-1]):
            if w in syn.WORD_MAP_DICT["adj"]:
                assert src[i + 1] in syn.WORD_MAP_DICT["noun"]
    assert syn.word_map_translate("the big house sees a car".split()) == "der haus gross sieht ein auto".split()


def test_shipped_tokenizer_equals_fresh_build(tmp_path, wl):
    fresh_dir = syn.build_tokenizer(tmp_path / "tok")
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        a, b = (syn.ASSET_DIR / f).read_text(), (fresh_dir / f).read_text()
        assert (json.loads(a) == json.loads(b)) if f.endswith(".json") else a == b, f
    from transformers import AutoTokenizer

    fresh = AutoTokenizer.from_pretrained(str(fresh_dir))
    assert fresh.get_vocab() == wl.get_vocab()
    assert wl.unk_token == "<unk>" and wl.pad_token == "<|endoftext|>" and wl.eos_token == "<|im_end|>"
    assert list(wl.get_vocab())  # non-empty
    assert wl.convert_ids_to_tokens(list(range(4))) == list(syn.SPECIAL_TOKENS)


def test_rendered_synthetic_examples(wl):
    parts = template_parts(wl)
    for ex in syn.make_task("lookup", 100, seed=4):
        se = render_example(wl, ex, parts)
        assert (se.S, se.T, se.M, se.L) == (22, 4, 16, 2)
        assert wl.unk_token_id not in se.source + se.target
    for ex in syn.make_task("word-map", 100, seed=4):
        se = render_example(wl, ex, parts)
        assert se.M == len(ex.target_text.split()) == se.L - 1
        assert wl.unk_token_id not in se.source + se.target


def test_configs_validate():
    with pytest.raises(ValueError, match="n_categories"):
        syn.LookupConfig(n_categories=5)
    with pytest.raises(ValueError, match="n_units"):
        syn.LookupConfig(n_units=3)
    with pytest.raises(ValueError, match="clauses"):
        syn.WordMapConfig(min_clauses=3, max_clauses=2)
    with pytest.raises(KeyError, match="unknown synthetic task"):
        syn.make_task("copy", 1)
    small = syn.make_task("lookup", 5, config=syn.LookupConfig(n_units=8, n_categories=2))
    assert all(len(e.units) == 8 for e in small)
