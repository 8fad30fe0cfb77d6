"""``proactive-jax hf-check``: compare this package's logits with ``transformers`` on a local HF checkpoint."""

from __future__ import annotations

import argparse
import sys


def add_hf_check_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", help="Hugging Face checkpoint directory (config.json + safetensors)")
    p.add_argument("--batch", type=int, default=2, help="batch size of the random token ids (default 2)")
    p.add_argument("--length", type=int, default=16, help="sequence length (default 16)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random token ids (default 0)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                   help="compute dtype of the JAX model (transformers always runs float32)")
    p.add_argument("--tol", type=float, default=None,
                   help="fail if max|diff| / max|logit| exceeds this (default 1e-4 for float32, 5e-2 otherwise)")


def status_line(args: argparse.Namespace) -> str:
    return f"loading {args.dir} ({args.dtype}) ..."


def run_hf_check(args: argparse.Namespace) -> int:
    from proactive_jax.models.audio_check import hf_check_audio
    from proactive_jax.models.hf import load_pretrained
    from proactive_jax.models.kinds import is_audio
    from proactive_jax.models.qwen import forward

    import gc

    import numpy as np

    tol = args.tol if args.tol is not None else (1e-4 if args.dtype == "float32" else 5e-2)
    config, params = load_pretrained(args.dir, dtype=args.dtype)  # errors: one line via main
    if is_audio(config):
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
