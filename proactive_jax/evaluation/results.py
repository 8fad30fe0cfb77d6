"""What an evaluation writes and reads: resumable records (``records.jsonl``), ``results.json``, the
paper-style markdown table and the quality-latency plots, and the quality metric of each task."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from proactive_jax.data.synthetic_study import STUDY_QUALITY
from proactive_jax.evaluation import metrics as M

log = logging.getLogger(__name__)


# task -> (metric in metrics.QUALITY_METRICS, headline key, column name, show AL/LAAL)
TASK_QUALITY = {
    "lookup": ("squad", "exact_match", "acc", False),
    "word-map": ("bleu", "bleu", "BLEU", True),
    "mt": ("bleu", "bleu", "BLEU", True),
    "squad": ("squad", "f1", "F1", False),
    "mctest": ("choice", "accuracy", "acc", False),
    "dialogsum": ("rouge", "rougeL", "ROUGE-L", False),
    "librispeech": ("wer", "wer", "WER", False),
    "spoken-squad": ("squad", "f1", "F1", False),
}


TASK_QUALITY.update(STUDY_QUALITY)  # ledger (EM), verb-final (BLEU), synonym-map (multiref)


FAMILY_ORDER = ("batch", "wait-k", "entropy", "attention", "probe")
RCO_GRID = np.linspace(0.0, 1.0, 101)


from proactive_jax.errors import EvalError  # noqa: E402,F401  (re-exported: results.EvalError)


def task_quality(task: str, metric: str | None = None):
    if metric is not None:
        if metric not in M.QUALITY_METRICS:
            raise EvalError(f"unknown metric {metric!r}; known: {sorted(M.QUALITY_METRICS)}")
        key = {"bleu": "bleu", "squad": "f1", "choice": "accuracy", "accuracy": "accuracy", "rouge": "rougeL",
               "wer": "wer", "wer-whisper": "wer", "multiref": "score"}[metric]
        return metric, key, key, metric == "bleu"
    base = "mt" if task.startswith(("mt", "iwslt")) else task
    if base not in TASK_QUALITY:
        raise EvalError(f"no default quality metric for task {task!r}; known tasks {sorted(TASK_QUALITY)} "
                        f"(or set metric to one of {sorted(M.QUALITY_METRICS)})")
    return TASK_QUALITY[base]


class RecordStore:
    """Append-only JSON lines. A torn last line (no newline) from an interrupted run is dropped."""

    def __init__(self, path: str | Path, task: str):
        self.path = Path(path)
        self.task = task
        self.records: list[dict] = []
        if self.path.exists():
            raw = self.path.read_bytes()
            keep = raw[:raw.rfind(b"\n") + 1] if not raw.endswith(b"\n") else raw
            if len(keep) != len(raw):
                with open(self.path, "r+b") as f:
                    f.truncate(len(keep))
            for i, line in enumerate(keep.decode("utf-8").splitlines()):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise EvalError(f"{self.path}:{i + 1}: not a JSON record ({e})") from None
                if rec.get("task") != task:
                    raise EvalError(f"{self.path}:{i + 1}: record of task {rec.get('task')!r}, but this "
                                    f"evaluation is task {task!r}; use another out_dir")
                self.records.append(rec)

    def done(self, setting: str) -> set:
        return {r["id"] for r in self.records if r.get("setting") == setting and r.get("kind") == "decode"}

    def find(self, kind: str, setting: str) -> dict | None:
        for r in self.records:
            if r.get("kind") == kind and r.get("setting") == setting:
                return r
        return None

    def append(self, recs: Iterable[dict]) -> None:
        recs = [{**r, "task": self.task} for r in recs]
        if not recs:
            return
        data = "".join(json.dumps(r, sort_keys=True) + "\n" for r in recs).encode("utf-8")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        self.records.extend(recs)


# ---------------------------------------------------------------------------------------------
# The fingerprint of an eval directory: what determines its records
# ---------------------------------------------------------------------------------------------

FINGERPRINT_FILE = "fingerprint.json"
EVAL_FILES = ("records.jsonl", "results.json", "table.md", "quality_latency.png", FINGERPRINT_FILE)
# compared keys -> what they mean (for the refusal message)
FINGERPRINT_KEYS = {"params": "the model's weights", "model": "the model config (dtype included)",
                    "examples": "the test examples' tokens (task, split, data, tokenizer, render settings)",
                    "calibration": "the calibration examples' tokens", "task": "the task",
                    "max_new_tokens": "max_new_tokens", "eos_ids": "the end-of-turn ids",
                    "word_starts": "the word-start table (tokenizer)", "decode": "the decode function"}


def tokens_digest(examples) -> str:
    """sha256 over (id, every token of every part) of ``(id, StreamExample)`` pairs."""
    import hashlib

    h = hashlib.sha256()
    for i, ex in examples:
        parts = (ex.prompt, *ex.units, ex.end, ex.header, ex.target)
        h.update(json.dumps([str(i), [list(map(int, part)) for part in parts]]).encode())
    return h.hexdigest()[:32]


def array_digest(a) -> str:
    import hashlib

    a = np.ascontiguousarray(np.asarray(a))
    return hashlib.sha256(str(a.dtype).encode() + str(a.shape).encode() + a.tobytes()).hexdigest()[:32]


def params_digest(params) -> str:
    """One digest of every leaf (the per-leaf digests of ``training.trees.tree_digests``, hashed)."""
    import hashlib

    from proactive_jax.training.trees import tree_digests

    return hashlib.sha256(json.dumps(tree_digests(params), sort_keys=True).encode()).hexdigest()[:32]


def prepare_eval_dir(out: Path, fingerprint: Mapping, *, fresh: bool = False, info: Mapping | None = None) -> None:
    """Resume only into an eval directory whose fingerprint matches; else refuse with one line (or, with
    ``fresh``, remove this package's files there and start clean). Writes ``fingerprint.json``."""
    path = out / FINGERPRINT_FILE
    old = None
    if path.exists():
        try:
            old = json.loads(path.read_text()).get("compared")
        except (json.JSONDecodeError, AttributeError):
            old = {"unreadable": True}
    has_records = (out / "records.jsonl").exists() and (out / "records.jsonl").stat().st_size > 0
    fp = json.loads(json.dumps(dict(fingerprint), sort_keys=True))
    stale = (old is not None and old != fp) or (old is None and has_records)
    if stale and not fresh:
        if old is None:
            why = "records.jsonl has no fingerprint.json (written by an older version or another tool)"
        else:
            diff = sorted(k for k in set(old) | set(fp) if old.get(k) != fp.get(k))
            why = "it differs in " + ", ".join(FINGERPRINT_KEYS.get(k, k) for k in diff)
        raise EvalError(f"{out}: holds the records of another evaluation ({why}); refusing to mix them. Use "
                        "another out_dir, or fresh=true to delete them and start clean")
    if stale:
        removed = [n for n in EVAL_FILES if (out / n).exists()]
        for n in removed:
            (out / n).unlink()
        log.warning("%s: fresh=true: removed %s of an earlier evaluation", out, removed)
    write_atomic(path, json.dumps({"compared": fp, "info": dict(info or {})}, indent=1, sort_keys=True,
                                  default=str) + "\n")


def write_atomic(path: str | Path, data: str | bytes) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_outputs(results: dict, out: Path, task: str, metric: str | None = None) -> None:
    write_atomic(out / "results.json", json.dumps(results, indent=1, sort_keys=True))
    write_atomic(out / "table.md", markdown_table(results, task, metric))
    plot_quality_latency([results], out / "quality_latency.png", task=task, metric=metric)


def setting_label(s: Mapping) -> str:
    """What a results row is called: the label written at evaluation (``entropy tau=q0.9 (0.985)``), or
    the concrete spec for results files written before labels existed."""
    return s.get("label") or s["setting"]


def curve_area(points: Sequence[tuple[float, float]], batch_quality: float, grid=RCO_GRID) -> float:
    """One number for a quality-latency curve: the mean, over RCO budgets r on a common grid in [0, 1],
    of the best quality among the curve's points with RCO <= r, the batch point (RCO 1, ``batch_quality``)
    closing the curve at r = 1 (a budget no point meets scores 0). Higher is better; batch alone scores
    ``batch_quality / len(grid)``, a head matching batch quality at RCO 0 scores ``batch_quality``."""
    pts = [(float(r), float(q)) for r, q in points if np.isfinite(r) and np.isfinite(q)] + [(1.0, float(batch_quality))]
    rco = np.array([p[0] for p in pts])
    q = np.array([p[1] for p in pts])
    best = [np.max(q[rco <= r + 1e-9]) if np.any(rco <= r + 1e-9) else 0.0 for r in grid]
    return float(np.mean(best))


def family_areas(results: Mapping) -> dict[str, float]:
    """:func:`curve_area` of every head family of one results dict (the batch setting closes each)."""
    batch = [s["headline"] for s in results["settings"] if s["family"] == "batch"]
    if not batch:
        return {}
    fams: dict[str, list] = {}
    for s in results["settings"]:
        fams.setdefault(s["family"], []).append((s["latency"].get("rco", np.nan), s["headline"]))
    return {f: curve_area(pts, batch[0]) for f, pts in fams.items()}


CHANCE_MARGIN = 5.0  # quality points above guessing that count as learned


def chance_warning(results: Mapping, task: str, margin: float = CHANCE_MARGIN) -> str | None:
    """A warning line when the batch head (the model reading everything) scores within ``margin`` points of what
    guessing gets on this task: the model has not learned it, and no head comparison means anything."""
    from proactive_jax.data.synthetic import chance_quality

    chance = chance_quality(task)
    batch = [s["headline"] for s in results.get("settings", ()) if s.get("family") == "batch"]
    if chance is None or not batch or max(batch) > chance + margin:
        return None
    return (f"WARNING: quality at chance level (batch {max(batch):.1f} vs {chance:.1f} by guessing): the model has not "
            "learned this task; no comparison of heads on it means anything")


def markdown_table(results: Mapping, task: str, metric: str | None = None) -> str:
    _, _, qname, show_al = task_quality(task, metric)
    cols = ["method", qname, "AIL", "RCO"] + (["AL", "LAAL"] if show_al else [])
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join(["---"] * len(cols)) + "|"]
    for s in results["settings"]:
        lat = s["latency"]
        row = [setting_label(s), f"{s['headline']:.2f}", f"{lat.get('ail', float('nan')):.2f}",
               f"{lat.get('rco', float('nan')):.2f}"]
        if show_al:
            row += [f"{lat.get('al_word', lat.get('al_token', float('nan'))):.2f}",
                    f"{lat.get('laal_word', lat.get('laal_token', float('nan'))):.2f}"]
        lines.append("| " + " | ".join(row) + " |")
    warning = chance_warning(results, task)
    if warning:
        lines += ["", warning]
    areas = family_areas(results)
    if areas:
        lines += ["", f"curve area ({qname} averaged over RCO budgets 0..1; batch closes every curve)", "",
                  "| head | area |", "|---|---|"]
        lines += [f"| {f} | {a:.2f} |" for f, a in areas.items()]
    return "\n".join(lines) + "\n"


# one colour and one marker per series: colours from tab10 then tab20's light shades, markers cycling on a different
# period, so every (colour, marker) pair up to 60 series is distinct
_COLOURS = [f"C{i}" for i in range(10)] + ["#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94"]
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
AXIS_LABELS = {"ail": "AIL: average ideal lag (source units behind the ideal policy; lower is better)",
               "rco": "RCO: read-context ratio (fraction of the source read; lower is better)"}


def series_style(k: int) -> dict:
    """Colour and marker of the k-th series (distinct pairs for k < 60)."""
    return {"color": _COLOURS[k % len(_COLOURS)], "marker": _MARKERS[(k // len(_COLOURS) + k) % len(_MARKERS)]}


def plot_quality_latency(results_list: Sequence[Mapping], path: str | Path, *, task: str,
                         metric: str | None = None, labels: Sequence[str] | None = None) -> None:
    """Quality vs AIL and vs RCO; one series per head family (and per results file when overlaid), each with its own
    colour and marker, the legend beside the axes; calibrated thresholds are named in the legend, not on the plot."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, _, qname, _ = task_quality(task, metric)
    lower_better = qname == "wer"
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.6))
    handles, names, k = [], [], 0
    for n, res in enumerate(results_list):
        prefix = (labels[n] + " ") if labels else ""
        fams: dict[str, list] = {}
        for s in res["settings"]:
            fams.setdefault(s["family"], []).append(s)
        for fam in sorted(fams, key=lambda f: FAMILY_ORDER.index(f) if f in FAMILY_ORDER else 99):
            pts = sorted(fams[fam], key=lambda s: s["latency"].get("ail", 0.0))
            style = series_style(k)
            k += 1
            for ax, key in zip(axes, ("ail", "rco")):
                xs = [s["latency"].get(key, np.nan) for s in pts]
                line, = ax.plot(xs, [s["headline"] for s in pts], linewidth=1.3, markersize=6, **style)
            calibrated = [setting_label(s)[len(fam):].strip() for s in pts if s.get("quantile") is not None]
            handles.append(line)
            names.append(prefix + fam + (f" ({', '.join(calibrated)})" if calibrated else ""))
    for ax, key in zip(axes, ("ail", "rco")):
        ax.set_xlabel(AXIS_LABELS[key], fontsize=8)
        ax.set_ylabel(f"{qname} ({'lower' if lower_better else 'higher'} is better)", fontsize=9)
        ax.grid(alpha=0.3)
    fig.legend(handles, names, loc="center left", bbox_to_anchor=(0.79, 0.5), fontsize=7, frameon=False)
    fig.suptitle(f"{task}: quality vs latency")
    fig.tight_layout(rect=(0, 0, 0.78, 1))
    tmp = Path(path).with_name(f".{Path(path).name}.tmp{os.getpid()}.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def load_results(path: str | Path, task: str | None = None) -> dict:
    p = Path(path)
    if p.is_dir():
        p = p / "results.json"
    try:
        res = json.loads(p.read_text())
    except FileNotFoundError:
        raise EvalError(f"{p}: results file not found") from None
    except json.JSONDecodeError as e:
        raise EvalError(f"{p}: not a results file ({e})") from None
    if "settings" not in res or "task" not in res:
        raise EvalError(f"{p}: not a proactive_jax results file (no 'task'/'settings')")
    if task is not None and res["task"] != task:
        raise EvalError(f"{p}: results of task {res['task']!r}, expected task {task!r}")
    return res


