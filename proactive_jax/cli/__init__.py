"""``proactive-jax`` command line.

Each subcommand is one entry of :data:`COMMANDS`: ``name -> Command(help, add_args, run)``. ``add_args``
fills an argparse subparser (cheap; no heavy imports); ``run`` is a callable or a ``"module:function"``
string imported only when that subcommand runs, so ``proactive-jax --help`` stays fast. ``run(args)``
returns the exit code. To add a subcommand (train, export, decode, eval, demo), add one entry.
"""

from __future__ import annotations

import argparse
import errno
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

    from proactive_jax.models.hf import load_pretrained
    from proactive_jax.models.qwen import forward

    tol = args.tol if args.tol is not None else (1e-4 if args.dtype == "float32" else 5e-2)
    config, params = load_pretrained(args.dir, dtype=args.dtype)  # errors: one line via main
    if getattr(config, "model_type", None) == "qwen2_audio":
        from proactive_jax.models.audio_check import hf_check_audio

        return hf_check_audio(args, config, params, tol)
    ids = np.random.default_rng(args.seed).integers(0, config.vocab_size, (args.batch, args.length))
    ours = np.asarray(forward(config, params, ids), np.float32)
    if not np.all(np.isfinite(ours)):
        bad = _nonfinite_tensors(params)
        print(f"FAIL: this package's logits hold NaN/Inf; the checkpoint has non-finite weights in "
              f"{', '.join(bad[:8]) or 'no tensor (check --dtype)'}", file=sys.stderr)
        return 1
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


def _nonfinite_tensors(params) -> list[str]:
    import jax
    import numpy as np

    return [jax.tree_util.keystr(p) for p, x in jax.tree_util.tree_flatten_with_path(params)[0]
            if not np.all(np.isfinite(np.asarray(x)))]


# ---------------------------------------------------------------------------------------------
# prepare-audio (the run is data.audio_stream.run_prepare_audio)
# ---------------------------------------------------------------------------------------------

def _prepare_audio_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", metavar="SPEC",
                   help="the rows: a WAV + JSONL manifest (FILE.jsonl), a datasets Hub id or local dataset directory "
                        "([hub:]openslr/librispeech_asr), disk:DIR (save_to_disk) or tfds:NAME")
    p.add_argument("out_dir", metavar="OUT_DIR", help="where to write the ArrayRecord shards + index.json")
    p.add_argument("--config", default=None, help="dataset config / builder config (e.g. clean, other, all)")
    p.add_argument("--split", default="train", help="split (default train; e.g. train.clean.360)")
    p.add_argument("--max-rows", type=int, default=None, help="copy only the first N rows")
    p.add_argument("--rows-per-shard", type=int, default=2048, help="rows per ArrayRecord shard (default 2048)")
    p.add_argument("--cache-dir", default=None, help="datasets cache directory")
    p.add_argument("--data-dir", default=None, help="tfds data directory")
    p.add_argument("--overwrite", action="store_true", help="replace an existing prepared set in OUT_DIR")


# ---------------------------------------------------------------------------------------------
# registry and entry point
# ---------------------------------------------------------------------------------------------

def _lazy_args(module: str, fn: str) -> Callable[[argparse.ArgumentParser], None]:
    return lambda p: getattr(importlib.import_module(module), fn)(p)


COMMANDS: dict[str, Command] = {
    "demo": Command("the embedded default: train a tiny streaming model on built-in tasks, evaluate the heads, "
                    "print the paper-style table", _lazy_args("proactive_jax.demo.text", "add_demo_args"),
                    "proactive_jax.demo.text:run_demo_cli"),
    "train": Command("train a streaming LLM (batch + MSLM + SPSD) from a YAML run config",
                     _lazy_args("proactive_jax.cli.train", "add_train_args"), "proactive_jax.cli.train:run_train"),
    "export": Command("write a training run's checkpoint as a Hugging Face directory",
                      _lazy_args("proactive_jax.cli.train", "add_export_args"), "proactive_jax.cli.train:run_export"),
    "decode": Command("stream one text through a checkpoint with a decision head; show READs and WRITEs",
                      _lazy_args("proactive_jax.cli.decode", "add_decode_args"),
                      "proactive_jax.cli.decode:run_decode_cli"),
    "eval": Command("evaluate decision heads with threshold sweeps: results.json, table, plots",
                    _lazy_args("proactive_jax.cli.eval", "add_eval_args"), "proactive_jax.cli.eval:run_eval_cli"),
    "probe": Command("train the learned decision head's probe on a trained run (self-labels or oracle labels)",
                     _lazy_args("proactive_jax.cli.probe", "add_probe_args"),
                     "proactive_jax.cli.probe:run_probe_cli"),
    "plan": Command("compile a run's train step for a TPU slice (no TPU, weights or data needed) and report its "
                    "per-chip memory", _lazy_args("proactive_jax.cli.plan", "add_plan_args"),
                    "proactive_jax.cli.plan:run_plan"),
    "prepare-audio": Command("copy audio rows (a datasets / tfds split or a WAV + JSONL manifest) once into ArrayRecord "
                             "shards for the bounded-memory training stream (audio.stream.dir)",
                             _prepare_audio_args,
                             "proactive_jax.data.audio_stream:run_prepare_audio"),
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


# errno values that a user causes (a path, a permission, a full disk): one line, not a traceback
USER_ERRNOS = frozenset({errno.ENOENT, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT, errno.EROFS,
                         errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENOTEMPTY, errno.ENAMETOOLONG,
                         errno.EMFILE, errno.EXDEV})


# raised by this package with a message (no errno) for a path the user gave
_USER_OS_ERRORS = (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError)


def one_line(msg: object, limit: int = 2000) -> str:
    """A message on one line (whitespace runs collapsed), at most ``limit`` characters."""
    text = " ".join(str(msg).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def describe_os_error(e: OSError) -> str:
    """``<path>: <what> (<hint>)`` for an OS error a user causes."""
    if e.errno is None:  # raised here with its own message
        return str(e)
    what = e.strerror or str(e)
    where = e.filename if e.filename is not None else ""
    hint = {errno.ENOSPC: "free disk space or choose another out_dir; completed checkpoints and outputs are intact",
            errno.EDQUOT: "disk quota exceeded; free space or choose another out_dir",
            errno.EACCES: "check the permissions of this path or choose another directory",
            errno.EPERM: "check the permissions of this path or choose another directory",
            errno.EROFS: "the file system is read-only; choose another directory"}.get(e.errno)
    text = f"{where}: {what}" if where else what
    return text + (f" ({hint})" if hint else "")


def run_guarded(prog: str, fn: Callable[[], int | None]) -> int:
    """Run ``fn``; a :class:`~proactive_jax.errors.ProactiveError`, an OS error the user caused or Ctrl-C
    becomes one line on stderr and an exit code (2; ``TrainingDiverged`` 3; Ctrl-C 130). Anything else is
    a bug and keeps its traceback. The one place where the CLI turns errors into exit codes."""
    from proactive_jax.errors import ProactiveError

    try:
        return int(fn() or 0)
    except ProactiveError as e:
        _silence_background_logs()
        print(f"{prog}: {one_line(e)}", file=sys.stderr)
        return int(getattr(e, "exit_code", 2))
    except KeyboardInterrupt:
        _silence_background_logs()
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        if e.errno not in USER_ERRNOS and not isinstance(e, _USER_OS_ERRORS):
            raise
        _silence_background_logs()
        print(f"{prog}: {one_line(describe_os_error(e))}", file=sys.stderr)
        return 2


def _silence_background_logs() -> None:
    """The command has failed; the checkpoint library's threads may still log their side of the same failure
    while the process shuts down. The error line is the last word."""
    import logging

    for name in ("absl", "orbax"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def _quiet_closed_loop_errors() -> None:
    """Orbax's async writes bridge tensorstore callbacks into an asyncio loop; after a failed save the loop is
    closed and every late callback reports ``RuntimeError: Event loop is closed`` as an unraisable exception
    (hundreds of tracebacks). Those, and only those, are dropped; the save failure itself is reported."""
    prev = sys.unraisablehook
    if getattr(prev, "_proactive_quiet", False):
        return

    def hook(unraisable):
        v = unraisable.exc_value
        if isinstance(v, RuntimeError) and str(v) == "Event loop is closed":
            return
        prev(unraisable)

    hook._proactive_quiet = True
    sys.unraisablehook = hook


def main(argv: Sequence[str] | None = None) -> int:
    _quiet_closed_loop_errors()
    args = build_parser().parse_args(argv)
    run = _resolve(COMMANDS[args.command].run)
    return run_guarded(f"proactive-jax {args.command}", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
