"""The model config of a run and its initial train state: fresh (random or from a HF directory), from another
run's checkpoint, or resumed from this run's own checkpoints."""

from __future__ import annotations

import logging
from pathlib import Path

import jax
import jax.numpy as jnp

from proactive_jax.models.config import ModelConfig
from proactive_jax.models.hf import load_model_config
from proactive_jax.errors import CheckpointError
from proactive_jax.models.kinds import AUDIO_MODEL_TYPE, is_audio, model_config_from_dict
from proactive_jax.training.checkpoint import restore_params
from proactive_jax.training.mesh import path_keys, place
from proactive_jax.config import check_fields
from proactive_jax.errors import ConfigError
from proactive_jax.models.presets import MODEL_PRESETS
from proactive_jax.training.run_config import ModelSection, RunConfig

log = logging.getLogger(__name__)


def resolve_model_config(sec: ModelSection, audio=None):
    """The run's model config: a ``ModelConfig``, or an ``AudioModelConfig`` (``qwen2_audio``) whose text decoder
    takes ``model.config`` and whose encoder takes ``model.audio_config``; ``audio`` (the run's ``AudioSection``)
    sets the streaming chunk."""
    compute = dict(dtype=sec.dtype, remat=sec.remat, scan_layers=sec.scan_layers, attention=sec.attention)
    if sec.hf_dir is not None:
        if not Path(sec.hf_dir).is_dir():
            raise FileNotFoundError(f"model.hf_dir={sec.hf_dir}: directory does not exist (expected a Hugging "
                                    "Face checkpoint directory with config.json and *.safetensors)")
        cfg = load_model_config(sec.hf_dir)
    elif sec.config_json is not None:
        if not Path(sec.config_json).exists():
            raise FileNotFoundError(f"model.config_json={sec.config_json}: file not found")
        cfg = load_model_config(sec.config_json)
    elif sec.preset is not None:
        preset = MODEL_PRESETS[sec.preset]
        if preset.get("model_type") == AUDIO_MODEL_TYPE:
            from proactive_jax.models.audio_config import from_hf_dict_audio

            cfg = from_hf_dict_audio(preset, source=f"model.preset={sec.preset}")
        else:
            cfg = ModelConfig(**preset)
    else:
        cfg = ModelConfig()
    over = check_fields(ModelConfig, sec.config, "model.config")
    if is_audio(cfg):
        return _audio_model_config(cfg, sec, over, compute, audio)
    if sec.audio_config:
        raise ConfigError(f"model.audio_config is set but the model is {cfg.model_type}, not qwen2_audio")
    try:
        return cfg.replace(**over, **compute)
    except ValueError as e:
        raise ConfigError(f"model.config: {e}") from None


def _audio_model_config(cfg, sec: ModelSection, over: dict, compute: dict, audio):
    import dataclasses

    from proactive_jax.models.audio_config import EncoderConfig, chunk_tokens_from_ms

    enc_over = check_fields(EncoderConfig, sec.audio_config, "model.audio_config")
    try:
        text = cfg.text.replace(**over, **compute)
        enc = dataclasses.replace(cfg.encoder, **enc_over, dtype=sec.dtype, scan_layers=sec.scan_layers,
                                  remat=sec.remat)
    except ValueError as e:
        raise ConfigError(f"model.config / model.audio_config: {e}") from None
    chunk = None
    if audio is not None:
        try:
            chunk = chunk_tokens_from_ms(audio.chunk_ms, enc, "the chunk in tokens")
        except ValueError as e:
            raise ConfigError(f"audio.chunk_ms={audio.chunk_ms:g}: {e}") from None
    try:
        return cfg.replace(text=text, encoder=enc, chunk_tokens=chunk)
    except ValueError as e:
        raise ConfigError(f"model: {e}") from None


def initial_params(run: RunConfig, model_cfg: ModelConfig, p_sh, init_params):
    from proactive_jax.models.qwen import init_params as random_params

    sec = run.model
    if init_params is not None:  # copied: the caller's arrays are not consumed by the donated state
        return jax.tree.map(lambda x: x.copy(), place(init_params, p_sh)), "given"
    mode = sec.init
    if mode == "auto":
        mode = "hf" if sec.hf_dir is not None else "random"
    if mode == "hf":
        from proactive_jax.models.hf import load_pretrained

        saved = load_model_config(sec.hf_dir)
        if shape_signature(saved) != shape_signature(model_cfg):
            raise ConfigError(f"model.config changes the shape of the weights in model.hf_dir={sec.hf_dir} "
                                 f"({ {k: sec.config[k] for k in sec.config if k in SHAPE_FIELDS} }); "
                                 "use model.init=random or drop those overrides")
        flat = {}
        for path, s in jax.tree_util.tree_flatten_with_path(p_sh)[0]:
            flat[path_keys(path)] = s
        _, params = load_pretrained(sec.hf_dir, dtype=model_cfg.dtype,
                                    place=lambda path, x: place(x, flat[tuple(path)]))
        return params, f"hf:{sec.hf_dir}"
    if mode == "checkpoint":
        cfg, params, _, step = restore_params(sec.init_checkpoint, sec.init_step, shardings=p_sh)
        check_same_shape(cfg, model_cfg, f"model.init_checkpoint={sec.init_checkpoint}")
        return params, f"checkpoint:{sec.init_checkpoint}@{step}"
    seed = run.seed if sec.init_seed is None else sec.init_seed
    if is_audio(model_cfg):  # numpy init on the host, then placed
        from proactive_jax.models.audio import init_params as audio_params

        return place(audio_params(model_cfg, seed), p_sh), f"random:{seed}"
    params = jax.jit(lambda: random_params(model_cfg, seed), out_shardings=p_sh)()
    return params, f"random:{seed}"


SHAPE_FIELDS = ("model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                 "num_attention_heads", "num_key_value_heads", "head_dim", "tie_word_embeddings", "qkv_bias",
                 "o_bias", "qk_norm")


ENCODER_SHAPE_FIELDS = ("num_mel_bins", "d_model", "encoder_layers", "encoder_attention_heads", "encoder_ffn_dim",
                        "max_source_positions")


def shape_signature(cfg) -> dict:
    """The fields that decide the shapes of a model's weights (text decoder and, for qwen2_audio, the encoder)."""
    if is_audio(cfg):
        return {"model_type": AUDIO_MODEL_TYPE, **{f"text.{k}": getattr(cfg.text, k) for k in SHAPE_FIELDS},
                **{f"encoder.{k}": getattr(cfg.encoder, k) for k in ENCODER_SHAPE_FIELDS}}
    return {k: getattr(cfg, k) for k in SHAPE_FIELDS}


def check_same_shape(saved: ModelConfig, cur: ModelConfig, where: str) -> None:
    a, b = shape_signature(saved), shape_signature(cur)
    diff = {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}
    if diff:
        raise CheckpointError(f"{where}: the checkpoint's model differs from the configured one "
                              f"(field: saved vs configured): {diff}")


def _restore_state(store, step0: int, model_cfg: ModelConfig, sh, abstract) -> dict:
    """The verified train state of ``step0`` on the shardings ``sh``."""
    meta = store.restore_meta(step0)
    if "model_config" in meta:
        check_same_shape(model_config_from_dict(meta["model_config"]), model_cfg, f"{store.directory}/{step0}")
    tgt = lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s)  # noqa: E731
    params, tr, _ = store.restore(step0, jax.tree.map(tgt, abstract["params"], sh["params"]),
                                  jax.tree.map(tgt, {"step": abstract["step"], "opt_state": abstract["opt_state"]},
                                               {"step": sh["step"], "opt_state": sh["opt_state"]}))
    return {"step": tr["step"], "params": params, "opt_state": tr["opt_state"]}


def restore_or_init(run: RunConfig, model_cfg: ModelConfig, store, sh, abstract, tx, init_params=None):
    """``(state, source)``: the train state ``{"step", "params", "opt_state"}`` on the shardings ``sh``, resumed
    from ``store`` (``checkpoint.resume`` / ``restore_step``) or freshly initialised (``model.init``)."""
    ckpt = run.checkpoint
    steps_on_disk = store.all_steps()
    if steps_on_disk and ckpt.resume == "never":
        raise CheckpointError(f"{store.directory}: holds checkpoints {steps_on_disk} but checkpoint.resume=never; "
                              "choose another out_dir or checkpoint.resume=auto")
    if not steps_on_disk and ckpt.resume == "require":
        raise CheckpointError(f"{store.directory}: no checkpoint to resume from (checkpoint.resume=require)")
    if steps_on_disk and ckpt.resume != "never":
        if ckpt.restore_step is not None and store.rolled_back_to() == ckpt.restore_step \
                and steps_on_disk[-1] > ckpt.restore_step:
            log.info("checkpoint.restore_step=%d was applied by an earlier run (%s); resuming from the latest step",
                     ckpt.restore_step, store.directory / "rolled_back")
        elif ckpt.restore_step is not None:
            store.check_step(ckpt.restore_step)
            state = _restore_state(store, ckpt.restore_step, model_cfg, sh, abstract)
            later = [s for s in steps_on_disk if s > ckpt.restore_step]
            if later:  # the rollback: the restored line of history becomes the live one
                store.set_aside(later, f"checkpoint.restore_step={ckpt.restore_step} rolls the run back",
                                rollback_to=ckpt.restore_step)
            return state, f"resumed:{store.directory}@{ckpt.restore_step}"
        bad: list[int] = []
        for step0 in reversed(steps_on_disk):
            try:
                state = _restore_state(store, step0, model_cfg, sh, abstract)
            except CheckpointError as e:
                if ckpt.on_corrupt != "fallback" or "model differs" in str(e):
                    raise
                log.warning("checkpoint step %d is not usable, trying an older one: %s", step0, e)
                bad.append(step0)
                continue
            if bad:
                store.set_aside(bad, f"corrupt; resumed from the newest intact step {step0} "
                                     "(checkpoint.on_corrupt=fallback)")
            return state, f"resumed:{store.directory}@{step0}"
        raise CheckpointError(f"{store.directory}: no intact checkpoint among steps {steps_on_disk} "
                              "(checkpoint.on_corrupt=fallback); choose another out_dir or checkpoint.resume=never")
    params, source = initial_params(run, model_cfg, sh["params"], init_params)
    opt_state = jax.jit(tx.init, out_shardings=sh["opt_state"])(params)
    return {"step": jax.device_put(jnp.int32(0), sh["step"]), "params": params, "opt_state": opt_state}, source
