"""proactive_jax: ProactiveLLM (streaming LLMs that decide when to write) in JAX/Flax.

Subpackages follow the data flow: ``models`` (decoders, HF I/O) -> ``method`` (streaming examples, the
objective, decision heads, the decode loop) -> ``training`` (mesh, step, loop, checkpoints) ->
``evaluation`` (metrics, sweeps, tables); ``data`` turns datasets into streaming examples.
"""
from proactive_jax.evaluation import metrics
from proactive_jax.method.decode import stream_decode
from proactive_jax.method.objective import token_logprobs
from proactive_jax.method.session import SessionBatch, StreamSession
from proactive_jax.data.example import StreamExample
from proactive_jax.models.config import ModelConfig
from proactive_jax.models.hf import load_pretrained, save_pretrained
from proactive_jax.models.qwen import forward, init_params
from proactive_jax.models.audio import forward_audio

__all__ = ["ModelConfig", "SessionBatch", "StreamExample", "StreamSession", "forward", "forward_audio", "init_params",
           "load_pretrained", "metrics", "save_pretrained", "stream_decode", "token_logprobs"]
__version__ = "0.1.0"
