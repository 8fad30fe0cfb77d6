"""`proactive-jax study`: the grid of docs/study.md on the unsaturated study tasks, with seeds and intervals.

For every training seed: one batch-mode pretrain on the study tasks together (the stand-in for an instruct
model), then one fine-tune per *variant* from that start: ``proactive`` (batch + MSLM + SPSD with the
configured lambda / top-k / multinomial budget / trailing reads / alpha) and the ablations (lambda, top-k,
budget weights alpha, trailing reads off, the naive uniform schedule), each changing one setting. Each
variant is evaluated on the tasks its claims need (``StudyConfig.ablation_tasks``) with its heads on the
``test`` split; quantile thresholds are calibrated on ``valid`` only. On the proactive model the learned probe
is trained three ways (self-labels, a realistic external annotator's labels, the exact oracle's labels).

One *cell* = (seed, variant, task): its decode records (per setting: id, prediction, references, phi, M)
are written atomically to ``cells/seed<S>/<variant>/<task>.json`` with the fingerprint of what made them.
A rerun skips every cell whose file is complete and matches; a corrupt, partial or stale cell file is named
in one line and recomputed (never reused). Training runs resume from their checkpoints.
:mod:`proactive_jax.demo.study_report` turns the cells into ``results.json``, ``report.md`` and plots.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path

from proactive_jax.evaluation import results as R
from proactive_jax.evaluation import sweep as E

WRITE_AT_ONCE = "entropy:tau=1.0"  # normalised entropy <= 1: a head that never reads (the free anchor)


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    out_dir: str = "study_out"
    seeds: tuple[int, ...] = (0, 1, 2)
    tasks: tuple[str, ...] = ("ledger", "verb-final", "synonym-map")
    model_preset: str = "tiny-study"
    model: dict = dataclasses.field(default_factory=dict)  # ModelConfig field overrides
    n_train: int = 3000  # per task
    n_test: int = 300  # per task, the same examples for every seed (data seed 0)
    n_calib: int = 64  # per task, from the valid split
    global_batch_size: int = 64
    pretrain_steps: int = 1200  # 0: no pretrain (the fine-tunes start from a random init)
    pretrain_lr: float = 3e-3
    finetune_steps: int = 400
    finetune_lr: float = 1e-3
    kl_lambda: float = 0.1
    kl_topk: int = 100
    alpha: float = 0.0
    trailing_reads: bool = True
    # the ablations: each value is one more fine-tune per seed, evaluated on ablation_tasks[group]
    lambdas: tuple[float, ...] = (0.0, 0.03, 0.1, 0.3, 1.0)
    topks: tuple[int, ...] = (1, 5, 20, 100, 0)  # 0 = full vocabulary
    alphas: tuple[float, ...] = (-1.0, 0.0, 1.0)
    trailing: tuple[bool, ...] = (True, False)
    schedules: tuple[str, ...] = ("multinomial", "uniform")
    ablation_tasks: dict = dataclasses.field(default_factory=lambda: {
        "lambda": ["synonym-map", "verb-final"], "topk": ["synonym-map", "verb-final"],
        "alpha": ["ledger", "verb-final"], "trailing": ["ledger", "verb-final"],
        "schedule": ["ledger", "verb-final"]})
    probe: bool = True  # self / external / oracle-label probes on the proactive model
    probe_examples: int = 300  # per task
    probe_steps: int = 400
    probe_eps: float = 0.1  # the self-label bound = calibration_eps of the quantile pool: one setting
    heads: dict = dataclasses.field(default_factory=lambda: {
        "ledger": ["batch", "wait-k:k=3|9|16|24", "entropy:tau=0.02|0.05|0.1|0.2|q0.9",
                   "attention:tau=0.3|0.5|0.7|q0.9"],
        "verb-final": ["batch", "wait-k:k=1|2|3|5|8", "entropy:tau=0.02|0.05|0.1|0.2|q0.9",
                       "attention:tau=0.3|0.5|0.7|q0.9"],
        "synonym-map": ["batch", "wait-k:k=1|2|3", "entropy:tau=0.05|0.1|0.2|0.4|q0.9",
                        "attention:tau=0.3|0.5|0.7|q0.9"]})
    probe_heads: tuple[str, ...] = ("probe:tau=0.5|0.018|3.35e-4|q0.9",)
    ablation_families: tuple[str, ...] = ("batch", "entropy", "attention")  # heads of the ablation variants
    max_new_tokens: int = 24
    eval_batch_size: int = 64
    n_boot: int = 1000
    progress: bool = False
    quick: dict = dataclasses.field(default_factory=lambda: {  # --quick: a seconds-long smoke run, same stages
        "seeds": [0, 1], "tasks": ["ledger"], "n_train": 48, "n_test": 8, "n_calib": 4, "global_batch_size": 8,
        "pretrain_steps": 0, "finetune_steps": 2, "lambdas": [0.0, 0.1], "topks": [100], "alphas": [0.0],
        "trailing": [True], "schedules": ["multinomial"], "probe_examples": 4, "probe_steps": 2,
        "ablation_tasks": {"lambda": ["ledger"]}, "max_new_tokens": 4, "eval_batch_size": 8, "n_boot": 50,
        "heads": {"ledger": ["batch", "wait-k:k=9", "entropy:tau=0.1|q0.9"]},
        "probe_heads": ["probe:tau=0.5"]})


def load_study_config(path: str | None, overrides=(), quick: bool = False) -> StudyConfig:
    from proactive_jax.config import load_config, to_dict

    cfg = load_config(StudyConfig, path, overrides)
    if quick:
        data = to_dict(cfg)
        data.update(dict(cfg.quick))
        cfg = load_config(StudyConfig, None, overrides, data=data)
    validate_study_config(cfg)
    return cfg


def validate_study_config(cfg: StudyConfig) -> None:
    """Tasks, seeds, sweeps and ablation values checked before anything trains (ConfigError naming the key)."""
    from proactive_jax.data.synthetic_study import STUDY_TASKS
    from proactive_jax.errors import ConfigError

    if len(set(cfg.seeds)) != len(cfg.seeds) or not cfg.seeds:
        raise ConfigError(f"seeds: expected distinct training seeds, got {list(cfg.seeds)}")
    for task in cfg.tasks:
        if task not in STUDY_TASKS:
            raise ConfigError(f"tasks: unknown study task {task!r}; expected some of {sorted(STUDY_TASKS)}")
        if task not in cfg.heads:
            raise ConfigError(f"heads: no sweep list for task {task!r}")
        for sweep in list(cfg.heads[task]) + list(cfg.probe_heads):
            try:
                E.expand_sweep(sweep)
            except E.EvalError as e:
                raise ConfigError(f"heads.{task}: {e}") from None
    for group in cfg.ablation_tasks:
        if group not in ABLATIONS:
            raise ConfigError(f"ablation_tasks: unknown group {group!r}; expected some of {sorted(ABLATIONS)}")
    if any(k < 0 for k in cfg.topks) or any(x < 0 for x in cfg.lambdas):
        raise ConfigError("topks and lambdas: expected non-negative values (top-k 0 = the full vocabulary)")
    for s in cfg.schedules:
        if s not in ("multinomial", "uniform"):
            raise ConfigError(f"schedules: {s!r}; expected multinomial or uniform")
    for key in ("n_train", "n_test", "n_calib", "global_batch_size", "n_boot"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key}={getattr(cfg, key)}: expected >= 1")


# ---------------------------------------------------------------------------------------------
# Variants: the proactive fine-tune and one-setting-changed ablations
# ---------------------------------------------------------------------------------------------

ABLATIONS = {"lambda": ("kl_lambda", "lambdas"), "topk": ("kl_topk", "topks"), "alpha": ("alpha", "alphas"),
             "trailing": ("trailing_reads", "trailing"), "schedule": ("schedule", "schedules")}


def base_objective(cfg: StudyConfig) -> dict:
    return {"schedule": "multinomial", "w_batch": 1.0, "w_mslm": 1.0, "kl_lambda": cfg.kl_lambda,
            "kl_topk": cfg.kl_topk, "alpha": cfg.alpha, "trailing_reads": cfg.trailing_reads}


def _vocab_size(cfg: StudyConfig) -> int:
    from proactive_jax.models.presets import MODEL_PRESETS

    return int(cfg.model.get("vocab_size", MODEL_PRESETS[cfg.model_preset]["vocab_size"]))


def variant_name(group: str, value) -> str:
    if group == "trailing":
        return f"trailing={'on' if value else 'off'}"
    if group == "topk":
        return f"topk={'full' if value == 0 else value}"
    return f"{group}={value:g}" if isinstance(value, float) else f"{group}={value}"


def variants(cfg: StudyConfig) -> dict[str, dict]:
    """``{name: {"objective", "tasks", "group", "value"}}``: ``proactive`` first, then every ablation value that
    differs from the proactive setting (the value equal to it *is* the proactive run, shared)."""
    base = base_objective(cfg)
    out = {"proactive": {"objective": base, "tasks": list(cfg.tasks), "group": None, "value": None}}
    for group, (key, field) in ABLATIONS.items():
        tasks = [t for t in cfg.ablation_tasks.get(group, []) if t in cfg.tasks]
        for value in getattr(cfg, field):
            v = _vocab_size(cfg) if (group == "topk" and value == 0) else value
            if not tasks or v == base[key]:
                continue
            out[variant_name(group, value)] = {"objective": {**base, key: v}, "tasks": tasks, "group": group,
                                               "value": value}
    return out


def variant_of(cfg: StudyConfig, group: str, value) -> str:
    """The variant holding ``group = value`` (``proactive`` when it is the proactive setting)."""
    base = base_objective(cfg)
    key = ABLATIONS[group][0]
    v = _vocab_size(cfg) if (group == "topk" and value == 0) else value
    return "proactive" if v == base[key] else variant_name(group, value)


def variant_sweeps(cfg: StudyConfig, task: str, variant: str) -> list[str]:
    sweeps = list(cfg.heads[task])
    if variant != "proactive":
        sweeps = [s for s in sweeps if E.expand_sweep(s)[0].family in cfg.ablation_families]
    return sweeps + [WRITE_AT_ONCE]


# ---------------------------------------------------------------------------------------------
# Cells: resumable, fingerprinted, atomically written
# ---------------------------------------------------------------------------------------------

def cell_path(cfg: StudyConfig, seed: int, variant: str, task: str) -> Path:
    return Path(cfg.out_dir) / "cells" / f"seed{seed}" / variant / f"{task}.json"


def cell_key(cfg: StudyConfig, seed: int, variant: str, task: str) -> str:
    """What a cell's records depend on: training (steps, lr, data, model, the variant's objective) and
    evaluation (heads, examples, decode length, probes)."""
    spec = {"seed": seed, "variant": variants(cfg)[variant]["objective"], "task": task,
            "tasks": list(cfg.tasks), "model": [cfg.model_preset, dict(cfg.model)],
            "train": [cfg.n_train, cfg.global_batch_size, cfg.pretrain_steps, cfg.pretrain_lr, cfg.finetune_steps,
                      cfg.finetune_lr],
            "eval": [cfg.n_test, cfg.n_calib, cfg.max_new_tokens, variant_sweeps(cfg, task, variant)],
            "probe": ([cfg.probe, cfg.probe_examples, cfg.probe_steps, cfg.probe_eps, list(cfg.probe_heads)]
                      if variant == "proactive" else None)}
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_cell(path: Path, key: str) -> tuple[dict | None, str | None]:
    """``(cell, None)`` for a complete cell made with ``key``; ``(None, reason)`` otherwise (``reason`` None
    when the file does not exist)."""
    if not path.exists():
        return None, None
    try:
        cell = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return None, f"unreadable ({type(e).__name__})"
    if not isinstance(cell, dict) or cell.get("complete") is not True:
        return None, "partial (not marked complete)"
    if cell.get("key") != key:
        return None, "stale (made with another configuration)"
    settings = cell.get("settings")
    if not isinstance(settings, dict) or not settings:
        return None, "partial (no settings)"
    if not all(isinstance(s, dict) and isinstance(s.get("records"), list) for s in settings.values()):
        return None, "partial (a setting without records)"
    n = {len(s["records"]) for s in settings.values()}
    if len(n) != 1 or 0 in n:
        return None, "partial (settings with different numbers of records)"
    return cell, None


def write_cell(path: Path, key: str, settings: dict, extra: dict) -> dict:
    cell = {"key": key, "complete": True, "settings": settings, **extra}
    path.parent.mkdir(parents=True, exist_ok=True)
    R.write_atomic(path, json.dumps(cell, default=float))
    return cell


# ---------------------------------------------------------------------------------------------
# Training and evaluation
# ---------------------------------------------------------------------------------------------

def _say(msg: str) -> None:
    print(msg, flush=True)


def _buckets(cfg: StudyConfig, tok, parts) -> list[list[int]]:
    """One (source, target) bucket per task, from its longest rendered train/test example (multiples of 8)."""
    from proactive_jax.data import make_task, render_example

    out = []
    for task in cfg.tasks:
        exs = [render_example(tok, t, parts) for split in ("train", "test")
               for t in make_task(task, 200, seed=0, split=split)]
        s = max(len(e.prompt) + sum(len(u) for u in e.units) + len(e.end) for e in exs)
        t = max(len(e.header) + len(e.target) for e in exs)
        out.append([-(-(s + 2) // 8) * 8, -(-(t + 2) // 8) * 8])
    return sorted(out)


def _run_config(cfg: StudyConfig, seed: int, name: str, buckets, *, steps: int, lr: float, objective: dict):
    from proactive_jax.training.run_config import load_run_config

    data = {
        "model": {"preset": cfg.model_preset, "config": dict(cfg.model)},
        "data": {"task": "synthetic",
                 "synthetic": {"tasks": list(cfg.tasks), "n_train": cfg.n_train, "n_valid": 0, "seed": seed},
                 "buckets": buckets, "global_batch_size": cfg.global_batch_size, "seed": seed,
                 "cache_dir": str(Path(cfg.out_dir) / "cache")},
        "objective": objective,
        "optim": {"lr": lr, "schedule": "cosine", "warmup_steps": max(1, steps // 20), "end_lr_ratio": 0.1,
                  "weight_decay": 0.01, "clip_norm": 1.0, "b2": 0.98},
        "mesh": {"data": 1, "fsdp": 1},
        "checkpoint": {"every": max(steps, 1), "keep": 1, "async_save": False},
        "steps": steps, "out_dir": str(Path(cfg.out_dir) / "runs" / f"seed{seed}" / name), "seed": seed,
        "log_every": 25, "eval_every": 0, "tensorboard": False, "progress": cfg.progress,
    }
    return load_run_config(None, data=data)


def _train(cfg, seed, name, buckets, *, steps, lr, objective, init=None, timings=None):
    import jax

    from proactive_jax.training.loop import train

    t0 = time.perf_counter()
    res = train(_run_config(cfg, seed, name, buckets, steps=steps, lr=lr, objective=objective), init_params=init,
                devices=jax.local_devices()[:1])
    if res.stopped == "signal":
        raise KeyboardInterrupt
    last = res.history[-1] if res.history else {}
    if timings is not None:
        timings[f"train/seed{seed}/{name}"] = time.perf_counter() - t0
    _say(f"  seed {seed} {name}: step {res.step}, loss {last.get('loss', float('nan')):.4f} (batch "
         f"{last.get('batch', float('nan')):.4f}, mslm {last.get('mslm', float('nan')):.4f}, kl "
         f"{last.get('kl', float('nan')):.4f}) in {time.perf_counter() - t0:.0f}s")
    return res, {k: last.get(k) for k in ("loss", "batch", "mslm", "kl")}


def _items(task: str, split: str, n: int, tok, parts):
    from proactive_jax.data import make_task, render_example

    texts = make_task(task, n, seed=0, split=split)
    return texts, [E.EvalItem(t.id, render_example(tok, t, parts), list(t.references) or [t.target_text])
                   for t in texts]


def _train_probes(cfg, seed, run, tok, parts) -> dict:
    from proactive_jax.data import make_task, render_example
    from proactive_jax.training.probe_training import ProbeConfig, fit_probe

    texts = [t for task in cfg.tasks for t in make_task(task, cfg.probe_examples, seed=seed + 1, split="train")]
    streams = [render_example(tok, t, parts) for t in texts]
    out = {}
    for labels in ("self", "external", "oracle"):
        pc = ProbeConfig(checkpoint=str(run.out_dir), labels=labels, eps=cfg.probe_eps, steps=cfg.probe_steps,
                         seed=seed, task=",".join(cfg.tasks), trailing_reads=cfg.trailing_reads)
        out[labels], info = fit_probe(pc, run.model_config, run.params, texts, streams)
        _say(f"  seed {seed} probe ({labels} labels): {info['states']} states, "
             f"{100 * info['positive_rate']:.0f}% sufficient")
    return out


def _evaluate(cfg, seed, variant, task, model_cfg, params, tok, parts, probes) -> dict:
    """``{setting: {"family", "records"}}`` of one cell (decode records resume from the eval directory)."""
    from proactive_jax.data import word_start_table
    from proactive_jax.data.render import eos_ids_for

    _, test = _items(task, "test", cfg.n_test, tok, parts)
    _, calib = _items(task, "valid", cfg.n_calib, tok, parts)
    kw = dict(task=task, detokenize=lambda t: tok.decode(list(t), skip_special_tokens=True).strip(),
              eos_ids=eos_ids_for(tok, model_cfg), word_starts=word_start_table(tok, model_cfg.vocab_size),
              max_new_tokens=cfg.max_new_tokens, batch_size=cfg.eval_batch_size, calibration=calib,
              progress=cfg.progress, calibration_eps=cfg.probe_eps)
    root = Path(cfg.out_dir) / "eval" / f"seed{seed}" / variant / task
    jobs = [("", variant_sweeps(cfg, task, variant), None)]
    jobs += [(f"{labels}/", list(cfg.probe_heads), p) for labels, p in probes.items()]
    settings = {}
    for prefix, sweeps, probe in jobs:
        out = root / (prefix.strip("/") or "heads")
        res = E.evaluate_heads(model_cfg, params, test, sweeps, out, fresh=True, probe=probe, **kw)
        recs = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines() if line.strip()]
        for s in res["settings"]:
            rows = [{k: r[k] for k in ("id", "prediction", "references", "phi", "M")} for r in recs
                    if r.get("kind") == "decode" and r.get("setting") == s["setting"]]
            q = s.get("quantile")  # a calibrated tau differs by seed: name the setting by its quantile
            name = prefix + (s["setting"] if q is None else f"{s['family']}:tau=q{q:g}")
            family = "write-at-once" if name == WRITE_AT_ONCE else (f"probe-{prefix[:-1]}" if prefix else s["family"])
            settings[name] = {"family": family, "records": rows, "label": s.get("label"), "quantile": s.get("quantile")}
    return settings


def run_study(cfg: StudyConfig, command: str = "") -> dict:
    """Every missing cell (training what it needs), then the report (:func:`study_report.write_report`)."""
    from proactive_jax.data import template_parts
    from proactive_jax.data.synthetic import load_tokenizer, tokenizer_dir
    from proactive_jax.demo.study_report import write_report

    t_start = time.perf_counter()
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = load_tokenizer(tokenizer_dir(cfg.tasks))
    parts = template_parts(tok)
    buckets = _buckets(cfg, tok, parts)
    grid = variants(cfg)
    timings: dict[str, float] = {}
    cells: dict = {}
    counts = {"reused": 0, "computed": 0, "recomputed": 0}
    _say(f"study: {len(cfg.seeds)} seeds x {len(grid)} variants ({', '.join(grid)}) on {list(cfg.tasks)}; "
         f"buckets {buckets}; out {out}")
    for seed in cfg.seeds:
        pre = None
        for variant, spec in grid.items():
            todo = []
            for task in spec["tasks"]:
                path, key = cell_path(cfg, seed, variant, task), cell_key(cfg, seed, variant, task)
                cell, why = read_cell(path, key)
                if cell is not None:
                    cells[(seed, variant, task)] = cell
                    counts["reused"] += 1
                    continue
                if why is not None:
                    _say(f"study: cell {path} is {why}; recomputing it")
                    counts["recomputed"] += 1
                todo.append((task, path, key))
            if not todo:
                continue
            if pre is None and cfg.pretrain_steps > 0:
                pre, _ = _train(cfg, seed, "pretrain", buckets, steps=cfg.pretrain_steps, lr=cfg.pretrain_lr,
                                objective={"schedule": "full", "w_batch": 1.0, "w_mslm": 0.0, "kl_lambda": 0.0,
                                           "kl_topk": 1}, timings=timings)
            run, losses = _train(cfg, seed, variant, buckets, steps=cfg.finetune_steps, lr=cfg.finetune_lr,
                                 objective=spec["objective"], init=pre and pre.params, timings=timings)
            probes = {}
            if cfg.probe and variant == "proactive":
                t0 = time.perf_counter()
                probes = _train_probes(cfg, seed, run, tok, parts)
                timings[f"probes/seed{seed}"] = time.perf_counter() - t0
            for task, path, key in todo:
                t0 = time.perf_counter()
                settings = _evaluate(cfg, seed, variant, task, run.model_config, run.params, tok, parts, probes)
                timings[f"eval/seed{seed}/{variant}/{task}"] = time.perf_counter() - t0
                spent = {k: v for k, v in timings.items() if k.endswith(f"seed{seed}/{variant}/{task}")
                         or k in (f"train/seed{seed}/{variant}", f"train/seed{seed}/pretrain", f"probes/seed{seed}")}
                cells[(seed, variant, task)] = write_cell(path, key, settings, {
                    "train": losses, "seed": seed, "variant": variant, "task": task, "seconds": spent})
                counts["computed"] += 1
    timings["cells"] = time.perf_counter() - t_start
    summary = write_report(cfg, cells, grid, timings, counts, lambda g, x: variant_of(cfg, g, x), command)
    _say(f"study: cells {counts['computed']} computed ({counts['recomputed']} of them replacing a bad file), "
         f"{counts['reused']} reused; wrote {out}/results.json, report.md and plots in "
         f"{time.perf_counter() - t_start:.0f}s")
    return summary
