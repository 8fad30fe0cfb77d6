"""Evaluation: decode with decision heads over threshold sweeps, score quality and latency, write
``results.json``, a paper-style markdown table and quality-latency plots. Resumable.

Layout of an eval directory::

    records.jsonl   one line per (setting, example) decode, appended as it happens (resume skips these)
    results.json    per setting: aggregate metrics; per example: prediction, references, phi, word delays, M
    table.md        method | quality | AIL | RCO (| AL | LAAL for translation-like tasks)
    quality_latency.png   quality against AIL and against RCO, one curve per head family

Sweep strings extend head specs (:mod:`proactive_jax.method.heads`) with value lists and quantiles: ``"wait-k:k=1|3|5"``,
``"entropy:tau=0.2|0.3"``, ``"attention:tau=q0.9,layers=-1:"``. ``qX`` means: tau is the X-quantile of
the head's statistic on a calibration split, observed while decoding with the most permissive tau
(the head writes whenever the statistic is allowed to decide; ours, see README).
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from . import metrics as M
from .results import EvalError, RecordStore, markdown_table, task_quality, write_outputs
from ..data.loaders import DatasetSpec
from ..data.render import RenderConfig
from ..method.heads import parse_head
from .audio_eval import AUDIO_EVAL_TASKS


# ---------------------------------------------------------------------------------------------
# Sweeps
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Setting:
    """One head configuration of a sweep. ``quantile`` set: tau comes from calibration."""

    spec: str
    quantile: float | None = None

    @property
    def family(self) -> str:
        return self.spec.split(":", 1)[0]


def expand_sweep(sweep: str) -> list[Setting]:
    """``"entropy:tau=0.2|0.3,decide_at=word"`` -> one Setting per combination (validated now)."""
    name, _, rest = sweep.partition(":")
    items: list[tuple[str, list[str]]] = []
    if rest:
        # "layers" values may contain commas; split params on "," only before a key=...
        parts: list[str] = []
        for piece in rest.split(","):
            if "=" in piece or not parts:
                parts.append(piece)
            else:
                parts[-1] += "," + piece
        for p in parts:
            key, eq, val = p.partition("=")
            if not eq:
                raise EvalError(f"sweep {sweep!r}: parameter {p!r} is not KEY=VALUE")
            items.append((key.strip(), [v.strip() for v in val.split("|")]))
    out = []
    for combo in itertools.product(*[vals for _, vals in items]) if items else [()]:
        quantile = None
        params = []
        for (key, _), val in zip(items, combo):
            if key == "tau" and val.lower().startswith("q"):
                try:
                    quantile = float(val[1:])
                except ValueError:
                    raise EvalError(f"sweep {sweep!r}: tau quantile {val!r} is not qFLOAT") from None
                if not 0.0 <= quantile <= 1.0:
                    raise EvalError(f"sweep {sweep!r}: tau quantile {val!r} outside q0..q1")
                val = "1.0"
            params.append(f"{key}={val}")
        spec = name + (":" + ",".join(params) if params else "")
        try:
            parse_head(spec)
        except ValueError as e:
            raise EvalError(f"sweep {sweep!r}: {e}") from None
        out.append(Setting(spec, quantile))
    return out


def permissive_spec(spec: str) -> str:
    """The spec with tau set so that the statistic always allows a WRITE (for calibration)."""
    head = parse_head(spec)
    write_high = head.get("stat", "entropy") == "max"
    tau = "0.0" if write_high else "1.0"
    return str(head.replace(tau=float(tau)))


def with_tau(spec: str, tau: float) -> str:
    return str(parse_head(spec).replace(tau=float(tau)))


# ---------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------

def _eos_free(tokens: Sequence[int], eos_ids: Sequence[int]) -> list[int]:
    toks = list(tokens)
    return toks[:-1] if toks and toks[-1] in set(eos_ids) else toks


def example_record(setting: str, item_id: str, result, text: str, references: Sequence[str],
                   word_starts: np.ndarray | None, eos_ids: Sequence[int]) -> dict:
    toks = [int(t) for t in result.tokens]
    body = _eos_free(toks, eos_ids)
    flags = None if word_starts is None else [bool(word_starts[t]) for t in body]
    if flags:
        flags[0] = True
    wd = M.word_delays(result.phi[:len(body)], flags, result.M) if (flags and body) else np.zeros(0)
    return {"kind": "decode", "setting": setting, "id": item_id, "prediction": text,
            "references": list(references), "tokens": toks, "phi": [int(x) for x in result.phi],
            "word_delays": [float(x) for x in wd], "word_starts": flags, "M": int(result.M),
            "finished": bool(result.finished)}


def score_setting(records: Sequence[dict], task: str, metric: str | None = None) -> dict:
    metric_name, key, _, _ = task_quality(task, metric)
    preds = [r["prediction"] for r in records]
    refs = [r["references"] for r in records]
    if metric_name == "bleu":
        q = M.bleu(preds, refs)
    elif metric_name in ("choice", "accuracy", "rouge", "wer"):
        q = M.quality(metric_name, preds, [r[0] if r else "" for r in refs])
    else:
        q = M.quality(metric_name, preds, refs)
    reports = []
    for r in records:
        phi = np.asarray(r["phi"])
        if phi.size == 0:
            continue
        ref_words = len(r["references"][0].split()) if r["references"] else None
        reports.append(M.latency_report(phi, r["M"], r.get("word_starts"), ref_words or None))
    lat = M.aggregate_latency(reports) if reports else {}
    return {"quality": q, "quality_key": key, "headline": float(q[key]), "latency": lat, "n": len(records)}


# ---------------------------------------------------------------------------------------------
# The evaluation loop
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class EvalItem:
    id: str
    example: Any  # StreamExample
    references: list


def evaluate_heads(config, params, items: Sequence[EvalItem], sweeps: Sequence[str], out_dir: str | Path, *,
                   task: str, detokenize: Callable[[Sequence[int]], str], eos_ids: Sequence[int],
                   word_starts: np.ndarray | None = None, max_new_tokens: int = 32, batch_size: int = 32,
                   calibration: Sequence[EvalItem] | None = None, metric: str | None = None,
                   progress: bool = True, decode_fn: Callable | None = None) -> dict:
    """Decode ``items`` under every sweep setting, score, and write the eval directory. Returns results."""
    from ..method.decode import calibrate_tau, stream_decode
    decode_fn = decode_fn or stream_decode
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    task_quality(task, metric)  # fail early on an unknown task/metric
    ids = [it.id for it in items]
    if len(set(ids)) != len(ids):
        raise EvalError("example ids are not unique")
    settings = [s for sw in sweeps for s in expand_sweep(sw)]
    store = RecordStore(out / "records.jsonl", task)
    t_decode = t_score = 0.0
    bar = _progress(len(settings) * len(items), progress)

    def run_decode(spec, chunk):
        return decode_fn(config, params, [c.example for c in chunk], spec, max_new_tokens, eos_ids,
                         word_starts=word_starts, batch_size=batch_size)

    resolved = []
    for s in settings:
        spec = s.spec
        if s.quantile is not None:
            cal_key = f"{s.spec}@q{s.quantile}"
            rec = store.find("calibration", cal_key)
            if rec is None:
                if not calibration:
                    raise EvalError(f"setting {s.spec} uses a tau quantile but no calibration examples were given")
                t0 = time.perf_counter()
                res = run_decode(permissive_spec(s.spec), list(calibration))
                t_decode += time.perf_counter() - t0
                tau = calibrate_tau(res, s.quantile)
                rec = {"kind": "calibration", "setting": cal_key, "tau": tau, "id": "-"}
                store.append([rec])
            spec = with_tau(s.spec, rec["tau"])
        resolved.append((s, spec))

    for s, spec in resolved:
        done = store.done(spec)
        todo = [it for it in items if it.id not in done]
        bar.update(len(items) - len(todo))
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            t0 = time.perf_counter()
            res = run_decode(spec, chunk)
            t_decode += time.perf_counter() - t0
            t0 = time.perf_counter()
            recs = [example_record(spec, it.id, r, detokenize(_eos_free(r.tokens, eos_ids)), it.references,
                                   word_starts, eos_ids) for it, r in zip(chunk, res)]
            store.append(recs)
            t_score += time.perf_counter() - t0
            bar.update(len(chunk))
            bar.set_postfix_str(spec)
    bar.close()

    t0 = time.perf_counter()
    results = {"task": task, "settings": []}
    for s, spec in resolved:
        recs = [r for r in store.records if r.get("kind") == "decode" and r["setting"] == spec]
        order = {i: k for k, i in enumerate(ids)}
        recs = sorted((r for r in recs if r["id"] in order), key=lambda r: order[r["id"]])
        agg = score_setting(recs, task, metric)
        results["settings"].append({"setting": spec, "family": s.family, "quantile": s.quantile, **agg,
                                    "examples": recs})
    t_score += time.perf_counter() - t0
    results["timing"] = {"decode_s": t_decode, "score_s": t_score}
    write_outputs(results, out, task, metric)
    return results


class _NoBar:
    def update(self, n=1):
        pass

    def set_postfix_str(self, s):
        pass

    def close(self):
        pass


def _progress(total: int, enabled: bool):
    if not enabled:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return _NoBar()
    return tqdm(total=total, desc="eval", unit="ex", dynamic_ncols=True)


# ---------------------------------------------------------------------------------------------
# `proactive-jax eval CONFIG [key=value ...]`
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """An evaluation run (YAML + dotted overrides, see configs/eval-*.yaml)."""

    checkpoint: str = ""  # HF directory or training run directory
    step: int | None = None  # for a training run (default: latest)
    tokenizer: str | None = None  # default: the checkpoint's / the run's tokenizer
    task: str = "lookup"  # lookup | word-map (synthetic) or a data.TASKS adapter (iwslt2017, squad, ...)
    dataset: DatasetSpec | None = None  # real tasks: where the rows come from
    adapter_options: dict = dataclasses.field(default_factory=dict)
    split: str = "test"
    calibration_split: str | None = "valid"
    num_examples: int = 200
    calibration_examples: int = 50
    heads: tuple[str, ...] = ("batch", "wait-k:k=1|3|5", "entropy:tau=q0.9", "attention:tau=q0.9")
    metric: str | None = None
    render: RenderConfig = RenderConfig()
    max_new_tokens: int = 64
    batch_size: int = 16
    dtype: str = "float32"
    seed: int = 0
    out_dir: str = "eval_out"
    progress: bool = True


def load_eval_config(path: str | None, overrides=()) -> EvalConfig:
    from ..training.run_config import load_config

    return load_config(EvalConfig, path, overrides)


def text_examples(cfg, split: str, n: int):
    """TextExamples of the eval task: synthetic tasks are generated, real tasks loaded (offline-capable)."""
    from ..data import make_task
    from ..data.loaders import load_task
    from ..data.synthetic import SYNTHETIC_TASKS

    if cfg.task in SYNTHETIC_TASKS:
        return make_task(cfg.task, n, seed=cfg.seed, split=split)
    if cfg.dataset is None:
        raise EvalError(f"task {cfg.task!r} needs a dataset (dataset.source/path/...)")
    spec = dataclasses.replace(cfg.dataset, split=split)
    exs, _ = load_task(spec, cfg.task, on_bad_example="skip", **dict(cfg.adapter_options))
    return exs[:n]


def run_eval(cfg) -> dict:
    from transformers import AutoTokenizer

    from ..data import word_start_table
    from ..data.render import render_with_config
    from ..models.loading import eos_ids_for, load_model

    if not cfg.checkpoint:
        raise EvalError("checkpoint is not set (an HF directory or a training run directory)")
    metric_task = cfg.task
    task_quality(metric_task, cfg.metric)
    for sw in cfg.heads:
        expand_sweep(sw)  # head errors before loading anything
    model_cfg, params, tok_dir = load_model(cfg.checkpoint, cfg.step, dtype=cfg.dtype)
    tok_dir = cfg.tokenizer or tok_dir
    if tok_dir is None:
        raise EvalError(f"no tokenizer found for {cfg.checkpoint}; set tokenizer=DIR")
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    if cfg.task in AUDIO_EVAL_TASKS:  # speech tasks: audio examples, same sweeps and scoring
        from .audio_eval import run_audio_eval

        return run_audio_eval(cfg, model_cfg, params, tok)
    parts = cfg.render.parts(tok)

    def items(split, n):
        out = []
        for t in text_examples(cfg, split, n):
            out.append(EvalItem(t.id, render_with_config(tok, t, cfg.render, parts),
                                list(t.references) or [t.target_text]))
        return out

    test = items(cfg.split, cfg.num_examples)
    calib = items(cfg.calibration_split, cfg.calibration_examples) if cfg.calibration_split else None
    return evaluate_heads(model_cfg, params, test, list(cfg.heads), cfg.out_dir, task=metric_task,
                          detokenize=lambda t: tok.decode(list(t), skip_special_tokens=True).strip(),
                          eos_ids=eos_ids_for(tok, model_cfg), word_starts=word_start_table(tok, model_cfg.vocab_size),
                          max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, calibration=calib,
                          metric=cfg.metric, progress=cfg.progress)


def add_eval_args(p) -> None:
    p.add_argument("config", nargs="?", default=None, help="eval config YAML (optional: all keys may be overrides)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="overrides, e.g. checkpoint=runs/x task=lookup heads=[batch,'wait-k:k=1|3']")


def run_eval_cli(args) -> int:
    import sys

    from ..training.run_config import RunConfigError

    overrides = list(args.overrides)
    path = args.config
    if path is not None and "=" in path and not Path(path).exists():
        overrides.insert(0, path)
        path = None
    try:
        cfg = load_eval_config(path, overrides)
        res = run_eval(cfg)
    except (EvalError, RunConfigError, FileNotFoundError, ValueError) as e:
        print(f"proactive-jax eval: {e}", file=sys.stderr)
        return 2
    print(markdown_table(res, cfg.task, cfg.metric))
    print(f"wrote {cfg.out_dir}/results.json, table.md, quality_latency.png "
          f"(decode {res['timing']['decode_s']:.1f}s, scoring {res['timing']['score_s']:.1f}s)")
    return 0

