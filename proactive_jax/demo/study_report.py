"""The study's report: the paper's claims as verdicts with 95% intervals (seeds x bootstrap over examples),
per-task tables with the chance and oracle rows, ``results.json``, ``report.md`` and plots.

Every comparison uses :mod:`proactive_jax.evaluation.study_metrics`: quality at fixed RCO budgets and the curve
summary, with one free anchor for every family compared (the largest of the chance level and the measured
write-at-once quality of every model involved); a claim is "reproduced" only when the interval of the
difference excludes the tie plus its margin and the claimed side lies above chance plus a margin; a claim on a
task whose batch quality is not above chance + 20 points is "not testable here" (the model has not learned
the task), as is a claim whose runs are not in the grid.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from proactive_jax.evaluation import results as R
from proactive_jax.evaluation import study_metrics as SM

LEARNED_ABOVE_CHANCE = 20.0  # batch quality must exceed chance by this much for a task's claims to be judged
CHANCE_MARGIN = {"bleu": 2.0}  # the claimed side's margin above chance (default 5 points)
BEST = ("entropy", "attention", "probe-self")  # "the best head": the union of these families' points
PLOT_BOOT = 200  # bootstrap draws per budget for the plots' bands (the tables and verdicts use n_boot)


# ---------------------------------------------------------------------------------------------
# Samples per task: one {variant/setting: Sample} per seed
# ---------------------------------------------------------------------------------------------

def _configured_quantiles(cfg) -> dict:
    """``{family: {X, ...}}``: the ``tau=qX`` quantiles of the configured sweeps."""
    from proactive_jax.evaluation.sweep import expand_sweep

    out: dict = {}
    for sw in [h for hs in cfg.heads.values() for h in hs] + list(cfg.probe_heads):
        for st in expand_sweep(sw):
            if st.quantile is not None:
                out.setdefault(st.family, set()).add(st.quantile)
    return out


def setting_name(cfg, name: str, st: dict) -> tuple[str, float | None]:
    """``(stable name, quantile)``: a calibrated setting is named ``family:tau=qX`` (its fitted tau differs
    by seed); cells without the ``quantile`` field carry the resolved spec (``...decide_at=...,tau=0.25``),
    mapped by the unique quantile of that family's configured sweeps."""
    q = st.get("quantile")
    prefix, _, rest = name.rpartition("/")
    family = rest.split(":")[0]
    if q is None and "decide_at=" in rest:
        qs = _configured_quantiles(cfg).get(family, set())
        q = next(iter(qs)) if len(qs) == 1 else None
    if q is None:
        return name, None
    return (prefix + "/" if prefix else "") + f"{family}:tau=q{q:g}", q


def task_runs(cfg, cells: dict, task: str) -> list[dict]:
    metric = SM.TASK_METRIC[task]
    runs = []
    for seed in cfg.seeds:
        run = {}
        for (s, variant, t), cell in sorted(cells.items()):
            if s == seed and t == task:
                for name, st in cell["settings"].items():
                    run[f"{variant}/{setting_name(cfg, name, st)[0]}"] = SM.sample_from_records(st["records"], metric)
        runs.append(run)
    return runs


def families(cfg, cells: dict, task: str) -> dict:
    """``{variant/setting: family}`` over every cell of ``task``."""
    return {f"{v}/{setting_name(cfg, name, st)[0]}": st["family"] for (_, v, t), c in cells.items() if t == task
            for name, st in c["settings"].items()}


def quantiles(cfg, cells: dict, task: str) -> dict:
    """``{variant/setting: X}`` of the calibrated ``tau=qX`` settings of ``task``."""
    out = {}
    for (_, v, t), c in cells.items():
        for name, st in c["settings"].items() if t == task else ():
            key, q = setting_name(cfg, name, st)
            if q is not None:
                out[f"{v}/{key}"] = q
    return out


def _keys(fam: dict, runs, variant: str, fams) -> list[str]:
    fams = (fams,) if isinstance(fams, str) else tuple(fams)
    return sorted(k for k, f in fam.items() if k.startswith(variant + "/") and f in fams
                  and all(k in r for r in runs))


def _anchored(pts, chance, anchor_keys):
    return SM.anchor_quality(max([pts[k][1] for k in anchor_keys], default=None), chance)


def budget_of(keys, budget, chance, anchor_keys):
    return lambda pts: SM.budget_quality([pts[k] for k in keys], budget, _anchored(pts, chance, anchor_keys))


def curve_of(keys, chance, anchor_keys, lo=0.0, hi=1.0):
    return lambda pts: SM.curve_summary([pts[k] for k in keys], _anchored(pts, chance, anchor_keys), lo, hi)


def _interval(runs, stat, keys, n_boot) -> SM.Interval:
    sub = [{k: r[k] for k in keys} for r in runs]
    return SM.bootstrap(sub, stat, n_boot=n_boot)


# ---------------------------------------------------------------------------------------------
# Claims
# ---------------------------------------------------------------------------------------------

def _untestable(claim, task, why) -> dict:
    return {"claim": claim, "task": task, "verdict": "not testable here", "reasons": [why]}


def judge(claim: str, task: str, *, diff: SM.Interval | None, margin: float = 0.0, value: SM.Interval | None = None,
          threshold: float | None = None, quality: SM.Interval | None = None, chance: float | None = None,
          chance_margin: float = 5.0, baseline: str = "") -> dict:
    """:func:`study_metrics.verdict` on the difference / threshold, and the chance check on ``quality`` (the
    claimed side's own quality): reproduced only when both hold."""
    v = SM.verdict(claim, diff, margin=margin, value=value, threshold=threshold) if (
        diff is not None or threshold is not None) else {"verdict": "reproduced", "reasons": []}
    reasons = list(v["reasons"])
    if quality is not None and chance is not None:
        c = SM.verdict(claim, value=quality, threshold=-np.inf, chance=chance, chance_margin=chance_margin)
        reasons += c["reasons"]
    out = {"claim": claim, "task": task, "verdict": "not reproduced" if reasons else "reproduced",
           "reasons": reasons, "margin": margin, "threshold": threshold, "baseline": baseline,
           "chance": chance, "chance_margin": chance_margin}
    for name, iv in (("diff", diff), ("value", value), ("quality", quality)):
        if iv is not None:
            out[name] = iv.to_dict()
    return out


class TaskView:
    """One task's runs, families, chance level and the learned-task gate."""

    def __init__(self, cfg, cells, task, grid):
        self.cfg, self.task, self.grid = cfg, task, grid
        self.runs = task_runs(cfg, cells, task)
        self.fam = families(cfg, cells, task)
        self.quantile = quantiles(cfg, cells, task)
        self.metric = SM.TASK_METRIC[task]
        self.chance = SM.chance_level(task, n=300)["value"]
        self.cm = CHANCE_MARGIN.get(self.metric, 5.0)
        batch = self.keys("proactive", "batch")
        self.batch = _interval(self.runs, SM.quality_stat(batch[0]), batch, cfg.n_boot) if batch else None
        self.learned = self.batch is not None and self.batch.lo > self.chance + LEARNED_ABOVE_CHANCE

    def keys(self, variant, fams):
        return _keys(self.fam, self.runs, variant, fams)

    def anchors(self, *variants):
        return [k for v in variants for k in self.keys(v, "write-at-once")]

    def interval(self, stat, keys):
        return _interval(self.runs, stat, sorted(set(keys)), self.cfg.n_boot)

    def gate(self, claim, *needed) -> dict | None:
        """A "not testable here" row when the task is not learned or a needed family is missing."""
        if self.batch is None or not self.learned:
            b = "missing" if self.batch is None else f"[{self.batch.lo:.3g}, {self.batch.hi:.3g}]"
            return _untestable(claim, self.task, f"batch quality {b} does not lie above chance {self.chance:.3g} + "
                                                 f"{LEARNED_ABOVE_CHANCE:g}: the model has not learned the task")
        for variant, fams in needed:
            if not self.keys(variant, fams):
                return _untestable(claim, self.task, f"{variant}: no {fams} points in this grid")
        return None

    def compare(self, claim, a, b, *, budget=None, lo=0.0, hi=1.0, margin=0.0, baseline=""):
        """``a`` = (variant, families) claimed better than ``b`` at a budget or over a curve range."""
        gate = self.gate(claim, a, b)
        if gate:
            return gate
        ka, kb = self.keys(*a), self.keys(*b)
        anchors = self.anchors(a[0], b[0])
        if budget is not None:
            sa, sb = budget_of(ka, budget, self.chance, anchors), budget_of(kb, budget, self.chance, anchors)
        else:
            sa, sb = curve_of(ka, self.chance, anchors, lo, hi), curve_of(kb, self.chance, anchors, lo, hi)
        keys = ka + kb + anchors
        return judge(claim, self.task, diff=self.interval(SM.diff_stat(sa, sb), keys), margin=margin,
                     quality=self.interval(sa, keys), chance=self.chance, chance_margin=self.cm, baseline=baseline)


def claims(cfg, views: dict, grid: dict, variant_of) -> list[dict]:
    def var(group, value):
        name = variant_of(group, value)
        return name if name in grid else None

    out = []
    best, P = BEST, "proactive"
    if "ledger" in views:
        v = views["ledger"]
        c = "1. proactive keeps >= 90% of batch on QA-like at RCO <= 0.9 (paper: ~96% at 0.75-0.9)"
        gate = v.gate(c, (P, best), (P, "batch"))
        if gate is None:
            kb, kbat, anc = v.keys(P, best), v.keys(P, "batch"), v.anchors(P)
            sa = budget_of(kb, 0.9, v.chance, anc)
            keys = kb + kbat + anc
            gate = judge(c, "ledger", diff=None, value=v.interval(SM.ratio_stat(sa, SM.quality_stat(kbat[0])), keys),
                         threshold=0.90, quality=v.interval(sa, keys), chance=v.chance, chance_margin=v.cm,
                         baseline="batch (fraction kept > 0.90)")
        out.append(gate)
        out.append(v.compare("2. wait-k collapses on QA-like: best head - wait-k at RCO <= 0.7 > 10 points",
                             (P, best), (P, "wait-k"), budget=0.7, margin=10.0, baseline="wait-k"))
    if "verb-final" in views:
        out.append(views["verb-final"].compare("3. entropy beats wait-k on MT-like (curve over RCO 0.6-1.0, > 1 BLEU)",
                                               (P, "entropy"), (P, "wait-k"), lo=0.6, hi=1.0, margin=1.0,
                                               baseline="wait-k"))
    if "ledger" in views and "verb-final" in views:
        a = views["ledger"].compare("4a. attention beats entropy on QA-like (curve 0-1)", (P, "attention"),
                                    (P, "entropy"), baseline="entropy")
        b = views["verb-final"].compare("4b. entropy beats attention on MT-like (curve 0-1)", (P, "entropy"),
                                        (P, "attention"), baseline="attention")
        out += [a, b]
    for task, v in views.items():
        out.append(v.compare("5. endogenous probe beats the external-label probe (curve over RCO 0.5-1.0)",
                             (P, "probe-self"), (P, "probe-external"), lo=0.5, hi=1.0, baseline="probe-external"))
    abl = [("schedule", "multinomial", "uniform", "6. multinomial budget beats uniform sampling (curve 0-1)", None),
           ("lambda", 0.1, 0.0, "7a. SPSD helps: lambda 0.1 beats lambda 0 (curve 0-1)", None),
           ("lambda", 0.1, 1.0, "7b. a small lambda beats a large one: 0.1 beats 1 (curve 0-1)", None),
           ("topk", 100, 1, "8. top-100 KL beats top-1 (k = 1 is no signal; curve 0-1)", None),
           ("trailing", True, False, "10. trailing reads help: on beats off at RCO <= 0.8", 0.8)]
    fams = ("entropy", "attention")
    for group, a, b, claim, budget in abl:
        for task in cfg.ablation_tasks.get(group, []):
            if task not in views:
                continue
            va, vb = var(group, a), var(group, b)
            if va is None or vb is None:
                out.append(_untestable(claim, task, f"{group} {a} or {b} is not in this grid"))
                continue
            out.append(views[task].compare(claim, (va, fams), (vb, fams), budget=budget,
                                           baseline=f"{group} = {b}"))
    for task in cfg.ablation_tasks.get("alpha", []):
        if task not in views:
            continue
        claim = ("9. later-biased budget weights (alpha 1) lower latency: RCO(alpha 0) - RCO(alpha 1) > 0.02 "
                 "(entropy q0.9)")
        va, vb = var("alpha", 0.0), var("alpha", 1.0)
        v = views[task]
        qa = [k for k in v.keys(va, "entropy") if v.quantile.get(k) == 0.9] if va else []
        qb = [k for k in v.keys(vb, "entropy") if v.quantile.get(k) == 0.9] if vb else []
        if not (qa and qb):
            out.append(_untestable(claim, task, "alpha 0 or 1 (or their entropy q0.9 point) is not in this grid"))
            continue
        gate = v.gate(claim)
        out.append(gate or judge(claim, task, diff=v.interval(SM.diff_stat(SM.rco_stat(qa[0]), SM.rco_stat(qb[0])),
                                                              qa + qb), margin=0.02,
                                 quality=v.interval(SM.quality_stat(qb[0]), qb), chance=v.chance,
                                 chance_margin=v.cm, baseline="alpha = 0"))
    return out


# ---------------------------------------------------------------------------------------------
# Tables, plots, files
# ---------------------------------------------------------------------------------------------

def _fmt(iv) -> str:
    return "n/a" if iv is None else f"{iv['estimate']:.3g} [{iv['lo']:.3g}, {iv['hi']:.3g}]"


def settings_table(v: TaskView, oracle: dict, external: dict) -> tuple[str, list[dict]]:
    rows = [f"| setting | family | {v.metric} [95%] | RCO [95%] |", "|---|---|---|---|"]
    data = []
    for k in sorted(k for k in v.fam if k.startswith("proactive/") and all(k in r for r in v.runs)):
        q = v.interval(SM.quality_stat(k), [k]).to_dict()
        r = v.interval(SM.rco_stat(k), [k]).to_dict()
        data.append({"setting": k, "family": v.fam[k], "quality": q, "rco": r})
        rows.append(f"| {k} | {v.fam[k]} | {_fmt(q)} | {_fmt(r)} |")
    rows.append(f"| oracle policy | oracle | (the full view's quality) | {oracle['rco']:.3f} "
                f"(AIL {oracle['ail']:.2f}) |")
    rows.append(f"| external labels as a policy | external | - | {external['rco']:.3f} (AIL {external['ail']:.2f}) |")
    rows.append(f"| chance (best source-blind output) | chance | {v.chance:.3g} | 0 |")
    return "\n".join(rows), data


def _plot(views: dict, out: Path, verdicts: list[dict]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    grid = np.linspace(0.0, 1.0, 21)
    for task, v in views.items():
        fig, ax = plt.subplots(figsize=(6, 4))
        anc = v.anchors("proactive")
        for fam in ("batch", "wait-k", "entropy", "attention", "probe-self", "probe-external", "probe-oracle"):
            keys = v.keys("proactive", fam)
            if not keys:
                continue
            ivs = [_interval(v.runs, budget_of(keys, b, v.chance, anc), sorted(set(keys + anc)), PLOT_BOOT)
                   for b in grid]
            ax.plot(grid, [i.estimate for i in ivs], label=fam)
            ax.fill_between(grid, [i.lo for i in ivs], [i.hi for i in ivs], alpha=0.2)
        ax.axhline(v.chance, color="gray", ls=":", label="chance")
        ax.set(xlabel="RCO budget", ylabel=f"best {v.metric} at RCO <= budget", title=f"{task} (95% bands)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / f"{task}_quality_latency.png", dpi=100)
        plt.close(fig)
        files.append(f"{task}_quality_latency.png")
    abl = [d for d in verdicts if "diff" in d and d["claim"].split(".")[0].rstrip("ab") in ("6", "7", "8", "10")]
    if abl:
        fig, ax = plt.subplots(figsize=(7, 0.5 + 0.4 * len(abl)))
        ys = np.arange(len(abl))
        est = [d["diff"]["estimate"] for d in abl]
        err = [[e - d["diff"]["lo"] for e, d in zip(est, abl)], [d["diff"]["hi"] - e for e, d in zip(est, abl)]]
        ax.barh(ys, est, xerr=err, color=["tab:green" if d["verdict"] == "reproduced" else "tab:gray" for d in abl])
        ax.set_yticks(ys, [f"{d['claim'][:40]} ({d['task']})" for d in abl], fontsize=6)
        ax.axvline(0, color="k", lw=0.5)
        ax.set(xlabel="difference (claimed - baseline), 95% interval")
        fig.tight_layout()
        fig.savefig(out / "ablations.png", dpi=100)
        plt.close(fig)
        files.append("ablations.png")
    return files


def write_report(cfg, cells: dict, grid: dict, timings: dict, counts: dict, variant_of, command: str = "") -> dict:
    """``variant_of(group, value)``: the variant name holding an ablation value (``demo.study.variant_of``)."""
    from proactive_jax.data import make_task

    out = Path(cfg.out_dir)
    views = {t: TaskView(cfg, cells, t, grid) for t in cfg.tasks if any(k[2] == t for k in cells)}
    verdicts = claims(cfg, views, grid, variant_of)
    lines = ["# Study report", "", f"Command: `{command or 'proactive-jax study'}`", "",
             f"{len(cfg.seeds)} training seeds {list(cfg.seeds)} x {cfg.n_test} test examples per task; thresholds "
             f"calibrated on {cfg.n_calib} valid examples; 95% intervals from {cfg.n_boot} bootstrap draws over "
             "seeds x examples (paired). Verdict rule: docs/study.md section 2.", "",
             f"Grid: tasks {list(cfg.tasks)}; {len(grid)} fine-tunes per seed ({', '.join(grid)}), each from a "
             f"{cfg.pretrain_steps}-step batch-mode pretrain, {cfg.finetune_steps} steps, batch "
             f"{cfg.global_batch_size}, {cfg.n_train} training examples per task, model {cfg.model_preset}.", "",
             "## Claims", "", "| claim | task | baseline | estimate [95%] | verdict | why |",
             "|---|---|---|---|---|---|"]
    for d in verdicts:
        iv = d.get("diff") or d.get("value")
        lines.append(f"| {d['claim']} | {d['task']} | {d.get('baseline', '')} | {_fmt(iv)} | **{d['verdict']}** | "
                     f"{'; '.join(d['reasons']) or '-'} |")
    tasks = {}
    for task, v in views.items():
        texts = make_task(task, cfg.n_test, seed=0, split="test")
        oracle, external = SM.policy_latency(texts, "oracle"), SM.policy_latency(texts, "external")
        table, data = settings_table(v, oracle, external)
        tasks[task] = {"chance": v.chance, "batch": None if v.batch is None else v.batch.to_dict(),
                       "learned": v.learned, "oracle": oracle, "external": external, "settings": data}
        lines += ["", f"## {task}", "", f"batch {_fmt(tasks[task]['batch'])} vs chance {v.chance:.3g}: "
                  + ("learned" if v.learned else f"**not learned** (needs > chance + {LEARNED_ABOVE_CHANCE:g}; "
                                                   "this task's claims are not testable here)"), "", table]
    spent: dict = {}
    for c in cells.values():  # what each cell cost when it was computed (train, probes, eval), counted once
        spent.update(c.get("seconds") or {})
    lines += ["", "## Time", "", f"this run: cells computed {counts['computed']}, reused {counts['reused']}; "
              f"{timings.get('cells', 0):.0f} s before the report", "",
              "when computed (s): " + (", ".join(f"{k} {s:.0f}" for k, s in sorted(spent.items())) or
                                       "not recorded in these cells")]
    plots = _plot(views, out, verdicts)
    summary = {"config": _config_dict(cfg), "command": command,
               "variants": {k: v["objective"] for k, v in grid.items()},
               "claims": verdicts, "tasks": tasks, "timings_s": timings, "cells": counts, "plots": plots}
    R.write_atomic(out / "results.json", json.dumps(summary, indent=1, default=float))
    R.write_atomic(out / "report.md", "\n".join(lines) + "\n")
    return summary


def _config_dict(cfg) -> dict:
    from proactive_jax.config import to_dict

    return to_dict(cfg)
