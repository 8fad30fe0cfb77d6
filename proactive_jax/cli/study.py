"""``proactive-jax study``: the study grid (docs/study.md) with seeds, intervals and one verdict per paper claim."""

from __future__ import annotations

import shlex
import sys


def add_study_args(p) -> None:
    p.add_argument("--config", default=None, help="study config YAML (default: the StudyConfig values built in)")
    p.add_argument("--out", default=None, help="output directory (default: study_out); a rerun resumes it")
    p.add_argument("--seeds", type=int, default=None, help="number of training seeds (0..N-1; default 3)")
    p.add_argument("--quick", action="store_true", help="a seconds-long smoke run of every stage (no verdicts)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. finetune_steps=200")
    from proactive_jax.cli import config_help

    p.epilog_fn = config_help("proactive_jax.demo.study:StudyConfig", note="docs/study.md")


def status_line(args) -> str:
    how = "--quick: a smoke run" if args.quick else "the full grid (up to an hour on 2 CPU cores)"
    return f"loading JAX; then the study grid runs ({how}) into {args.out or 'study_out'} ..."


def run_study_cli(args) -> int:
    from proactive_jax.demo.study import load_study_config, run_study
    from proactive_jax.errors import ConfigError

    if args.seeds is not None and args.seeds < 1:
        print(f"proactive-jax study: --seeds {args.seeds}: expected >= 1", file=sys.stderr)
        return 2
    overrides = list(args.overrides) + ([f"out_dir={args.out}"] if args.out else [])
    overrides += [f"seeds=[{', '.join(str(s) for s in range(args.seeds))}]"] if args.seeds else []
    try:
        cfg = load_study_config(args.config, overrides, quick=args.quick)
    except (ConfigError, FileNotFoundError) as e:
        print(f"proactive-jax study: {e}", file=sys.stderr)
        return 2
    words = (["--quick"] if args.quick else []) + (["--seeds", str(args.seeds)] if args.seeds else [])
    words += (["--config", args.config] if args.config else []) + (["--out", args.out] if args.out else [])
    run_study(cfg, command=" ".join(["proactive-jax study"] + [shlex.quote(w) for w in words + list(args.overrides)]))
    return 0
