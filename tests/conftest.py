"""Shared test setup: 8 fake CPU devices (set before JAX is imported) and tiny model configs."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402

from proactive_jax.models.config import ModelConfig  # noqa: E402


def tiny_qwen3(**kw) -> ModelConfig:
    """Qwen3-style: q/k norm, no bias, untied, head_dim != hidden/heads."""
    base = dict(model_type="qwen3", vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, head_dim=16, qkv_bias=False, o_bias=False,
                qk_norm=True, tie_word_embeddings=False, max_position_embeddings=512)
    base.update(kw)
    return ModelConfig(**base)


def tiny_qwen2(**kw) -> ModelConfig:
    """Qwen2-style: q/k/v bias, tied embeddings, head_dim = hidden/heads."""
    base = dict(model_type="qwen2", vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, head_dim=12, qkv_bias=True, o_bias=False,
                qk_norm=False, tie_word_embeddings=True, max_position_embeddings=512)
    base.update(kw)
    return ModelConfig(**base)


@pytest.fixture(scope="session")
def qwen3_cfg():
    return tiny_qwen3()


@pytest.fixture(scope="session")
def qwen2_cfg():
    return tiny_qwen2()
