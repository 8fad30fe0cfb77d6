"""``proactive-jax eval``: decode with head sweeps, score, write results.json, table.md and plots."""

from __future__ import annotations

import sys


def add_eval_args(p) -> None:
    from proactive_jax.cli import config_help

    p.add_argument("config", nargs="?", default=None,
                   help="eval config YAML (optional: all keys may be overrides; examples: configs/eval-text.yaml, "
                        "configs/eval-speech.yaml)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="overrides, e.g. checkpoint=runs/x task=lookup heads=[batch,'wait-k:k=1|3']")
    p.epilog_fn = config_help("proactive_jax.evaluation.evaluate:EvalConfig",
                              note="examples: configs/eval-text.yaml, configs/eval-speech.yaml")


def status_line(args) -> str:
    from proactive_jax.cli.startup import peek_config

    raw = peek_config(args.config, args.overrides)
    ckpt = raw.get("checkpoint")
    what = f"{raw.get('task', 'lookup')}, {raw.get('num_examples', 200)} examples -> {raw.get('out_dir', 'eval_out')}"
    return f"loading {ckpt} ({what}) ..." if ckpt else f"reading the eval config ({what}) ..."


def run_eval_cli(args) -> int:
    from proactive_jax.config import config_and_overrides
    from proactive_jax.errors import ConfigError
    from proactive_jax.evaluation.evaluate import load_eval_config
    from proactive_jax.evaluation.evaluate import run_eval
    from proactive_jax.evaluation.results import EvalError
    from proactive_jax.evaluation.results import markdown_table

    path, overrides = config_and_overrides(args.config, args.overrides)
    try:
        cfg = load_eval_config(path, overrides)
        res = run_eval(cfg)
    except (EvalError, ConfigError, FileNotFoundError, ValueError) as e:
        print(f"proactive-jax eval: {e}", file=sys.stderr)
        return 2
    print(markdown_table(res, cfg.task, cfg.metric))
    print(f"wrote {cfg.out_dir}/results.json, table.md, quality_latency.png "
          f"(decode {res['timing']['decode_s']:.1f}s, scoring {res['timing']['score_s']:.1f}s)")
    if cfg.computation_aware:
        print(f"computation-aware latency on {res['timing']['device']} "
              f"({cfg.seconds_per_unit} s per source unit):")
        for st in res["settings"]:
            lat = st["latency"]
            pairs = [f"{k.upper()}={lat[k]:.3f} / {k.upper()}_CA={lat[k + '_ca']:.3f}"
                     for k in ("al_word", "laal_word", "al_token", "laal_token") if k + "_ca" in lat]
            print(f"  {st['setting']}: " + ", ".join(pairs))
    return 0
