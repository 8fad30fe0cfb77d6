"""The packed dual-view loss with the audio encoder inside: embeddings path, frozen vs trained encoder."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from proactive_jax.audio import encode, init_params
from proactive_jax.method import objective as O
from proactive_jax.method.audio_objective import audio_loss_fn, audio_source_embeds, pack_audio_batch
from proactive_jax.data.example import ExampleError, StreamExample
from proactive_jax.models.attention import MaskVectors
from proactive_jax.models.audio import output_lengths
from proactive_jax.models.audio_config import AudioModelConfig, EncoderConfig
from proactive_jax.models.qwen import apply_hidden, embed_ids, hidden_to_logits

from tests.helpers import tiny_qwen2

AUDIO = 90


@pytest.fixture(scope="module")
def setup():
    enc = EncoderConfig(num_mel_bins=8, d_model=16, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=24,
                        max_source_positions=20)  # 40 frames, 10 tokens
    cfg = AudioModelConfig(text=tiny_qwen2(), encoder=enc, audio_token_index=AUDIO, chunk_tokens=5)
    params = jax.tree_util.tree_map(jnp.asarray, init_params(cfg, 0))
    params["multi_modal_projector"]["linear"]["kernel"] *= 10.0
    rng = np.random.default_rng(0)
    exs, feats, valid = [], [], []
    for v in (40, 27):
        n = int(output_lengths(np.int64(v))[1])
        units = tuple((AUDIO,) * min(5, n - s) for s in range(0, n, 5))
        exs.append(StreamExample(prompt=(5, 91), units=units, end=(92, 7), header=(8,), target=(11, 12, 3)))
        feats.append(rng.standard_normal((8, 40)).astype(np.float32))
        valid.append(v)
    batch = pack_audio_batch(exs, feats, valid, (24, 8))
    return cfg, params, exs, batch


def _ref_logp(text, lm, seq, idx, seg, lim):
    return _ref_jit(text, lm, seq, idx, seg, lim)


def _ref(text, lm, seq, idx, seg, lim):
    h = apply_hidden(text, lm, jnp.zeros(seq.shape[:2], jnp.int32), idx, MaskVectors(seg, idx, lim),
                     input_embeds=seq).hidden
    return jax.nn.log_softmax(hidden_to_logits(text, lm, h), -1)


_ref_jit = jax.jit(_ref, static_argnums=0)


def test_loss_equals_forward_on_embeddings(setup):
    """schedule 'full': every term is the NLL of [source embeds | target] under the batch view."""
    cfg, params, exs, batch = setup
    obj = O.ObjectiveConfig(schedule="full")  # kl_topk 100 >= vocab: KL is 0 when the views agree
    _, aux = jax.jit(audio_loss_fn, static_argnums=(0, 1, 5))(cfg, obj, params, jax.tree_util.tree_map(jnp.asarray, batch),
                                                             jax.random.PRNGKey(0), "train")
    lm = params["language_model"]
    emb = np.asarray(encode(cfg, params, batch["features"], batch["valid_frames"][:, None]
                            >= np.arange(40)[None] + 1, mask="causal", conv_edge="zero"))
    nll, count = 0.0, 0
    rows = np.asarray(lm["embed_tokens"]["embedding"])
    np.testing.assert_array_equal(rows[[5, 7]], np.asarray(embed_ids(cfg.text, lm, jnp.asarray([[5, 7]])))[0])
    for i, ex in enumerate(exs):
        n_tok = sum(len(u) for u in ex.units)
        table = lambda ids: rows[np.asarray(ids)]  # noqa: E731  (the embedding table's rows)
        seq = np.concatenate([table(list(ex.prompt)), emb[i, :n_tok], table(list(ex.end)),
                              table(list(ex.header + ex.target))])[None]
        S, T = ex.S, ex.T
        seg = jnp.asarray([[0] * S + [1] * T])
        idx = jnp.asarray([list(range(S)) + list(range(T))])
        lim = jnp.asarray([[0] * S + [S] * T])
        logp = _ref_logp(cfg.text, lm, jnp.asarray(seq), idx, seg, lim)[0, S:]
        tgt = ex.header + ex.target
        nll -= sum(float(logp[r, tgt[r + 1]]) for r in range(len(ex.header) - 1, T - 1))
        count += ex.L
    np.testing.assert_allclose(float(aux["batch"]), nll / count, rtol=1e-5)
    np.testing.assert_allclose(float(aux["mslm"]), nll / count, rtol=1e-5)
    assert abs(float(aux["kl"])) < 1e-6


def test_frozen_encoder_gets_no_gradient(setup):
    """The source embeddings (what the loss differentiates through) carry no encoder gradient when frozen."""
    cfg, params, _, batch = setup
    b = jax.tree_util.tree_map(jnp.asarray, batch)
    w = jnp.asarray(np.random.default_rng(3).standard_normal(b["source"].shape + (cfg.text.hidden_size,)))
    grads = {mode: jax.jit(jax.grad(lambda p: jnp.sum(w * audio_source_embeds(cfg, p, b, mode))))(params)
             for mode in ("frozen", "train")}
    conv = lambda g: float(jnp.abs(g["audio_tower"]["conv1"]["kernel"]).max())  # noqa: E731
    assert conv(grads["frozen"]) == 0.0 and conv(grads["train"]) > 0.0
    lm = lambda g: float(jnp.abs(g["language_model"]["embed_tokens"]["embedding"]).max())  # noqa: E731
    assert lm(grads["frozen"]) > 0.0 and lm(grads["frozen"]) == lm(grads["train"])


def test_placeholders_must_match_features(setup):
    cfg, _, exs, batch = setup
    with pytest.raises(ExampleError, match="10 audio placeholder tokens but its features give 7 tokens"):
        pack_audio_batch(exs[:1], [batch["features"][0]], [27], (24, 8))
