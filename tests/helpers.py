"""Test helpers shared across test modules: tiny model configs and the shipped fixture paths."""
from pathlib import Path

from proactive_jax.models.config import ModelConfig

FIXTURES = Path(__file__).resolve().parent / "fixtures"
AUDIO_FIXTURES = FIXTURES / "audio"


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
