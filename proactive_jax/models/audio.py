"""Qwen2-Audio's Whisper-style audio encoder and projector, as pure functions over a parameter pytree.

Parameters (names mirror the HF tensors, see :mod:`.hf`): ``params["audio_tower"]`` (``conv1``, ``conv2``
with kernels ``[3, in, out]``, the stored ``embed_positions`` table, ``layers`` stacked on a leading axis and
scanned, the final ``layer_norm``), ``params["multi_modal_projector"]["linear"]`` and
``params["language_model"]`` (the Qwen2 decoder of :mod:`.qwen`). fp32 master weights; ``encoder.dtype``
"bfloat16" computes in bf16 with fp32 LayerNorm statistics and softmax.

The encoder is written once, for a KV cache of ``capacity`` slots: encoding a whole window is the case
"empty cache, write every position" and encoding chunk by chunk (:func:`encode_chunk`) writes each chunk's
positions after the earlier ones. Masks are data: every position carries a block id; key k is visible to
query q iff k holds valid audio and ``block[k] <= block[q]``, with block = 0 (``bidirectional``, the released
model), the position itself (``causal``, over the attention positions, 50 per second) or the position's
chunk of K output tokens (``block:K``). The conv front end is three shifted matmuls; ``conv_edge="zero"``
replaces the frame after each chunk of ``chunk_tokens`` tokens by zero (the padding a chunk sees when it
is encoded alone), ``"lookahead"`` keeps it (10 ms of right context, the released behaviour).
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from proactive_jax.models.attention import dense_attention
from proactive_jax.models.audio_config import CONV_EDGES, AudioModelConfig, EncoderConfig, check_chunk_tokens, parse_encoder_mask

logger = logging.getLogger(__name__)
Array = jax.Array


def output_lengths(valid_frames):
    """``(attention positions, output tokens)`` of ``valid_frames`` mel frames (transformers' formula)."""
    pre = (valid_frames - 1) // 2 + 1
    return pre, (pre - 2) // 2 + 1


# ---------------------------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------------------------

def _encoder_tree(enc: EncoderConfig, out_dim: int, make) -> dict:
    """The encoder + projector tree; ``make(kind, shape)`` builds each leaf (kind: normal/zeros/ones/positions)."""
    d, f, m, n = enc.d_model, enc.encoder_ffn_dim, enc.num_mel_bins, enc.encoder_layers
    ln = lambda *lead: {"scale": make("ones", (*lead, d)), "bias": make("zeros", (*lead, d))}  # noqa: E731

    def lin(i, o, bias=True, lead=(n,)):
        p = {"kernel": make("normal", (*lead, i, o))}
        if bias:
            p["bias"] = make("zeros", (*lead, o))
        return p

    layers = {"self_attn_layer_norm": ln(n), "final_layer_norm": ln(n),
              "self_attn": {"q_proj": lin(d, d), "k_proj": lin(d, d, bias=False), "v_proj": lin(d, d),
                            "out_proj": lin(d, d)},
              "fc1": lin(d, f), "fc2": lin(f, d)}
    tower = {"conv1": {"kernel": make("normal", (3, m, d)), "bias": make("zeros", (d,))},
             "conv2": {"kernel": make("normal", (3, d, d)), "bias": make("zeros", (d,))},
             "embed_positions": {"embedding": make("positions", (enc.max_source_positions, d))},
             "layers": layers, "layer_norm": ln()}
    return {"audio_tower": tower, "multi_modal_projector": {"linear": lin(d, out_dim, lead=())}}


def init_encoder_params(enc: EncoderConfig, out_dim: int, rng: np.random.Generator) -> dict:
    """Random encoder + projector parameters (numpy: normal(0.02), LayerNorms at one/zero, sinusoid positions)."""
    def make(kind, shape):
        if kind == "normal":
            return rng.normal(0.0, 0.02, shape).astype(np.float32)
        if kind == "positions":
            return sinusoids(*shape)
        return (np.ones if kind == "ones" else np.zeros)(shape, np.float32)

    return _encoder_tree(enc, out_dim, make)


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> np.ndarray:
    """Whisper's sinusoid table (only for random init; checkpoints store theirs and it is loaded)."""
    inc = np.log(max_timescale) / (channels // 2 - 1)
    inv = np.exp(-inc * np.arange(channels // 2))
    t = np.arange(length)[:, None] * inv[None, :]
    return np.concatenate([np.sin(t), np.cos(t)], axis=1).astype(np.float32)


def _init_text_numpy(text_cfg, rng: np.random.Generator) -> dict:
    """The decoder's parameters with numpy (norm weights one, biases zero, the rest normal(0.02)): the
    same distribution as :func:`proactive_jax.models.qwen.init_params`, without compiling flax's init."""
    from proactive_jax.models.qwen import abstract_params as text_abstract

    def leaf(path, x):
        name = getattr(path[-1], "key", "")
        if name == "weight":
            return np.ones(x.shape, np.float32)
        if name == "bias":
            return np.zeros(x.shape, np.float32)
        return rng.normal(0.0, 0.02, x.shape).astype(np.float32)

    return jax.tree_util.tree_map_with_path(leaf, text_abstract(text_cfg))


def init_params(config: AudioModelConfig, seed: int = 0) -> dict:
    """Random parameters of the whole Qwen2-Audio model (numpy, on the host; ``jax.device_put`` to place)."""
    rng = np.random.default_rng(seed)
    params = init_encoder_params(config.encoder, config.text.hidden_size, rng)
    params["language_model"] = _init_text_numpy(config.text, rng)
    return params


def abstract_params(config: AudioModelConfig) -> dict:
    """Parameter shapes/dtypes (``jax.ShapeDtypeStruct``), nothing allocated."""
    from proactive_jax.models.qwen import abstract_params as text_abstract

    tree = _encoder_tree(config.encoder, config.text.hidden_size,
                         lambda kind, shape: jax.ShapeDtypeStruct(shape, jnp.float32))
    tree["language_model"] = text_abstract(config.text)
    return tree


# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------

def layer_norm(x, p, eps, dtype):
    xf = x.astype(jnp.float32)
    mu = jnp.mean(xf, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(xf - mu), axis=-1, keepdims=True)
    y = (xf - mu) * jax.lax.rsqrt(var + eps) * p["scale"] + p["bias"]
    return y.astype(dtype)


def _dense(x, p, dtype):
    y = jnp.einsum("...i,io->...o", x.astype(dtype), p["kernel"].astype(dtype))
    return y + p["bias"].astype(dtype) if "bias" in p else y


def _gelu(x):
    return jax.nn.gelu(x, approximate=False)


def conv_front(tower, mel, left_mel, left_h1, zero_next, dtype):
    """conv1 (k3, s1) + GELU, conv2 (k3, s2) + GELU as shifted matmuls.

    ``mel`` [B, F, bins]; ``left_mel`` [B, bins] / ``left_h1`` [B, d]: the frame and the conv1 output just
    before ``mel`` (zeros at the start of a window); ``zero_next`` [F] bool: frames whose right neighbour is
    replaced by zero (always the last one). Returns ``(h2 [B, F/2, d], last mel frame, last conv1 output)``.
    """
    w1, w2 = tower["conv1"]["kernel"].astype(dtype), tower["conv2"]["kernel"].astype(dtype)
    x = mel.astype(dtype)
    prev = jnp.concatenate([left_mel[:, None].astype(dtype), x[:, :-1]], axis=1)
    nxt = jnp.concatenate([x[:, 1:], jnp.zeros_like(x[:, :1])], axis=1)
    nxt = jnp.where(zero_next[None, :, None], 0.0, nxt).astype(dtype)
    h1 = _gelu(prev @ w1[0] + x @ w1[1] + nxt @ w1[2] + tower["conv1"]["bias"].astype(dtype))
    ext = jnp.concatenate([left_h1[:, None].astype(dtype), h1], axis=1)  # ext[i] = h1[i - 1]
    h2 = _gelu(ext[:, 0:-1:2] @ w2[0] + ext[:, 1::2] @ w2[1] + ext[:, 2::2] @ w2[2]
               + tower["conv2"]["bias"].astype(dtype))
    return h2, mel[:, -1], h1[:, -1]


def _encoder_layer(enc: EncoderConfig, x, p, k_cache, v_cache, start, q_block, k_block, k_valid):
    """One pre-LN layer. Writes this call's keys/values at slots ``start..start+T`` of the caches."""
    dtype = jnp.dtype(enc.dtype)
    b, t, d = x.shape
    h, hd = enc.encoder_attention_heads, enc.head_dim
    y = layer_norm(x, p["self_attn_layer_norm"], enc.layer_norm_eps, dtype)
    a = p["self_attn"]
    q = _dense(y, a["q_proj"], dtype).reshape(b, t, h, hd)
    k = _dense(y, a["k_proj"], dtype).reshape(b, t, h, hd)
    v = _dense(y, a["v_proj"], dtype).reshape(b, t, h, hd)
    k_cache = _write_cache(k_cache, k, start)
    v_cache = _write_cache(v_cache, v, start)
    mask = k_valid[:, None, :] & (k_block[:, None, :] <= q_block[:, :, None])
    out, _ = dense_attention(q, k_cache.astype(dtype), v_cache.astype(dtype), mask)
    x = x + _dense(out.reshape(b, t, d), a["out_proj"], dtype)
    y = layer_norm(x, p["final_layer_norm"], enc.layer_norm_eps, dtype)
    x = x + _dense(_gelu(_dense(y, p["fc1"], dtype)), p["fc2"], dtype)
    return x, k_cache, v_cache


def _write_cache(cache, new, start):
    """``cache`` [B, P, ...] with ``new`` [B, T, ...] written at slots ``start..start+T``: one scalar start
    for every row, or one per row (``start`` [B]: a select over the slots, no scatter; each row's other
    slots keep their values)."""
    new = new.astype(cache.dtype)
    if jnp.ndim(start) == 0:
        return jax.lax.dynamic_update_slice_in_dim(cache, new, start, axis=1)
    t, slots = new.shape[1], cache.shape[1]
    rel = jnp.arange(slots, dtype=jnp.int32)[None, :] - start[:, None]  # [B, P]: slot - row start
    picked = jnp.take_along_axis(new, jnp.clip(rel, 0, t - 1).reshape(rel.shape + (1,) * (new.ndim - 2)), axis=1)
    inside = ((rel >= 0) & (rel < t)).reshape(rel.shape + (1,) * (new.ndim - 2))
    return jnp.where(inside, picked, cache)


def _layers(enc: EncoderConfig, x, layers, k_cache, v_cache, start, q_block, k_block, k_valid):
    def body(h, per_layer):
        p, kc, vc = per_layer
        h, kc, vc = _encoder_layer(enc, h, p, kc, vc, start, q_block, k_block, k_valid)
        return h, (kc, vc)

    x, (k_cache, v_cache) = jax.lax.scan(body, x, (layers, k_cache, v_cache),
                                         unroll=1 if enc.scan_layers else enc.encoder_layers)
    return x, k_cache, v_cache


def _pool_project(params, enc: EncoderConfig, x):
    """AvgPool1d(2, 2), final LayerNorm, projector: [B, 2n, d] -> [B, n, hidden] float32."""
    dtype = jnp.dtype(enc.dtype)
    b, t, d = x.shape
    x = x.reshape(b, t // 2, 2, d).astype(jnp.float32).mean(axis=2).astype(dtype)
    x = layer_norm(x, params["audio_tower"]["layer_norm"], enc.layer_norm_eps, dtype)
    return _dense(x, params["multi_modal_projector"]["linear"], dtype).astype(jnp.float32)


def _blocks(kind: str, k: int, positions):
    if kind == "bidirectional":
        return jnp.zeros_like(positions)
    if kind == "causal":
        return positions
    return positions // (2 * k)


def _zero_next(frames: int, conv_edge: str, chunk_tokens: int) -> np.ndarray:
    if conv_edge not in CONV_EDGES:
        raise ValueError(f"conv_edge={conv_edge!r}: expected one of {CONV_EDGES}")
    f = np.arange(frames)
    edge = (f + 1) % (4 * chunk_tokens) == 0 if conv_edge == "zero" else np.zeros(frames, bool)
    return edge | (f == frames - 1)


# ---------------------------------------------------------------------------------------------
# Whole windows
# ---------------------------------------------------------------------------------------------

def _encode_fn(config: AudioModelConfig, mask: str, conv_edge: str, chunk_tokens: int, params, feats, valid):
    enc = config.encoder
    dtype = jnp.dtype(enc.dtype)
    kind, k = parse_encoder_mask(mask)
    tower = params["audio_tower"]
    b, _, frames = feats.shape
    mel = jnp.swapaxes(feats, 1, 2)
    zeros_mel, zeros_h = jnp.zeros((b, enc.num_mel_bins), dtype), jnp.zeros((b, enc.d_model), dtype)
    h2, _, _ = conv_front(tower, mel, zeros_mel, zeros_h, jnp.asarray(_zero_next(frames, conv_edge, chunk_tokens)), dtype)
    t = h2.shape[1]
    x = h2 + tower["embed_positions"]["embedding"][:t].astype(dtype)
    pos = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    pre, _ = output_lengths(valid)
    block = _blocks(kind, k, pos)
    cache = jnp.zeros((enc.encoder_layers, b, t, enc.encoder_attention_heads, enc.head_dim), dtype)
    x, _, _ = _layers(enc, x, tower["layers"], cache, cache, 0, block, block, pos < pre[:, None])
    return _pool_project(params, enc, x)


_encode_jit = jax.jit(_encode_fn, static_argnums=(0, 1, 2, 3))


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
    return _encode_jit(config, mask, conv_edge, k, params, feats, valid)


# ---------------------------------------------------------------------------------------------
# Chunk by chunk (causal mask, conv_edge zero)
# ---------------------------------------------------------------------------------------------

class EncoderState(NamedTuple):
    k: Array  # [layers, B, positions, heads, head_dim]
    v: Array
    left_mel: Array  # [B, bins]: the last mel frame encoded so far
    left_h1: Array  # [B, d]: the last conv1 output so far
    pos: Array  # [] int32: attention positions written


def init_encoder_state(config: AudioModelConfig, batch: int) -> EncoderState:
    enc = config.encoder
    dtype = jnp.dtype(enc.dtype)
    shape = (enc.encoder_layers, batch, enc.max_source_positions, enc.encoder_attention_heads, enc.head_dim)
    return EncoderState(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros((batch, enc.num_mel_bins), dtype),
                        jnp.zeros((batch, enc.d_model), dtype), jnp.zeros((), jnp.int32))


def chunk_step(config: AudioModelConfig, params, state: EncoderState, mel_chunk):
    """The chunk encoder's pure step: ``mel_chunk`` [B, 4K, bins] (time-major) -> (new state, [B, K, hidden]).
    ``state.pos`` is a scalar (one window position for the batch) or [B] (per row; K/V caches
    [layers, B, positions, ...]). :func:`encode_chunk` is the checked public entry."""
    enc = config.encoder
    dtype = jnp.dtype(enc.dtype)
    tower = params["audio_tower"]
    b, frames, _ = mel_chunk.shape
    zero_next = np.zeros(frames, bool)
    zero_next[-1] = True  # the chunk's edge: the next frame is not heard yet
    h2, left_mel, left_h1 = conv_front(tower, mel_chunk, state.left_mel, state.left_h1, jnp.asarray(zero_next), dtype)
    t = h2.shape[1]
    table = tower["embed_positions"]["embedding"]
    if jnp.ndim(state.pos) == 0:  # one window position for the batch
        x = h2 + jax.lax.dynamic_slice_in_dim(table, state.pos, t).astype(dtype)
        q_block = jnp.broadcast_to(state.pos + jnp.arange(t, dtype=jnp.int32), (b, t))
        end = state.pos + t
    else:  # one per row (live sessions: rows at different points of their windows)
        q_block = state.pos[:, None] + jnp.arange(t, dtype=jnp.int32)[None, :]
        x = h2 + jnp.take(jnp.asarray(table), q_block, axis=0).astype(dtype)
        end = (state.pos + t)[:, None]
    k_index = jnp.broadcast_to(jnp.arange(enc.max_source_positions, dtype=jnp.int32), (b, enc.max_source_positions))
    x, k, v = _layers(enc, x, tower["layers"], state.k, state.v, state.pos, q_block, k_index, k_index < end)
    return EncoderState(k, v, left_mel.astype(dtype), left_h1.astype(dtype), state.pos + t), _pool_project(params, enc, x)


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
    audio = _encode_fn(config, encoder_mask, "lookahead", k, params, feats, valid)
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
