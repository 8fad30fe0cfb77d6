"""Load a model for inference from a Hugging Face directory or a training run, plus its tokenizer."""

from __future__ import annotations

from pathlib import Path


def is_hf_dir(path: str | Path) -> bool:
    p = Path(path)
    return (p / "config.json").is_file()


def load_model(path: str | Path, step: int | None = None, *, dtype: str = "float32"):
    """``(config, params, tokenizer_dir)`` from an HF directory (config.json + safetensors) or a run
    directory written by ``proactive-jax train`` (its orbax checkpoints; ``step`` default latest)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such checkpoint (expected a Hugging Face directory or a training run)")
    if is_hf_dir(p):
        from proactive_jax.models.hf import load_pretrained

        cfg, params = load_pretrained(p, dtype=dtype)
        tok = str(p) if (p / "tokenizer_config.json").exists() or (p / "tokenizer.json").exists() else None
        return cfg, params, tok
    from proactive_jax.training.checkpoint import restore_params

    cfg, params, meta, _ = restore_params(p, step)
    if dtype != cfg.dtype:
        cfg = cfg.replace(dtype=dtype)
    return cfg, params, meta.get("tokenizer_dir")
