"""Head sweeps: decode every example under each setting of each sweep, score quality and latency, write
``results.json``, a paper-style markdown table and quality-latency plots. Resumable.

Layout of an eval directory::

    records.jsonl   one line per (setting, example) decode, appended as it happens (resume skips these)
    results.json    per setting: aggregate metrics; per example: prediction, references, phi, word delays, M
    table.md        method | quality | AIL | RCO (| AL | LAAL for translation-like tasks)
    quality_latency.png   quality against AIL and against RCO, one curve per head family

Sweep strings extend head specs (:mod:`proactive_jax.method.heads`) with value lists and quantiles: ``"wait-k:k=1|3|5"``,
``"entropy:tau=0.2|0.3"``, ``"attention:tau=q0.9,layers=-1:"``. ``qX`` means: tau such that a fraction X
of the calibration pool would WRITE, the pool being the head's statistic at the states where it decides
along the batch head's trajectories on a calibration split, by default only those where V(n) is
sufficient by the self-label (``calibration_pool``; :mod:`proactive_jax.method.calibration`).
Rows are labelled with what the user wrote and what a quantile resolved to: ``entropy tau=q0.9 (0.985)``.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from proactive_jax.evaluation import metrics as M
from proactive_jax.evaluation.results import (EvalError, RecordStore, array_digest, params_digest, prepare_eval_dir, task_quality,
                      tokens_digest, write_outputs)
from proactive_jax.method.heads import parse_head


# ---------------------------------------------------------------------------------------------
# Sweeps
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Setting:
    """One head configuration of a sweep. ``quantile`` set: tau comes from calibration."""

    spec: str
    quantile: float | None = None
    written: tuple = ()  # the parameters as the user wrote them for this combination: (("tau", "q0.9"),)

    @property
    def family(self) -> str:
        return self.spec.split(":", 1)[0]

    def label(self, tau: float | None = None) -> str:
        """``entropy tau=q0.9 (0.985)``: the head, the parameters the user wrote, a quantile's value."""
        text = " ".join([self.family] + [f"{k}={v}" for k, v in self.written])
        return text + (f" ({tau:.3g})" if self.quantile is not None and tau is not None else "")


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
        written = tuple((key, val) for (key, _), val in zip(items, combo))
        written_text = name + (":" + ",".join(f"{k}={v}" for k, v in written) if written else "")
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
        except ValueError as e:  # name the setting as written (a quantile is parsed with a stand-in tau)
            msg = str(e).replace(spec, written_text) if quantile is not None else str(e)
            raise EvalError(f"sweep {sweep!r}: {msg}") from None
        out.append(Setting(spec, quantile, written))
    return out


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
    rec = {"kind": "decode", "setting": setting, "id": item_id, "prediction": text,
           "references": list(references), "tokens": toks, "phi": [int(x) for x in result.phi],
           "word_delays": [float(x) for x in wd], "word_starts": flags, "M": int(result.M),
           "finished": bool(result.finished)}
    if getattr(result, "seconds", None) is not None:  # computation-aware: seconds spent up to each write
        rec["elapsed"] = [float(x) for x in np.cumsum(result.seconds)[np.asarray(result.writes, bool)]]
    return rec


def score_setting(records: Sequence[dict], task: str, metric: str | None = None,
                  seconds_per_unit: float = 1.0) -> dict:
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
        rep = M.latency_report(phi, r["M"], r.get("word_starts"), ref_words or None)
        if "elapsed" in r:
            rep.update(M.ca_latency_report(phi, r["elapsed"], r["M"], r.get("word_starts"), ref_words or None,
                                           seconds_per_unit=seconds_per_unit))
        reports.append(rep)
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


# Longer than ~80 lines on purpose: validation, fingerprint, calibration, the decode loop over settings and
# the scoring pass, in the order they run; the parts are helpers (results, calibration) already.
def evaluate_heads(config, params, items: Sequence[EvalItem], sweeps: Sequence[str], out_dir: str | Path, *,
                   task: str, detokenize: Callable[[Sequence[int]], str], eos_ids: Sequence[int],
                   word_starts: np.ndarray | None = None, max_new_tokens: int = 32, batch_size: int = 32,
                   calibration: Sequence[EvalItem] | None = None, metric: str | None = None,
                   progress: bool = True, decode_fn: Callable | None = None, probe=None,
                   seconds_per_unit: float = 1.0, fresh: bool = False, info: dict | None = None,
                   calibration_pool: str = "sufficient", calibration_eps: float = 0.1) -> dict:
    """Decode ``items`` under every sweep setting, score, and write the eval directory. Returns results.

    ``probe``: the learned probe's parameters, for ``probe`` heads (:mod:`proactive_jax.method.probe`).
    A ``decode_fn`` whose results carry ``seconds`` (per decision, e.g. :func:`..method.session.session_decode`)
    adds the computation-aware latencies (``*_ca``, compute time in units of ``seconds_per_unit``).
    Resumes the records already in ``out_dir`` only if its fingerprint (weights, model config, the tokens
    of the examples, max_new_tokens, the probe, ...: :func:`~.results.prepare_eval_dir`) matches; otherwise an
    ``EvalError``, or with ``fresh`` a clean start. ``info`` is stored next to the fingerprint (not compared).
    ``calibration_pool`` / ``calibration_eps``: which calibration states ``tau=qX`` is a quantile over
    (:func:`..method.calibration.calibrate`)."""
    from proactive_jax.method.calibration import check_pool
    from proactive_jax.method.decode import stream_decode
    check_pool(calibration_pool, calibration_eps)
    if batch_size < 1 or max_new_tokens < 1:
        raise EvalError(f"batch_size={batch_size}, max_new_tokens={max_new_tokens}: expected both >= 1")
    fp_decode = "stream_decode" if decode_fn is None else getattr(decode_fn, "__qualname__", str(decode_fn))
    decode_fn = decode_fn or stream_decode
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    task_quality(task, metric)  # fail early on an unknown task/metric
    ids = [it.id for it in items]
    if len(set(ids)) != len(ids):
        raise EvalError("example ids are not unique")
    settings = [s for sw in sweeps for s in expand_sweep(sw)]
    fingerprint = {"params": params_digest(params), "model": dataclasses.asdict(config), "task": task,
                   "examples": tokens_digest((it.id, it.example) for it in items),
                   "calibration": tokens_digest((it.id, it.example) for it in calibration or ()),
                   "max_new_tokens": int(max_new_tokens), "eos_ids": sorted(int(e) for e in eos_ids),
                   "word_starts": None if word_starts is None else array_digest(word_starts),
                   "probe": None if probe is None else params_digest(probe)}
    prepare_eval_dir(out, fingerprint, fresh=fresh, info={**(info or {}), "heads": list(sweeps),
                                                          "batch_size": batch_size, "decode": fp_decode})
    store = RecordStore(out / "records.jsonl", task)
    t_decode = t_score = 0.0
    bar = _progress(len(settings) * len(items), progress)

    if probe is None and any(parse_head(s.spec).needs_probe for s in settings):
        raise EvalError("a probe head is in the sweeps but no probe was given (train one with "
                        "`proactive-jax probe train`, then pass probe=PATH)")

    def run_decode(spec, chunk):
        kw = {"probe": probe} if parse_head(spec).needs_probe else {}
        return decode_fn(config, params, [c.example for c in chunk], spec, max_new_tokens, eos_ids,
                         word_starts=word_starts, batch_size=batch_size, **kw)

    t0 = time.perf_counter()
    resolved = _resolve_quantiles(settings, store, calibration, run_decode, config, params, word_starts, probe,
                                  batch_size, calibration_pool, calibration_eps)
    t_decode += time.perf_counter() - t0

    for s, spec, _ in resolved:
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
    for s, spec, cal in resolved:
        recs = [r for r in store.records if r.get("kind") == "decode" and r["setting"] == spec]
        order = {i: k for k, i in enumerate(ids)}
        recs = sorted((r for r in recs if r["id"] in order), key=lambda r: order[r["id"]])
        agg = score_setting(recs, task, metric, seconds_per_unit)
        tau = cal["tau"] if cal else None
        results["settings"].append({"setting": spec, "family": s.family, "quantile": s.quantile,
                                    "label": s.label(tau), "tau": parse_head(spec).get("tau"),
                                    "calibration": cal, **agg, "examples": recs})
    t_score += time.perf_counter() - t0
    results["timing"] = {"decode_s": t_decode, "score_s": t_score, "device": device_name(),
                         "seconds_per_unit": seconds_per_unit}
    write_outputs(results, out, task, metric)
    return results


def _resolve_quantiles(settings, store, calibration, run_decode, config, params, word_starts, probe,
                       batch_size, pool="sufficient", eps=0.1) -> list[tuple]:
    """``(setting, concrete spec, calibration record or None)`` per setting. A ``tau=qX`` setting is
    calibrated on the pool along the batch head's trajectories over the calibration examples (decoded
    once, shared by every quantile setting); the record is stored (keyed by the pool too), so a resumed
    run reuses it."""
    from proactive_jax.method.calibration import calibrate

    prefixes = None
    out = []
    for s in settings:
        if s.quantile is None:
            out.append((s, s.spec, None))
            continue
        cal_key = f"{s.spec}@q{s.quantile}/pool=" + (pool if pool == "decided" else f"{pool}@eps={eps:g}")
        rec = store.find("calibration", cal_key)
        if rec is None:
            if not calibration:
                raise EvalError(f"setting {s.label()} uses a tau quantile but no calibration examples were given "
                                    "(set calibration_split)")
            if prefixes is None:
                prefixes = [r.tokens for r in run_decode("batch", list(calibration))]
            cal = calibrate(config, params, [c.example for c in calibration], prefixes, s.spec, s.quantile,
                            word_starts, probe=probe, batch_size=batch_size, pool=pool, eps=eps)
            rec = {"kind": "calibration", "setting": cal_key, "id": "-", **cal}
            store.append([rec])
        cal = {k: rec[k] for k in ("tau", "pool", "pool_size", "write_fraction", "reads_histogram") if k in rec}
        out.append((s, with_tau(s.spec, rec["tau"]), cal))
    return out


def device_name() -> str:
    """The device decodes ran on, e.g. ``cpu (x86_64, 2 cores)`` or ``gpu (NVIDIA H200)``."""
    import os
    import platform

    import jax

    d = jax.devices()[0]
    if d.platform == "cpu":
        return f"cpu ({platform.machine()}, {os.cpu_count()} cores)"
    return f"{d.platform} ({d.device_kind})"


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
