"""Shared helpers of the training tests (and the fault tests): the tiny run every in-process training uses."""
from pathlib import Path

import jax
import numpy as np

from proactive_jax.models.config import ModelConfig

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "tiny-synthetic.yaml"
N = 12
TINY = [
    "model.config={num_hidden_layers: 1, hidden_size: 32, intermediate_size: 64, num_attention_heads: 2, "
    "num_key_value_heads: 1, head_dim: 16}",
    "data.synthetic.n_train=64", "data.synthetic.n_valid=0", "data.valid_batches=0", "data.buckets=[[24, 24]]",
    "data.global_batch_size=16", "objective.kl_topk=8", "optim.lr=3e-3", "optim.warmup_steps=2",
    f"steps={N}", "checkpoint.every=0", "eval_every=0", "progress=false", "tensorboard=false",
]

SMALL = ModelConfig(model_type="qwen3", vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                    num_attention_heads=2, num_key_value_heads=1, head_dim=16, tie_word_embeddings=False)


def max_diff(a, b) -> float:
    return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
