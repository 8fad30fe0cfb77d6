"""Qwen2-Audio's audio encoder and whole model as pure functions over a parameter pytree.

The encoder and projector are the linen modules of :mod:`.audio_encoder`; this module is their functional
interface, as :mod:`.qwen`'s entry points are the decoder's: :func:`init_params` / :func:`abstract_params`,
:func:`apply_encoder` (any stretch of a window against an :class:`EncoderState`), :func:`encode_window` /
:func:`encode` (whole windows under a mask and a conv edge), :func:`chunk_step` / :func:`encode_chunk` (chunk by
chunk) and :func:`forward_audio` (the whole model's logits).

Parameters (names mirror the HF tensors, see :mod:`.hf_names`): ``params["audio_tower"]`` and
``params["multi_modal_projector"]`` (the encoder's, :data:`ENCODER_PARTS`) and ``params["language_model"]`` (the
Qwen2 decoder of :mod:`.qwen`). ``conv_edge="zero"`` replaces the frame after each chunk of ``chunk_tokens``
tokens by zero (the padding a chunk sees when it is encoded alone), ``"lookahead"`` keeps it (10 ms of right
context, the released behaviour).
"""

from __future__ import annotations

import functools
import operator

import jax
import jax.numpy as jnp
import numpy as np

from proactive_jax.models.audio_config import CONV_EDGES, AudioModelConfig, check_chunk_tokens, parse_encoder_mask
from proactive_jax.models.audio_encoder import AudioEncoder, EncoderState, empty_state, sinusoids

Array = jax.Array
ENCODER_PARTS = ("audio_tower", "multi_modal_projector")  # the encoder's top-level parameter names


def output_lengths(valid_frames):
    """``(attention positions, output tokens)`` of ``valid_frames`` mel frames (transformers' formula)."""
    pre = (valid_frames - 1) // 2 + 1
    return pre, (pre - 2) // 2 + 1


# ---------------------------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------------------------

def make_encoder(config: AudioModelConfig, mask: str = "causal") -> AudioEncoder:
    return AudioEncoder(config.encoder, config.text.hidden_size, mask)


def init_encoder_params(config: AudioModelConfig, rng: Array | int = 0) -> dict:
    """Random encoder + projector parameters (normal(0.02) kernels, zero biases, LayerNorms at one, sinusoid
    positions), as a plain nested dict with the keys :data:`ENCODER_PARTS`."""
    if isinstance(rng, int):
        rng = jax.random.PRNGKey(rng)
    return _init_jit(config.encoder, config.text.hidden_size, rng)


def _init_fn(enc, hidden_size: int, rng):
    frames = 4  # any stretch initialises every parameter (the position table has its own size)
    state = empty_state(enc, 1, frames // 2)
    mel = jnp.zeros((1, frames, enc.num_mel_bins), jnp.float32)
    variables = AudioEncoder(enc, hidden_size).init(rng, mel, state, jnp.ones((frames,), bool))
    return dict(variables["params"])


_init_jit = jax.jit(_init_fn, static_argnums=(0, 1))


# The order in which :func:`init_params` draws the encoder's normal(0.02) kernels from its numpy generator (the
# decoder's follow, in tree order): fixed, so that a seed names the same parameters from one version to the next.
_LAYERS, _ATTN = ("audio_tower", "layers"), ("audio_tower", "layers", "self_attn")
ENCODER_DRAW_ORDER = (_ATTN + ("q_proj",), _ATTN + ("k_proj",), _ATTN + ("v_proj",), _ATTN + ("out_proj",),
                      _LAYERS + ("fc1",), _LAYERS + ("fc2",), ("audio_tower", "conv1"), ("audio_tower", "conv2"),
                      ("multi_modal_projector", "linear"))


def _constant_leaf(name: str, shape) -> np.ndarray | None:
    """A numpy init's constant leaves by name: norm weights and LayerNorm scales one, biases zero; None for the
    others."""
    if name in ("weight", "scale"):
        return np.ones(shape, np.float32)
    if name == "bias":
        return np.zeros(shape, np.float32)
    return None


def _init_encoder_numpy(abstract: dict, rng: np.random.Generator) -> dict:
    """The encoder's parameters (shapes from ``abstract``) with numpy: the kernels normal(0.02), drawn in
    :data:`ENCODER_DRAW_ORDER`, the position table Whisper's sinusoids."""
    kernels = {path: rng.normal(0.0, 0.02, functools.reduce(operator.getitem, path + ("kernel",), abstract).shape
                                ).astype(np.float32) for path in ENCODER_DRAW_ORDER}

    def leaf(path, x):
        keys = tuple(getattr(p, "key", "") for p in path)
        if keys[-1] == "kernel" and keys[:-1] in kernels:
            return kernels[keys[:-1]]
        if keys[-2:] == ("embed_positions", "embedding"):
            return sinusoids(*x.shape)
        value = _constant_leaf(keys[-1], x.shape)
        if value is None:
            raise AssertionError(f"{'/'.join(keys)}: no numpy init (a kernel missing from ENCODER_DRAW_ORDER?)")
        return value

    return jax.tree_util.tree_map_with_path(leaf, abstract)


def _init_text_numpy(text_cfg, rng: np.random.Generator) -> dict:
    """The decoder's parameters with numpy (norm weights one, biases zero, the rest normal(0.02)): the
    same distribution as :func:`proactive_jax.models.qwen.init_params`, without compiling flax's init."""
    from proactive_jax.models.qwen import abstract_params as text_abstract

    def leaf(path, x):
        value = _constant_leaf(getattr(path[-1], "key", ""), x.shape)
        return rng.normal(0.0, 0.02, x.shape).astype(np.float32) if value is None else value

    return jax.tree_util.tree_map_with_path(leaf, text_abstract(text_cfg))


def init_params(config: AudioModelConfig, seed: int = 0) -> dict:
    """Random parameters of the whole Qwen2-Audio model as numpy arrays on the host (``jax.device_put`` to
    place), with the distribution of :func:`init_encoder_params` and :func:`~.qwen.init_params`; nothing is
    compiled and one seed gives the same parameters in every version (:data:`ENCODER_DRAW_ORDER`)."""
    rng = np.random.default_rng(seed)
    params = _init_encoder_numpy(abstract_encoder_params(config), rng)
    params["language_model"] = _init_text_numpy(config.text, rng)
    return params


def abstract_encoder_params(config: AudioModelConfig) -> dict:
    """The encoder + projector parameters' shapes/dtypes (``jax.ShapeDtypeStruct``), nothing allocated."""
    return jax.eval_shape(lambda: init_encoder_params(config, jax.random.PRNGKey(0)))


def abstract_params(config: AudioModelConfig) -> dict:
    """The whole model's parameter shapes/dtypes (``jax.ShapeDtypeStruct``), nothing allocated."""
    from proactive_jax.models.qwen import abstract_params as text_abstract

    return {**abstract_encoder_params(config), "language_model": text_abstract(config.text)}


# ---------------------------------------------------------------------------------------------
# The encoder over a stretch of a window
# ---------------------------------------------------------------------------------------------

def apply_encoder(config: AudioModelConfig, params, mel, state: EncoderState, zero_next, limit=None, *,
                  mask: str = "causal") -> tuple[Array, EncoderState]:
    """Audio embeddings ``[B, F/4, hidden]`` (float32) of ``mel`` [B, F, bins] (time-major) continuing
    ``state``, and the new state: see :meth:`.audio_encoder.AudioTower.__call__` for ``zero_next`` and
    ``limit``; ``mask`` (static): "bidirectional" | "causal" | "block:K". ``params``: the whole model's tree
    (only :data:`ENCODER_PARTS` are read)."""
    variables = {"params": {k: params[k] for k in ENCODER_PARTS}}
    return make_encoder(config, mask).apply(variables, mel, state, zero_next, limit)


def _zero_next(frames: int, conv_edge: str, chunk_tokens: int) -> np.ndarray:
    if conv_edge not in CONV_EDGES:
        raise ValueError(f"conv_edge={conv_edge!r}: expected one of {CONV_EDGES}")
    f = np.arange(frames)
    edge = (f + 1) % (4 * chunk_tokens) == 0 if conv_edge == "zero" else np.zeros(frames, bool)
    return edge | (f == frames - 1)


def encode_window(config: AudioModelConfig, params, feats, valid, *, mask: str = "causal", conv_edge: str = "zero",
                  chunk_tokens: int | None = None) -> Array:
    """Projected audio embeddings ``[B, frames / 4, hidden]`` (float32) of whole windows ``feats``
    [B, bins, frames] with ``valid`` [B] valid mel frames: the traceable body of :func:`encode` (unchecked;
    ``mask``, ``conv_edge`` and ``chunk_tokens``, default ``config.chunk``, are static)."""
    b, _, frames = feats.shape
    zero_next = jnp.asarray(_zero_next(frames, conv_edge, chunk_tokens or config.chunk))
    pre, _ = output_lengths(valid)
    emb, _ = apply_encoder(config, params, jnp.swapaxes(feats, 1, 2), empty_state(config.encoder, b, frames // 2),
                           zero_next, pre, mask=mask)
    return emb


_encode_jit = jax.jit(encode_window, static_argnums=0, static_argnames=("mask", "conv_edge", "chunk_tokens"))


def _check_features(config: AudioModelConfig, input_features, feature_attention_mask):
    enc = config.encoder
    feats = jnp.asarray(input_features, jnp.float32)
    if feats.ndim != 3 or feats.shape[1] != enc.num_mel_bins or feats.shape[2] != enc.num_frames:
        raise ValueError(f"input_features: expected [audios, {enc.num_mel_bins}, {enc.num_frames}] "
                         f"(num_mel_bins, 2 x max_source_positions frames), got {list(feats.shape)}")
    fam = np.asarray(feature_attention_mask)
    if fam.shape != (feats.shape[0], enc.num_frames):
        raise ValueError(f"feature_attention_mask: expected shape {[feats.shape[0], enc.num_frames]}, "
                         f"got {list(fam.shape)}")
    valid = fam.astype(np.int32).sum(-1)
    if (valid < 1).any():
        raise ValueError(f"feature_attention_mask: audio {int(np.argmin(valid))} has no valid frame")
    return feats, jnp.asarray(valid, jnp.int32)


def encode(config: AudioModelConfig, params, input_features, feature_attention_mask, mask: str = "causal",
           conv_edge: str = "zero", chunk_tokens: int | None = None):
    """Projected audio embeddings ``[audios, max_source_positions // 2, hidden]`` (float32).

    ``input_features`` [audios, num_mel_bins, 2 * max_source_positions]; ``feature_attention_mask``
    [audios, frames] (1 = valid frame). Tokens past ``output_lengths(mask.sum(-1))[1]`` are padding.
    ``mask``: "bidirectional" | "causal" | "block:K"; ``conv_edge``: "zero" | "lookahead", with chunks of
    ``chunk_tokens`` output tokens (default ``config.chunk``).
    """
    parse_encoder_mask(mask)
    k = check_chunk_tokens(chunk_tokens or config.chunk, config.encoder, "chunk_tokens")
    if conv_edge not in CONV_EDGES:
        raise ValueError(f"conv_edge={conv_edge!r}: expected one of {CONV_EDGES}")
    feats, valid = _check_features(config, input_features, feature_attention_mask)
    return _encode_jit(config, params, feats, valid, mask=mask, conv_edge=conv_edge, chunk_tokens=k)


# ---------------------------------------------------------------------------------------------
# Chunk by chunk (causal mask, conv_edge zero)
# ---------------------------------------------------------------------------------------------

def init_encoder_state(config: AudioModelConfig, batch: int) -> EncoderState:
    """The chunk encoder's state at the start of a window (K/V caches of the whole window)."""
    return empty_state(config.encoder, batch, config.encoder.max_source_positions)


def chunk_step(config: AudioModelConfig, params, state: EncoderState, mel_chunk):
    """The chunk encoder's pure step: ``mel_chunk`` [B, 4K, bins] (time-major) -> (new state, [B, K, hidden]).
    ``state.pos`` is a scalar (one window position for the batch) or [B] (per row; K/V caches
    [layers, B, positions, ...]). :func:`encode_chunk` is the checked public entry."""
    zero_next = np.zeros(mel_chunk.shape[1], bool)
    zero_next[-1] = True  # the chunk's edge: the next frame is not heard yet
    emb, state = apply_encoder(config, params, mel_chunk, state, jnp.asarray(zero_next))
    return state, emb


_chunk_jit = jax.jit(chunk_step, static_argnums=0)


def encode_chunk(config: AudioModelConfig, params, state: EncoderState, mel_chunk) -> tuple[EncoderState, Array]:
    """Encode the next chunk of one window under the causal mask with ``conv_edge="zero"``.

    ``mel_chunk`` [B, num_mel_bins, 4 * K] (K output tokens); returns the new state and ``[B, K, hidden]``.
    Equal to :func:`encode` (mask "causal", conv edge "zero", ``chunk_tokens=K``) on the whole window.
    """
    mel = jnp.asarray(mel_chunk, jnp.float32)
    enc = config.encoder
    if mel.ndim != 3 or mel.shape[1] != enc.num_mel_bins or mel.shape[2] % 4:
        raise ValueError(f"mel_chunk: expected [batch, {enc.num_mel_bins}, 4 * K frames], got {list(mel.shape)}")
    if int(state.pos) + mel.shape[2] // 2 > enc.max_source_positions:
        raise ValueError(f"mel_chunk: {mel.shape[2]} more frames overflow the encoder window of {enc.num_frames} "
                         f"frames (start a new window with init_encoder_state)")
    return _chunk_jit(config, params, state, jnp.swapaxes(mel, 1, 2))


# ---------------------------------------------------------------------------------------------
# Audio embeddings into the text sequence; the full model's logits
# ---------------------------------------------------------------------------------------------

def scatter_audio(config: AudioModelConfig, params, input_ids, audio_embeds, audio_valid):
    """Token embeddings of ``input_ids`` with the valid audio embeddings put, in order, into the
    ``<|AUDIO|>`` slots (the i-th placeholder of the batch, row-major, gets the i-th valid audio token)."""
    from proactive_jax.models.qwen import embed_ids

    x = embed_ids(config.text, params["language_model"], input_ids).astype(jnp.float32)
    flat = audio_embeds.reshape(-1, audio_embeds.shape[-1])
    order = jnp.argsort(~audio_valid.reshape(-1), stable=True)  # valid tokens first, in order
    is_audio = input_ids == config.audio_token_index
    rank = jnp.cumsum(is_audio.reshape(-1)) - 1
    src = flat[order[jnp.clip(rank, 0, flat.shape[0] - 1)]].reshape(x.shape)
    return jnp.where(is_audio[..., None], src, x)


def lm_logits_from_embeds(text_cfg, lm_params, embeds, positions, mask_vec):
    """The Qwen2 decoder's logits on input embeddings ``[B, T, D]`` (no token lookup)."""
    from proactive_jax.models import qwen

    ids = jnp.zeros(embeds.shape[:2], jnp.int32)
    h = qwen.apply_hidden(text_cfg, lm_params, ids, positions, mask_vec, input_embeds=embeds).hidden
    return qwen.hidden_to_logits(text_cfg, lm_params, h)


def _forward_audio_fn(config: AudioModelConfig, encoder_mask: str, params, input_ids, feats, valid):
    from proactive_jax.models.attention import causal_vectors

    k = config.chunk
    audio = encode_window(config, params, feats, valid, mask=encoder_mask, conv_edge="lookahead", chunk_tokens=k)
    _, n_out = output_lengths(valid)
    audio_valid = jnp.arange(audio.shape[1])[None, :] < n_out[:, None]
    x = scatter_audio(config, params, input_ids, audio, audio_valid)
    b, t = input_ids.shape
    positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    return lm_logits_from_embeds(config.text, params["language_model"], x, positions, causal_vectors(b, t))


_forward_audio_jit = jax.jit(_forward_audio_fn, static_argnums=(0, 1))


def forward_audio(config: AudioModelConfig, params, input_ids, input_features, feature_attention_mask,
                  encoder_mask: str = "bidirectional") -> Array:
    """Logits ``[B, T, V]`` (float32) of Qwen2-Audio, as ``Qwen2AudioForConditionalGeneration(...).logits``.

    ``input_ids`` holds one ``<|AUDIO|>`` id per audio token (as transformers 5's processor expands them):
    their count must equal the valid audio tokens of all audios. The conv front end is the released one
    (``lookahead``); ``encoder_mask`` "causal" / "block:K" runs the encoder under that mask.
    """
    parse_encoder_mask(encoder_mask)
    ids = np.asarray(input_ids)
    if ids.ndim != 2:
        raise ValueError(f"input_ids must be [batch, length], got shape {list(ids.shape)}")
    feats, valid = _check_features(config, input_features, feature_attention_mask)
    n_slots = int((ids == config.audio_token_index).sum())
    n_tokens = int(np.asarray(output_lengths(valid)[1]).sum())
    if n_slots != n_tokens:
        raise ValueError(f"input_ids: {n_slots} <|AUDIO|> placeholders (id {config.audio_token_index}) but the "
                         f"audio gives {n_tokens} tokens (from feature_attention_mask)")
    return _forward_audio_jit(config, encoder_mask, params, jnp.asarray(ids, jnp.int32), feats, valid)
