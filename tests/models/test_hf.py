"""HF checkpoint I/O: round trips through transformers, sharding, config layouts, bf16, tokenizer copy,
atomic export, bad inputs, and the ``hf-check`` CLI. Everything is built here; nothing is downloaded."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from proactive_jax import cli
from proactive_jax.models import hf, hf_export
from proactive_jax.models.config import ConfigError, load_hf_config
from proactive_jax.models.hf import CheckpointError, expected_tensors, keep_on_host, load_pretrained
from proactive_jax.models.hf_export import save_pretrained
from proactive_jax.models.qwen import abstract_params, forward

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_numpy = pytest.importorskip("safetensors.numpy")
from safetensors import safe_open  # noqa: E402

from .test_qwen import BATCH, LENGTH, build_torch_model, diff_stats, torch_logits  # noqa: E402

VOCAB = 97


# ---------------------------------------------------------------------------------------------
# fixtures and helpers
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def ids():
    return np.random.default_rng(7).integers(0, VOCAB, (BATCH, LENGTH))


def _make(tmp_path_factory, name, model_type, seed, ids, **overrides):
    model = build_torch_model(model_type, seed=seed, **overrides)
    d = tmp_path_factory.mktemp(name)
    model.save_pretrained(d)
    return dict(dir=d, model=model, ref=torch_logits(model, ids))


@pytest.fixture(scope="session")
def qwen2_tied(tmp_path_factory, ids):
    return _make(tmp_path_factory, "hf_qwen2", "qwen2", 11, ids, tie_word_embeddings=True)


@pytest.fixture(scope="session")
def qwen3_untied(tmp_path_factory, ids):
    return _make(tmp_path_factory, "hf_qwen3", "qwen3", 12, ids, tie_word_embeddings=False, head_dim=16)


def hf_load(d, **kw):
    return transformers.AutoModelForCausalLM.from_pretrained(d, attn_implementation="eager", **kw).eval()


def tensors_of(d: Path) -> dict[str, np.ndarray]:
    out = {}
    for f in sorted(Path(d).glob("*.safetensors")):
        with safe_open(str(f), framework="numpy") as h:
            out.update({k: h.get_tensor(k) for k in h.keys()})
    return out


def rewrite(src: Path, dst: Path, edit=None, config_edit=None) -> Path:
    """Copy a single-file float32 checkpoint, editing its tensor dict and/or config dict."""
    dst.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((src / "config.json").read_text())
    if config_edit:
        config_edit(cfg)
    (dst / "config.json").write_text(json.dumps(cfg))
    tensors = safetensors_numpy.load_file(str(src / "model.safetensors"))
    if edit:
        edit(tensors)
    safetensors_numpy.save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def tree_equal(a, b) -> bool:
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    return ta == tb and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))


def dir_digest(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(d).iterdir())}


# ---------------------------------------------------------------------------------------------
# the table agrees with transformers' names
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["qwen2_tied", "qwen3_untied"])
def test_table_matches_transformers_state_dict(which, request):
    ck = request.getfixturevalue(which)
    config = load_hf_config(ck["dir"])
    sd = {k: tuple(v.shape) for k, v in ck["model"].state_dict().items()}
    if config.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    assert expected_tensors(config) == sd


# ---------------------------------------------------------------------------------------------
# round trips
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["qwen2_tied", "qwen3_untied"])
def test_round_trip_through_transformers(which, request, ids, tmp_path):
    ck = request.getfixturevalue(which)
    config, params = load_pretrained(ck["dir"])
    d, rel = diff_stats(forward(config, params, ids), ck["ref"])
    print(f"PARITY round-trip {which} HF->JAX: max|diff| {d:.3g} relative {rel:.3g}")
    assert rel <= 1e-4
    out = save_pretrained(config, params, tmp_path / "export")
    assert sorted(os.listdir(out)) == ["config.json", "generation_config.json", "model.safetensors"]
    with safe_open(str(out / "model.safetensors"), framework="numpy") as f:
        meta = f.metadata()
        assert meta["format"] == "pt" and set(meta) == {"format", "proactive_jax.crc32"}
        assert set(json.loads(meta["proactive_jax.crc32"])) == set(f.keys())  # one CRC-32 per tensor
    # the exported tensors are the original ones, bit for bit
    orig, new = tensors_of(ck["dir"]), tensors_of(out)
    assert set(orig) == set(new)
    for k in orig:
        assert new[k].dtype == np.float32 and np.array_equal(orig[k], new[k]), k
    # transformers reloads it and computes the same logits
    reloaded = torch_logits(hf_load(out), ids)
    np.testing.assert_array_equal(reloaded, ck["ref"])
    assert load_hf_config(out) == config
    # generation config carries bos/eos
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["bos_token_id"] == 1 and gen["eos_token_id"] == 2
    transformers.GenerationConfig.from_pretrained(out)


def test_sharded_save_and_load(qwen3_untied, ids, tmp_path):
    config, params = load_pretrained(qwen3_untied["dir"])
    limit = 30_000
    out = save_pretrained(config, params, tmp_path / "sharded", max_shard_size=limit)
    shards = sorted(out.glob("model-*.safetensors"))
    n = len(shards)
    assert n > 2 and not (out / "model.safetensors").exists()
    assert [s.name for s in shards] == [f"model-{k:05d}-of-{n:05d}.safetensors" for k in range(1, n + 1)]
    index = json.loads((out / "model.safetensors.index.json").read_text())
    expected = expected_tensors(config)
    assert set(index["weight_map"]) == set(expected)
    assert set(index["weight_map"].values()) == {s.name for s in shards}
    assert index["metadata"]["total_size"] == sum(4 * int(np.prod(s)) for s in expected.values())
    for s in shards:
        with safe_open(str(s), framework="numpy") as f:
            sizes = [f.get_tensor(k).nbytes for k in f.keys()]
            assert sum(sizes) <= limit or len(sizes) == 1
            assert all(index["weight_map"][k] == s.name for k in f.keys())
    config2, params2 = load_pretrained(out)
    assert config2 == config and tree_equal(params, params2)
    np.testing.assert_array_equal(torch_logits(hf_load(out), ids), qwen3_untied["ref"])
    # saving again over it, unsharded, leaves no stale shard behind
    save_pretrained(config, params, out)
    assert sorted(os.listdir(out)) == ["config.json", "generation_config.json", "model.safetensors"]


def test_v4_and_v5_config_layouts(qwen2_tied, ids, tmp_path):
    config, params = load_pretrained(qwen2_tied["dir"])
    assert "rope_parameters" in json.loads((qwen2_tied["dir"] / "config.json").read_text())  # v5 from transformers
    yarn = config.replace(rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64})
    logits = {}
    for layout in ("v4", "v5"):
        out = save_pretrained(yarn, params, tmp_path / layout, layout=layout)
        raw = json.loads((out / "config.json").read_text())
        if layout == "v4":
            assert raw["rope_scaling"]["rope_type"] == "yarn" and "rope_parameters" not in raw
        else:
            assert raw["rope_parameters"]["rope_type"] == "yarn" and "rope_scaling" not in raw
        loaded_cfg, loaded = load_pretrained(out)
        assert loaded_cfg == yarn and tree_equal(loaded, params)
        positions = np.broadcast_to(np.arange(100, 100 + LENGTH), (BATCH, LENGTH))
        model = hf_load(out)
        assert model.config.rope_parameters["rope_type"] == "yarn"
        logits[layout] = torch_logits(model, ids, positions)
        d, rel = diff_stats(forward(loaded_cfg, loaded, ids, positions), logits[layout])
        assert rel <= 1e-4, layout
    np.testing.assert_array_equal(logits["v4"], logits["v5"])


def test_tied_with_and_without_lm_head(qwen2_tied, tmp_path):
    assert "lm_head.weight" not in tensors_of(qwen2_tied["dir"])  # transformers drops it when tied
    config, params = load_pretrained(qwen2_tied["dir"])
    assert "lm_head" not in params

    def add_head(t):
        t["lm_head.weight"] = t["model.embed_tokens.weight"].copy()

    d = rewrite(qwen2_tied["dir"], tmp_path / "with_head", add_head)
    config2, params2 = load_pretrained(d)
    assert config2 == config and tree_equal(params, params2)

    def bad_head(t):
        t["lm_head.weight"] = np.zeros((VOCAB, 40), np.float32)

    d = rewrite(qwen2_tied["dir"], tmp_path / "bad_head", bad_head)
    with pytest.raises(CheckpointError, match=r"'lm_head.weight' has shape \[97, 40\], expected \[97, 48\]"):
        load_pretrained(d)


def test_tie_resolves_as_transformers_with_a_distinct_head(qwen2_tied, ids, tmp_path):
    """tie_word_embeddings: true with a *different* lm_head.weight in the file: transformers 5 does not tie
    (it warns) and uses the head; so do we, and the export keeps that meaning."""
    def distinct_head(t):
        t["lm_head.weight"] = np.random.default_rng(3).standard_normal(t["model.embed_tokens.weight"].shape,
                                                                      ).astype(np.float32)

    d = rewrite(qwen2_tied["dir"], tmp_path / "distinct", distinct_head)
    assert json.loads((d / "config.json").read_text())["tie_word_embeddings"] is True
    ref = torch_logits(hf_load(d), ids)
    assert not np.allclose(ref, qwen2_tied["ref"], atol=1e-2)  # transformers did use the head
    config, params = load_pretrained(d)
    assert config.tie_word_embeddings is False and "lm_head" in params
    assert hf.load_model_config(d) == config  # the config alone resolves the same way (training builds on it)
    _, rel = diff_stats(forward(config, params, ids), ref)
    print(f"PARITY qwen2 tie=true + distinct lm_head: relative {rel:.3g}")
    assert rel <= 1e-4
    out = save_pretrained(config, params, tmp_path / "export")
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is False
    np.testing.assert_allclose(torch_logits(hf_load(out), ids), ref, atol=1e-6, rtol=0)
    config2, params2 = load_pretrained(out)
    assert config2 == config and tree_equal(params, params2)


def test_qwen3_declared_tie_with_distinct_head(qwen3_untied, ids, tmp_path):
    def tie(cfg):
        cfg["tie_word_embeddings"] = True

    d = rewrite(qwen3_untied["dir"], tmp_path / "q3", config_edit=tie)
    ref = torch_logits(hf_load(d), ids)
    np.testing.assert_allclose(ref, qwen3_untied["ref"], atol=1e-6, rtol=0)  # transformers keeps the head
    config, params = load_pretrained(d)
    assert config.tie_word_embeddings is False and "lm_head" in params
    _, rel = diff_stats(forward(config, params, ids), ref)
    assert rel <= 1e-4


# ---------------------------------------------------------------------------------------------
# bf16 checkpoints and the two readers
# ---------------------------------------------------------------------------------------------

def test_bf16_checkpoint_written_by_torch(qwen3_untied, tmp_path):
    model = build_torch_model("qwen3", seed=12, tie_word_embeddings=False, head_dim=16).to(torch.bfloat16)
    model.save_pretrained(tmp_path / "bf16")
    with safe_open(str(tmp_path / "bf16" / "model.safetensors"), framework="numpy") as f:
        assert f.get_slice("model.norm.weight").get_dtype() == "BF16"
    for reader in ("pread", "safe_open"):
        config, params = load_pretrained(tmp_path / "bf16", reader=reader, place=keep_on_host)
        assert all(x.dtype == np.float32 for x in jax.tree_util.tree_leaves(params))
        q = model.model.layers[1].self_attn.q_proj.weight.detach().float().numpy()
        np.testing.assert_array_equal(params["layers"]["self_attn"]["q_proj"]["kernel"][1], q.T)
        emb = model.model.embed_tokens.weight.detach().float().numpy()
        np.testing.assert_array_equal(params["embed_tokens"]["embedding"], emb)


def test_bf16_export(qwen3_untied, ids, tmp_path):
    config, params = load_pretrained(qwen3_untied["dir"])
    out = save_pretrained(config, params, tmp_path / "bf16", dtype="bfloat16")
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    with safe_open(str(out / "model.safetensors"), framework="numpy") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    # rounding matches torch's float32 -> bfloat16
    model = hf_load(out)
    assert model.dtype == torch.bfloat16
    ref_bf16 = qwen3_untied["model"].to(torch.bfloat16)
    try:
        for (k, a), (k2, b) in zip(sorted(model.state_dict().items()), sorted(ref_bf16.state_dict().items())):
            assert k == k2 and torch.equal(a, b), k
    finally:
        qwen3_untied["model"].to(torch.float32)
    _, params_bf = load_pretrained(out)
    rounded = jax.tree_util.tree_map(lambda x: np.asarray(x).astype(jax.numpy.bfloat16).astype(np.float32), params)
    assert tree_equal(params_bf, rounded)


def test_readers_agree_and_place_hook(qwen2_tied):
    calls = []

    def place(path, x):
        assert isinstance(x, np.ndarray) and x.dtype == np.float32
        calls.append(path)
        return jax.device_put(x)

    config, a = load_pretrained(qwen2_tied["dir"], place=place)
    _, b = load_pretrained(qwen2_tied["dir"], reader="safe_open", place=keep_on_host)
    assert tree_equal(a, b)
    paths = [tuple(k.key for k in p) for p, _ in jax.tree_util.tree_flatten_with_path(a)[0]]
    assert sorted(calls) == sorted(paths) and len(calls) == len(set(calls))
    assert all(isinstance(x, jax.Array) for x in jax.tree_util.tree_leaves(a))
    assert all(isinstance(x, np.ndarray) for x in jax.tree_util.tree_leaves(b))


def test_place_on_shardings(qwen2_tied, ids):
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    devices = jax.devices()
    assert len(devices) == 8  # conftest: fake CPU devices
    mesh = Mesh(np.array(devices), ("fsdp",))
    config = load_hf_config(qwen2_tied["dir"])
    shapes = abstract_params(config)
    shardings = jax.tree_util.tree_map(lambda _: NamedSharding(mesh, P()), shapes)
    shardings["embed_tokens"]["embedding"] = NamedSharding(mesh, P(None, "fsdp"))  # hidden 48 = 8 x 6
    _, params = load_pretrained(qwen2_tied["dir"], place=hf.place_on(shardings))
    emb = params["embed_tokens"]["embedding"]
    assert emb.sharding == shardings["embed_tokens"]["embedding"]
    assert {s.data.shape for s in emb.addressable_shards} == {(VOCAB, 6)}
    d, rel = diff_stats(forward(config, params, ids), qwen2_tied["ref"])
    assert rel <= 1e-4


def test_load_compute_options(qwen2_tied):
    config, _ = load_pretrained(qwen2_tied["dir"], dtype="bfloat16", scan_layers=False, remat=True)
    assert (config.dtype, config.scan_layers, config.remat) == ("bfloat16", False, True)


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------

def test_missing_directory_and_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint directory does not exist"):
        load_pretrained(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"config.json not found"):
        load_pretrained(tmp_path / "empty")


def test_no_weights_and_pickle_only(qwen2_tied, tmp_path):
    d = tmp_path / "noweights"
    d.mkdir()
    shutil.copy(qwen2_tied["dir"] / "config.json", d)
    with pytest.raises(FileNotFoundError, match=r"no model.safetensors or model.safetensors.index.json"):
        load_pretrained(d)
    # garbage bytes: any attempt to unpickle them would fail differently
    (d / "pytorch_model.bin").write_bytes(b"\x80\x04 not a pickle that may ever be loaded")
    with pytest.raises(CheckpointError, match=r"only PyTorch pickle weights \(pytorch_model.bin\).*never loaded"
                                              r".*[Cc]onvert .*safetensors"):
        load_pretrained(d)


def test_missing_shard_named_in_index(qwen3_untied, tmp_path):
    config, params = load_pretrained(qwen3_untied["dir"])
    out = save_pretrained(config, params, tmp_path / "sh", max_shard_size=60_000)
    last = sorted(out.glob("model-*.safetensors"))[-1]
    last.unlink()
    with pytest.raises(FileNotFoundError, match=rf"model.safetensors.index.json: names shard file '{last.name}'"):
        load_pretrained(out)


def test_index_disagrees_with_shards(qwen3_untied, tmp_path):
    config, params = load_pretrained(qwen3_untied["dir"])
    out = save_pretrained(config, params, tmp_path / "sh", max_shard_size=60_000)
    index_path = out / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    first, last = sorted(set(index["weight_map"].values()))[0], sorted(set(index["weight_map"].values()))[-1]
    index["weight_map"]["model.norm.weight"] = first if index["weight_map"]["model.norm.weight"] != first else last
    index_path.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"maps tensor 'model.norm.weight' to model-0000\d-of-0000\d"
                                              r".safetensors, but it is in"):
        load_pretrained(out)


def test_missing_tensor(qwen2_tied, tmp_path):
    d = rewrite(qwen2_tied["dir"], tmp_path / "m", lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(CheckpointError, match=r"missing tensors \['model.layers.1.mlp.up_proj.weight'\]"):
        load_pretrained(d)


def test_unexpected_tensor(qwen2_tied, tmp_path):
    def add(t):
        t["model.layers.2.mlp.up_proj.weight"] = t["model.layers.1.mlp.up_proj.weight"]
        t["model.extra.weight"] = np.zeros(3, np.float32)

    d = rewrite(qwen2_tied["dir"], tmp_path / "u", add)
    with pytest.raises(CheckpointError, match=r"tensors that qwen2 with 2 layers does not use: 'model.extra.weight' "
                                              r"\(in model.safetensors\), 'model.layers.2.mlp.up_proj.weight'"):
        load_pretrained(d)


def test_unused_tensor_allow_list(qwen2_tied, tmp_path):
    """Only rotary inv_freq buffers (named patterns, hf.UNUSED_TENSOR_PATTERNS) may sit in a file unread."""
    config, params = load_pretrained(qwen2_tied["dir"])

    def add_inv_freq(t):
        t["model.rotary_emb.inv_freq"] = np.ones(8, np.float32)
        t["model.layers.1.self_attn.rotary_emb.inv_freq"] = np.ones(8, np.float32)

    d = rewrite(qwen2_tied["dir"], tmp_path / "inv", add_inv_freq)
    config2, params2 = load_pretrained(d)
    assert config2 == config and tree_equal(params, params2)

    def add_other(t):
        t["model.layers.1.mlp.inv_freq"] = np.ones(8, np.float32)

    d = rewrite(qwen2_tied["dir"], tmp_path / "other", add_other)
    with pytest.raises(CheckpointError, match=r"does not use: 'model.layers.1.mlp.inv_freq' \(in model.safetensors\)"):
        load_pretrained(d)


def test_wrong_shape(qwen2_tied, tmp_path):
    def shrink(t):
        t["model.layers.0.self_attn.q_proj.weight"] = np.zeros((48, 40), np.float32)

    d = rewrite(qwen2_tied["dir"], tmp_path / "s", shrink)
    with pytest.raises(CheckpointError, match=r"model.safetensors: tensor 'model.layers.0.self_attn.q_proj.weight' "
                                              r"has shape \[48, 40\], expected \[48, 48\]"):
        load_pretrained(d)


def test_unsupported_architecture(qwen2_tied, tmp_path):
    def llama(cfg):
        cfg["model_type"], cfg["architectures"] = "llama", ["LlamaForCausalLM"]

    d = rewrite(qwen2_tied["dir"], tmp_path / "llama", config_edit=llama)
    with pytest.raises(ConfigError, match=r"unsupported architecture model_type='llama'.*LlamaForCausalLM"):
        load_pretrained(d)


def test_truncated_safetensors(qwen2_tied, tmp_path):
    d = rewrite(qwen2_tied["dir"], tmp_path / "t")
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=r"model.safetensors: tensor '.*' data_offsets .* outside the file"):
        load_pretrained(d)
    f.write_bytes(b"\x01\x02")
    with pytest.raises(CheckpointError, match=r"model.safetensors: not a safetensors file"):
        load_pretrained(d)


# ---------------------------------------------------------------------------------------------
# export: atomicity, refusal, tokenizer
# ---------------------------------------------------------------------------------------------

def test_failed_save_keeps_existing_checkpoint(qwen3_untied, tmp_path, monkeypatch):
    config, params = load_pretrained(qwen3_untied["dir"])
    out = save_pretrained(config, params, tmp_path / "good")
    before = dir_digest(out)

    # 1) fails while writing the second shard
    calls = {"n": 0}
    real = hf_export.write_safetensors

    def flaky(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full (simulated)")
        return real(*a, **kw)

    monkeypatch.setattr(hf_export, "write_safetensors", flaky)
    with pytest.raises(OSError, match="disk full"):
        save_pretrained(config, params, out, max_shard_size=30_000)
    monkeypatch.undo()
    assert calls["n"] == 2
    # 2) fails validating the params (one leaf missing)
    broken = dict(params)
    broken.pop("norm")
    with pytest.raises(CheckpointError, match=r"missing \['norm/weight'\]"):
        save_pretrained(config, broken, out)
    # 3) a wrong-shaped leaf
    bad = jax.tree_util.tree_map(lambda x: x, params)
    bad["lm_head"]["kernel"] = np.zeros((48, 5), np.float32)
    with pytest.raises(CheckpointError, match=r"param lm_head/kernel has shape \[48, 5\], expected \[48, 97\]"):
        save_pretrained(config, bad, out)

    assert dir_digest(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good"]  # no temp dirs left behind
    assert tree_equal(load_pretrained(out)[1], params)


def test_refuses_to_replace_a_non_checkpoint_dir(qwen2_tied, tmp_path):
    config, params = load_pretrained(qwen2_tied["dir"])
    d = tmp_path / "notes"
    d.mkdir()
    (d / "important.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="holds no config.json; refusing to replace it"):
        save_pretrained(config, params, d)
    assert (d / "important.txt").read_text() == "keep me"


def _tiny_tokenizer(d: Path):
    """A Qwen2-shaped byte-level BPE (trained offline on a few sentences), saved to ``d``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = ["the stream reads a word, then waits or writes", "hello world, streaming models decide when to write"]
    bpe.train_from_iterator(corpus * 4, trainer)
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m)
              for m in json.loads(bpe.to_str())["model"]["merges"]]
    tok = transformers.Qwen2Tokenizer(vocab=bpe.get_vocab(), merges=merges, eos_token="<|im_end|>",
                                      pad_token="<|endoftext|>", unk_token=None)
    tok.chat_template = "{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}"
    tok.save_pretrained(d)
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": 2, "temperature": 0.7}))
    return tok


def test_tokenizer_files_copied(qwen2_tied, tmp_path):
    tok_dir = tmp_path / "tok"
    fast = _tiny_tokenizer(tok_dir)
    config, params = load_pretrained(qwen2_tied["dir"])
    out = save_pretrained(config, params, tmp_path / "with_tok", tokenizer_dir=tok_dir)
    copied = [n for n in hf.TOKENIZER_FILES if (tok_dir / n).exists()]
    assert "tokenizer.json" in copied and "tokenizer_config.json" in copied
    for n in copied:
        assert (out / n).read_bytes() == (tok_dir / n).read_bytes(), n
    loaded = transformers.AutoTokenizer.from_pretrained(out)
    text = "hello stream, the model waits then writes 42 words"
    ids = fast(text)["input_ids"]
    assert type(loaded).__name__ == "Qwen2Tokenizer"
    assert loaded(text)["input_ids"] == ids and len(ids) < len(text) and loaded.decode(ids) == text
    assert loaded.eos_token == "<|im_end|>"
    assert loaded.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == \
        "<|im_start|>hi<|im_end|>"
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["temperature"] == 0.7 and gen["eos_token_id"] == 2 and gen["bos_token_id"] == 1
    # a tokenizer dir without tokenizer files is an error, before anything is written
    with pytest.raises(FileNotFoundError, match="no tokenizer files found"):
        save_pretrained(config, params, tmp_path / "x", tokenizer_dir=qwen2_tied["dir"])
    assert not (tmp_path / "x").exists()


def test_parse_size():
    assert hf_export.parse_size("5GB") == 5 * 10**9
    assert hf_export.parse_size("500MiB") == 500 * 2**20
    assert hf_export.parse_size("10KB") == 10_000
    assert hf_export.parse_size(1234) == 1234
    with pytest.raises(ValueError, match="max_shard_size"):
        hf_export.parse_size("lots")


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------

def test_cli_hf_check(qwen3_untied, capsys):
    rc = cli.main(["hf-check", str(qwen3_untied["dir"]), "--batch", str(BATCH), "--length", str(LENGTH)])
    out = capsys.readouterr().out
    print(out)
    assert rc == 0, out
    m = re.search(r"max \|logit diff\| = (\S+)\s+relative = (\S+)", out)
    assert m and float(m.group(2)) <= 1e-4, out
    assert "OK" in out
    rc = cli.main(["hf-check", str(qwen3_untied["dir"]), "--batch", str(BATCH), "--length", str(LENGTH),
                   "--dtype", "bfloat16", "--tol", "1e-6"])
    out = capsys.readouterr().out
    assert rc == 1 and "FAIL" in out, out


def test_cli_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    assert "hf-check" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        cli.main([])
    assert e.value.code == 2


def test_cli_hf_check_bad_dir(tmp_path, capsys):
    from proactive_jax.cli import main
    assert main(["hf-check", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "pickled").mkdir()
    (tmp_path / "pickled" / "config.json").write_text('{"model_type": "llama"}')
    assert main(["hf-check", str(tmp_path / "pickled")]) == 2
    assert "llama" in capsys.readouterr().err
