"""Qwen2-Audio configuration: the Whisper-style encoder's config, the combined model config, HF ``config.json``.

:class:`AudioModelConfig` holds the text decoder's :class:`~proactive_jax.models.config.ModelConfig`
(Qwen2), the :class:`EncoderConfig` and the placeholder token id. Both are frozen and hashable (static
arguments of ``jax.jit``). ``chunk_tokens`` (the streaming unit, default 25 encoder tokens = 1 s) is a
compute option like ``dtype``: not part of the checkpoint.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from proactive_jax.models.config import (COMPUTE_DTYPES, REMAT_POLICIES, ConfigError, ModelConfig, from_hf_dict,
                                         remat_policy_name, to_hf_dict)

ENCODER_MASKS = ("bidirectional", "causal", "block:K")
CONV_EDGES = ("zero", "lookahead")
MS_PER_TOKEN = 40  # one encoder output token = 2 conv2 steps = 4 mel frames of 10 ms


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    num_mel_bins: int = 128
    d_model: int = 1280
    encoder_layers: int = 32
    encoder_attention_heads: int = 20
    encoder_ffn_dim: int = 5120
    max_source_positions: int = 1500
    activation_function: str = "gelu"
    scale_embedding: bool = False
    layer_norm_eps: float = 1e-5
    # compute options (not part of the checkpoint)
    dtype: str = "float32"
    scan_layers: bool = True
    remat: bool | str = False  # a REMAT_POLICIES name; True means "full", False "none"

    def __post_init__(self):
        if self.activation_function != "gelu":
            raise ConfigError(f"audio_config.activation_function={self.activation_function!r}: only 'gelu' "
                              f"(exact, erf) is supported")
        if self.d_model % self.encoder_attention_heads:
            raise ConfigError(f"audio_config.d_model={self.d_model} is not a multiple of "
                              f"encoder_attention_heads={self.encoder_attention_heads}")
        if self.max_source_positions % 2:
            raise ConfigError(f"audio_config.max_source_positions={self.max_source_positions} must be even "
                              f"(the encoder pools pairs of positions)")
        if self.dtype not in COMPUTE_DTYPES:
            raise ConfigError(f"audio dtype {self.dtype!r} is not supported; expected one of {COMPUTE_DTYPES}")
        if self.remat_policy not in REMAT_POLICIES:
            raise ConfigError(f"audio remat {self.remat!r} is not supported; expected true/false or one of "
                              f"{REMAT_POLICIES}")

    @property
    def remat_policy(self) -> str:
        """The remat policy name of the encoder layers ("none", "full", ...), with the booleans mapped."""
        return remat_policy_name(self.remat)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.encoder_attention_heads

    @property
    def num_frames(self) -> int:
        """Mel frames of one encoder input window (3000 = 30 s for the released model)."""
        return 2 * self.max_source_positions

    @property
    def num_tokens(self) -> int:
        """Output tokens of one window (750 = 30 s, 25 per second)."""
        return self.max_source_positions // 2


@dataclasses.dataclass(frozen=True)
class AudioModelConfig:
    """Qwen2-Audio: encoder + projector + Qwen2 decoder (``model_type`` "qwen2_audio")."""

    text: ModelConfig
    encoder: EncoderConfig
    audio_token_index: int = 151646
    # streaming unit in encoder tokens; None: 25 (1 s) when it divides the window, else the whole window
    chunk_tokens: int | None = None
    model_type: str = "qwen2_audio"

    def __post_init__(self):
        if self.text.model_type != "qwen2":
            raise ConfigError(f"text_config.model_type={self.text.model_type!r}: Qwen2-Audio's decoder is 'qwen2'")
        if not 0 <= self.audio_token_index < self.text.vocab_size:
            raise ConfigError(f"audio_token_index={self.audio_token_index} is outside the text vocabulary "
                              f"(vocab_size={self.text.vocab_size})")
        if self.chunk_tokens is not None:
            check_chunk_tokens(self.chunk_tokens, self.encoder, "chunk_tokens")

    @property
    def chunk(self) -> int:
        """The streaming chunk in encoder tokens (``chunk_tokens`` resolved)."""
        if self.chunk_tokens is not None:
            return self.chunk_tokens
        return 25 if self.encoder.num_tokens % 25 == 0 else self.encoder.num_tokens

    # the text decoder's fields that callers of a text config read
    @property
    def vocab_size(self) -> int:
        return self.text.vocab_size

    @property
    def hidden_size(self) -> int:
        return self.text.hidden_size

    @property
    def dtype(self) -> str:
        return self.text.dtype

    def replace(self, **kw) -> "AudioModelConfig":
        return dataclasses.replace(self, **kw)


def check_chunk_tokens(k: int, enc: EncoderConfig, where: str = "chunk_tokens") -> int:
    if not isinstance(k, int) or k <= 0:
        raise ConfigError(f"{where}={k!r}: expected a positive whole number of encoder tokens")
    if enc.num_tokens % k:
        raise ConfigError(f"{where}={k}: must divide the {enc.num_tokens} tokens of one encoder window "
                          f"({enc.num_tokens * MS_PER_TOKEN // 1000} s) so that no chunk straddles two windows")
    return k


def chunk_tokens_from_ms(ms: float, enc: EncoderConfig | None = None, where: str = "chunk_ms") -> int:
    """A chunk length in milliseconds as encoder tokens (40 ms each); anything else is an error."""
    tokens = ms / MS_PER_TOKEN
    if ms <= 0 or tokens != int(tokens):
        raise ConfigError(f"{where}={ms}: not a whole number of encoder tokens ({MS_PER_TOKEN} ms each; "
                          f"e.g. 1000 ms = 25 tokens)")
    return check_chunk_tokens(int(tokens), enc or EncoderConfig(), where)


def parse_encoder_mask(spec: str) -> tuple[str, int]:
    """``"bidirectional"`` | ``"causal"`` | ``"block:K"`` -> (kind, K)."""
    if spec in ("bidirectional", "causal"):
        return spec, 0
    if isinstance(spec, str) and spec.startswith("block:"):
        try:
            k = int(spec[6:])
        except ValueError:
            k = 0
        if k > 0:
            return "block", k
    raise ConfigError(f"encoder mask {spec!r}: expected one of {ENCODER_MASKS} with K a positive integer")


_ENC_KEYS = ("num_mel_bins", "d_model", "encoder_layers", "encoder_attention_heads", "encoder_ffn_dim",
             "max_source_positions", "activation_function", "scale_embedding")


def from_hf_dict_audio(hf: Mapping[str, Any], *, dtype: str = "float32", source: str = "config.json",
                       **compute) -> AudioModelConfig:
    """An :class:`AudioModelConfig` from a parsed Qwen2-Audio ``config.json``.

    Both sub-configs must be present: transformers silently fills a missing one with the 7B default,
    which is never what a small checkpoint holds. ``text.tie_word_embeddings`` is ``text_config``'s (a top-level
    ``tie_word_embeddings`` is ignored, as transformers does).
    """
    for key in ("audio_config", "text_config"):
        if not isinstance(hf.get(key), Mapping):
            raise ConfigError(f"{source}: qwen2_audio config needs a '{key}' object (a missing one would "
                              f"silently become the 7B default)")
    a = dict(hf["audio_config"])
    missing = [k for k in _ENC_KEYS[:6] if k not in a]
    if missing:
        raise ConfigError(f"{source}: audio_config is missing {missing}")
    enc = EncoderConfig(**{k: a[k] for k in _ENC_KEYS if k in a}, dtype=dtype,
                        scan_layers=compute.get("scan_layers", True), remat=compute.get("remat", False))
    text_hf = dict(hf["text_config"])
    text_hf.setdefault("model_type", "qwen2")
    # the decoder's declared tie is text_config's (Qwen2Config default false); a top-level tie_word_embeddings is
    # not it: transformers 4 ties by get_text_config(decoder=True) = text_config, and transformers 5's
    # Qwen2AudioForConditionalGeneration ties nothing (models.hf.resolve_tie then follows the tensors in the file)
    text_hf.setdefault("tie_word_embeddings", False)
    text = from_hf_dict(text_hf, dtype=dtype, source=f"{source} text_config", **compute)
    token = hf.get("audio_token_index", hf.get("audio_token_id", 151646))
    return AudioModelConfig(text=text, encoder=enc, audio_token_index=int(token))


def to_hf_dict_audio(cfg: AudioModelConfig, *, layout: str = "v4", torch_dtype: str = "float32") -> dict:
    text = to_hf_dict(cfg.text, layout=layout, torch_dtype=torch_dtype)
    text.pop("architectures", None)
    text.pop("torch_dtype", None)
    enc = cfg.encoder
    audio = {k: getattr(enc, k) for k in _ENC_KEYS}
    audio.update(model_type="qwen2_audio_encoder", dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
                 encoder_layerdrop=0.0, initializer_range=0.02)
    return {"architectures": ["Qwen2AudioForConditionalGeneration"], "model_type": "qwen2_audio",
            "audio_config": audio, "text_config": text, "audio_token_index": cfg.audio_token_index,
            "torch_dtype": torch_dtype, "dtype": torch_dtype}
