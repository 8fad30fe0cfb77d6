"""``proactive-jax reproduce``: the paper's tables, cell by cell: plan -> train -> export -> eval -> table.

A cell is one backbone x one task of configs/reproduce.yaml (its training config, the TPU slice its memory plan is
compiled for, its evaluation); the paper's published numbers come from configs/paper_tables.yaml. Every output goes
under ``--out``; a stage whose outputs are there is skipped, so an interrupted run resumes cell by cell (the trainer
and the evaluator also resume inside a stage). ``--dry-run`` runs the same cells with tiny random models of each
backbone's family on the fixture rows (tests/fixtures/reproduce): it proves the plumbing, not the numbers.
docs/reproduce.md has the commands for real hardware and what each stage writes.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STAGES = ("plan", "train", "export", "eval", "table")
DRY_BANNER = ("DRY RUN: tiny random stand-ins of each backbone (its config.json shrunk), a few train steps on made-up "
              "rows in the real datasets' layouts. This proves the plumbing (plan -> train -> export -> eval -> table), "
              "NOT the numbers: every 'ours' figure below is meaningless.")


def add_reproduce_args(p) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--cell", action="append", metavar="MODEL/TASK", help="a cell, e.g. qwen2.5-3b/iwslt-ende (repeatable)")
    g.add_argument("--table", choices=("1", "2"), help="every cell of the paper's Table 1 or 2")
    g.add_argument("--list", action="store_true", help="list the cells and exit")
    p.add_argument("--out", default="results", help="the results directory (default: results)")
    p.add_argument("--dry-run", action="store_true", help="tiny stand-in models on the fixture data (CPU, minutes)")
    p.add_argument("--stages", default=",".join(STAGES), help=f"stages to run, in order (default: {','.join(STAGES)})")
    p.add_argument("--redo", choices=STAGES[:4], default=None,
                   help="delete this stage's outputs and run it again; train / export: the later stages too")
    p.add_argument("--topology", default=None, help="plan for this slice instead of the cell's (e.g. v4-32)")
    p.add_argument("--headroom", type=float, default=0.25, help="HBM fraction the plan keeps free (default 0.25)")
    p.add_argument("--no-plan-gate", action="store_true", help="go on with a cell whose plan says it does not fit")
    p.add_argument("-t", "--train-override", action="append", default=[], metavar="KEY=VALUE",
                   help="training config override for every selected cell (e.g. checkpoint.dir=gs://B/run)")
    p.add_argument("-e", "--eval-override", action="append", default=[], metavar="KEY=VALUE",
                   help="eval override for every selected cell (e.g. num_examples=200)")
    p.add_argument("--recipe", default="configs/reproduce.yaml", help="the cells file")
    p.add_argument("--paper", default="configs/paper_tables.yaml", help="the paper's numbers")
    p.add_argument("--fixtures", default=None, help="dry-run data + tokenizers (default: the recipe's)")


def repo_path(p) -> Path:
    """A path as given when it exists (or is absolute), else relative to the checkout."""
    p = Path(str(p))
    return p if p.is_absolute() or p.exists() else ROOT / p


def _yaml(path) -> dict:
    from proactive_jax.config import read_yaml

    return read_yaml(repo_path(path))


def _write(path: Path, data, fmt: str = "json") -> None:
    """Atomically: a dict as JSON or YAML."""
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False) if fmt == "yaml" else json.dumps(data, indent=1))
    os.replace(tmp, path)


def _error(msg: str):
    from proactive_jax.errors import ConfigError

    return ConfigError(msg)


# ---------------------------------------------------------------------------------------------------------- cells

class Ctx:
    """One invocation: the recipe, the paper's numbers, the options, the timings."""

    def __init__(self, args):
        self.args, self.recipe, self.paper = args, _yaml(args.recipe), _yaml(args.paper)
        self.dry, self.out = bool(args.dry_run), Path(args.out).absolute()
        self.fixtures = repo_path(args.fixtures or self.recipe["dry_run"]["fixtures"]).absolute()
        self.timings: list[tuple[str, str, float]] = []
        bad = [s for s in args.stages.split(",") if s not in STAGES]
        if bad:
            raise _error(f"--stages: unknown stage(s) {bad}; expected some of {list(STAGES)}")
        self.stages = [s for s in STAGES if s in args.stages.split(",")]

    def sub(self, v):
        """``{fixtures}`` in recipe strings (nested) -> the fixture directory."""
        if isinstance(v, dict):
            return {k: self.sub(x) for k, x in v.items()}
        if isinstance(v, list):
            return [self.sub(x) for x in v]
        return v.replace("{fixtures}", str(self.fixtures)) if isinstance(v, str) else v

    def cells(self) -> list[str]:
        names = self.args.cell or self.recipe["tables"][int(self.args.table)]
        bad = [c for c in names if c not in self.recipe["cells"]]
        if bad:
            raise _error(f"--cell {bad[0]}: unknown cell; expected one of {sorted(self.recipe['cells'])} (--list)")
        return list(dict.fromkeys(names))

    def cell_dir(self, cell: str) -> Path:
        return self.out / cell

    def title(self, cell: str) -> str:
        model, task = cell.split("/")
        return f"{self.recipe['models'][model]['name']} / {self.recipe['tasks'][task]['title']}"


def map_dataset(ctx: Ctx, ds: dict) -> dict:
    """Dry run: a dataset spec (dict) with its Hub id replaced by the fixture directory in the same layout."""
    m = ctx.recipe["dry_run"]["datasets"].get(ds.get("path"))
    if m is None:
        raise _error(f"dry run: no fixture for dataset {ds.get('path')!r} (add it to dry_run.datasets)")
    return {**{k: ds[k] for k in ("name", "data_dir") if ds.get(k) is not None}, **ctx.sub(m)}


def tiny_model_json(ctx: Ctx, real_json: Path, tok_dir: Path, out: Path) -> Path:
    """The backbone's own config.json with the dry run's sizes, and the fixture tokenizer's vocabulary and ids."""
    from transformers import AutoTokenizer

    hf, tok, d = json.loads(real_json.read_text()), AutoTokenizer.from_pretrained(str(tok_dir)), ctx.recipe["dry_run"]
    ids = {"vocab_size": -(-len(tok) // 8) * 8, "eos_token_id": tok.convert_tokens_to_ids("<|im_end|>"),
           "bos_token_id": tok.convert_tokens_to_ids("<|endoftext|>")}
    if hf.get("model_type") == "qwen2_audio":
        hf["text_config"].update(d["shrink"], **ids)
        hf["audio_config"].update(d["audio_shrink"])
        hf["audio_token_index"] = tok.convert_tokens_to_ids("<|AUDIO|>")
    else:
        hf.update(d["shrink"], **ids)
    _write(out, hf)
    return out


def train_config(ctx: Ctx, cell: str) -> Path:
    """The cell's training config as run (the config + the cell's and the user's overrides; dry run: the tiny model
    and the fixtures), written to <cell>/train_config.yaml and validated."""
    from proactive_jax.config import apply_overrides
    from proactive_jax.training.run_config import load_run_config

    c, cdir = ctx.recipe["cells"][cell], ctx.cell_dir(cell)
    raw = _yaml(c["config"])
    if raw.get("model", {}).get("config_json"):
        raw["model"]["config_json"] = str(repo_path(raw["model"]["config_json"]).absolute())
    over = list(c.get("overrides", []))
    if ctx.dry:
        raw, dry_over = _dry_train(ctx, cell, raw)
        over += dry_over
    raw = apply_overrides(raw, over + list(ctx.args.train_override) + [f"out_dir={cdir / 'run'}"])
    _write(cdir / "train_config.yaml", raw, "yaml")
    load_run_config(cdir / "train_config.yaml")  # a bad key is one line now, not after a compile
    return cdir / "train_config.yaml"


def _dry_train(ctx: Ctx, cell: str, raw: dict):
    import dataclasses

    from proactive_jax.data.loaders import KNOWN_DATASETS, known_dataset
    from proactive_jax.training.run_config import AUDIO_TASKS

    d, data = ctx.recipe["dry_run"], raw["data"]
    tok = ctx.fixtures / "tokenizers" / ctx.recipe["models"][cell.split("/")[0]]["tokenizer"]
    tiny = tiny_model_json(ctx, Path(raw["model"]["config_json"]), tok, ctx.cell_dir(cell) / "tiny_model.json")
    raw["model"] = {"config_json": str(tiny), "dtype": "float32", "remat": False, "init": "random"}
    data["tokenizer"] = str(tok)
    if data.get("dataset"):
        data["dataset"] = map_dataset(ctx, data["dataset"])
    elif data["task"] in KNOWN_DATASETS:  # a known Hub dataset -> the same adapter on the fixture directory
        spec, adapter, opts = known_dataset(data["task"], data.get("split", "train"))
        data.update(task="custom", dataset=map_dataset(ctx, dataclasses.asdict(spec)), adapter=adapter,
                    adapter_options={**opts, **(data.get("adapter_options") or {})})
    kind = "train_speech" if data["task"] in AUDIO_TASKS else "train_text"
    return raw, ctx.sub(d["train"] + d[kind] + ctx.recipe["cells"][cell].get("dry_run", []))


def eval_config(ctx: Ctx, cell: str) -> Path:
    """The cell's eval config (defaults + task + cell + dry run + the user's overrides), written and validated."""
    from proactive_jax.config import apply_overrides, load_config
    from proactive_jax.evaluation.evaluate import EvalConfig

    c, cdir, task = ctx.recipe["cells"][cell], ctx.cell_dir(cell), ctx.recipe["tasks"][cell.split("/")[1]]
    d = {**ctx.recipe["eval_defaults"], "heads": ctx.recipe["heads"][task["heads"]], **task["eval"], **c.get("eval", {})}
    if ctx.dry:
        d.update(ctx.recipe["dry_run"]["eval"], dataset=map_dataset(ctx, d["dataset"]))
    d.update(checkpoint=str(cdir / "hf"), out_dir=str(cdir / "eval"))
    _write(cdir / "eval_config.yaml", apply_overrides(d, ctx.args.eval_override), "yaml")
    load_config(EvalConfig, cdir / "eval_config.yaml")
    return cdir / "eval_config.yaml"


# --------------------------------------------------------------------------------------------------------- stages

def finished(ctx: Ctx, cell: str, stage: str) -> bool:
    """Whether ``stage``'s outputs are there (train: also when an export is: a fetched one needs no training)."""
    cdir = ctx.cell_dir(cell)
    hf_ready = (cdir / "hf" / "config.json").is_file() and any((cdir / "hf").glob("*.safetensors"))
    if stage == "eval":
        done, cfg = cdir / "eval" / "eval_config.done.yaml", cdir / "eval_config.yaml"
        return (cdir / "eval" / "results.json").is_file() and done.is_file() and done.read_text() == cfg.read_text()
    return {"plan": (cdir / "plan.json").is_file(), "export": hf_ready,
            "train": (cdir / "train.json").is_file() or hf_ready}[stage]


def forget(ctx: Ctx, cell: str, stage: str) -> None:
    """--redo: delete what ``stage`` wrote (the trainer's local run directory included; eval restarts fresh)."""
    for name in {"plan": ["plan.json"], "train": ["train.json", "run"], "export": ["export.json", "hf"],
                 "eval": []}[stage]:
        p = ctx.cell_dir(cell) / name
        shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)


def stage_plan(ctx: Ctx, cell: str) -> int:
    """`proactive-jax plan` in a subprocess (it sets up libtpu and the CPU platform); plan.json keeps the report."""
    import importlib.util

    cdir = ctx.cell_dir(cell)
    if importlib.util.find_spec("libtpu") is None:
        print("  plan: skipped: libtpu is not installed (pip install -e '.[tpu]'); no plan.json written")
        return 0
    topo = ctx.args.topology or (ctx.recipe["dry_run"]["topology"] if ctx.dry else ctx.recipe["cells"][cell]["topology"])
    cmd = [sys.executable, "-m", "proactive_jax", "plan", str(cdir / "train_config.yaml"), "--topology", topo,
           "--headroom", str(ctx.args.headroom), "--json"]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p]))
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if res.returncode not in (0, 1):
        last = (res.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise _error(f"{cell}: plan failed (exit {res.returncode}): {last}")
    _write(cdir / "plan.json", {"command": "proactive-jax " + " ".join(cmd[3:]),
                                "report": json.loads(res.stdout.strip().splitlines()[-1])})
    return 0


def stage_train(ctx: Ctx, cell: str) -> int:
    import jax

    from proactive_jax.training.loop import train
    from proactive_jax.training.run_config import load_run_config

    cdir, t0 = ctx.cell_dir(cell), time.time()
    res = train(load_run_config(cdir / "train_config.yaml"))
    if res.stopped != "done":
        print(f"  train: stopped by a signal at step {res.step} (checkpoint saved); rerun the same command to resume")
        return 130
    if jax.process_index() == 0:
        last = res.history[-1] if res.history else {}
        _write(cdir / "train.json", {"step": res.step, "loss": last.get("loss"), "checkpoint_dir": str(res.checkpoint_dir),
                                     "steps_this_run": len(res.history), "seconds": round(time.time() - t0, 1),
                                     "device": str(jax.devices()[0])})
    return 0


def stage_export(ctx: Ctx, cell: str) -> int:
    import jax

    from proactive_jax.training.checkpoint import export

    cdir = ctx.cell_dir(cell)
    if jax.process_count() > 1:
        print("  export: skipped on a multi-host run; run `--stages export` on one host (worker 0)")
        return 0
    info = json.loads((cdir / "train.json").read_text()) if (cdir / "train.json").is_file() else {}
    src = info.get("checkpoint_dir") or str(cdir / "run")
    dtype = ctx.recipe["dry_run"]["export_dtype"] if ctx.dry else "bfloat16"
    export(src, None, cdir / "hf", dtype=dtype)
    _write(cdir / "export.json", {"checkpoint": src, "dtype": dtype})
    return 0


def stage_eval(ctx: Ctx, cell: str, fresh: bool) -> int:
    from proactive_jax.errors import EvalError, ProactiveError
    from proactive_jax.evaluation.evaluate import load_eval_config, run_eval

    cdir = ctx.cell_dir(cell)
    try:
        run_eval(load_eval_config(cdir / "eval_config.yaml", ["fresh=true"] if fresh else []))
    except ValueError as e:  # a head that does not suit the model (e.g. its layers), a bad split, ...
        if isinstance(e, ProactiveError):
            raise
        raise EvalError(f"{cell}: eval: {e}") from None
    shutil.copyfile(cdir / "eval_config.yaml", cdir / "eval" / "eval_config.done.yaml")
    return 0


# --------------------------------------------------------------------------------------------------------- tables

def _num(x) -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2f}"


def _stem(s: dict) -> str:
    return (s.get("label") or s["setting"]).split(" (")[0].strip()


def row_stems(ctx: Ctx) -> dict:
    """Paper row name -> the label stem of our matching setting (``entropy tau=q0.9``)."""
    from proactive_jax.evaluation.sweep import expand_sweep

    return {name: expand_sweep(spec)[0].label() for name, spec in ctx.recipe["paper_rows"].items()}


def results(ctx: Ctx, cell: str):
    p = ctx.cell_dir(cell) / "eval" / "results.json"
    return json.loads(p.read_text()) if p.is_file() else None


def ours(s: dict) -> list[str]:
    lat = s.get("latency", {})
    return [_num(s["headline"]), _num(lat.get("ail")), _num(lat.get("rco"))]


def quality_name(ctx: Ctx, cell: str) -> str:
    from proactive_jax.evaluation.results import task_quality

    ev = ctx.recipe["tasks"][cell.split("/")[1]]["eval"]
    return task_quality(ev["task"], ev.get("metric"))[2]


def cell_table(ctx: Ctx, cell: str, res: dict) -> str:
    """Every setting of the sweep: ours, and the paper's row beside the settings the paper reports."""
    q, stems, paper = quality_name(ctx, cell), row_stems(ctx), ctx.paper.get("table1", {}).get(cell, {})
    by_stem = {stem: name for name, stem in stems.items()}
    lines = [f"### {ctx.title(cell)} ({cell})", "",
             f"| ours: setting | {q} | AIL | RCO | paper row | paper {q} | paper AIL | paper RCO |", "|---" * 8 + "|"]
    seen = set()
    for s in res["settings"]:
        name = by_stem.get(_stem(s))
        seen.add(name)
        pcols = [_num(v) for v in paper[name]] if name in paper else (["not quoted"] * 3 if name else [""] * 3)
        lines.append("| " + " | ".join([s.get("label") or s["setting"], *ours(s), name or "", *pcols]) + " |")
    lines += ["| " + " | ".join(["(not in our sweep)", "", "", "", name, *map(_num, paper[name])]) + " |"
              for name in stems if name not in seen and name in paper]
    n = res["settings"][0]["n"] if res["settings"] else 0
    lines.append(f"\n{len(res['settings'])} settings x {n} examples; device: {res.get('timing', {}).get('device', '?')}")
    return "\n".join(lines) + "\n"


def table1(ctx: Ctx) -> str:
    lines = ["## Table 1: quality / AIL / RCO, ours vs the paper", "",
             "| backbone / task | quality | row | ours Q | ours AIL | ours RCO | paper Q | paper AIL | paper RCO |",
             "|---" * 9 + "|"]
    for cell in ctx.recipe["tables"][1]:
        res, paper = results(ctx, cell), ctx.paper.get("table1", {}).get(cell, {})
        for name, stem in row_stems(ctx).items():
            match = [s for s in (res or {}).get("settings", []) if _stem(s) == stem]
            mine = ours(match[0]) if match else ["pending" if res is None else "not run", "", ""]
            theirs = [_num(v) for v in paper[name]] if name in paper else ["not quoted", "", ""]
            lines.append("| " + " | ".join([ctx.title(cell), quality_name(ctx, cell), name, *mine, *theirs]) + " |")
    return "\n".join(lines) + "\n"


def tier_point(res: dict, head: str, budget: float):
    """The best-quality point of ``head``'s sweep with RCO <= budget (WER: the lowest)."""
    pts = [s for s in res["settings"] if s["family"] == head and s.get("latency", {}).get("rco", 2) <= budget + 1e-9]
    sign = -1 if res["settings"] and res["settings"][0].get("quality_key") == "wer" else 1
    return max(pts, key=lambda s: sign * s["headline"], default=None)


def table2(ctx: Ctx) -> str:
    t2, paper = ctx.recipe["table2"], ctx.paper["table2"]
    cols = paper["columns"]
    lines = ["## Table 2: learned baselines with external labels vs ProactiveLLM, by latency tier", "",
             f"Ours at a tier: the best point of the head's sweep ({', '.join(c['head'] for c in t2['columns'])}) "
             f"with RCO within the tier's budget ({', '.join(f'{k} <= {v}' for k, v in t2['tiers'].items())}; "
             "ours: the paper's tier definition is not quoted).", "",
             "| tier | method | " + " | ".join(f"ours {c} | paper {c}" for c in cols) + " |", "|---" * (2 + 2 * len(cols)) + "|"]
    for tier, budget in t2["tiers"].items():
        for method, vals in paper[tier].items():
            row = [tier, method]
            for k, col in enumerate(t2["columns"]):
                res = results(ctx, col["cell"])
                pt = None if res is None else tier_point(res, col["head"], budget)
                mine = ("not run (no external labels)" if method != "ProactiveLLM" else "pending" if res is None else
                        f"none with RCO <= {budget}" if pt is None else
                        f"{_num(pt['headline'])} ({pt.get('label') or pt['setting']}, RCO {_num(pt['latency']['rco'])})")
                row += [mine, _num(vals[k])]
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------------- the run

def check_mode(ctx: Ctx) -> None:
    """One results directory holds real results or dry-run results, never both."""
    mark, mode = ctx.out / "REPRODUCE.json", "dry-run" if ctx.dry else "real"
    had = json.loads(mark.read_text()).get("mode") if mark.is_file() else None
    if had not in (None, mode):
        raise _error(f"--out {ctx.out} holds {had} results; this is a {mode} run: choose another --out")
    _write(mark, {"mode": mode, "recipe": str(repo_path(ctx.args.recipe))})


def run_stage(ctx: Ctx, cell: str, stage: str) -> int:
    cdir = ctx.cell_dir(cell)
    if stage == "table":
        res = results(ctx, cell)
        if res is None:
            print("  table: no results yet (the eval stage has not finished)")
            return 0
        text = (f"{DRY_BANNER}\n\n" if ctx.dry else "") + cell_table(ctx, cell, res)
        (cdir / "table.md").write_text(text)
        print(text)
        return 0
    if finished(ctx, cell, stage):
        print(f"  {stage}: done (outputs in {cdir}); skipped")
    else:
        print(f"  {stage}: running", flush=True)
        t0 = time.time()
        fn = {"plan": stage_plan, "train": stage_train, "export": stage_export}.get(stage)
        rc = fn(ctx, cell) if fn else stage_eval(ctx, cell, fresh=ctx.args.redo not in (None, "plan"))
        ctx.timings.append((cell, stage, time.time() - t0))
        print(f"  {stage}: finished in {time.time() - t0:.1f} s", flush=True)
        if rc:
            return rc
    if stage == "plan" and (cdir / "plan.json").is_file():
        rep, gib = json.loads((cdir / "plan.json").read_text())["report"], 1024 ** 3
        print(f"  plan: {rep['topology']}: {rep['total_bytes'] / gib:.2f} GiB per chip of {rep['capacity_bytes'] / gib:.0f}"
              f" GiB (global batch {rep['global_batch_size']}, bucket {rep['bucket']}): "
              f"{'fits' if rep['fits'] else 'DOES NOT FIT'} with {100 * rep.get('headroom', 0):.0f}% headroom")
        if not rep["fits"] and not ctx.args.no_plan_gate:
            print(f"  {cell}: stopped: the plan says the run does not fit (--no-plan-gate goes on anyway; "
                  "--redo plan after changing -t overrides)")
            return 1
    return 0


def run_cell(ctx: Ctx, cell: str) -> int:
    print(f"== {cell}: {ctx.title(cell)} -> {ctx.cell_dir(cell)}", flush=True)
    redo = ctx.args.redo
    for stage in (["plan"] if redo == "plan" else STAGES[STAGES.index(redo):4] if redo else ()):
        if stage in ctx.stages:
            forget(ctx, cell, stage)
    if {"plan", "train"} & set(ctx.stages):
        train_config(ctx, cell)
    if "eval" in ctx.stages:
        eval_config(ctx, cell)
    for stage in ctx.stages:
        rc = run_stage(ctx, cell, stage)
        if rc:
            return rc
    return 0


def dry_run_setup(ctx: Ctx) -> None:
    """Offline, on the CPU, and a persistent compilation cache: the cells of one backbone compile the same tiny
    programs (same shapes), so only the first compiles them."""
    if not (ctx.fixtures / "tokenizers").is_dir():
        raise _error(f"--fixtures {ctx.fixtures}: no dry-run fixtures there (tests/fixtures/reproduce in a checkout; "
                     "regenerate them with its make_fixtures.py)")
    for k, v in (("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"), ("JAX_PLATFORMS", "cpu")):
        os.environ.setdefault(k, v)
    import jax

    jax.config.update("jax_compilation_cache_dir", str(ctx.out / "_dry_run_jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    print(DRY_BANNER + "\n", flush=True)


def run_reproduce(args) -> int:
    """Exit codes: 0 done; 1 a plan says a cell does not fit (that cell and the rest stop); 130 a signal stopped
    training (checkpoint saved: rerun to resume); 2 an error (one line, from ``cli.run_guarded``)."""
    from proactive_jax.cli.logs import setup_logging

    ctx = Ctx(args)
    if args.list:
        for n in sorted(ctx.recipe["tables"]):
            print(f"Table {n}: " + ", ".join(ctx.recipe["tables"][n]))
        for cell, c in ctx.recipe["cells"].items():
            print(f"  {cell:28s} {c['config']}  (plan: {c['topology']})")
        return 0
    cells = ctx.cells()
    setup_logging()
    ctx.out.mkdir(parents=True, exist_ok=True)
    if ctx.dry:
        dry_run_setup(ctx)
    check_mode(ctx)
    t0, rc = time.time(), 0
    for cell in cells:
        rc = run_cell(ctx, cell)
        if rc:
            break
    for n, fn in ((1, table1), (2, table2)):
        if "table" in ctx.stages and any(c in ctx.recipe["tables"][n] for c in cells):
            text = (f"{DRY_BANNER}\n\n" if ctx.dry else "") + fn(ctx)
            (ctx.out / f"table{n}.md").write_text(text)
            print(text + f"wrote {ctx.out / f'table{n}.md'}\n")
    if ctx.timings:
        print("stage timings (this invocation): " + "; ".join(f"{c} {s} {t:.1f} s" for c, s, t in ctx.timings))
    print(f"reproduce: {len(cells)} cell(s) in {time.time() - t0:.1f} s, results under {ctx.out}"
          + ("  [DRY RUN: proves the plumbing, not the numbers]" if ctx.dry else ""))
    return rc
