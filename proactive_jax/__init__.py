"""proactive_jax: ProactiveLLM (streaming LLMs that decide when to write) in JAX/Flax."""
from .config import ModelConfig
from .model import forward, init_params
from .hf import load_pretrained, save_pretrained

__version__ = "0.1.0"
