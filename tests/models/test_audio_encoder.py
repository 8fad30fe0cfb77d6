"""The audio encoder's modules and their functional interface: full-size shapes without allocating, compute
options (unrolled layers, remat) against the scanned default, the two initialisers, per-row chunk positions.

The encoder's parity with transformers is in ``test_audio.py``; these tests need no torch.
"""
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from proactive_jax.models.audio import (ENCODER_PARTS, abstract_params, chunk_step, encode, init_encoder_params,
                                        init_encoder_state, init_params)
from proactive_jax.models.audio_config import AudioModelConfig, ConfigError, EncoderConfig, from_hf_dict_audio
from proactive_jax.models.audio_encoder import sinusoids
from proactive_jax.models.config import ModelConfig

REPO = Path(__file__).resolve().parents[2]


def tiny_config(**encoder) -> AudioModelConfig:
    enc = EncoderConfig(**{**dict(num_mel_bins=16, d_model=24, encoder_layers=2, encoder_attention_heads=2,
                                  encoder_ffn_dim=32, max_source_positions=40), **encoder})
    text = ModelConfig(model_type="qwen2", vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=1, head_dim=16, qkv_bias=True, qk_norm=False)
    return AudioModelConfig(text=text, encoder=enc, audio_token_index=7, chunk_tokens=5)


def features(cfg, batch=2, seed=0):
    rng = np.random.default_rng(seed)
    frames = cfg.encoder.num_frames
    feats = rng.standard_normal((batch, cfg.encoder.num_mel_bins, frames)).astype(np.float32)
    fam = np.ones((batch, frames), np.int32)
    fam[1:, frames // 2 + 3:] = 0
    return feats, fam


def perturbed(params, seed=1):
    """Every leaf moved off its init (biases, LayerNorms and positions included)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: x + rng.normal(0, 0.1, x.shape).astype(np.float32), params)


def test_full_size_encoder_shapes_without_allocating():
    """Qwen2-Audio-7B's encoder + projector by ``jax.eval_shape``: every leaf's shape and the parameter count
    from the architecture written out from the config keys."""
    cfg = from_hf_dict_audio(json.loads((REPO / "configs" / "qwen2-audio-7b.json").read_text()))
    tree = abstract_params(cfg)
    enc, hidden = cfg.encoder, cfg.text.hidden_size
    d, f, n, m, p = enc.d_model, enc.encoder_ffn_dim, enc.encoder_layers, enc.num_mel_bins, enc.max_source_positions
    tower = tree["audio_tower"]
    assert tower["conv1"]["kernel"].shape == (3, m, d) and tower["conv2"]["kernel"].shape == (3, d, d)
    assert tower["embed_positions"]["embedding"].shape == (p, d)
    assert tower["layers"]["self_attn"]["q_proj"]["kernel"].shape == (n, d, d)
    assert "bias" not in tower["layers"]["self_attn"]["k_proj"]
    assert tower["layers"]["fc1"]["kernel"].shape == (n, d, f) and tower["layers"]["fc2"]["kernel"].shape == (n, f, d)
    assert tree["multi_modal_projector"]["linear"]["kernel"].shape == (d, hidden)
    per_layer = 4 * d * d + 3 * d + 2 * d * f + f + d + 2 * 2 * d
    expected = (3 * m * d + d) + (3 * d * d + d) + p * d + n * per_layer + 2 * d + (d * hidden + hidden)
    got = sum(x.size for k in ENCODER_PARTS for x in jax.tree.leaves(tree[k]))
    assert got == expected
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(tree))


def test_scan_unrolled_and_remat_match():
    """``scan_layers=False`` and ``remat`` change how the layers run, never the embeddings or the gradients."""
    cfg = tiny_config()
    params = perturbed(init_params(cfg, 0))
    feats, fam = features(cfg)
    base = np.asarray(encode(cfg, params, feats, fam, mask="block:5", conv_edge="zero"))

    def with_encoder(**kw):
        return cfg.replace(encoder=EncoderConfig(**{**cfg.encoder.__dict__, **kw}))

    for variant in (dict(scan_layers=False), dict(remat=True), dict(remat="save_attention_out")):
        other = np.asarray(encode(with_encoder(**variant), params, feats, fam, mask="block:5", conv_edge="zero"))
        assert np.abs(other - base).max() <= 1e-6 * np.abs(base).max(), variant

    def grads(c):
        loss = lambda p: jnp.sum(jnp.tanh(encode(c, p, feats, fam)))  # noqa: E731
        return jax.tree.leaves(jax.grad(loss)({k: params[k] for k in ENCODER_PARTS}))

    ref = grads(cfg)
    for got, want in zip(grads(with_encoder(remat="full")), ref):
        assert float(jnp.max(jnp.abs(got - want))) <= 1e-5 * float(jnp.max(jnp.abs(want)))
    with pytest.raises(ConfigError, match="audio remat"):
        with_encoder(remat="everything")


def test_init_params_and_init_encoder_params_agree_in_distribution():
    """The host init (numpy, seeded) and the modules' own init give the same tree, the same constant leaves
    (LayerNorms, biases, sinusoid positions) and normal(0.02) kernels; one seed, one set of parameters."""
    cfg = tiny_config(encoder_layers=3, d_model=64, encoder_attention_heads=4, encoder_ffn_dim=96)
    host, module = init_params(cfg, 0), init_encoder_params(cfg, 0)
    assert jax.tree.structure({k: host[k] for k in ENCODER_PARTS}) == jax.tree.structure(module)
    for (path, a), (_, b) in zip(jax.tree_util.tree_leaves_with_path({k: host[k] for k in ENCODER_PARTS}),
                                 jax.tree_util.tree_leaves_with_path(module)):
        name = jax.tree_util.keystr(path)
        assert isinstance(a, np.ndarray) and a.dtype == np.float32 and a.shape == b.shape, name
        if name.endswith("['kernel']"):
            assert abs(np.std(a) - 0.02) < 0.003 and abs(float(jnp.std(b)) - 0.02) < 0.003, name
        else:
            np.testing.assert_array_equal(a, np.asarray(b), err_msg=name)
    pos = host["audio_tower"]["embed_positions"]["embedding"]
    np.testing.assert_array_equal(pos, sinusoids(*pos.shape))
    layers = host["audio_tower"]["layers"]["fc1"]["kernel"]
    assert np.abs(layers[0] - layers[1]).max() > 0  # every layer drawn on its own
    again, other = init_params(cfg, 0), init_params(cfg, 1)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(host), jax.tree.leaves(again)))
    assert not np.array_equal(host["audio_tower"]["conv1"]["kernel"], other["audio_tower"]["conv1"]["kernel"])


def test_per_row_positions_equal_one_position_for_the_batch():
    """The chunk step with ``pos`` [B] (rows at different points of their windows) gives each row what the
    scalar-position step gives it."""
    cfg = tiny_config()
    params = perturbed(init_params(cfg, 0))
    feats, _ = features(cfg)
    mel = np.swapaxes(feats, 1, 2)
    k4 = 4 * cfg.chunk
    step = jax.jit(chunk_step, static_argnums=0)
    scalar = init_encoder_state(cfg, 2)
    outs = []
    for c in range(3):
        scalar, e = step(cfg, params, scalar, jnp.asarray(mel[:, k4 * c:k4 * (c + 1)]))
        outs.append(np.asarray(e))
    # row 0 at chunk 2 of its window, row 1 at chunk 0: feed each the frames of that chunk
    rows = init_encoder_state(cfg, 2)
    ahead = init_encoder_state(cfg, 1)
    for c in range(2):
        ahead, _ = step(cfg, params, ahead, jnp.asarray(mel[:1, k4 * c:k4 * (c + 1)]))
    rows = rows._replace(k=rows.k.at[:, :1].set(ahead.k), v=rows.v.at[:, :1].set(ahead.v),
                         left_mel=rows.left_mel.at[:1].set(ahead.left_mel),
                         left_h1=rows.left_h1.at[:1].set(ahead.left_h1), pos=jnp.asarray([ahead.pos, 0], jnp.int32))
    chunk = np.stack([mel[0, 2 * k4:3 * k4], mel[1, :k4]])
    rows, e = step(cfg, params, rows, jnp.asarray(chunk))
    np.testing.assert_allclose(np.asarray(e)[0], outs[2][0], atol=1e-6, rtol=0)
    np.testing.assert_allclose(np.asarray(e)[1], outs[0][1], atol=1e-6, rtol=0)
    np.testing.assert_array_equal(np.asarray(rows.pos), [3 * cfg.chunk * 2, cfg.chunk * 2])
