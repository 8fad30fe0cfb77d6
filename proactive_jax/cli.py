"""``proactive-jax`` command line.

Each subcommand is one entry of :data:`COMMANDS`: ``name -> Command(help, add_args, run)``. ``add_args``
fills an argparse subparser (cheap; no heavy imports); ``run`` is a callable or a ``"module:function"``
string imported only when that subcommand runs, so ``proactive-jax --help`` stays fast. ``run(args)``
returns the exit code. To add a subcommand (train, export, decode, eval, demo), add one entry.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Callable, NamedTuple, Sequence


class Command(NamedTuple):
    help: str
    add_args: Callable[[argparse.ArgumentParser], None]
    run: str | Callable[[argparse.Namespace], int]


# ---------------------------------------------------------------------------------------------
# hf-check
# ---------------------------------------------------------------------------------------------

def _hf_check_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", help="Hugging Face checkpoint directory (config.json + safetensors)")
    p.add_argument("--batch", type=int, default=2, help="batch size of the random token ids (default 2)")
    p.add_argument("--length", type=int, default=16, help="sequence length (default 16)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random token ids (default 0)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                   help="compute dtype of the JAX model (transformers always runs float32)")
    p.add_argument("--tol", type=float, default=None,
                   help="fail if max|diff| / max|logit| exceeds this (default 1e-4 for float32, 5e-2 otherwise)")


def _run_hf_check(args: argparse.Namespace) -> int:
    import gc

    import numpy as np

    from .models.hf import load_pretrained
    from .models.qwen import forward

    tol = args.tol if args.tol is not None else (1e-4 if args.dtype == "float32" else 5e-2)
    try:
        config, params = load_pretrained(args.dir, dtype=args.dtype)
    except (FileNotFoundError, ValueError) as e:  # CheckpointError and ConfigError are ValueErrors
        print(f"proactive-jax hf-check: {e}", file=sys.stderr)
        return 2
    if getattr(config, "model_type", None) == "qwen2_audio":
        from .models.audio_check import hf_check_audio

        return hf_check_audio(args, config, params, tol)
    ids = np.random.default_rng(args.seed).integers(0, config.vocab_size, (args.batch, args.length))
    ours = np.asarray(forward(config, params, ids), np.float32)
    del params
    gc.collect()
    print(f"proactive_jax: {config.model_type}, {config.num_hidden_layers} layers, hidden {config.hidden_size}, "
          f"vocab {config.vocab_size}; logits {list(ours.shape)} ({args.dtype} compute), "
          f"max|logit| {float(np.abs(ours).max()):.6g}")
    try:
        import torch
        from transformers import AutoModelForCausalLM
    except ImportError as e:
        print(f"transformers comparison SKIPPED: torch/transformers not importable ({e})")
        return 0
    try:
        model = AutoModelForCausalLM.from_pretrained(args.dir, dtype=torch.float32, attn_implementation="eager")
    except TypeError:  # transformers < 4.56 names it torch_dtype
        model = AutoModelForCausalLM.from_pretrained(args.dir, torch_dtype=torch.float32,
                                                     attn_implementation="eager")
    model.eval()
    with torch.no_grad():
        ref = model(torch.as_tensor(ids, dtype=torch.long)).logits.float().numpy()
    diff = float(np.abs(ours - ref).max())
    scale = float(np.abs(ref).max())
    rel = diff / max(scale, 1e-30)
    agree = float((ours.argmax(-1) == ref.argmax(-1)).mean())
    ok = rel <= tol
    print(f"transformers (float32): max|logit| {scale:.6g}")
    print(f"max |logit diff| = {diff:.6g}  relative = {rel:.3g}  (tol {tol:g})  argmax agreement = {agree:.4f}")
    print("OK" if ok else "FAIL: difference above tolerance")
    return 0 if ok else 1


# ---------------------------------------------------------------------------------------------
# registry and entry point
# ---------------------------------------------------------------------------------------------

def _lazy_args(module: str, fn: str) -> Callable[[argparse.ArgumentParser], None]:
    return lambda p: getattr(importlib.import_module(module), fn)(p)


COMMANDS: dict[str, Command] = {
    "demo": Command("the embedded default: train a tiny streaming model on built-in tasks, evaluate the heads, "
                    "print the paper-style table", _lazy_args("proactive_jax.demo", "add_demo_args"),
                    "proactive_jax.demo:run_demo_cli"),
    "train": Command("train a streaming LLM (batch + MSLM + SPSD) from a YAML run config",
                     _lazy_args("proactive_jax.training.cli", "add_train_args"), "proactive_jax.training.cli:run_train"),
    "export": Command("write a training run's checkpoint as a Hugging Face directory",
                      _lazy_args("proactive_jax.training.cli", "add_export_args"), "proactive_jax.training.cli:run_export"),
    "decode": Command("stream one text through a checkpoint with a decision head; show READs and WRITEs",
                      _lazy_args("proactive_jax.method.decode_cli", "add_decode_args"),
                      "proactive_jax.method.decode_cli:run_decode_cli"),
    "eval": Command("evaluate decision heads with threshold sweeps: results.json, table, plots",
                    _lazy_args("proactive_jax.evaluation.evaluate", "add_eval_args"), "proactive_jax.evaluation.evaluate:run_eval_cli"),
    "hf-check": Command("compare this package's logits with transformers on a local HF checkpoint",
                        _hf_check_args, _run_hf_check),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="proactive-jax",
                                     description="ProactiveLLM streaming LLMs in JAX/Flax.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help, description=cmd.help)
        cmd.add_args(p)
    return parser


def _resolve(run: str | Callable) -> Callable:
    if callable(run):
        return run
    module, _, attr = run.partition(":")
    return getattr(importlib.import_module(module), attr)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(_resolve(COMMANDS[args.command].run)(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
