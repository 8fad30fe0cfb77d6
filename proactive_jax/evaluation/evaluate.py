"""``proactive-jax eval``'s driver: the eval config, the examples of its task (text or speech) and the run
over them (:func:`run_eval`); the sweeps themselves are :mod:`proactive_jax.evaluation.sweep`."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from proactive_jax.data.loaders import DatasetSpec
from proactive_jax.data.render import RenderConfig
from proactive_jax.evaluation.audio_eval import AUDIO_EVAL_TASKS
from proactive_jax.evaluation.results import EvalError, task_quality
from proactive_jax.evaluation.sweep import EvalItem, evaluate_heads, expand_sweep
from proactive_jax.method.heads import parse_head


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
    adapter_options: dict = dataclasses.field(default_factory=dict)  # options of the task adapter (data/tasks.py)
    split: str = "test"  # the split scored (synthetic: train | valid | test)
    calibration_split: str | None = "valid"  # held-out split for tau=qX quantile thresholds (null: none)
    num_examples: int = 200  # examples scored (the first N of split)
    calibration_examples: int = 50  # examples of calibration_split that tau=qX is fitted on
    calibration_pool: str = "sufficient"  # tau=qX over: "sufficient" (V(n) suffices, self-label) | "decided" (all)
    calibration_eps: float = 0.1  # the self-label KL bound of the "sufficient" pool
    # decision-head sweeps: a spec with value lists and quantiles, e.g. "entropy:tau=0.1|0.2|q0.9" (README: head specs)
    heads: tuple[str, ...] = ("batch", "wait-k:k=1|3|5", "entropy:tau=q0.9", "attention:tau=q0.9")
    metric: str | None = None  # quality metric (bleu, squad, accuracy, rouge, wer, wer-whisper); null: the task's
    render: RenderConfig = RenderConfig()  # how examples become tokens
    max_new_tokens: int = 64  # the most tokens written per example
    batch_size: int = 16  # examples decoded together
    dtype: str = "float32"  # compute dtype of the model: float32 | bfloat16 | float16
    seed: int = 0  # seed of the synthetic tasks' examples
    out_dir: str = "eval_out"  # results.json, table.md, quality_latency.png, records.jsonl (resumable)
    progress: bool = True  # a progress bar on stderr
    probe: str | None = None  # probe safetensors for probe heads (default: <checkpoint>/probe.safetensors)
    computation_aware: bool = False  # decode through live sessions, timing every decision (*_ca latencies)
    seconds_per_unit: float = 1.0  # the source's pace, to express compute time in units (ours; see metrics)
    fresh: bool = False  # out_dir holds another evaluation's records: delete them and start clean
    # quantile thresholds fitted on the scored split itself (a leak: only for diagnosis, never for a table)
    allow_calibration_on_eval_split: bool = False

    def __post_init__(self):
        for key in ("num_examples", "max_new_tokens", "batch_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}={getattr(self, key)}: expected >= 1")
        if self.calibration_examples < 0:
            raise ValueError(f"calibration_examples={self.calibration_examples}: expected >= 0")
        if not self.seconds_per_unit > 0:
            raise ValueError(f"seconds_per_unit={self.seconds_per_unit}: expected > 0 (the source's seconds per unit)")
        if not self.calibration_eps >= 0:
            raise ValueError(f"calibration_eps={self.calibration_eps}: expected a non-negative KL bound")
        if (self.calibration_split is not None and self.calibration_split == self.split
                and not self.allow_calibration_on_eval_split):
            raise ValueError(f"calibration_split={self.calibration_split!r} is the evaluated split: quantile thresholds "
                             "would be fitted on the examples they are scored on; calibrate on held-out data (e.g. "
                             "calibration_split=valid) or set allow_calibration_on_eval_split=true for a diagnosis")


def load_eval_config(path: str | None, overrides=()) -> EvalConfig:
    from proactive_jax.config import load_config

    return load_config(EvalConfig, path, overrides)


def text_examples(cfg, split: str, n: int):
    """TextExamples of the eval task (see :func:`proactive_jax.data.loaders.task_examples`)."""
    from proactive_jax.data.loaders import task_examples

    if cfg.task not in _synthetic_tasks() and cfg.dataset is None:
        raise EvalError(f"task {cfg.task!r} needs a dataset (dataset.source/path/...)")
    return task_examples(cfg.task, split, n, seed=cfg.seed, dataset=cfg.dataset,
                         adapter_options=dict(cfg.adapter_options))


def _synthetic_tasks():
    from proactive_jax.data.synthetic import SYNTHETIC_TASKS

    return SYNTHETIC_TASKS


def run_eval(cfg) -> dict:
    from proactive_jax.data import word_start_table
    from proactive_jax.data.render import render_with_config
    from proactive_jax.data.render import eos_ids_for
    from proactive_jax.training.loading import load_model, load_tokenizer
    from proactive_jax.config import to_dict

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
    if not Path(tok_dir).is_dir():  # a Hub id would be fetched over the network
        raise EvalError(f"tokenizer={tok_dir}: not a local directory (expected the files of a tokenizer, e.g. "
                        "tokenizer.json; download a Hub tokenizer with save_pretrained where there is network)")
    tok = load_tokenizer(tok_dir)
    if cfg.task in AUDIO_EVAL_TASKS:  # speech tasks: audio examples, same sweeps and scoring
        from proactive_jax.evaluation.audio_eval import run_audio_eval

        return run_audio_eval(cfg, model_cfg, params, tok)
    parts = cfg.render.parts(tok)

    def items(split, n):
        out = []
        for t in text_examples(cfg, split, n):
            out.append(EvalItem(t.id, render_with_config(tok, t, cfg.render, parts),
                                list(t.references) or [t.target_text]))
        return out

    probe = None
    if any(parse_head(st.spec).needs_probe for sw in cfg.heads for st in expand_sweep(sw)):
        from proactive_jax.method.probe import load_probe

        probe, _ = load_probe(cfg.probe or Path(cfg.checkpoint) / "probe.safetensors")
    test = items(cfg.split, cfg.num_examples)
    calib = items(cfg.calibration_split, cfg.calibration_examples) if cfg.calibration_split else None
    return evaluate_heads(model_cfg, params, test, list(cfg.heads), cfg.out_dir, task=metric_task,
                          detokenize=lambda t: tok.decode(list(t), skip_special_tokens=True).strip(),
                          eos_ids=eos_ids_for(tok, model_cfg), word_starts=word_start_table(tok, model_cfg.vocab_size),
                          max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, calibration=calib,
                          metric=cfg.metric, progress=cfg.progress, probe=probe, seconds_per_unit=cfg.seconds_per_unit,
                          decode_fn=_session_decode() if cfg.computation_aware else None, fresh=cfg.fresh,
                          calibration_pool=cfg.calibration_pool, calibration_eps=cfg.calibration_eps,
                          info={"checkpoint": str(Path(cfg.checkpoint).absolute()), "step": cfg.step,
                                "split": cfg.split, "dataset": to_dict(cfg.dataset), "render": to_dict(cfg.render),
                                "dtype": cfg.dtype})


def _session_decode():
    from proactive_jax.method.session import session_decode

    return session_decode
