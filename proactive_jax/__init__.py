"""proactive_jax: ProactiveLLM (streaming LLMs that decide when to write) in JAX/Flax.

The package is a one-way stack (each layer imports only those before it; ``tests/test_architecture.py`` keeps it so):
``errors`` < ``config`` < ``models`` (decoders, HF I/O) < ``data`` (rows -> ``StreamExample``) < ``method`` (the
paper: schedules, objective, heads, decode loop, sessions) < ``training`` (mesh, step, loop, checkpoints, plans) <
``evaluation`` (metrics, sweeps, tables) < the front: ``cli`` (one module per command) and ``demo``.

The public names below are imported on first use, so ``import proactive_jax`` (and ``proactive-jax --help``) does
not load JAX.
"""
import importlib

_PUBLIC = {
    "LongForm": "proactive_jax.method.longform",
    "LongFormBatch": "proactive_jax.method.longform",
    "ModelConfig": "proactive_jax.models.config",
    "SessionBatch": "proactive_jax.method.session_batch",
    "StreamExample": "proactive_jax.data.example",
    "StreamSession": "proactive_jax.method.session",
    "forward": "proactive_jax.models.qwen",
    "forward_audio": "proactive_jax.models.audio",
    "init_params": "proactive_jax.models.qwen",
    "load_pretrained": "proactive_jax.models.hf",
    "save_pretrained": "proactive_jax.models.hf_export",
    "stream_decode": "proactive_jax.method.decode",
    "token_logprobs": "proactive_jax.method.objective",
}

__all__ = sorted([*_PUBLIC, "metrics"])
__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "metrics":
        return importlib.import_module("proactive_jax.evaluation.metrics")
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'proactive_jax' has no attribute {name!r}")


def __dir__():
    return __all__
