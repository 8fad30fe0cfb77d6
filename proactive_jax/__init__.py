"""proactive_jax: ProactiveLLM (streaming LLMs that decide when to write) in JAX/Flax."""
from .config import ModelConfig
from .decode import stream_decode
from .hf import load_pretrained, save_pretrained
from .model import forward, init_params
from .objective import token_logprobs
from .streaming import StreamExample

__all__ = ["ModelConfig", "StreamExample", "forward", "init_params", "load_pretrained", "save_pretrained",
           "stream_decode", "token_logprobs"]
__version__ = "0.1.0"
