"""Study metrics: per-example statistics equal the corpus metrics, the budget quality and curve summary cannot be
gamed by points that writing at once reaches (fabricated curves; the old curve area can), intervals are
deterministic and sensible, and the verdict rule fails targets met at chance or at equality."""
import numpy as np
import pytest

from proactive_jax.evaluation import metrics as M
from proactive_jax.evaluation import results as R
from proactive_jax.evaluation import study_metrics as SM


# ------------------------------------------------------------------------------------------ statistics

def _random_corpus(rng, n=60):
    words = "der die das haus baum auto und sieht mag gross klein alt neu .".split()
    sent = lambda: " ".join(rng.choice(words, size=int(rng.integers(1, 12))))
    hyps = [sent() for _ in range(n)]
    refs = [[sent() for _ in range(int(rng.integers(1, 4)))] for _ in range(n)]
    return hyps, refs


def test_bleu_from_example_stats_equals_corpus_bleu():
    rng = np.random.default_rng(0)
    for _ in range(5):
        hyps, refs = _random_corpus(rng)
        stats = SM.example_stats("bleu", hyps, refs)
        assert stats.shape == (len(hyps), 10)
        assert SM.aggregate("bleu", stats) == pytest.approx(M.bleu(hyps, refs)["bleu"], abs=1e-9)
        idx = rng.integers(len(hyps), size=len(hyps))  # a resample is the corpus BLEU of the resampled corpus
        assert SM.aggregate("bleu", stats[idx]) == pytest.approx(
            M.bleu([hyps[i] for i in idx], [refs[i] for i in idx])["bleu"], abs=1e-9)


def test_squad_and_multiref_stats():
    preds, golds = ["The jade", "onyx", "amber ."], [["jade"], ["topaz"], ["amber"]]
    assert SM.aggregate("exact_match", SM.example_stats("exact_match", preds, golds)) == pytest.approx(
        M.squad_scores(preds, golds)["exact_match"])
    assert SM.aggregate("f1", SM.example_stats("f1", preds, golds)) == pytest.approx(M.squad_scores(preds, golds)["f1"])
    assert SM.multiref_sentence("a x", "a|b x|y") == (1.0, 1.0)
    assert SM.multiref_sentence("b y z", "a|b x|y") == (2 / 3, 0.0)  # too long: penalised
    assert SM.multiref_sentence("x a", "a|b x|y") == (0.0, 0.0)  # order matters
    assert SM.multiref(["a x", "b"], [["a|b x|y"], ["a|b x|y"]]) == {"score": 75.0, "exact": 50.0}
    with pytest.raises(ValueError, match="unknown study metric"):
        SM.example_stats("meteor", ["a"], [["a"]])


def test_sample_from_records():
    recs = [{"id": "a", "prediction": "jade", "references": ["jade"], "phi": [4, 4], "M": 8},
            {"id": "b", "prediction": "onyx", "references": ["amber"], "phi": [8, 9], "M": 8},
            {"id": "c", "prediction": "", "references": ["amber"], "phi": [], "M": 8}]
    s = SM.sample_from_records(recs, "exact_match")
    assert s.ids == ("a", "b", "c") and np.isnan(s.rco[2])
    rco, q = s.point()
    assert rco == pytest.approx((0.5 + 1.0) / 2) and q == pytest.approx(100 / 3)


# ------------------------------------------------------------------------------ budgets and curve summary

def _fabricated_families(rng, anchor):
    fams = {}
    for f in range(int(rng.integers(2, 6))):
        pts = [(float(rng.uniform(0, 1)), float(rng.uniform(anchor - 10, 100))) for _ in range(int(rng.integers(1, 7)))]
        fams[f"fam{f}"] = pts
    return fams


def test_points_that_writing_at_once_reaches_never_change_a_ranking():
    """Property (300 random families x extra points): a point whose quality writing at once reaches (<= the
    anchor), at any RCO, changes no budget quality, no curve summary and no ranking. The old curve area
    changes (it credits any low-RCO point)."""
    rng = np.random.default_rng(0)
    old_changed = 0
    for _ in range(300):
        anchor = float(rng.uniform(0, 40))
        fams = _fabricated_families(rng, anchor)
        before = {f: SM.curve_summary(p, anchor) for f, p in fams.items()}
        budgets = {f: [SM.budget_quality(p, b, anchor) for b in (0.5, 0.7, 0.9)] for f, p in fams.items()}
        victim = str(rng.choice(list(fams)))
        extra = (float(rng.uniform(0, 1)), float(rng.uniform(0, anchor)))
        fams2 = {**fams, victim: fams[victim] + [extra]}
        after = {f: SM.curve_summary(p, anchor) for f, p in fams2.items()}
        assert after == before and SM.ranking(after) == SM.ranking(before)
        assert budgets == {f: [SM.budget_quality(p, b, anchor) for b in (0.5, 0.7, 0.9)] for f, p in fams2.items()}
        old_changed += R.curve_area(fams2[victim], 100.0) != R.curve_area(fams[victim], 100.0)
    assert old_changed > 60  # the old area moves whenever the point lies left of the family's points


def test_chance_point_cannot_beat_a_real_head():
    """Fabricated: family A has one source-blind guess at RCO 0.05 (chance 30), family B keeps 95 at RCO 0.8.
    The old area ranks A first; with the chance credit A scores exactly the credit and B ranks first."""
    chance = 30.0
    a, b = [(0.05, 30.0)], [(0.8, 95.0)]
    assert R.curve_area(a, 40.0) > R.curve_area(b, 40.0)  # batch 40 closing both: the old area prefers A
    new = {"A": SM.curve_summary(a, chance), "B": SM.curve_summary(b, chance)}
    assert new["A"] == chance and SM.ranking(new) == ["B", "A"]
    assert SM.budget_quality(a, 0.5, chance) == chance and SM.budget_quality(b, 0.7, chance) == chance
    assert SM.budget_quality(b, 0.8, chance) == 95.0
    assert SM.anchor_quality(write_at_once=12.0, chance=30.0) == 30.0
    with pytest.raises(ValueError):
        SM.anchor_quality()
    with pytest.raises(ValueError):
        SM.curve_summary(a, chance, lo=0.9, hi=0.5)


# ------------------------------------------------------------------------------------------------ intervals

def _bernoulli_sample(rng, p, n, rco=0.5, ids=None):
    hits = (rng.random(n) < p).astype(float)
    return SM.Sample(tuple(ids or [str(i) for i in range(n)]), hits[:, None], np.full(n, rco), "exact_match")


def _fixed_sample(hits, n, rco):
    stats = (np.arange(n) < hits).astype(float)[:, None]
    return SM.Sample(tuple(str(i) for i in range(n)), stats, np.full(n, rco), "exact_match")


def test_bootstrap_deterministic_and_calibrated():
    rng = np.random.default_rng(1)
    run = {"x": _bernoulli_sample(rng, 0.6, 400)}
    a = SM.bootstrap([run], SM.quality_stat("x"), n_boot=500, seed=3)
    b = SM.bootstrap([run], SM.quality_stat("x"), n_boot=500, seed=3)
    c = SM.bootstrap([run], SM.quality_stat("x"), n_boot=500, seed=4)
    assert a == b and a != c
    p = a.estimate / 100
    half = 1.96 * np.sqrt(p * (1 - p) / 400) * 100
    assert a.lo < a.estimate < a.hi
    assert (a.hi - a.lo) == pytest.approx(2 * half, rel=0.2)


def test_bootstrap_over_seeds_is_wider_when_seeds_disagree():
    rng = np.random.default_rng(2)
    runs = [{"x": _bernoulli_sample(rng, p, 300)} for p in (0.4, 0.6, 0.8)]
    with_seeds = SM.bootstrap(runs, SM.quality_stat("x"), n_boot=400)
    examples_only = SM.bootstrap(runs, SM.quality_stat("x"), n_boot=400, resample_seeds=False)
    assert with_seeds.n_seeds == 3 and with_seeds.estimate == pytest.approx(examples_only.estimate)
    assert (with_seeds.hi - with_seeds.lo) > 2 * (examples_only.hi - examples_only.lo)


def test_paired_resampling_and_alignment():
    """The same examples in another order are aligned by id, and a setting compared with itself differs by
    exactly 0 in every draw."""
    rng = np.random.default_rng(3)
    s = _bernoulli_sample(rng, 0.5, 200)
    perm = rng.permutation(200)
    shuffled = SM.Sample(tuple(s.ids[i] for i in perm), s.stats[perm], s.rco[perm], s.metric)
    d = SM.bootstrap([{"a": s, "b": shuffled}], SM.diff_stat(SM.quality_stat("a"), SM.quality_stat("b")), n_boot=200)
    assert (d.estimate, d.lo, d.hi) == (0.0, 0.0, 0.0)
    other = _bernoulli_sample(rng, 0.5, 200, ids=[f"z{i}" for i in range(200)])
    with pytest.raises(ValueError, match="same examples"):
        SM.bootstrap([{"a": s, "b": other}], SM.quality_stat("a"))


def test_budget_statistics_with_a_measured_write_at_once_point():
    run = {"once": _fixed_sample(75, 300, 0.0), "batch": _fixed_sample(270, 300, 1.0),
           "h1": _fixed_sample(60, 300, 0.3), "h2": _fixed_sample(255, 300, 0.75)}
    pts = {k: v.point() for k, v in run.items()}
    at = SM.budget_stat(["h1", "h2"], 0.7, anchor_key="once")
    assert at(pts) == pts["once"][1]  # h1 is below writing at once, h2 is over budget
    assert SM.budget_stat(["h1", "h2"], 0.8, anchor_key="once")(pts) == pts["h2"][1]
    kept = SM.ratio_stat(SM.budget_stat(["h1", "h2"], 0.8, anchor_key="once"), SM.quality_stat("batch"))
    assert kept(pts) == pytest.approx(pts["h2"][1] / pts["batch"][1])
    assert SM.rco_stat("h2")(pts) == 0.75
    cs = SM.curve_stat(["h1", "h2"], anchor_key="once", chance=10.0, lo=0.5, hi=0.9)(pts)
    assert pts["once"][1] < cs < pts["h2"][1]


# ------------------------------------------------------------------------------------------------- verdicts

def _iv(lo, hi, est=None):
    return SM.Interval((lo + hi) / 2 if est is None else est, lo, hi, 0.95, 1000, 3)


def test_verdict_on_fabricated_results():
    rng = np.random.default_rng(5)
    n, chance = 400, 100 / 8
    base = {"batch": _bernoulli_sample(rng, 0.95, n, rco=1.0)}
    # a head at chance level beats a head below chance: the difference excludes the tie, chance does not
    at_chance = {**base, "A": _bernoulli_sample(rng, 0.125, n, rco=0.3), "B": _bernoulli_sample(rng, 0.02, n, rco=0.3)}
    diff = SM.bootstrap([at_chance], SM.diff_stat(SM.quality_stat("A"), SM.quality_stat("B")), n_boot=300)
    val = SM.bootstrap([at_chance], SM.quality_stat("A"), n_boot=300)
    assert diff.lo > 0
    v = SM.verdict("A beats B", diff, value=val, chance=chance)
    assert v["verdict"] == "not reproduced" and "chance" in v["reasons"][0]
    # a target met at equality: the same head twice
    same = {**base, "A": base["batch"], "B": base["batch"]}
    eq = SM.bootstrap([same], SM.diff_stat(SM.quality_stat("A"), SM.quality_stat("B")), n_boot=300)
    assert SM.verdict("A beats B", eq)["verdict"] == "not reproduced"
    # near-equal heads (same rate, different draws): the interval straddles 0
    close = {**base, "A": _bernoulli_sample(rng, 0.7, n), "B": _bernoulli_sample(rng, 0.7, n)}
    d2 = SM.bootstrap([close], SM.diff_stat(SM.quality_stat("A"), SM.quality_stat("B")), n_boot=300)
    assert d2.lo < 0 < d2.hi and SM.verdict("A beats B", d2)["verdict"] == "not reproduced"
    # a clear win, above chance: reproduced; the same win with a margin larger than the gap: not
    win = {**base, "A": _bernoulli_sample(rng, 0.9, n), "B": _bernoulli_sample(rng, 0.5, n)}
    d3 = SM.bootstrap([win], SM.diff_stat(SM.quality_stat("A"), SM.quality_stat("B")), n_boot=300)
    v3 = SM.bootstrap([win], SM.quality_stat("A"), n_boot=300)
    assert SM.verdict("A beats B", d3, value=v3, chance=chance, chance_margin=5)["verdict"] == "reproduced"
    assert SM.verdict("A beats B by 50", d3, margin=50)["verdict"] == "not reproduced"


def test_verdict_threshold_and_errors():
    assert SM.verdict("keeps 90% of batch", value=_iv(0.92, 0.97), threshold=0.9)["verdict"] == "reproduced"
    assert SM.verdict("keeps 90% of batch", value=_iv(0.88, 0.97), threshold=0.9)["verdict"] == "not reproduced"
    assert SM.verdict("x", _iv(0.0, 3.0))["verdict"] == "not reproduced"  # the tie at the lower end
    with pytest.raises(ValueError):
        SM.verdict("x")
    with pytest.raises(ValueError):
        SM.verdict("x", _iv(1, 2), chance=3.0)
    with pytest.raises(ValueError):
        SM.verdict("x", _iv(1, 2), margin=-1)


# ------------------------------------------------------------------------------------ task reference points

def test_chance_levels_and_oracle_latency():
    from proactive_jax.data import synthetic_study as S

    assert SM.chance_level("ledger") == {"value": 12.5, "metric": "exact_match", "how": "exact"}
    # the exact ledger chance agrees with the best constant answer measured on examples
    exs = S.make_study_task("ledger", 800, seed=0, split="valid")
    refs = [e.references for e in exs]
    best = max(SM.aggregate("exact_match", SM.example_stats("exact_match", [c] * len(exs), refs))
               for c in S.LedgerConfig().values)
    assert abs(best - 12.5) < 4
    for task, hi in (("verb-final", 10.0), ("synonym-map", 10.0)):
        c = SM.chance_level(task, n=200)
        assert 0.0 <= c["value"] < hi and c["metric"] == SM.TASK_METRIC[task]
        assert SM.chance_level(task, n=200) == c  # deterministic
    lat = SM.policy_latency(exs, "oracle")
    ext = SM.policy_latency(exs, "external")
    assert 0.7 < lat["rco"] < 0.85 and ext["rco"] < lat["rco"] - 0.25
