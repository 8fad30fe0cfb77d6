"""Load a model for inference from a Hugging Face directory or a training run, plus its tokenizer."""

from __future__ import annotations

from pathlib import Path

from proactive_jax.errors import DataError


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


def load_tokenizer(path: str | Path, *, what: str = "tokenizer"):
    """A Hugging Face tokenizer from a local directory; anything else (a Hub id, a file, an unreadable directory)
    is one :class:`DataError` naming the path (tokenizers are never fetched). A ``tokenizer.json`` that
    ``transformers`` would run as it is is read with ``tokenizers`` alone (:mod:`proactive_jax.data.tokenizer_json`:
    the same ids and text, without importing ``transformers`` and torch); anything else goes through
    ``AutoTokenizer``."""
    from proactive_jax.data.tokenizer_json import load_json_tokenizer

    p = Path(path)
    if not p.is_dir():
        raise DataError(f"{what} {path}: no such directory (tokenizers are local directories with tokenizer.json or "
                        "tokenizer_config.json; download a Hub tokenizer first)", reason="bad tokenizer")
    try:
        tok = load_json_tokenizer(p)
        if tok is not None:
            return tok
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(p))
    except Exception as e:  # transformers raises OSError, ValueError, json errors, ... for a broken directory
        raise DataError(f"{what} {p}: not a readable tokenizer directory ({type(e).__name__}: "
                        f"{' '.join(str(e).split())[:200]})", reason="bad tokenizer") from None


def load_model_and_tokenizer(checkpoint: str | Path, step: int | None = None, tokenizer: str | Path | None = None,
                             *, dtype: str = "float32"):
    """``(config, params, tokenizer)`` of an HF directory or a training run (:func:`load_model`); ``tokenizer``
    overrides the checkpoint's own tokenizer directory."""
    cfg, params, tok_dir = load_model(checkpoint, step, dtype=dtype)
    tok_dir = tokenizer or tok_dir
    if tok_dir is None:
        raise DataError(f"no tokenizer found for {checkpoint}; pass a tokenizer directory (--tokenizer DIR)",
                        reason="bad tokenizer")
    return cfg, params, load_tokenizer(tok_dir)
