"""Qwen2-Audio encoder + projector + decoder against transformers; masks, conv edges, chunked encoding, IO."""
import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from proactive_jax import forward_audio, load_pretrained, save_pretrained  # noqa: E402
from proactive_jax.audio import encode, encode_chunk, init_encoder_state, output_lengths  # noqa: E402
from proactive_jax.models.audio_config import (AudioModelConfig, ConfigError, EncoderConfig,  # noqa: E402
                                               chunk_tokens_from_ms)
from proactive_jax.models.hf import expected_tensors  # noqa: E402
from proactive_jax.models.safetensors_io import CheckpointError  # noqa: E402

AUDIO_ID = 100
BINS, POSITIONS = 20, 100  # 200 mel frames (2 s), 50 output tokens
FRAMES = 2 * POSITIONS


def hf_config(tie=False):
    from transformers import Qwen2AudioConfig

    # odd sizes: d_model 30 over 3 heads (head_dim 10), ffn 44; text hidden 36, 3 heads over 1 kv head
    return Qwen2AudioConfig(
        audio_config=dict(d_model=30, encoder_attention_heads=3, encoder_ffn_dim=44, encoder_layers=2,
                          num_mel_bins=BINS, max_source_positions=POSITIONS),
        text_config=dict(model_type="qwen2", vocab_size=101, hidden_size=36, intermediate_size=52,
                         num_hidden_layers=3, num_attention_heads=3, num_key_value_heads=1,
                         max_position_embeddings=4096, tie_word_embeddings=tie),
        audio_token_index=AUDIO_ID)


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
    from transformers import Qwen2AudioForConditionalGeneration

    torch.manual_seed(0)
    model = Qwen2AudioForConditionalGeneration(hf_config()).eval()
    with torch.no_grad():  # non-trivial stored positions and biases (random init leaves them 0 / sinusoids)
        for name, p in model.named_parameters():
            if name.endswith("bias") or "embed_positions" in name:
                p.normal_(0.0, 0.3)
    d = tmp_path_factory.mktemp("q2a") / "hf"
    model.save_pretrained(d, max_shard_size="40KB")  # sharded
    assert (d / "model.safetensors.index.json").is_file()
    return model, d


@pytest.fixture(scope="module")
def loaded(hf_model):
    return load_pretrained(hf_model[1])


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((2, BINS, FRAMES)).astype(np.float32)
    fam = np.zeros((2, FRAMES), np.int32)
    fam[0, :] = 1
    fam[1, :123] = 1  # odd length: the last token pools a valid and a padding position
    _, n_out = output_lengths(fam.sum(-1))
    width = int(n_out.max()) + 5
    ids = np.full((2, width), 3, np.int64)
    for b, n in enumerate(n_out):
        ids[b, :2], ids[b, 2:2 + n], ids[b, 2 + n:5 + n] = (5, 7), AUDIO_ID, (9, 11, 13)
    return feats, fam, ids


def hf_logits(model, feats, fam, ids):
    with torch.no_grad():
        return model(input_ids=torch.tensor(ids), input_features=torch.tensor(feats),
                     feature_attention_mask=torch.tensor(fam)).logits.numpy()


def hf_encoder(model, feats, fam, visible):
    """transformers' audio tower + projector with an explicit 4-D mask (visible [T, T] over positions)."""
    pre, _ = output_lengths(fam.sum(-1))
    t = FRAMES // 2
    ok = visible[None] & (np.arange(t)[None, None, :] < pre[:, None, None])
    mask = torch.where(torch.tensor(ok)[:, None], 0.0, torch.finfo(torch.float32).min)
    with torch.no_grad():
        h = model.model.audio_tower(torch.tensor(feats), attention_mask=mask).last_hidden_state
        return model.model.multi_modal_projector(h).numpy()


def test_table_matches_transformers_state_dict(hf_model, loaded):
    from safetensors import safe_open

    config, _ = loaded
    on_disk = {}
    for f in sorted(hf_model[1].glob("*.safetensors")):
        with safe_open(f, "np") as h:
            on_disk.update({k: tuple(h.get_slice(k).get_shape()) for k in h.keys()})
    assert expected_tensors(config) == on_disk
    assert config.encoder.encoder_layers == 2 and config.text.num_hidden_layers == 3


def test_forward_audio_matches_transformers(hf_model, loaded, inputs):
    config, params = loaded
    ref = hf_logits(hf_model[0], *inputs)
    ours = np.asarray(forward_audio(config, params, inputs[2], inputs[0], inputs[1]))
    assert ours.shape == ref.shape and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


def test_export_reload_in_transformers(hf_model, loaded, inputs, tmp_path):
    from transformers import Qwen2AudioForConditionalGeneration

    config, params = loaded
    out = save_pretrained(config, params, tmp_path / "export", max_shard_size="60KB")
    assert json.loads((out / "config.json").read_text())["model_type"] == "qwen2_audio"
    back = Qwen2AudioForConditionalGeneration.from_pretrained(out, attn_implementation="eager").eval()
    np.testing.assert_allclose(hf_logits(back, *inputs), hf_logits(hf_model[0], *inputs), atol=1e-5, rtol=0)
    config2, params2 = load_pretrained(out)
    assert config2 == config


@pytest.mark.parametrize("mask", ["causal", "block:5"])
def test_masked_encoder_matches_transformers_4d_mask(hf_model, loaded, inputs, mask):
    config, params = loaded
    t = FRAMES // 2
    q, k = np.arange(t)[:, None], np.arange(t)[None, :]
    visible = k <= q if mask == "causal" else k // 10 <= q // 10  # block:5 = 5 output tokens = 10 positions
    ref = hf_encoder(hf_model[0], inputs[0], inputs[1], visible)
    ours = np.asarray(encode(config, params, inputs[0], inputs[1], mask=mask, conv_edge="lookahead"))
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)
    bidi = hf_encoder(hf_model[0], inputs[0], inputs[1], np.ones((t, t), bool))
    np.testing.assert_allclose(np.asarray(encode(config, params, inputs[0], inputs[1], mask="bidirectional",
                                                 conv_edge="lookahead")), bidi, atol=1e-5, rtol=0)


def test_conv_edge_zero_never_sees_later_audio(loaded, inputs):
    """Property: with mask causal + conv_edge zero, changing the audio after chunk c leaves chunks <= c alone;
    with the released lookahead the last token of the chunk does change (so the check can fail)."""
    config, params = loaded
    feats, fam = inputs[0][:1], inputs[1][:1]
    rng = np.random.default_rng(1)
    K = 5
    base_zero = np.asarray(encode(config, params, feats, fam, mask="causal", conv_edge="zero", chunk_tokens=K))
    base_look = np.asarray(encode(config, params, feats, fam, mask="causal", conv_edge="lookahead"))
    for c in (1, 3, 7):
        t = c * K
        changed = feats.copy()
        changed[..., 4 * t:] = rng.standard_normal(changed[..., 4 * t:].shape)
        z = np.asarray(encode(config, params, changed, fam, mask="causal", conv_edge="zero", chunk_tokens=K))
        np.testing.assert_array_equal(z[:, :t], base_zero[:, :t])
        assert np.abs(z[:, t:] - base_zero[:, t:]).max() > 1e-3
        look = np.asarray(encode(config, params, changed, fam, mask="causal", conv_edge="lookahead"))
        np.testing.assert_allclose(look[:, :t - 1], base_look[:, :t - 1], atol=1e-6)
        assert np.abs(look[:, t - 1] - base_look[:, t - 1]).max() > 1e-4


@pytest.mark.parametrize("K", [5, 25])
def test_incremental_chunks_equal_full_causal_encoder(loaded, inputs, K):
    config, params = loaded
    feats, fam = inputs[0], inputs[1]
    full = np.asarray(encode(config, params, feats, fam, mask="causal", conv_edge="zero", chunk_tokens=K))
    state, outs = init_encoder_state(config, 2), []
    for c in range(FRAMES // (4 * K)):
        state, e = encode_chunk(config, params, state, feats[:, :, 4 * K * c:4 * K * (c + 1)])
        outs.append(np.asarray(e))
    inc = np.concatenate(outs, axis=1)
    _, n_out = output_lengths(fam.sum(-1))
    for b, n in enumerate(n_out):  # valid tokens (padding tokens differ: the chunked encoder sees no mask)
        np.testing.assert_allclose(inc[b, :n], full[b, :n], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="overflow the encoder window"):
        encode_chunk(config, params, state, feats[:, :, :4 * K])


def test_bf16_compute_close(loaded, inputs):
    config, params = loaded
    enc16 = config.replace(encoder=EncoderConfig(**{**config.encoder.__dict__, "dtype": "bfloat16"}),
                           text=config.text.replace(dtype="bfloat16"))
    ref = np.asarray(forward_audio(config, params, inputs[2], inputs[0], inputs[1]))
    got = np.asarray(forward_audio(enc16, params, inputs[2], inputs[0], inputs[1]))
    assert got.dtype == np.float32
    assert np.abs(got - ref).max() < 0.05 * np.abs(ref).max()


def test_bad_inputs(loaded, inputs, hf_model, tmp_path):
    config, params = loaded
    feats, fam, ids = inputs
    with pytest.raises(ValueError, match="placeholders"):
        forward_audio(config, params, ids[:, :-1] * 0 + 3, feats, fam)
    with pytest.raises(ValueError, match=r"input_features: expected \[audios, 20, 200\]"):
        encode(config, params, feats[:, :, :100], fam)
    with pytest.raises(ValueError, match="encoder mask"):
        encode(config, params, feats, fam, mask="block:x")
    with pytest.raises(ConfigError, match="must divide the 50 tokens"):
        encode(config, params, feats, fam, chunk_tokens=7)
    with pytest.raises(ConfigError, match="not a whole number of encoder tokens"):
        chunk_tokens_from_ms(1010)
    assert chunk_tokens_from_ms(1000) == 25
    # a checkpoint without an encoder tensor
    src = hf_model[1]
    bad = tmp_path / "no_conv"
    shutil.copytree(src, bad)
    index = json.loads((bad / "model.safetensors.index.json").read_text())
    del index["weight_map"]["audio_tower.conv1.weight"]
    (bad / "model.safetensors.index.json").write_text(json.dumps(index))
    from safetensors.numpy import load_file, save_file

    for f in bad.glob("*.safetensors"):
        t = load_file(f)
        if "audio_tower.conv1.weight" in t:
            del t["audio_tower.conv1.weight"]
            save_file(t, f, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="missing audio encoder/projector tensors.*audio_tower.conv1.weight"):
        load_pretrained(bad)
    # a config.json without audio_config
    cfg_bad = tmp_path / "no_sub"
    shutil.copytree(src, cfg_bad)
    c = json.loads((cfg_bad / "config.json").read_text())
    del c["audio_config"]
    (cfg_bad / "config.json").write_text(json.dumps(c))
    with pytest.raises(ConfigError, match="needs a 'audio_config' object"):
        load_pretrained(cfg_bad)


def test_cli_hf_check_audio(hf_model, capsys):
    from proactive_jax.cli import main

    assert main(["hf-check", str(hf_model[1])]) == 0
    out = capsys.readouterr().out
    assert "qwen2_audio" in out and "OK" in out


def test_config_validation():
    enc = EncoderConfig(num_mel_bins=8, d_model=12, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=16,
                        max_source_positions=50)
    from proactive_jax.models.config import ModelConfig

    text = ModelConfig(model_type="qwen2", vocab_size=50, qk_norm=False, qkv_bias=True)
    with pytest.raises(ConfigError, match="audio_token_index=60"):
        AudioModelConfig(text=text, encoder=enc, audio_token_index=60)
    assert AudioModelConfig(text=text, encoder=enc, audio_token_index=49).chunk == 25
    with pytest.raises(ConfigError, match="max_source_positions=51"):
        EncoderConfig(max_source_positions=51)
