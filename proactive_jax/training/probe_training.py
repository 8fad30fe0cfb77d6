"""Fit the learned decision head's probe on a trained run (backbone frozen): the probe config, the labelled
states, the driver behind `proactive-jax probe train`.

    proactive-jax probe train checkpoint=runs/x task=lookup num_examples=1000 [labels=oracle] [eps=0.1]

Self-labels by default (:mod:`proactive_jax.method.probe`); ``labels=oracle`` uses the synthetic tasks' true alignment.
The probe is written next to the run's checkpoint (``<checkpoint>/probe.safetensors``, or
``probe-oracle.safetensors``), never into a Hugging Face export; ``proactive-jax eval`` finds it there.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from proactive_jax.data.loaders import DatasetSpec

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
    checkpoint: str = ""  # training run directory (or HF directory)
    step: int | None = None
    tokenizer: str | None = None
    task: str = "lookup"  # synthetic task or a data.TASKS adapter (with dataset)
    dataset: DatasetSpec | None = None  # real tasks: where the rows come from (as in `proactive-jax eval`)
    adapter_options: dict = dataclasses.field(default_factory=dict)
    seed: int = 0
    split: str = "train"
    num_examples: int = 1000
    labels: str = "self"  # self | oracle | external (study tasks: a realistic annotator's read counts)
    eps: float = 0.1  # self-labels: sufficient iff same argmax and KL(P_full || P_stream) <= eps
    multinomial_draws: int = 2  # budget draws per example, besides the sweep over every read count
    trailing_reads: bool = True
    kind: str = "mlp"  # linear | mlp
    hidden: int = 64
    use_stats: bool = True  # also feed the entropy / attention statistics
    steps: int = 600
    lr: float = 3e-3
    batch_size: int = 1024
    out: str | None = None  # default: <checkpoint>/probe.safetensors (probe-oracle.safetensors)

    def __post_init__(self):
        if self.labels not in ("self", "oracle", "external"):
            raise ValueError(f"labels={self.labels!r}; expected 'self', 'oracle' or 'external'")
        if not self.eps >= 0:
            raise ValueError(f"eps={self.eps}; expected a non-negative KL bound")


def default_probe_path(checkpoint, labels: str = "self") -> Path:
    return Path(checkpoint) / ("probe.safetensors" if labels == "self" else f"probe-{labels}.safetensors")


def fit_probe(cfg: ProbeConfig, model_cfg, params, texts, streams) -> tuple[dict, dict]:
    """Collect labelled states of ``streams`` (rendered ``texts``), train; ``(probe, info)``."""
    import numpy as np

    from proactive_jax.method import probe as P

    oracle = None
    if cfg.labels in ("oracle", "external"):
        given = P.oracle_read_counts if cfg.labels == "oracle" else P.external_read_counts
        oracle = [given(t, s.L) for t, s in zip(texts, streams)]
    data = P.collect(model_cfg, params, streams, eps=cfg.eps, multinomial_draws=cfg.multinomial_draws,
                     oracle=oracle, trailing_reads=cfg.trailing_reads, seed=cfg.seed)
    probe, report = P.train_probe(data, kind=cfg.kind, hidden=cfg.hidden, use_stats=cfg.use_stats,
                                  steps=cfg.steps, lr=cfg.lr, batch_size=cfg.batch_size, seed=cfg.seed)
    info = {"labels": cfg.labels, "eps": cfg.eps, "kind": cfg.kind, "use_stats": cfg.use_stats,
            "task": cfg.task, "examples": len(streams), "states": int(len(data.labels)),
            "positive_rate": float(np.mean(data.labels)), "report": report}
    return probe, info


def run_probe_train(cfg: ProbeConfig) -> Path:
    from proactive_jax.data.render import RenderConfig, render_with_config
    from proactive_jax.data.loaders import task_examples
    from proactive_jax.training.loading import load_model, load_tokenizer
    from proactive_jax.method.probe import ProbeError, save_probe

    if not cfg.checkpoint:
        raise ProbeError("checkpoint is not set (the training run directory)")
    model_cfg, params, tok_dir = load_model(cfg.checkpoint, cfg.step)
    tok_dir = cfg.tokenizer or tok_dir
    if tok_dir is None:
        raise ProbeError(f"no tokenizer found for {cfg.checkpoint}; set tokenizer=DIR")
    tok = load_tokenizer(tok_dir)
    rc = RenderConfig()
    parts = rc.parts(tok)
    texts = task_examples(cfg.task, cfg.split, cfg.num_examples, seed=cfg.seed, dataset=cfg.dataset,
                          adapter_options=cfg.adapter_options)
    streams = [render_with_config(tok, t, rc, parts) for t in texts]
    probe, info = fit_probe(cfg, model_cfg, params, texts, streams)
    out = Path(cfg.out) if cfg.out else default_probe_path(cfg.checkpoint, cfg.labels)
    save_probe(out, probe, info)
    print(summary_line(info))
    return out


def summary_line(info: dict) -> str:
    """One line of the probe's report (all of it is stored with the probe: ``load_probe(path)[1]``)."""
    rep = info.get("report", {})
    held, train = rep.get("held_out", {}), rep.get("train", {})

    def pct(d, k):
        return f"{100 * d[k]:.1f}%" if isinstance(d.get(k), (int, float)) else "n/a"

    return (f"probe ({info['labels']} labels, {info['kind']}): {info['states']} labelled states of {info['examples']} "
            f"examples, {100 * info['positive_rate']:.0f}% sufficient; held-out accuracy {pct(held, 'accuracy')}"
            + (f", BCE {held['bce']:.3f}" if isinstance(held.get("bce"), (int, float)) else "")
            + f" (train {pct(train, 'accuracy')}); the full report is stored with the probe"
            + ("" if not at_majority(held) else
               f"; WARNING: the probe's held-out accuracy is at the majority-class rate "
               f"({pct(held, 'accuracy')} vs {100 * majority_rate(held):.1f}% for always answering the commoner label): "
               "it has learned nothing beyond the base rate (more labelled states, another eps or labels=oracle)"))


def majority_rate(split_report: dict) -> float:
    """The accuracy of always answering the commoner label on a split of the probe's report."""
    p = float(split_report.get("positive_rate", 0.5))
    return max(p, 1.0 - p)


def at_majority(split_report: dict, margin: float = 0.01) -> bool:
    """True when a probe's accuracy on this split is within ``margin`` of (or below) the majority-class rate."""
    acc = split_report.get("accuracy")
    known = isinstance(split_report.get("positive_rate"), (int, float))
    return known and isinstance(acc, (int, float)) and acc <= majority_rate(split_report) + margin
