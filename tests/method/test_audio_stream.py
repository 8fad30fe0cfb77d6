"""Audio streaming examples: chunked units fed as embeddings; the one decode loop == brute force on audio."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from proactive_jax.audio import encode, init_params as init_audio_params
from proactive_jax.method.audio_stream import AudioStreamExample, audio_embeddings, audio_example
from proactive_jax.method.decode import stream_decode
from proactive_jax.method.heads import DecisionState, decide_encoded, encode_head
from proactive_jax.data.example import ExampleError
from proactive_jax.models.attention import MaskVectors
from proactive_jax.models.audio_config import AudioModelConfig, EncoderConfig
from proactive_jax.method.attention_stats import hidden_and_stats
from proactive_jax.models.qwen import hidden_to_logits

from tests.helpers import tiny_qwen2
from tests.method.util import random_params, sharpen

AUDIO_ID, BOS, EOS_A = 90, 91, 92
T_PAD = 64
MAX_NEW = 8


@pytest.fixture(scope="module")
def setup():
    text = tiny_qwen2()
    enc = EncoderConfig(num_mel_bins=16, d_model=24, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=32,
                        max_source_positions=40)  # 80 frames = 0.8 s windows, 20 tokens
    cfg = AudioModelConfig(text=text, encoder=enc, audio_token_index=AUDIO_ID, chunk_tokens=5)
    params = init_audio_params(cfg, 3)
    lm = sharpen(text, random_params(text, 1))
    params["language_model"] = lm
    params["multi_modal_projector"]["linear"]["kernel"] = params["multi_modal_projector"]["linear"]["kernel"] * 4.0
    rng = np.random.default_rng(5)
    exs = []
    for i, seconds in enumerate((0.5, 1.1, 1.7)):  # 1, 2 and 3 windows
        t = np.arange(int(16000 * seconds)) / 16000
        wave = (0.3 * np.sin(2 * np.pi * (300 + 200 * i) * t) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)
        emb = audio_embeddings(cfg, params, wave)
        exs.append(audio_example([5, 6, BOS], emb, cfg.chunk, [EOS_A, 7], [8, 9], [3], AUDIO_ID))
    return cfg, lm, exs


@functools.partial(jax.jit, static_argnums=0)
def _brute(cfg, params, embeds, pos, seg, idx, lim, stream_start, row):
    ids = jnp.zeros(embeds.shape[:2], jnp.int32)
    h, stats = hidden_and_stats(cfg, params, ids, pos, MaskVectors(seg, idx, lim), stream_start, input_embeds=embeds)
    return hidden_to_logits(cfg, params, h[:, row][:, None])[0, 0], stats[:, 0, row]


_decide = jax.jit(decide_encoded)


def brute_decode(cfg, params, ex, head, eos_ids):
    """Whole sequence recomputed at every decision, from embeddings (method.md section 3 visibility)."""
    vals = encode_head(head, cfg.num_hidden_layers)
    V = ex.visible_counts()
    rows = np.asarray(params["embed_tokens"]["embedding"])
    table = lambda ids: rows[np.asarray(ids, np.int64)]  # noqa: E731
    src = np.concatenate([table(list(ex.prompt)), ex.unit_embeds, table(list(ex.end))])
    H = len(ex.header)
    n, ys, phi = 0, [], []
    while True:
        sv, tl = int(V[n]), H + len(ys)
        lim_t = [V[phi[0]] if ys else V[n]] * H + [V[phi[i]] if i < len(ys) else V[n] for i in range(1, len(ys) + 1)]
        emb = np.concatenate([src[:sv], table(list(ex.header) + ys)])
        pad = T_PAD - emb.shape[0]
        emb = np.pad(emb, ((0, pad), (0, 0)))[None]
        arr = lambda xs, fill: jnp.asarray([list(xs) + [fill] * pad], jnp.int32)  # noqa: E731
        logits, stats = _brute(cfg, params, jnp.asarray(emb), arr(list(range(sv)) + list(range(tl)), 0),
                               arr([0] * sv + [1] * tl, -1), arr(list(range(sv)) + list(range(tl)), 0),
                               arr([0] * sv + [int(x) for x in lim_t], 0), jnp.asarray([len(ex.prompt)]), sv + tl - 1)
        cand = int(np.argmax(logits))
        ds = DecisionState(logits, stats, np.int32(n), np.int32(ex.M), np.int32(len(ys)), np.int32(len(ys)),
                           np.bool_(True))
        write, _, _ = _decide(vals, ds)
        if write:
            ys.append(cand)
            phi.append(n)
            if cand in eos_ids or len(ys) >= MAX_NEW:
                return ys, phi
        else:
            n += 1


def test_audio_examples_are_chunks_with_embeddings(setup):
    cfg, _, exs = setup
    assert [ex.M for ex in exs] == [3, 6, 9]  # 12, 27, 42 valid tokens in chunks of 5
    assert all(set(sum(ex.units, ())) == {AUDIO_ID} for ex in exs)
    assert exs[1].unit_embeds.shape == (27, cfg.text.hidden_size)
    with pytest.raises(ExampleError, match=r"unit_embeds: expected \[4, hidden\]"):
        AudioStreamExample(prompt=(1,), units=((AUDIO_ID,) * 4,), end=(2,), header=(3,), target=(4,),
                           unit_embeds=np.zeros((3, 48)))
    with pytest.raises(ExampleError, match="chunk_tokens=0"):
        audio_example([1], np.zeros((3, 48)), 0, [2], [3], [4], AUDIO_ID)


def test_embeddings_once_equal_per_window_causal_encode(setup):
    """audio_embeddings (whole utterance, window by window) == the encoder on each window."""
    cfg, _, _ = setup
    from proactive_jax.data.audio import log_mel_windows

    rng = np.random.default_rng(2)
    wave = (0.2 * rng.standard_normal(20000)).astype(np.float32)
    from proactive_jax.method import audio_stream

    params = init_audio_params(cfg, 4)
    emb = audio_stream.audio_embeddings(cfg, params, wave)
    feats, fam = log_mel_windows(wave, 16000, 16, clamp="running", window_frames=80)
    out = np.asarray(encode(cfg, params, feats[1:], fam[1:], mask="causal", conv_edge="zero"))
    np.testing.assert_allclose(emb[20:], out[0, :11], atol=1e-6)  # the second window with its own positions
    assert emb.shape[0] == 20 + ((((45 - 1) // 2 + 1) - 2) // 2 + 1)  # 7200 samples left: 45 frames


@pytest.mark.parametrize("head", ["batch", "wait-k:k=2,decide_at=token", "entropy:tau=0.5,decide_at=token"])
def test_decode_on_audio_equals_brute_force(setup, head):
    cfg, lm, exs = setup
    res = stream_decode(cfg.text, lm, exs, head, MAX_NEW, eos_ids=[3])
    for ex, r in zip(exs, res):
        ys, phi = brute_decode(cfg.text, lm, ex, head, [3])
        assert r.tokens.tolist() == ys, head
        assert r.phi.tolist() == phi, head
    if head.startswith("wait"):
        assert any(0 < r.phi[0] < ex.M + 1 for ex, r in zip(exs, res))
