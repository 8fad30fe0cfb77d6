"""The two kinds of model this package runs, a text decoder (:class:`ModelConfig`) and Qwen2-Audio
(:class:`~proactive_jax.models.audio_config.AudioModelConfig`, an encoder + that decoder), and the few functions
that take either: what kind a config is, its text decoder, its plain-dict form (checkpoint meta) and its
parameter shapes."""

from __future__ import annotations

import dataclasses

from proactive_jax.models.config import ModelConfig, _freeze_rope_scaling

AUDIO_MODEL_TYPE = "qwen2_audio"


def is_audio(cfg) -> bool:
    """True for a Qwen2-Audio config (an encoder + a text decoder), False for a text decoder."""
    return getattr(cfg, "model_type", None) == AUDIO_MODEL_TYPE


def text_config(cfg) -> ModelConfig:
    """The text decoder's config: ``cfg`` itself, or a Qwen2-Audio config's ``text``."""
    return cfg.text if is_audio(cfg) else cfg


def model_config_to_dict(cfg: ModelConfig) -> dict:
    if is_audio(cfg):  # AudioModelConfig: its text decoder as below
        return {"model_type": "qwen2_audio", "text": model_config_to_dict(cfg.text),
                "encoder": dataclasses.asdict(cfg.encoder), "audio_token_index": cfg.audio_token_index,
                "chunk_tokens": cfg.chunk_tokens}
    d = dataclasses.asdict(cfg)
    if cfg.rope_scaling is not None:
        d["rope_scaling"] = dict(cfg.rope_scaling)
    if isinstance(cfg.eos_token_id, tuple):
        d["eos_token_id"] = list(cfg.eos_token_id)
    return d


def model_config_from_dict(d: dict) -> ModelConfig:
    if d.get("model_type") == "qwen2_audio":
        from proactive_jax.models.audio_config import AudioModelConfig, EncoderConfig

        names = {f.name for f in dataclasses.fields(EncoderConfig)}
        return AudioModelConfig(text=model_config_from_dict(d["text"]),
                                encoder=EncoderConfig(**{k: v for k, v in d["encoder"].items() if k in names}),
                                audio_token_index=int(d["audio_token_index"]), chunk_tokens=d.get("chunk_tokens"))
    d = dict(d)
    d["rope_scaling"] = _freeze_rope_scaling(d.get("rope_scaling"))
    if isinstance(d.get("eos_token_id"), list):
        d["eos_token_id"] = tuple(d["eos_token_id"])
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    return ModelConfig(**{k: v for k, v in d.items() if k in names})


def abstract_params_of(cfg):
    """The parameter tree's shapes (``ShapeDtypeStruct``) of a text or a qwen2_audio model."""
    if is_audio(cfg):
        from proactive_jax.models.audio import abstract_params
    else:
        from proactive_jax.models.qwen import abstract_params
    return abstract_params(cfg)
