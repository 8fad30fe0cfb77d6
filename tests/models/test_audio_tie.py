"""Tied word embeddings of Qwen2-Audio checkpoints resolve as transformers does (models.hf.resolve_tie).

transformers 5's Qwen2AudioForConditionalGeneration ties nothing: it saves ``language_model.lm_head.weight`` and
uses it, whatever ``tie_word_embeddings`` says (in ``text_config`` or at the top level). A loader that tied by the
flag ignored a tensor in the file and gave logits ~1.4x off. Tiny random models, built here; nothing downloaded.
"""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

from proactive_jax import forward_audio, load_pretrained, save_pretrained  # noqa: E402
from proactive_jax.audio import output_lengths  # noqa: E402
from proactive_jax.models.hf import load_model_config  # noqa: E402
from proactive_jax.models.safetensors_io import CheckpointError  # noqa: E402

AUDIO_ID = 100
BINS, POSITIONS = 20, 50
FRAMES = 2 * POSITIONS
HEAD, EMBED = "language_model.lm_head.weight", "language_model.model.embed_tokens.weight"


def q2a_config(text_tie=None, top_tie=None):
    from transformers import Qwen2AudioConfig

    text = dict(model_type="qwen2", vocab_size=101, hidden_size=36, intermediate_size=52, num_hidden_layers=2,
                num_attention_heads=3, num_key_value_heads=1, max_position_embeddings=4096)
    if text_tie is not None:
        text["tie_word_embeddings"] = text_tie
    top = {} if top_tie is None else {"tie_word_embeddings": top_tie}
    return Qwen2AudioConfig(audio_config=dict(d_model=30, encoder_attention_heads=3, encoder_ffn_dim=44,
                                              encoder_layers=1, num_mel_bins=BINS, max_source_positions=POSITIONS),
                            text_config=text, audio_token_index=AUDIO_ID, **top)


def build(tmp_path, text_tie=None, top_tie=None, seed=0):
    from transformers import Qwen2AudioForConditionalGeneration

    torch.manual_seed(seed)
    model = Qwen2AudioForConditionalGeneration(q2a_config(text_tie, top_tie)).eval()
    d = tmp_path / "hf"
    model.save_pretrained(d)
    return model, d


def hf_reload(d):
    from transformers import Qwen2AudioForConditionalGeneration

    return Qwen2AudioForConditionalGeneration.from_pretrained(d, attn_implementation="eager").eval()


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((2, BINS, FRAMES)).astype(np.float32)
    fam = np.ones((2, FRAMES), np.int32)
    fam[1, 77:] = 0
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


def rel_diff(ours, ref) -> float:
    return float(np.abs(np.asarray(ours) - ref).max() / np.abs(ref).max())


def tensors(d):
    return safetensors_numpy.load_file(str(d / "model.safetensors"))


def rewrite(src, dst, edit=None, config_edit=None):
    dst.mkdir(parents=True)
    cfg = json.loads((src / "config.json").read_text())
    if config_edit:
        config_edit(cfg)
    (dst / "config.json").write_text(json.dumps(cfg))
    t = tensors(src)
    if edit:
        edit(t)
    safetensors_numpy.save_file(t, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


@pytest.mark.parametrize("spelling", ["text_config", "top_level"])
def test_tie_flag_with_a_distinct_head_in_the_file(spelling, inputs, tmp_path):
    """Both spellings of the tie: transformers uses the saved head; so do we (<= 1e-4 relative)."""
    kw = dict(text_tie=True) if spelling == "text_config" else dict(top_tie=True)
    model, d = build(tmp_path, **kw)
    raw = json.loads((d / "config.json").read_text())
    assert (raw["text_config"]["tie_word_embeddings"] if spelling == "text_config"
            else raw["tie_word_embeddings"]) is True
    t = tensors(d)
    assert HEAD in t and not np.array_equal(t[HEAD], t[EMBED])  # a distinct head is in the file
    ref = hf_logits(model, *inputs)
    assert rel_diff(hf_logits(hf_reload(d), *inputs), ref) <= 1e-5  # and transformers reads it back

    config, params = load_pretrained(d)
    assert config.text.tie_word_embeddings is False and "lm_head" in params["language_model"]
    assert load_model_config(d) == config
    ours = np.asarray(forward_audio(config, params, inputs[2], inputs[0], inputs[1]))
    rel = rel_diff(ours, ref)
    print(f"PARITY qwen2_audio tie in {spelling}, distinct head: relative {rel:.3g}")
    assert rel <= 1e-4
    # the old behaviour (tie by the flag, the head ignored) is far off: the test can tell them apart
    tied = dict(params, language_model={k: v for k, v in params["language_model"].items() if k != "lm_head"})
    wrong = forward_audio(config.replace(text=config.text.replace(tie_word_embeddings=True)), tied,
                          inputs[2], inputs[0], inputs[1])
    assert rel_diff(wrong, ref) > 0.1

    # export round trip: same semantics in transformers and here
    out = save_pretrained(config, params, tmp_path / "export")
    assert json.loads((out / "config.json").read_text())["text_config"]["tie_word_embeddings"] is False
    assert rel_diff(hf_logits(hf_reload(out), *inputs), ref) <= 1e-5
    config2, params2 = load_pretrained(out)
    assert config2 == config
    np.testing.assert_array_equal(np.asarray(params2["language_model"]["lm_head"]["kernel"]),
                                  np.asarray(params["language_model"]["lm_head"]["kernel"]))


def test_tied_model_exports_its_head_for_transformers(inputs, tmp_path):
    """A tied decoder (the demo's tiny-audio preset ties) is written with the head = a copy of the embeddings,
    because transformers 5 never ties Qwen2-Audio (a missing head would be randomly initialized there)."""
    model, d = build(tmp_path, text_tie=True, seed=1)

    def drop_head(t):
        del t[HEAD]

    src = rewrite(d, tmp_path / "no_head", drop_head)  # our old exporter's layout: text tie, no head
    config, params = load_pretrained(src)
    assert config.text.tie_word_embeddings is True and "lm_head" not in params["language_model"]
    out = save_pretrained(config, params, tmp_path / "export")
    raw = json.loads((out / "config.json").read_text())
    t = tensors(out)
    assert raw["text_config"]["tie_word_embeddings"] is True and np.array_equal(t[HEAD], t[EMBED])
    ours = np.asarray(forward_audio(config, params, inputs[2], inputs[0], inputs[1]))
    # transformers' own model with its head set to the embeddings is the reference
    with torch.no_grad():
        model.lm_head.weight.copy_(model.model.language_model.embed_tokens.weight)
    ref = hf_logits(model, *inputs)
    assert rel_diff(ours, ref) <= 1e-4
    assert rel_diff(hf_logits(hf_reload(out), *inputs), ref) <= 1e-5
    config2, params2 = load_pretrained(out)  # the equal head in the file keeps the tie
    assert config2 == config and "lm_head" not in params2["language_model"]
    assert load_model_config(out) == config


def test_top_level_tie_without_head_is_a_missing_tensor(tmp_path):
    """transformers reads Qwen2-Audio's tie from text_config (4.x) or not at all (5.x): a file with only a
    top-level tie and no head has no output projection."""
    _, d = build(tmp_path, top_tie=True)

    def drop_head(t):
        del t[HEAD]

    bad = rewrite(d, tmp_path / "bad", drop_head)
    with pytest.raises(CheckpointError, match=r"missing tensors \['language_model.lm_head.weight'\].*"
                                              r"text_config.tie_word_embeddings is false or unset"):
        load_pretrained(bad)


def test_unused_tensor_names_tensor_and_file(tmp_path):
    _, d = build(tmp_path)

    def add(t):
        t["audio_tower.extra.weight"] = np.zeros(3, np.float32)

    bad = rewrite(d, tmp_path / "bad", add)
    with pytest.raises(CheckpointError, match=r"does not use: 'audio_tower.extra.weight' \(in model.safetensors\)"):
        load_pretrained(bad)
