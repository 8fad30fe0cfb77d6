"""`proactive-jax demo`: the paper's findings in miniature, end to end, on a laptop CPU, offline.

1. data: the synthetic ``lookup`` (non-monotonic, like short QA) and ``word-map`` (monotonic, like MT)
   tasks and their word-level Hugging Face tokenizer (shipped in the package);
2. pretrain a tiny Qwen3-architecture model with the batch loss only (the stand-in for a pretrained
   instruct model), then fine-tune it two ways from that same start: ProactiveLLM (batch + MSLM + SPSD)
   and the ablation (batch loss only) -- with the real train step, data pipeline and checkpoints;
3. evaluate batch, wait-k, entropy, attention and alignatt heads with sweeps on held-out examples, and the
   learned probe (self-labels and oracle labels) on the ProactiveLLM model, with the real decoder and metrics
   (:func:`evaluate_runs`: records resume, so saved runs can be re-evaluated with more heads);
4. print the paper-style tables, check the acceptance targets, write ``results.json``, ``table.md``,
   quality-latency plots and READ/WRITE traces of a few examples under ``out_dir``.

Everything is driven by :class:`DemoConfig` (``configs/demo.yaml``); ``--quick`` applies its ``quick``
overrides (smaller, same stages).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import jax

from proactive_jax.demo.report import check_text_targets, paper_table
from proactive_jax.evaluation import sweep as E, results as R
from proactive_jax.method.heads import parse_head



@dataclasses.dataclass(frozen=True)
class DemoConfig:
    out_dir: str = "demo_out"
    seed: int = 0
    model_preset: str = "tiny"
    model: dict = dataclasses.field(default_factory=dict)  # ModelConfig field overrides
    tasks: tuple[str, ...] = ("lookup", "word-map")
    n_train: int = 4000  # per task
    n_test: int = 200  # per task
    n_calib: int = 64  # per task
    global_batch_size: int = 64
    # shape buckets (source group S, target group T) of the training batches: lookup fits the first, word-map the
    # second; each bucket is one compiled train step
    buckets: tuple[tuple[int, int], ...] = ((24, 8), (24, 24))
    pretrain_steps: int = 1500
    pretrain_lr: float = 3e-3
    finetune_steps: int = 600
    finetune_lr: float = 1e-3
    kl_lambda: float = 0.1
    kl_topk: int = 100
    alpha: float = 0.0
    trailing_reads: bool = True  # budget cell after the last token (see docs/decisions.md: "the end-of-turn token")
    ablation_mslm_only: bool = True  # also fine-tune with MSLM but without SPSD (batch + MSLM, no KL)
    probe: bool = True  # train the learned probe head (self-labels) and the oracle-label probe
    probe_examples: int = 600  # training examples per task for the probes
    probe_eps: float = 0.5  # self-label KL bound, chosen on a validation split (docs/decisions.md: "The probe's eps")
    probe_steps: int = 600
    heads: dict = dataclasses.field(default_factory=lambda: {
        "lookup": ["batch", "wait-k:k=1|3|6|10", "entropy:tau=0.05|0.1|0.2|0.3|q0.9",
                   "attention:tau=0.3|0.5|0.7|q0.9", "alignatt:f=1|2|4"],
        "word-map": ["batch", "wait-k:k=1|2|3|4", "entropy:tau=0.02|0.05|0.1|0.2|q0.9",
                     "attention:tau=0.3|0.5|0.7|q0.9", "alignatt:f=1|2|4"],
    })
    # evaluated on the proactive model; fixed taus evenly spaced in logit space (logit 0, -4, -8, -12; the
    # probe's p is nearly binary, so taus 0.2..0.8 are one decision) and the calibrated q0.9: <= 5 points
    probe_heads: tuple[str, ...] = ("probe:tau=0.5|0.018|3.35e-4|6.1e-6|q0.9",)
    max_new_tokens: int = 32
    eval_batch_size: int = 64
    show_examples: int = 2
    progress: bool = True
    speech: dict = dataclasses.field(default_factory=dict)  # the speech stage (demo_speech.SpeechDemoConfig keys)
    quick: dict = dataclasses.field(default_factory=lambda: {  # overrides applied by --quick
        # lookup is learned in the pretraining between steps ~400 and ~600 (its loss drops from the guessing plateau):
        # 1200 steps, and no MSLM-only ablation to pay for them
        "n_train": 2000, "n_test": 64, "n_calib": 32, "pretrain_steps": 1200, "finetune_steps": 150,
        "ablation_mslm_only": False, "probe_examples": 300, "probe_steps": 300,
        "heads": {"lookup": ["batch", "wait-k:k=1|3|8", "entropy:tau=0.1|0.3|q0.9", "attention:tau=0.5|q0.9",
                             "alignatt:f=2"],
                  "word-map": ["batch", "wait-k:k=1|2|3", "entropy:tau=0.05|0.2|q0.9", "attention:tau=0.5|q0.9",
                               "alignatt:f=2"]},
        "probe_heads": ["probe:tau=0.5|3.35e-4|q0.9"],  # logit 0, -8 and q0.9: as many points as entropy
        "speech": {"enabled": False},  # the speech stage needs its 1000 steps (~3.5 min): full demo only (see demo_speech)
    })
    smoke: dict = dataclasses.field(default_factory=lambda: {  # overrides applied by --smoke: every stage, tiny
        # one bucket, and the batch-only fine-tune identical in shape and schedule to the pretraining: programs
        # compiled once are reused from the compilation cache by the later stages
        # one task (lookup: the QA-like one) halves the decode programs; word-map runs in --quick and the full demo
        "tasks": ["lookup"], "n_train": 128, "n_test": 16, "n_calib": 16, "global_batch_size": 16, "buckets": [[24, 8]],
        "pretrain_steps": 2, "pretrain_lr": 1e-3, "finetune_steps": 2, "ablation_mslm_only": False,
        "probe_examples": 16, "probe_steps": 2,
        "heads": {"lookup": ["batch", "wait-k:k=2", "entropy:tau=0.2|q0.9"]},
        "probe_heads": ["probe:tau=0.5|q0.9"], "max_new_tokens": 8, "eval_batch_size": 16, "show_examples": 1,
        "speech": {"n_train": 8, "n_test": 4, "steps": 2, "batch_size": 4,
                   "heads": ["batch", "wait-k:k=2", "entropy:tau=0.3"]},
    })


def load_demo_config(path: str | None, overrides=(), quick: bool = False, smoke: bool = False) -> DemoConfig:
    """The demo's config: defaults (or ``path``), then the ``quick`` or ``smoke`` overrides, then ``overrides``."""
    from proactive_jax.config import load_config, to_dict
    from proactive_jax.errors import ConfigError

    if quick and smoke:
        raise ConfigError("--quick and --smoke: choose one")
    cfg = load_config(DemoConfig, path, overrides)
    preset = cfg.quick if quick else cfg.smoke if smoke else None
    if preset is not None:
        data = to_dict(cfg)
        data.update(dict(preset))
        cfg = load_config(DemoConfig, None, overrides, data=data)
    validate_demo_config(cfg)
    return cfg


def stage_names(cfg: DemoConfig, speech_on: bool) -> list[str]:
    """The demo's stages in the order they run, as numbered in its output (``[k/N]``)."""
    names = ["data", "pretrain", "proactive", "batch-ft"] + (["mslm-only"] if cfg.ablation_mslm_only else [])
    names += (["probes"] if cfg.probe else []) + ["evaluate", "report"]
    if speech_on:
        names.append("speech")  # run after the text stages, or (speech.parallel) its process's results collected
    return names


def validate_demo_config(cfg: DemoConfig) -> None:
    """Task names and head sweeps are checked before anything trains (ConfigError naming the key)."""
    from proactive_jax.data.synthetic import SYNTHETIC_TASKS
    from proactive_jax.errors import ConfigError

    for task in cfg.tasks:
        if task not in SYNTHETIC_TASKS:
            raise ConfigError(f"tasks: unknown synthetic task {task!r}; expected some of {sorted(SYNTHETIC_TASKS)}")
        if task not in cfg.heads:
            raise ConfigError(f"heads: no sweep list for task {task!r}")
        for sweep in cfg.heads[task]:
            try:
                E.expand_sweep(sweep)
            except E.EvalError as e:
                raise ConfigError(f"heads.{task}: {e}") from None
            if parse_head(E.expand_sweep(sweep)[0].spec).needs_probe:
                raise ConfigError(f"heads.{task}: probe heads go in probe_heads (they need a trained probe)")
    for sweep in cfg.probe_heads:
        try:
            specs = E.expand_sweep(sweep)
        except E.EvalError as e:
            raise ConfigError(f"probe_heads: {e}") from None
        if not parse_head(specs[0].spec).needs_probe:
            raise ConfigError(f"probe_heads: {sweep!r} is not a probe head")
    from proactive_jax.demo.speech import SpeechDemoConfig

    try:
        SpeechDemoConfig.from_dict(dict(cfg.speech))
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e) if str(e).startswith("speech") else f"speech: {e}") from None


def _say(msg: str) -> None:
    print(msg, flush=True)


def _run_config(cfg: DemoConfig, name: str, *, steps: int, lr: float, objective: dict):
    from proactive_jax.training.run_config import load_run_config

    out = Path(cfg.out_dir) / "runs" / name
    data = {
        "model": {"preset": cfg.model_preset, "config": dict(cfg.model)},
        "data": {"task": "synthetic",
                 "synthetic": {"tasks": list(cfg.tasks), "n_train": cfg.n_train, "n_valid": 32, "seed": cfg.seed},
                 "buckets": [list(b) for b in cfg.buckets], "global_batch_size": cfg.global_batch_size,
                 "seed": cfg.seed, "cache_dir": str(Path(cfg.out_dir) / "cache")},
        "objective": objective,
        "optim": {"lr": lr, "schedule": "cosine", "warmup_steps": max(1, steps // 20), "end_lr_ratio": 0.1,
                  "weight_decay": 0.01, "clip_norm": 1.0, "b2": 0.98},
        "mesh": {"data": 1, "fsdp": 1},
        "checkpoint": {"every": max(steps, 1), "keep": 1, "async_save": False},
        "steps": steps, "out_dir": str(out), "seed": cfg.seed, "log_every": 25, "eval_every": 0,
        "tensorboard": False, "progress": cfg.progress,
    }
    return load_run_config(None, data=data)


def _eval_items(cfg: DemoConfig, task: str, split: str, n: int, tok, parts):
    from proactive_jax.data import make_task, render_example

    return [E.EvalItem(t.id, render_example(tok, t, parts), list(t.references) or [t.target_text])
            for t in make_task(task, n, seed=cfg.seed, split=split)]


# ---------------------------------------------------------------------------------------------
# The demo
# ---------------------------------------------------------------------------------------------

def evaluate_runs(cfg: DemoConfig, model_cfg, params: dict, probes: dict, tok, parts,
                  eval_dir: str | Path | None = None) -> tuple[dict, float]:
    """Stage 4: every model of ``params`` (``proactive``, ``batch-ft``, ``mslm-only``) with the task's
    ``heads``, the proactive model also with ``probe_heads`` and each probe (``probes``: ``self`` /
    ``oracle``); ``(results[task][model], decode seconds)``. Records resume from ``eval_dir`` (default
    ``out_dir/eval``), so re-evaluating saved runs with more heads decodes only the new settings."""
    from proactive_jax.data import word_start_table
    from proactive_jax.data.render import eos_ids_for

    eval_dir = Path(cfg.out_dir) / "eval" if eval_dir is None else Path(eval_dir)
    eos = eos_ids_for(tok, model_cfg)
    ws = word_start_table(tok, model_cfg.vocab_size)
    detok = lambda t: tok.decode(list(t), skip_special_tokens=True).strip()  # noqa: E731
    results: dict[str, dict] = {}
    decode_s = 0.0
    for task in cfg.tasks:
        test = _eval_items(cfg, task, "test", cfg.n_test, tok, parts)
        calib = _eval_items(cfg, task, "valid", cfg.n_calib, tok, parts)
        results[task] = {}
        evals = [(model, p, _model_sweeps(cfg, task, model) + (list(cfg.probe_heads) if model == "proactive" and
                                                              "self" in probes else []), probes.get("self"))
                 for model, p in params.items()]
        if "oracle" in probes:
            evals.append(("oracle-probe", params["proactive"], list(cfg.probe_heads), probes["oracle"]))
        for model, p, sweeps, probe in evals:
            res = E.evaluate_heads(model_cfg, p, test, sweeps, eval_dir / model / task,
                                   task=task, detokenize=detok, eos_ids=eos, word_starts=ws,
                                   max_new_tokens=cfg.max_new_tokens, batch_size=cfg.eval_batch_size,
                                   calibration=calib, progress=cfg.progress, probe=probe)
            decode_s += res["timing"]["decode_s"]
            results[task][model] = res
    return results, decode_s


def _model_sweeps(cfg: DemoConfig, task: str, model: str) -> list[str]:
    """The task's sweeps for ``model``: all of them for the proactive model; the ablations (``batch-ft``,
    ``mslm-only``) get batch, entropy and attention, the heads their targets and table rows compare (wait-k's rows
    are shown once, for the proactive model; alignatt is compared on the proactive model only)."""
    sweeps = list(cfg.heads[task])
    if model == "proactive":
        return sweeps
    return [sw for sw in sweeps if E.expand_sweep(sw)[0].family in ABLATION_FAMILIES]


ABLATION_FAMILIES = ("batch", "entropy", "attention")


def train_probes(cfg: DemoConfig, run, tok, parts, timings: dict, tag: str = "") -> dict:
    """The learned probe on the proactive model (self-labels) and the same probe on oracle labels, trained
    on ``probe_examples`` training examples per task; saved next to the run's checkpoint."""
    from proactive_jax.data import make_task, render_example
    from proactive_jax.method.probe import save_probe
    from proactive_jax.training.probe_training import ProbeConfig, default_probe_path, fit_probe

    t0 = time.perf_counter()
    texts = [t for task in cfg.tasks for t in make_task(task, cfg.probe_examples, seed=cfg.seed + 1, split="train")]
    streams = [render_example(tok, t, parts) for t in texts]
    out = {}
    for labels in ("self", "oracle"):
        pc = ProbeConfig(checkpoint=str(run.out_dir), labels=labels, eps=cfg.probe_eps, steps=cfg.probe_steps,
                         seed=cfg.seed, task=",".join(cfg.tasks), trailing_reads=cfg.trailing_reads)
        probe, info = fit_probe(pc, run.model_config, run.params, texts, streams)
        save_probe(default_probe_path(run.out_dir, labels), probe, info)
        out[labels] = probe
        rep = info["report"]["held_out"]
        _say(f"{tag} probe ({labels} labels): {info['states']} states, {100 * info['positive_rate']:.0f}% "
             f"sufficient; held-out accuracy {100 * rep.get('accuracy', float('nan')):.1f}%")
    timings["probes"] = time.perf_counter() - t0
    return out


def run_demo(cfg: DemoConfig) -> dict:
    """All stages; the speech stage (full demo) in a second process beside the text stages unless
    ``speech.parallel`` is false (then after them, in this process)."""
    from proactive_jax.demo.speech import SpeechDemoConfig, start_speech_process, stop_speech_process

    speech_cfg = SpeechDemoConfig.from_dict(dict(cfg.speech))
    speech_on = speech_cfg.enabled
    job = None
    if speech_on and speech_cfg.parallel:
        job = start_speech_process(dict(cfg.speech), Path(cfg.out_dir) / "speech")
        _say(f"[speech] the speech stage runs in a second process beside the text stages (log: {job.log_path})")
    try:
        return _run_stages(cfg, speech_on, job)
    except BaseException:
        if job is not None:
            stop_speech_process(job)
        raise


# Longer than ~80 lines on purpose: the five demo stages in the order they print, each a short block.
def _run_stages(cfg: DemoConfig, speech_on: bool, speech_job) -> dict:
    from proactive_jax.data import load_tokenizer, template_parts, word_start_table
    from proactive_jax.demo.speech import finish_speech_process, run_speech_stage
    from proactive_jax.data.synthetic import ASSET_DIR
    from proactive_jax.method.decode import stream_decode
    from proactive_jax.method.trace import format_trace, interleave
    from proactive_jax.data.render import eos_ids_for
    from proactive_jax.training.loop import train

    t_start = time.perf_counter()
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    names = stage_names(cfg, speech_on)

    def tag(name: str) -> str:
        return f"[{names.index(name) + 1}/{len(names)}]"

    _say(f"{tag('data')} data: synthetic tasks {list(cfg.tasks)} with the word-level tokenizer ({ASSET_DIR.name})")
    tok = load_tokenizer()
    parts = template_parts(tok)

    def stage_train(label, name, steps, lr, objective, init=None):
        _say(f"{tag(name)} train: {label} ({steps} steps)")
        t0 = time.perf_counter()
        res = train(_run_config(cfg, name, steps=steps, lr=lr, objective=objective), init_params=init,
                    devices=jax.local_devices()[:1])  # the demo is a one-device job
        timings[name] = time.perf_counter() - t0
        if res.stopped == "signal":  # SIGTERM / Ctrl-C: the whole demo stops, not just this stage
            _say(f"      stopped by a signal at step {res.step} of {name}; the demo stops (its checkpoint is in "
                 f"{res.out_dir})")
            raise KeyboardInterrupt
        last = res.history[-1] if res.history else {}
        if last:
            _say(f"      step {res.step}: loss {last.get('loss', float('nan')):.4f} "
                 f"(batch {last.get('batch', float('nan')):.4f}, mslm {last.get('mslm', float('nan')):.4f}, "
                 f"kl {last.get('kl', float('nan')):.4f}) in {timings[name]:.0f}s")
        return res

    batch_only = {"schedule": "full", "w_batch": 1.0, "w_mslm": 0.0, "kl_lambda": 0.0, "kl_topk": 1}
    pre = stage_train("batch-mode pretraining (the stand-in for an instruct model)", "pretrain",
                      cfg.pretrain_steps, cfg.pretrain_lr, batch_only)
    model_cfg = pre.model_config
    start = pre.params
    proactive_obj = {"schedule": "multinomial", "w_batch": 1.0, "w_mslm": 1.0, "kl_lambda": cfg.kl_lambda,
                     "kl_topk": cfg.kl_topk, "alpha": cfg.alpha, "trailing_reads": cfg.trailing_reads}
    runs = {"proactive": stage_train("fine-tune ProactiveLLM (batch + MSLM + SPSD)", "proactive",
                                     cfg.finetune_steps, cfg.finetune_lr, proactive_obj, start),
            "batch-ft": stage_train("fine-tune ablation (batch loss only)", "batch-ft",
                                    cfg.finetune_steps, cfg.finetune_lr, batch_only, start)}
    if cfg.ablation_mslm_only:
        runs["mslm-only"] = stage_train("fine-tune ablation (MSLM without SPSD)", "mslm-only",
                                        cfg.finetune_steps, cfg.finetune_lr, {**proactive_obj, "kl_lambda": 0.0},
                                        start)

    probes = train_probes(cfg, runs["proactive"], tok, parts, timings, tag("probes")) if cfg.probe else {}

    fams = {h.split(':')[0] for t in cfg.heads.values() for h in t} | ({"probe"} if probes else set())
    _say(f"{tag('evaluate')} evaluate: heads {', '.join(sorted(fams))} on {cfg.n_test} held-out examples per task")
    t0 = time.perf_counter()
    results, decode_s = evaluate_runs(cfg, model_cfg, {m: r.params for m, r in runs.items()}, probes, tok, parts)
    timings["eval"] = time.perf_counter() - t0
    timings["eval_decode"] = decode_s
    eos = eos_ids_for(tok, model_cfg)
    ws = word_start_table(tok, model_cfg.vocab_size)
    detok = lambda t: tok.decode(list(t), skip_special_tokens=True).strip()  # noqa: E731

    _say(f"{tag('report')} report")
    tables = []
    for task in cfg.tasks:
        t = paper_table(task, results[task])
        tables.append(f"### {task}\n\n{t}")
        _say(f"\n{task}\n{t}")
        R.plot_quality_latency(list(results[task].values()), out / f"{task}_quality_latency.png", task=task,
                               labels=list(results[task]))
    targets = check_text_targets(results)
    for tgt in targets:
        _say(f"  [{'PASS' if tgt['pass'] else 'MISS'}] {tgt['target']}: "
             + json.dumps({k: v for k, v in tgt.items() if k not in ('target', 'pass')}, default=float))

    traces = []
    shown = lambda t: tok.decode(list(t), skip_special_tokens=False)  # noqa: E731 - the end-of-turn token visible
    for task in cfg.tasks:
        items = _eval_items(cfg, task, "test", cfg.show_examples, tok, parts)
        spec = next((s["setting"] for s in results[task]["proactive"]["settings"] if s["family"] == "entropy"),
                    "batch")
        res = stream_decode(model_cfg, runs["proactive"].params, [it.example for it in items], spec,
                            cfg.max_new_tokens, eos, word_starts=ws)
        for it, r in zip(items, res):
            text = format_trace(it.example, interleave(it.example, r, shown), shown)
            traces.append(f"## {task} / {spec} / {it.id}\nreference: {it.references[0]}\n{text}\n")
    trace_text = "\n".join(traces)
    _say("\nREAD/WRITE traces (proactive model):\n" + "\n".join(traces[:2]))

    speech = None
    if speech_on:
        _say(f"\n{tag('speech')} speech: " + ("the second process's results" if speech_job is not None else
                                             "the speech stage (after the text stages)"))
    if speech_job is not None:
        speech = finish_speech_process(speech_job, say=_say)
        timings["speech"] = speech["timings_s"]["total"]
        timings["speech_wait"] = speech["timings_s"]["waited"]  # after the text stages, waiting for the child
    elif speech_on:
        t0 = time.perf_counter()
        speech = run_speech_stage(dict(cfg.speech), out / "speech", say=_say)
        timings["speech"] = time.perf_counter() - t0
    if speech is not None:
        targets = targets + speech["targets"]
    timings["total"] = time.perf_counter() - t_start
    summary = {"config": dataclasses.asdict(cfg), "timings_s": timings, "targets": targets, "speech": speech,
               "tasks": {task: {model: [{k: v for k, v in s.items() if k != "examples"} for s in res["settings"]]
                                for model, res in results[task].items()} for task in cfg.tasks}}
    R.write_atomic(out / "results.json", json.dumps(summary, indent=1, default=float))
    R.write_atomic(out / "table.md", "\n".join(tables))
    R.write_atomic(out / "traces.txt", trace_text)
    _say(f"\nwrote {out}/results.json, table.md, traces.txt, "
         + ", ".join(f"{t}_quality_latency.png" for t in cfg.tasks)
         + f" in {timings['total']:.0f}s")
    return summary
