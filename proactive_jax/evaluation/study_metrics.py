"""Study metrics (docs/study.md): quality at fixed RCO budgets and a curve summary that sweep extent cannot
game, 95% intervals over seeds x bootstrap over examples, and the verdict rule for the paper's claims.

Why not ``results.curve_area``: it scores a budget no point meets as 0, so any point at low RCO, even a
source-blind guess, adds area, and a family with a wider sweep wins. Here every family is credited with the
same free point at RCO 0: the quality of writing at once (measured: a head that never reads, e.g.
``entropy:tau=1``) and/or the task's chance level (the best source-blind output). A point that writing at once
would reach then adds nothing, to any family (tested on fabricated curves).

Data in: per-example records of each setting (``records.jsonl`` decode records: ``id``, ``prediction``,
``references``, ``phi``, ``M``), one set per training seed, all settings of a seed on the same examples.
Each record becomes per-example quality statistics (corpus BLEU from summed n-gram counts, as sacrebleu
computes it) and a per-example RCO; a bootstrap draw resamples examples (paired across settings) and,
with several seeds, seeds; the statistic (a budget quality, a curve summary, a difference) is averaged over
the drawn seeds; the interval is the percentile interval of the draws.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Sequence

import numpy as np

from proactive_jax.evaluation import metrics as M
from proactive_jax.evaluation.quality import multiref, multiref_sentence  # noqa: F401  (re-exported)

METRICS = ("exact_match", "f1", "bleu", "multiref", "mean")
# the study tasks' headline metric (data.synthetic_study.STUDY_QUALITY, at the per-example level)
TASK_METRIC = {"ledger": "exact_match", "verb-final": "bleu", "synonym-map": "multiref", "lookup": "exact_match",
               "word-map": "bleu"}


# ---------------------------------------------------------------------------------------------
# Per-example quality statistics
# ---------------------------------------------------------------------------------------------

def example_stats(metric: str, predictions: Sequence[str], references: Sequence[Sequence[str]]) -> np.ndarray:
    """``[N, d]`` per-example sufficient statistics of ``metric`` (see :func:`aggregate`)."""
    if metric not in METRICS:
        raise ValueError(f"unknown study metric {metric!r}; known: {METRICS}")
    refs = [[r] if isinstance(r, str) else list(r) for r in references]
    if len(predictions) != len(refs):
        raise ValueError(f"got {len(predictions)} predictions but {len(refs)} reference lists")
    if metric == "bleu":
        from sacrebleu.metrics import BLEU

        n_refs = max((len(r) for r in refs), default=1)
        streams = [[r[k] if k < len(r) else None for r in refs] for k in range(n_refs)]
        # sacrebleu's own per-segment statistics (what its paired bootstrap resamples): [sys_len, ref_len,
        # correct_1..4, total_1..4]; their column sums give its corpus BLEU exactly
        return np.asarray(BLEU(force=True)._extract_corpus_statistics(list(predictions), streams), np.float64)
    if metric == "multiref":
        return np.asarray([multiref_sentence(p, r[0])[:1] for p, r in zip(predictions, refs)], np.float64)
    if metric == "mean":
        return np.asarray([[float(p)] for p in predictions], np.float64)
    ems = [M.squad_em_f1(p, r) for p, r in zip(predictions, refs)]
    return np.asarray([[e[0] if metric == "exact_match" else e[1]] for e in ems], np.float64)


def aggregate(metric: str, stats: np.ndarray) -> float:
    """Corpus quality (percent; ``mean``: the plain mean) from per-example statistics."""
    stats = np.asarray(stats, np.float64)
    if metric == "bleu":
        from sacrebleu.metrics import BLEU

        t = stats.sum(0)
        return float(BLEU.compute_bleu(t[2:6], t[6:10], int(t[0]), int(t[1]), smooth_method="exp").score)
    return float(stats[:, 0].mean() * (1.0 if metric == "mean" else 100.0))


@dataclasses.dataclass(frozen=True)
class Sample:
    """One setting's per-example data on one seed: ``ids``, quality ``stats`` [N, d], ``rco`` [N] (nan for an
    empty hypothesis)."""

    ids: tuple
    stats: np.ndarray
    rco: np.ndarray
    metric: str

    def point(self, idx=None) -> tuple[float, float]:
        """``(corpus RCO, corpus quality)`` over ``idx`` (default all); RCO skips empty hypotheses as
        ``metrics.aggregate_latency`` does."""
        idx = slice(None) if idx is None else idx
        r = self.rco[idx]
        return (float(np.nanmean(r)) if np.any(~np.isnan(r)) else float("nan"), aggregate(self.metric, self.stats[idx]))


def sample_from_records(records: Sequence[Mapping], metric: str) -> Sample:
    """A :class:`Sample` from one setting's decode records (``id``, ``prediction``, ``references``, ``phi``,
    ``M``), in record order."""
    recs = list(records)
    if not recs:
        raise ValueError("no records")
    stats = example_stats(metric, [r["prediction"] for r in recs], [r["references"] for r in recs])
    rco = np.asarray([M.rco(r["phi"], r["M"]) if len(r["phi"]) else np.nan for r in recs], np.float64)
    return Sample(tuple(str(r["id"]) for r in recs), stats, rco, metric)


# ---------------------------------------------------------------------------------------------
# Quality at fixed RCO budgets and the curve summary, with the same free credit for every family
# ---------------------------------------------------------------------------------------------

def anchor_quality(write_at_once: float | None = None, chance: float | None = None) -> float:
    """The free point at RCO 0 every family is credited with: the larger of the measured write-at-once
    quality and the chance level (at least one must be given)."""
    vals = [float(v) for v in (write_at_once, chance) if v is not None]
    if not vals:
        raise ValueError("anchor_quality needs the write-at-once quality or the chance level")
    return max(vals)


def budget_quality(points: Sequence[tuple[float, float]], budget: float, anchor: float) -> float:
    """The best quality among ``points`` (RCO, quality) with RCO <= ``budget``, never below ``anchor`` (the
    point at RCO 0 every family reaches for free)."""
    ok = [q for r, q in points if np.isfinite(r) and np.isfinite(q) and r <= budget + 1e-9]
    return float(max([anchor] + ok))


def curve_summary(points: Sequence[tuple[float, float]], anchor: float, lo: float = 0.0, hi: float = 1.0,
                  n_grid: int = 101) -> float:
    """The mean of :func:`budget_quality` over ``n_grid`` budgets evenly spaced in [lo, hi], the same range
    and the same ``anchor`` for every family compared. A family with no useful point scores ``anchor``."""
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"curve_summary range [{lo}, {hi}]: expected 0 <= lo <= hi <= 1")
    return float(np.mean([budget_quality(points, r, anchor) for r in np.linspace(lo, hi, n_grid)]))


def ranking(scores: Mapping[str, float]) -> list[str]:
    """Families best first (ties in name order)."""
    return sorted(scores, key=lambda f: (-scores[f], f))


# ---------------------------------------------------------------------------------------------
# Statistics over a draw: functions of {setting: (RCO, quality)}
# ---------------------------------------------------------------------------------------------

Stat = Callable[[Mapping[str, tuple[float, float]]], float]


def _anchor(pts, chance, anchor_key):
    return anchor_quality(None if anchor_key is None else pts[anchor_key][1], chance)


def quality_stat(key: str) -> Stat:
    return lambda pts: pts[key][1]


def rco_stat(key: str) -> Stat:
    return lambda pts: pts[key][0]


def budget_stat(keys: Sequence[str], budget: float, *, chance: float | None = None,
                anchor_key: str | None = None) -> Stat:
    """Quality of the family ``keys`` at RCO <= ``budget``, credited with the write-at-once setting
    ``anchor_key`` and/or ``chance``."""
    return lambda pts: budget_quality([pts[k] for k in keys], budget, _anchor(pts, chance, anchor_key))


def curve_stat(keys: Sequence[str], *, chance: float | None = None, anchor_key: str | None = None,
               lo: float = 0.0, hi: float = 1.0) -> Stat:
    return lambda pts: curve_summary([pts[k] for k in keys], _anchor(pts, chance, anchor_key), lo, hi)


def ratio_stat(num: Stat, den: Stat) -> Stat:
    """``num / den`` (e.g. quality at a budget over the batch quality: the fraction of batch kept)."""
    return lambda pts: num(pts) / den(pts) if den(pts) else float("nan")


def diff_stat(a: Stat, b: Stat) -> Stat:
    """``a - b`` on the same draw (paired: the same resampled examples and seeds)."""
    return lambda pts: a(pts) - b(pts)


# ---------------------------------------------------------------------------------------------
# Intervals: seeds x bootstrap over examples
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Interval:
    estimate: float  # the statistic on all examples, averaged over the seeds
    lo: float
    hi: float
    level: float
    n_boot: int
    n_seeds: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _aligned(run: Mapping[str, Sample]) -> dict[str, Sample]:
    """The run's samples with every setting in the first setting's example order (same ids required)."""
    first = next(iter(run.values()))
    order = {i: k for k, i in enumerate(first.ids)}
    out = {}
    for key, s in run.items():
        if set(s.ids) != set(first.ids) or len(s.ids) != len(first.ids):
            raise ValueError(f"setting {key!r} is not on the same examples as {next(iter(run))!r}")
        perm = np.argsort([order[i] for i in s.ids])
        out[key] = s if s.ids == first.ids else Sample(first.ids, s.stats[perm], s.rco[perm], s.metric)
    return out


def bootstrap(runs: Sequence[Mapping[str, Sample]], statistic: Stat, *, n_boot: int = 1000, level: float = 0.95,
              seed: int = 0, resample_seeds: bool = True) -> Interval:
    """Percentile interval of ``statistic`` over ``n_boot`` draws; deterministic in ``seed``.

    ``runs``: one ``{setting: Sample}`` per training seed. A draw picks the seeds with replacement (when
    ``resample_seeds`` and there are several), then, per picked seed, N examples with replacement, the same
    indices for every setting of that seed (paired comparisons); the draw's value is the mean over the
    picked seeds of ``statistic({setting: (RCO, quality)})``."""
    if not runs:
        raise ValueError("bootstrap needs at least one run (seed)")
    if not 0 < level < 1 or n_boot < 1:
        raise ValueError(f"level={level}, n_boot={n_boot}: expected 0 < level < 1 and n_boot >= 1")
    runs = [_aligned(r) for r in runs]

    def value(run, idx):
        return statistic({k: s.point(idx) for k, s in run.items()})

    estimate = float(np.mean([value(r, None) for r in runs]))
    rng = np.random.default_rng(seed)
    draws = np.empty(n_boot)
    n_seeds = len(runs)
    for b in range(n_boot):
        picked = rng.integers(n_seeds, size=n_seeds) if (resample_seeds and n_seeds > 1) else range(n_seeds)
        vals = []
        for s in picked:
            n = len(next(iter(runs[s].values())).ids)
            vals.append(value(runs[s], rng.integers(n, size=n)))
        draws[b] = np.mean(vals)
    a = (1 - level) / 2
    lo, hi = np.quantile(draws, [a, 1 - a])
    return Interval(estimate, float(lo), float(hi), level, n_boot, n_seeds)


# ---------------------------------------------------------------------------------------------
# The verdict rule
# ---------------------------------------------------------------------------------------------

def verdict(claim: str, diff: Interval | None = None, *, margin: float = 0.0, value: Interval | None = None,
            threshold: float | None = None, chance: float | None = None, chance_margin: float = 0.0) -> dict:
    """"reproduced" only when every stated condition holds, else "not reproduced" (with the reasons):

    * ``diff`` (the interval of A - B, A claimed better): its lower end is above ``margin`` (>= 0), i.e. the
      interval excludes the tie and every difference up to the margin;
    * ``threshold`` (with ``value``): the lower end of ``value`` is above it (e.g. fraction of batch kept);
    * ``chance`` (with ``value``, the interval of A's own quality): its lower end is above
      ``chance + chance_margin``: a claim met at chance level is not reproduced.
    """
    if diff is None and threshold is None:
        raise ValueError("verdict needs a difference interval or a threshold")
    if (threshold is not None or chance is not None) and value is None:
        raise ValueError("threshold and chance are checked on `value`, A's own interval")
    if margin < 0 or chance_margin < 0:
        raise ValueError("margins are non-negative")
    reasons = []
    if diff is not None and not diff.lo > margin:
        reasons.append(f"difference interval [{diff.lo:.3g}, {diff.hi:.3g}] does not exclude {margin:g}"
                       + (" (the tie)" if margin == 0 else " (tie plus the margin)"))
    if threshold is not None and not value.lo > threshold:
        reasons.append(f"interval [{value.lo:.3g}, {value.hi:.3g}] does not lie above the threshold {threshold:g}")
    if chance is not None and not value.lo > chance + chance_margin:
        reasons.append(f"interval [{value.lo:.3g}, {value.hi:.3g}] does not lie above chance {chance:g} + "
                       f"{chance_margin:g}")
    out = {"claim": claim, "verdict": "not reproduced" if reasons else "reproduced", "reasons": reasons,
           "margin": margin, "threshold": threshold, "chance": chance, "chance_margin": chance_margin}
    out.update({f"{n}_interval": i.to_dict() for n, i in (("diff", diff), ("value", value)) if i is not None})
    return out


# ---------------------------------------------------------------------------------------------
# Task reference points: chance level, oracle latency
# ---------------------------------------------------------------------------------------------

def chance_level(task: str, config=None, *, n: int = 1000, seed: int = 0) -> dict:
    """The quality of the best source-blind output: exact where the task has a closed form
    (``synthetic_study.analytic_chance``), else the best of ``source_blind_outputs`` (built from ``n`` train
    examples) scored on ``n`` valid examples. ``{"value", "metric", "how"}``."""
    from proactive_jax.data import synthetic_study as S

    metric = TASK_METRIC[task]
    exact = S.analytic_chance(task, config)
    if exact is not None:
        return {"value": exact, "metric": metric, "how": "exact"}
    train = S.make_study_task(task, n, seed=seed, split="train", config=config)
    valid = S.make_study_task(task, n, seed=seed, split="valid", config=config)
    refs = [e.references for e in valid]
    best = max((aggregate(metric, example_stats(metric, [c] * len(valid), refs)), c)
               for c in S.source_blind_outputs(task, train))
    return {"value": best[0], "metric": metric, "how": f"best constant output {best[1]!r} on {n} valid examples"}


def policy_latency(examples, key: str = "oracle") -> dict:
    """Mean RCO and AIL of writing every target token at the read counts ``meta[key]`` (``oracle``: the
    oracle policy, at full quality; ``external``: the external annotator's labels)."""
    rco = [M.rco(e.meta[key], len(e.units)) for e in examples]
    ail = [M.ail(e.meta[key], len(e.units)) for e in examples]
    return {"rco": float(np.mean(rco)), "ail": float(np.mean(ail)), "n": len(rco)}
