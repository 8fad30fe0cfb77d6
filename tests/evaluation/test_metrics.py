"""Tests for proactive_jax.evaluation.metrics: SimulEval fixture, hand-computed cases, properties, bad input."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import sacrebleu

from proactive_jax.evaluation import metrics as mt

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "simuleval_latency.json"
SCORERS = {"AL": mt.al, "LAAL": mt.laal, "DAL": mt.dal, "AP": mt.ap}


# ------------------------------------------------------------------ SimulEval 1.1.4 fixture

@pytest.fixture(scope="module")
def simuleval():
    return json.loads(FIXTURE.read_text())


def _ours(name, case):
    if name == "DAL":
        return mt.dal(case["delays"], case["source_length"])
    return SCORERS[name](case["delays"], case["source_length"], case["reference_length"])


def test_fixture_is_simuleval_114_and_covers_edge_cases(simuleval):
    assert simuleval["simuleval_version"] == "1.1.4"
    cases = simuleval["cases"]
    assert len(cases) >= 300
    hyp_len = [len(c["delays"]) for c in cases]
    ref_len = [c["reference_length"] for c in cases]
    assert any(c["delays"][0] > c["source_length"] for c in cases)
    assert any(c["delays"][0] == c["source_length"] for c in cases)
    assert any(r is not None and r < n for n, r in zip(hyp_len, ref_len))
    assert any(r is not None and r > n for n, r in zip(hyp_len, ref_len))
    assert any(r is None for r in ref_len)
    assert 1 in hyp_len
    assert any(all(d == c["source_length"] for d in c["delays"]) for c in cases)


@pytest.mark.parametrize("name", list(SCORERS))
def test_latency_equals_simuleval_on_every_trace(simuleval, name):
    bad = []
    for c in simuleval["cases"]:
        ours, ref = _ours(name, c), c[name]
        if not abs(ours - ref) <= 1e-9 * max(1.0, abs(ref)):
            bad.append((c["tag"], ours, ref))
    assert not bad, f"{name} differs from SimulEval on {len(bad)} traces, e.g. {bad[:3]}"


def test_corpus_mean_equals_simuleval_and_skips_empty(simuleval):
    reports = [{k: _ours(k, c) for k in SCORERS} for c in simuleval["cases"]]
    empty = {"AL": mt.al([], 5, 4), "LAAL": mt.laal([], 5, 4), "DAL": mt.dal([], 3), "AP": mt.ap([], 3)}
    assert all(math.isnan(v) for v in empty.values())
    agg = mt.aggregate_latency(reports + [empty] * simuleval["corpus_num_empty"])
    for k in SCORERS:
        assert agg[k] == pytest.approx(simuleval["corpus"][k], abs=1e-9)


# ------------------------------------------------------------------ SimulEval formulas by hand

def test_al_family_hand_cases():
    # |X| = 5, delays [1, 3, 5] (|Y*| = 3)
    d = [1, 3, 5]
    assert mt.al(d, 5) == pytest.approx((1 + (3 - 5 / 3) + (5 - 10 / 3)) / 3)  # 4/3
    assert mt.al(d, 5, reference_length=5) == pytest.approx((1 + 2 + 3) / 3)
    assert mt.laal(d, 5, reference_length=5) == pytest.approx(2.0)  # max(3, 5) = 5
    assert mt.laal(d, 5, reference_length=2) == pytest.approx(4 / 3)  # max(3, 2) = 3
    assert mt.dal(d, 5) == pytest.approx(4 / 3)
    assert mt.ap(d, 5) == pytest.approx(9 / 15)
    assert mt.ap(d, 5, reference_length=2) == pytest.approx(9 / 10)
    # cut-off at the first delay >= |X|: the trailing delays are ignored
    assert mt.al([1, 5, 5, 5], 5) == pytest.approx((1 + (5 - 5 / 4)) / 2)
    # first delay beyond / at the source length: AL = LAAL = that delay
    assert mt.al([7, 8], 5, reference_length=3) == 7.0
    assert mt.laal([5, 5], 5) == 5.0
    # DAL keeps going past |X| and ignores the reference: g' = [5, 7.5] -> lag [5, 5]
    assert mt.dal([5, 5], 5) == pytest.approx(5.0)


def test_empty_hypothesis_is_nan():
    for f in (mt.al, mt.laal, mt.ap):
        assert math.isnan(f([], 4))
        assert math.isnan(f([], 4, 3))
    assert math.isnan(mt.dal([], 4))
    assert math.isnan(mt.rco([], 4)) and math.isnan(mt.ail([], 4))
    rep = mt.latency_report([], 4, token_word_starts=[])
    assert rep and all(math.isnan(v) for v in rep.values())


def _dal_recurrence(d, src):
    gamma = len(d) / src
    total, prev = 0.0, None
    for i, g in enumerate(d):
        g2 = g if prev is None else max(g, prev + 1 / gamma)
        total += g2 - i / gamma
        prev = g2
    return total / len(d)


def test_dal_closed_form_matches_recurrence_random():
    rng = np.random.default_rng(0)
    for _ in range(200):
        m = int(rng.integers(1, 30))
        d = rng.integers(0, m + 2, size=int(rng.integers(1, 40)))
        if rng.random() < 0.5:
            d = np.sort(d)
        assert mt.dal(d, m) == pytest.approx(_dal_recurrence(d.tolist(), m), abs=1e-9)


# ------------------------------------------------------------------ RCO / AIL

def test_batch_trace_rco_ail_and_simuleval():
    for m, n in [(10, 4), (7, 1), (1, 9), (33, 20)]:
        phi = [m + 1] * n
        assert mt.rco(phi, m) == 1.0
        assert mt.ail(phi, m) == pytest.approx(m / 2 - m / (2 * n))
        assert mt.ail(phi, m, ideal="diagonal-shifted") == pytest.approx(m / 2 + m / (2 * n))
        rep = mt.latency_report(phi, m)
        # clipped delays all = M: AL/LAAL cut off at token 1, DAL stays at M, AP = 1
        assert rep["al_token"] == m and rep["laal_token"] == m
        assert rep["dal_token"] == pytest.approx(m)
        assert rep["ap_token"] == pytest.approx(1.0)


def test_rco_ail_hand_trace():
    phi, m = [0, 2, 2, 5], 4  # d = [0, 2, 2, 4], L = 4
    assert mt.rco(phi, m) == pytest.approx(8 / 16)
    assert mt.ail(phi, m) == pytest.approx(np.mean([0 - 1, 2 - 2, 2 - 3, 4 - 4]))  # -0.5
    assert mt.ail(phi, m, "diagonal-shifted") == pytest.approx(np.mean([0, 2 - 1, 2 - 2, 4 - 3]))  # 0.5
    # the ideal diagonal itself has zero lag
    assert mt.ail([1, 2, 3, 4, 5], 5) == pytest.approx(0.0)
    assert mt.al([1, 2, 3, 4, 5], 5) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="diagonal-shifted"):
        mt.ail(phi, m, ideal="uniform")


# ------------------------------------------------------------------ word level and the report

def test_word_delays_last_token():
    phi = [1, 1, 2, 3, 3, 5, 6]
    starts = [True, False, True, False, False, True, False]
    np.testing.assert_array_equal(mt.word_delays(phi, starts), [1, 3, 6])
    np.testing.assert_array_equal(mt.word_delays(phi, starts, source_length=5), [1, 3, 5])
    # the first token always starts word 1
    np.testing.assert_array_equal(mt.word_delays(phi, [False] + starts[1:]), [1, 3, 6])
    np.testing.assert_array_equal(mt.word_delays([4, 5], [True, True]), [4, 5])
    assert mt.word_delays([], []).size == 0
    with pytest.raises(ValueError, match="7"):
        mt.word_delays(phi, starts[:-1])


def test_latency_report_hand_case():
    phi, m = [1, 1, 2, 3, 3, 4, 6], 5  # last token = end-of-turn, read after the end marker
    starts = [True, False, True, False, False, True, False]
    rep = mt.latency_report(phi, m, token_word_starts=starts)
    assert set(rep) == {"rco", "ail", "al_token", "laal_token", "dal_token", "ap_token",
                        "al_word", "laal_word", "dal_word", "ap_word"}
    d = [1, 1, 2, 3, 3, 4, 5]
    assert rep["rco"] == pytest.approx(sum(d) / 35)
    assert rep["ail"] == pytest.approx(np.mean(np.array(d) - np.arange(1, 8) * 5 / 7))
    assert rep["al_token"] == pytest.approx(np.mean(np.array(d) - np.arange(7) * 5 / 7))  # tau = 7
    assert rep["ap_token"] == pytest.approx(19 / 35)
    # words [1, 3, 5]: see test_al_family_hand_cases
    assert rep["al_word"] == pytest.approx(4 / 3)
    assert rep["dal_word"] == pytest.approx(4 / 3)
    assert rep["ap_word"] == pytest.approx(0.6)
    rep5 = mt.latency_report(phi, m, token_word_starts=starts, reference_length=5, reference_token_length=10)
    assert rep5["al_word"] == pytest.approx(2.0) and rep5["laal_word"] == pytest.approx(2.0)
    assert rep5["al_token"] == pytest.approx(np.mean(np.array(d) - np.arange(7) * 5 / 10))
    # word flags for the text tokens only: the end-of-turn token stays out of the words -> [1, 3, 4]
    rep_text = mt.latency_report(phi, m, token_word_starts=starts[:-1])
    assert rep_text["ap_word"] == pytest.approx(8 / 15)
    assert rep_text["al_word"] == pytest.approx(np.mean([1, 3 - 5 / 3, 4 - 10 / 3]))
    assert rep_text["rco"] == rep["rco"]
    assert "al_word" not in mt.latency_report(phi, m)
    with pytest.raises(ValueError, match="token_word_starts"):
        mt.latency_report(phi, m, token_word_starts=starts + [True])


def test_latency_properties_random_traces():
    rng = np.random.default_rng(1)
    reports = []
    for _ in range(300):
        m = int(rng.integers(1, 50))
        n = int(rng.integers(1, 60))
        phi = np.sort(rng.integers(0, m + 2, size=n))
        starts = rng.random(n) < 0.6
        w = mt.word_delays(phi, starts, m)
        assert w.size == max(1, int(starts[1:].sum()) + 1)
        assert np.all(np.diff(w) >= 0) and np.all(w <= m)
        rep = mt.latency_report(phi, m, token_word_starts=starts, reference_length=int(rng.integers(1, 60)))
        assert all(np.isfinite(v) for v in rep.values())
        assert 0.0 <= rep["rco"] <= 1.0
        # AIL: the two ideals differ by exactly M / L
        assert mt.ail(phi, m) - mt.ail(phi, m, "diagonal-shifted") == pytest.approx(-m / n)
        # same cut-off, target length max(|Y*|, |Y|) >= |Y|: LAAL >= AL
        assert rep["laal_word"] >= rep["al_word"] - 1e-9
        d = np.minimum(phi, m)
        assert rep["laal_token"] == pytest.approx(rep["al_token"])  # no token reference: |Y| = |Y*|
        assert rep["ap_token"] == pytest.approx(d.sum() / (m * n))
        reports.append(rep)
    agg = mt.aggregate_latency(reports)
    assert agg["rco"] == pytest.approx(np.mean([r["rco"] for r in reports]))


def test_aggregate_latency_skips_nan_and_checks_keys():
    agg = mt.aggregate_latency([{"al": 1.0, "rco": 0.5}, {"al": 3.0, "rco": float("nan")}])
    assert agg == {"al": 2.0, "rco": 0.5}
    assert math.isnan(mt.aggregate_latency([{"al": float("nan")}])["al"])
    with pytest.raises(ValueError, match="keys"):
        mt.aggregate_latency([{"al": 1.0}, {"rco": 1.0}])
    with pytest.raises(ValueError):
        mt.aggregate_latency([])


def test_latency_bad_input():
    with pytest.raises(ValueError, match="source_length"):
        mt.al([1, 2], 0)
    with pytest.raises(ValueError, match="reference_length"):
        mt.al([1, 2], 3, reference_length=0)
    with pytest.raises(ValueError, match="1-D"):
        mt.laal([[1, 2]], 3)
    with pytest.raises(ValueError, match=">= 0"):
        mt.rco([-1, 2], 3)


# ------------------------------------------------------------------ quality

def test_bleu_equals_sacrebleu_and_keeps_signature():
    hyps = ["the cat sat on the mat .", "a quick brown fox jumps", "hello world", "Das ist ein Test."]
    refs = ["the cat sat on a mat .", "the quick brown fox jumped", "hello there world", "Das ist ein Test ."]
    out = mt.bleu(hyps, refs)
    metric = sacrebleu.metrics.BLEU()
    direct = metric.corpus_score(hyps, [refs])
    assert out["bleu"] == pytest.approx(direct.score, abs=1e-12)
    assert out["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score, abs=1e-12)
    assert out["signature"] == str(metric.get_signature())
    assert "tok:13a" in out["signature"] and "nrefs:1" in out["signature"]
    # several references per hypothesis
    refs2 = ["the cat sat on the mat .", "a quick brown fox jumps over", "hello world", "Das ist ein Test."]
    out2 = mt.bleu(hyps, [[a, b] for a, b in zip(refs, refs2)])
    assert out2["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs, refs2]).score, abs=1e-12)
    assert "nrefs:2" in out2["signature"]
    assert mt.bleu(["a b c d"], ["a b c d"])["bleu"] == pytest.approx(100.0)


def test_squad_em_f1_hand_cases():
    assert mt.squad_em_f1("The Eiffel Tower", ["eiffel tower"]) == (1.0, 1.0)  # case + article
    assert mt.squad_em_f1("Eiffel Tower!", "the eiffel tower.") == (1.0, 1.0)  # punctuation
    assert mt.squad_em_f1("U.S. Army", ["US army"]) == (1.0, 1.0)
    assert mt.squad_em_f1("the theater", ["Theater"]) == (1.0, 1.0)  # "the" inside a word stays
    em, f1 = mt.squad_em_f1("an apple pie", ["apple"])
    assert em == 0.0 and f1 == pytest.approx(2 / 3)  # P = 1/2, R = 1
    em, f1 = mt.squad_em_f1("Denver Broncos", ["Broncos", "Denver Broncos team"])
    assert em == 0.0 and f1 == pytest.approx(0.8)  # max(2/3, 2*1*(2/3)/(5/3))
    assert mt.squad_em_f1("Denver Broncos", ["Broncos", "DENVER  broncos"]) == (1.0, 1.0)
    assert mt.squad_em_f1("a", ["the"]) == (1.0, 0.0)  # v1.1: both normalise to "" -> EM 1, F1 0
    assert mt.squad_em_f1("paris paris", ["paris"])[1] == pytest.approx(2 * 0.5 / 1.5)  # bag overlap
    assert mt.normalize_squad_answer("  The  Cat's,   HAT! ") == "cats hat"
    out = mt.squad_scores(["The Eiffel Tower", "an apple pie"], [["eiffel tower"], ["apple", "banana"]])
    assert out["exact_match"] == pytest.approx(50.0)
    assert out["f1"] == pytest.approx(100 * (1 + 2 / 3) / 2)


@pytest.mark.parametrize("gen,want", [
    ("B", "B"), ("B)", "B"), ("b.", "B"), ("(d)", "D"), ("[C]", "C"), ("**B**", "B"),
    ("The answer is C.", "C"), ("Answer: (b)", "B"), ("answer: a.", "A"), ("Answer:B", "B"),
    ("The correct option is: D", "D"), ("C. the dog", "C"), ("d) the dog", "D"), ("A) Paris", "A"),
    ("I think B is right", "B"), ("so (C) is right", "C"), ("A\n\nExplanation: ...", "A"),
    ("a cat sat", None), ("the answer is a cat", None), ("A cat is the answer", None),
    ("E", None), ("", None), ("none of these", None), (None, None),
])
def test_parse_choice(gen, want):
    assert mt.parse_choice(gen) == want


def test_parse_choice_n_options_and_accuracy():
    assert mt.parse_choice("E", n_options=5) == "E"
    assert mt.parse_choice("C", n_options=2) is None
    with pytest.raises(ValueError):
        mt.parse_choice("A", n_options=0)
    assert mt.accuracy(["A", "b", None, "D"], ["A", "B", "C", "C"]) == pytest.approx(50.0)
    out = mt.choice_accuracy(["The answer is A.", "xyz", "(c)"], ["A", "B", "D"])
    assert out["accuracy"] == pytest.approx(100 / 3) and out["unparsed"] == pytest.approx(100 / 3)


def test_rouge_known_pairs():
    out = mt.rouge(["the cat sat"], ["the cat sat on the mat"])
    # R1: overlap 3, P = 1, R = 3/6; R2: overlap 2 of 2 / 5 bigrams; RL: LCS 3
    assert out["rouge1"] == pytest.approx(100 * 2 / 3)
    assert out["rouge2"] == pytest.approx(100 * 2 * 0.4 / 1.4)
    assert out["rougeL"] == pytest.approx(100 * 2 / 3)
    stem = mt.rouge(["cats running"], ["cat runs"])  # Porter stemming: cat run / cat run
    assert stem == {"rouge1": pytest.approx(100.0), "rouge2": pytest.approx(100.0), "rougeL": pytest.approx(100.0)}
    both = mt.rouge(["the cat sat", "cats running"], ["the cat sat on the mat", "cat runs"])
    assert both["rouge1"] == pytest.approx((100 * 2 / 3 + 100) / 2)


def test_wer_known_pairs():
    assert mt.wer(["a x c"], ["a b c"]) == pytest.approx(100 / 3)
    assert mt.wer(["Hello, World!"], ["hello   world"]) == pytest.approx(0.0)
    assert mt.wer(["I don't KNOW."], ["i dont know"]) == pytest.approx(0.0)
    # corpus: 1 substitution + 1 insertion over 5 reference words
    assert mt.wer(["a x c", "d e f"], ["a b c", "d e"]) == pytest.approx(40.0)
    assert mt.normalize_wer_text("Well-known,  it's \u201cfine\u201d.") == "well known its fine"


def test_quality_registry_and_length_errors():
    assert mt.quality("wer", ["a x c"], ["a b c"]) == {"wer": pytest.approx(100 / 3)}
    assert mt.quality("squad", ["x"], [["x"]]) == {"exact_match": 100.0, "f1": 100.0}
    assert set(mt.quality("rouge", ["a b"], ["a b"])) == {"rouge1", "rouge2", "rougeL"}
    assert mt.quality("choice", ["B"], ["B"])["accuracy"] == 100.0
    assert set(mt.quality("bleu", ["a b c d"], ["a b c d"])) == {"bleu", "signature"}
    with pytest.raises(ValueError) as e:
        mt.quality("meteor", ["a"], ["a"])
    for name in ("bleu", "squad", "choice", "accuracy", "rouge", "wer"):
        assert name in str(e.value)
    for f in (mt.bleu, mt.squad_scores, mt.accuracy, mt.rouge, mt.wer, mt.choice_accuracy):
        with pytest.raises(ValueError, match=r"\b2\b.*\b3\b"):
            f(["a", "b"], ["a", "b", "c"])


def test_wer_normalisers_are_named():
    hyps, refs = ["hello world", "it's 10 dollars"], ["HELLO, WORLD!", "it is ten dollars"]
    basic = mt.wer(hyps, refs, "basic")
    whisper = mt.wer(hyps, refs, "whisper")
    assert basic > 0 and whisper < basic
    assert mt.quality("wer-whisper", hyps, refs) == {"wer": whisper, "normaliser": "whisper"}
    with pytest.raises(ValueError, match="WER normalisation 'none'"):
        mt.normalize_transcript("x", "none")
