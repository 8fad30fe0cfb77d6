"""Study tasks: determinism, disjoint splits, oracles exact against exhaustive enumeration, the generator's
support equal to the grammar's, chance levels, external labels, and a >= 2,000-word tokenizer built the way
the shipped one is."""
import itertools
from collections import Counter, defaultdict

import numpy as np
import pytest

from proactive_jax.data import synthetic as syn
from proactive_jax.data import synthetic_study as S
from proactive_jax.data.render import render_example, template_parts

TASKS = list(S.STUDY_TASKS)


@pytest.mark.parametrize("name", TASKS)
def test_deterministic_per_seed(name):
    a = S.make_study_task(name, 40, seed=7, split="train")
    b = S.make_study_task(name, 40, seed=7, split="train")
    c = S.make_study_task(name, 40, seed=8, split="train")
    assert [e.to_dict() for e in a] == [e.to_dict() for e in b]
    assert [e.source for e in a] != [e.source for e in c]
    assert [e.to_dict() for e in S.make_study_task(name, 10, seed=7)] == [e.to_dict() for e in a[:10]]


@pytest.mark.parametrize("name", TASKS)
def test_splits_disjoint(name):
    seen = {}
    for split, n in (("train", 800), ("valid", 150), ("test", 150)):
        keys = {(e.prompt_text, e.source) for e in S.make_study_task(name, n, seed=0, split=split)}
        assert len(keys) > 0.95 * n
        for other, ks in seen.items():
            assert not keys & ks, (split, other)
        seen[split] = keys
    with pytest.raises(ValueError, match="split"):
        S.make_study_task(name, 1, split="dev")
    with pytest.raises(KeyError, match="unknown study task"):
        S.make_study_task("lookup", 1)


def _prefix_determination(streams, tokens):
    """Brute force: for every stream and target position k, the smallest read count n whose view (the first
    n words, the end marker unread; n = M+1: the whole stream and its end) leaves one target prefix
    ``tokens[:k+1]`` among all streams consistent with it. ``tokens`` end with an end-of-turn sentinel."""
    common = {}  # view -> [representative, length of the targets' common prefix over the view's streams]

    def views(s):
        return [(n, ("open", s[:n])) for n in range(len(s) + 1)] + [(len(s) + 1, ("closed", s))]

    for i, s in enumerate(streams):
        for _, v in views(s):
            if v not in common:
                common[v] = [i, len(tokens[i])]
                continue
            t, u, k = tokens[common[v][0]], tokens[i], 0
            while k < common[v][1] and k < len(u) and t[k] == u[k]:
                k += 1
            common[v][1] = k
    return [[next(n for n, v in views(s) if common[v][1] >= k + 1) for k in range(len(tokens[i]))]
            for i, s in enumerate(streams)]


# ------------------------------------------------------------------------------------------------ ledger

def _ledger_valid(words, key, cfg):
    """An independent reading of the grammar: 4-word slots; per key a story of <= 2 mentions; the asked key
    mentioned."""
    mentions = defaultdict(list)
    for s in range(len(words) // 4):
        w = words[4 * s:4 * s + 4]
        if w[0] in cfg.keys and w[1] in ("is", "maybe") and w[2] in cfg.values and w[3] == ".":
            mentions[w[0]].append((w[1], w[2]))
        elif w[0] == "no" and w[1] in cfg.keys and w[2] == "is" and w[3] in cfg.values:
            mentions[w[1]].append(("no", w[3]))
        elif not all(x in S.LEDGER_FILLERS[:cfg.n_fillers] for x in w):
            return False
    for ms in mentions.values():
        if len(ms) > 2 or ms[0][0] == "no":
            return False
        if len(ms) == 2:
            (k1, v1), (k2, v2) = ms
            if k2 == "maybe" or (k2 == "no" and v2 == v1) or (k1 == "is" and k2 == "is" and v2 != v1):
                return False
    return key in mentions


def _ledger_streams(cfg):
    slot = [tuple(S.LEDGER_FILLERS[:1] * 4)]
    slot += [(k, f, v, ".") for k in cfg.keys for f in ("is", "maybe") for v in cfg.values]
    slot += [("no", k, "is", v) for k in cfg.keys for v in cfg.values]
    out = {}
    for key in cfg.keys:
        out[key] = [sum(c, ()) for c in itertools.product(slot, repeat=cfg.n_slots)]
        out[key] = [s for s in out[key] if _ledger_valid(s, key, cfg)]
    return out


def test_ledger_oracle_exact_against_exhaustive_enumeration():
    cfg = S.LedgerConfig(n_slots=3, n_keys=2, n_values=3, n_fillers=1)
    for key, streams in _ledger_streams(cfg).items():
        answers = [[S._ledger_slots(key, s)[-1][2]] for s in streams]
        brute = _prefix_determination(streams, [a + ['<eot>'] for a in answers])
        for s, b, a in zip(streams, brute, answers):
            ans, det, first = S.ledger_determined_at(key, list(s))
            assert (ans, [det, det]) == (a[0], b), (key, s)
            assert first <= det


@pytest.mark.parametrize("n_slots", [2, 3])
def test_ledger_generator_support_is_the_grammar(n_slots):
    """Every draw is grammatical, and (2 slots: every one of them; 3 slots: nearly all) grammatical streams
    are drawn: the oracle's "any later slot may still mention the key" is the generator's support."""
    cfg = S.LedgerConfig(n_slots=n_slots, n_keys=2, n_values=3, n_fillers=1, p_filler=0.3)
    valid = {(k, s) for k, ss in _ledger_streams(cfg).items() for s in ss}
    rng = np.random.default_rng(0)
    drawn = set()
    for _ in range(20000 if n_slots == 2 else 12000):
        key, words, answer, story = S.ledger_sample(rng, cfg)
        assert (key, tuple(words)) in valid
        assert S.ledger_determined_at(key, words)[0] == answer
        drawn.add((key, tuple(words)))
    assert len(drawn) == len(valid) if n_slots == 2 else len(drawn) > 0.75 * len(valid)


def test_ledger_examples_and_figures():
    cfg = S.LedgerConfig()
    exs = S.make_study_task("ledger", 1500, seed=1, split="train")
    stories = Counter(e.meta["story"] for e in exs)
    assert set(stories) == set(S.LEDGER_STORIES)
    first_right, premature, rco = [], [], []
    for e in exs:
        words = [u.strip() for u in e.units]
        assert len(words) == 4 * cfg.n_slots and e.references == [e.target_text]
        assert e.prompt_text == f"what is {e.meta['key']} ?"
        mentions = S._ledger_slots(e.meta["key"], words)
        first_right.append(mentions[0][2] == e.target_text)
        premature.append(e.meta["external"][0] < e.meta["oracle"][0])
        rco.append(min(e.meta["oracle"][0], len(words)) / len(words))
    assert abs(np.mean(first_right) - cfg.first_evidence_accuracy()) < 0.04  # 0.5 by default
    assert np.mean(premature) > 0.8  # the first-evidence label is early on most examples
    assert 0.7 < np.mean(rco) < 0.85  # the oracle reads ~78% of the stream
    assert S.analytic_chance("ledger") == 100 / 8
    freq = Counter(e.target_text for e in exs)
    assert max(freq.values()) / len(exs) < 1 / 8 + 0.04  # no answer is much more likely than 1/n_values


# -------------------------------------------------------------------------------------------- verb-final

def _vf_sources(cfg):
    def nps():
        adj = [[a] for a in cfg.words("adj")] if cfg.adj_prob > 0 else []
        return [[d] + a + [n] for d in cfg.words("det") for a in [[]] + adj for n in cfg.words("noun")]

    pps = [[p] + c for p in cfg.words("prep") for c in nps()] if cfg.pp_prob > 0 else []
    clauses = [a + b + pp + [v] for a in nps() for b in nps() for pp in [[]] + pps for v in cfg.words("verb")]
    out = []
    for n in range(cfg.min_clauses, cfg.max_clauses + 1):
        for combo in itertools.product(clauses, repeat=n):
            out.append(tuple(w for k, c in enumerate(combo) for w in (["and"] if k else []) + c))
    return out


@pytest.mark.parametrize("max_clauses,adj_pp", [(1, 0.5), (2, 0.0)])
def test_verb_final_oracle_exact_against_exhaustive_enumeration(max_clauses, adj_pp):
    """Two words per class (the smallest config where every word is unknown until read): one clause with
    adjectives and PPs (7,200 sources), or two clauses without (1,056)."""
    cfg = S.VerbFinalConfig(n_det=2, n_adj=2, n_noun=2, n_verb=2, n_prep=2, max_clauses=max_clauses,
                            adj_prob=adj_pp, pp_prob=adj_pp)
    sources = _vf_sources(cfg)
    assert len(sources) == (7200 if max_clauses == 1 else 32 + 32 * 32)
    targets = [S.verb_final_target(s, max_clauses)[0] + ["<eot>"] for s in sources]
    brute = _prefix_determination(sources, targets)
    for s, t, b in zip(sources, targets, brute):
        assert S.verb_final_target(s, max_clauses)[1] == b, (s, t)
    rng = np.random.default_rng(0)
    support = set(sources)
    for _ in range(300):
        assert tuple(S.verb_final_sample(rng, cfg)) in support


def test_verb_final_reorders_and_lexicon_is_large():
    cfg = S.VerbFinalConfig()
    lex = S.lexicon()
    n_words = sum(len(lex[side][c]) for side in ("vf_src", "vf_tgt") for c in S.VF_SIZES) + 2
    assert n_words >= 2000
    cls, tr = S._vf_tables()
    exs = S.make_study_task("verb-final", 400, seed=2, split="valid")
    late_verb, lag = 0, []
    for e in exs:
        src, tgt = [u.strip() for u in e.units], e.target_text.split()
        assert len(tgt) == len(src) and sorted(tgt) == sorted(tr[w] for w in src)
        oracle = e.meta["oracle"]
        assert len(oracle) == len(tgt) + 1 and oracle == sorted(oracle) and oracle[-1] in (len(src), len(src) + 1)
        v = [i for i, w in enumerate(src) if cls.get(w) == "verb"][0]
        k = tgt.index(tr[src[v]])  # the first clause's verb, second constituent of the target
        assert oracle[k] == v + 1
        late_verb += k < v  # written before its source position: a real reordering
        lag.append(max(o - (j + 1) for j, o in enumerate(oracle[:-1])))
    assert late_verb == len(exs)
    assert np.mean(lag) >= 4  # the largest look-ahead a policy needs is 4+ words on average
    assert cfg.words("noun")[0] == lex["vf_src"]["noun"][0]


# ------------------------------------------------------------------------------------------- synonym-map

def test_synonym_oracle_exact_against_exhaustive_enumeration():
    cfg = S.SynonymMapConfig(min_len=1, max_len=3, n_concepts=2, max_synonyms=2)
    concepts = S.lexicon()["syn_concepts"][:2]
    items = [(c, i) for c in concepts for i in (False, True)]
    sources, sets = [], []
    for n in range(1, 4):
        for combo in itertools.product(items, repeat=n):
            sources.append(tuple(w for c, i in combo for w in [c] + (["plus"] if i else [])))
            sets.append([cfg.valid_set(c, i) for c, i in combo] + ["<eot>"])
    brute = _prefix_determination(sources, sets)
    for s, b in zip(sources, brute):
        assert S.synonym_oracle(s, cfg.max_len) == b, s


def test_synonym_references_hold_every_valid_output():
    exs = S.make_study_task("synonym-map", 300, seed=3, split="test")
    sizes = Counter()
    for e in exs:
        sets = S.parse_pattern(e.references[0])
        words = e.target_text.split()
        assert len(sets) == len(words) == len(e.meta["set_sizes"]) == len(e.meta["oracle"]) - 1
        assert all(w in s for w, s in zip(words, sets))
        assert [len(s) for s in sets] == e.meta["set_sizes"]
        sizes.update(len(s) for s in sets)
        assert all(x <= o for x, o in zip(e.meta["external"][:-1], e.meta["oracle"][:-1]))
    assert max(sizes) == 128 and sizes[1] > 0  # from one valid output to more than top-100 of them
    # sets of different concepts (and of a concept with / without the intensifier) are disjoint
    lex = S.lexicon()
    all_words = [w for group in (lex["syn_base"], lex["syn_intense"]) for s in group for w in s]
    assert len(all_words) == len(set(all_words))


def test_source_blind_candidates():
    exs = S.make_study_task("verb-final", 200, seed=0)
    cands = S.source_blind_outputs("verb-final", exs)
    assert cands[0] == "" and len(cands) == len({len(e.target_text.split()) for e in exs}) + 1
    assert S.source_blind_outputs("ledger", S.make_study_task("ledger", 100)) == sorted(S.LedgerConfig().values)
    assert S.analytic_chance("verb-final") is None


# ---------------------------------------------------------------------------------------------- tokenizer

def test_study_tokenizer_covers_every_word(tmp_path, monkeypatch):
    """The study vocabulary = the shipped one + the study words, built by ``synthetic.build_tokenizer``
    unchanged (only its word list grows): ids of the shipped words stay, every study word is one token."""
    base = syn.vocabulary()
    words = base + [w for w in S.study_words() if w not in set(base)]
    assert len(words) >= 2000 and len(set(words)) == len(words)
    monkeypatch.setattr(syn, "vocabulary", lambda: words)
    tok = syn.load_tokenizer(syn.build_tokenizer(tmp_path / "study_tok"))
    vocab = tok.get_vocab()
    assert len(vocab) == len(words) and all(vocab[w] == i for i, w in enumerate(base))
    parts = template_parts(tok)
    unk = tok.convert_tokens_to_ids("<unk>")
    for name in TASKS:
        for e in S.make_study_task(name, 30, seed=0, split="test"):
            ex = render_example(tok, e, parts)
            assert all(len(u) == 1 and u[0] != unk for u in ex.units)
            assert unk not in ex.prompt and unk not in ex.target
            assert len(ex.target) == len(e.target_text.split()) + 1
            assert len(S.study_oracle_read_counts(e, len(ex.target))) == len(ex.target)
    ref_words = {w for e in S.make_study_task("synonym-map", 30) for s in S.parse_pattern(e.references[0]) for w in s}
    assert ref_words <= set(vocab)


def test_configs_validate():
    with pytest.raises(ValueError, match="n_values"):
        S.LedgerConfig(n_values=2)  # a correction's value would be known from the key
    with pytest.raises(ValueError, match="story"):
        S.LedgerConfig(story_probs=(("single", 1.0),))  # the oracle's support needs every story
    with pytest.raises(ValueError, match="p_filler"):
        S.LedgerConfig(p_filler=0.0)
    with pytest.raises(ValueError, match="n_verb"):
        S.VerbFinalConfig(n_verb=1)
    with pytest.raises(ValueError, match="intense_prob"):
        S.SynonymMapConfig(intense_prob=0.0)
    small = S.make_study_task("ledger", 5, config=S.LedgerConfig(n_slots=4, n_keys=3, n_values=4))
    assert all(len(e.units) == 16 and e.target_text in S.LEDGER_VALUES[:4] for e in small)


def test_per_token_read_counts():
    e = S.make_study_task("ledger", 1)[0]
    M = len(e.units)
    o = S.study_oracle_read_counts(e, 4)
    assert o.tolist() == e.meta["oracle"] + [M + 1, M + 1]
    assert S.study_external_read_counts(e, 1).tolist() == e.meta["external"][:1]
    with pytest.raises(KeyError):
        S.study_oracle_read_counts(syn.make_task("lookup", 1)[0], 2)
