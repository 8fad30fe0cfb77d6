"""The tokenizers-only reader gives what transformers' AutoTokenizer gives: ids, tokens, text, special tokens,
chat-template renderings and the tables built from them; it declines what it cannot reproduce."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from transformers import AutoTokenizer

from proactive_jax.data import template_parts, word_start_table
from proactive_jax.data.render import eos_ids_for
from proactive_jax.data.synthetic import ASSET_DIR
from proactive_jax.data.tokenizer_json import JsonTokenizer, load_json_tokenizer
from tests.tokenizers_util import qwen_style_tokenizer_dir

TEXTS = ["Hello world! The quick brown fox jumps over the lazy dog.", "  leading and trailing  ", "",
         "Hallo Welt! Der schnelle braune Fuchs springt über den faulen Hund. Cafe\u0301 na\u00efve 1999",
         "<|im_start|>user\nWhere did the fox jump?<|im_end|>\n<|im_start|>assistant\n", "tab\tnew\nline\r\n",
         "key0 key7 val3 ? unknownword <unk> <|endoftext|> emoji \U0001f600"]
CONVERSATIONS = [[{"role": "user", "content": "Where did the fox jump?"}],
                 [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi\nthere"},
                  {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "key3 ?"}]]


def _dirs(tmp_path_factory):
    out = {"synthetic": ASSET_DIR, "qwen2.5": qwen_style_tokenizer_dir("qwen2.5"),
           "qwen3": qwen_style_tokenizer_dir("qwen3")}
    # the class name of the real Qwen checkpoints: transformers rebuilds its pipeline from the vocabulary
    qwen2 = tmp_path_factory.mktemp("qwen2cls")
    for f in out["qwen2.5"].iterdir():
        shutil.copy(f, qwen2 / f.name)
    cfg = json.loads((qwen2 / "tokenizer_config.json").read_text())
    cfg["tokenizer_class"] = "Qwen2Tokenizer"
    (qwen2 / "tokenizer_config.json").write_text(json.dumps(cfg))
    out["qwen2-class"] = qwen2
    return out


@pytest.fixture(scope="module")
def tokenizer_dirs(tmp_path_factory):
    return _dirs(tmp_path_factory)


@pytest.mark.parametrize("name", ["synthetic", "qwen2.5", "qwen3", "qwen2-class"])
def test_same_as_transformers(tokenizer_dirs, name):
    d = tokenizer_dirs[name]
    ours, ref = load_json_tokenizer(d), AutoTokenizer.from_pretrained(str(d))
    assert isinstance(ours, JsonTokenizer)
    assert len(ours) == len(ref) and ours.get_vocab() == ref.get_vocab()
    assert ours.get_added_vocab() == ref.get_added_vocab()
    assert ours.special_tokens_map == ref.special_tokens_map
    assert ours.all_special_tokens == ref.all_special_tokens and ours.all_special_ids == ref.all_special_ids
    for attr in ("eos_token", "eos_token_id", "unk_token", "unk_token_id", "pad_token", "pad_token_id", "bos_token",
                 "bos_token_id"):
        assert getattr(ours, attr) == getattr(ref, attr), attr
    every_id = list(range(len(ref)))
    assert ours.convert_ids_to_tokens(every_id) == ref.convert_ids_to_tokens(every_id)
    assert ours.convert_ids_to_tokens(every_id, skip_special_tokens=True) == \
        ref.convert_ids_to_tokens(every_id, skip_special_tokens=True)
    probe_tokens = ["<|im_end|>", "<|im_start|>", "<|endoftext|>", "not-a-token", "key0", "\u0120the"]
    assert ours.convert_tokens_to_ids(probe_tokens) == ref.convert_tokens_to_ids(probe_tokens)
    for text in TEXTS:
        for special in (False, True):
            ids = ours.encode(text, add_special_tokens=special)
            assert ids == ref.encode(text, add_special_tokens=special), text
            assert ours(text, add_special_tokens=special)["input_ids"] == ref(text, add_special_tokens=special)["input_ids"]
            for skip in (False, True):
                assert ours.decode(ids, skip_special_tokens=skip) == ref.decode(ids, skip_special_tokens=skip)
    assert ours(TEXTS, add_special_tokens=False)["input_ids"] == ref(TEXTS, add_special_tokens=False)["input_ids"]
    for conv in CONVERSATIONS:
        for gen in (False, True):
            for kw in ({}, {"enable_thinking": False}):
                got = ours.apply_chat_template(conv, tokenize=False, add_generation_prompt=gen, **kw)
                assert got == ref.apply_chat_template(conv, tokenize=False, add_generation_prompt=gen, **kw)
                assert ours.apply_chat_template(conv, add_generation_prompt=gen, **kw) == ref.encode(
                    got, add_special_tokens=False)
    # what the package builds from a tokenizer
    for thinking in ((False, True) if name == "qwen3" else (False,)):
        assert template_parts(ours, thinking=thinking) == template_parts(ref, thinking=thinking)
    assert (word_start_table(ours, len(ref) + 5) == word_start_table(ref, len(ref) + 5)).all()

    class Cfg:
        eos_ids = (0,)
        vocab_size = len(ref)
    assert eos_ids_for(ours, Cfg) == eos_ids_for(ref, Cfg)


def test_declines_what_it_cannot_reproduce(tokenizer_dirs, tmp_path):
    src = tokenizer_dirs["qwen2.5"]

    def variant(name, edit_cfg=None, edit_spec=None):
        d = tmp_path / name
        shutil.copytree(src, d)
        if edit_cfg:
            cfg = json.loads((d / "tokenizer_config.json").read_text())
            edit_cfg(cfg)
            (d / "tokenizer_config.json").write_text(json.dumps(cfg))
        if edit_spec:
            spec = json.loads((d / "tokenizer.json").read_text())
            edit_spec(spec)
            (d / "tokenizer.json").write_text(json.dumps(spec))
        return d

    assert load_json_tokenizer(src) is not None
    assert load_json_tokenizer(variant("llama", lambda c: c.update(tokenizer_class="LlamaTokenizer"))) is None
    # Qwen2's class with another pipeline than the one transformers rebuilds
    assert load_json_tokenizer(variant("qwen-nfkc", lambda c: c.update(tokenizer_class="Qwen2Tokenizer"),
                                       lambda s: s.update(normalizer={"type": "NFKC"}))) is None
    # a special token that transformers would add to the vocabulary
    assert load_json_tokenizer(variant("newtok", lambda c: c.update(mask_token="<mask>"))) is None
    # a post-processor that adds ids
    bos = {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<|im_start|>", "type_id": 0}},
                                                    {"Sequence": {"id": "A", "type_id": 0}}],
           "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
           "special_tokens": {"<|im_start|>": {"id": "<|im_start|>", "ids": [1], "tokens": ["<|im_start|>"]}}}
    assert load_json_tokenizer(variant("bos", edit_spec=lambda s: s.update(post_processor=bos))) is None
    assert load_json_tokenizer(tmp_path / "missing") is None


def test_eval_tokenizer_path_imports_no_torch():
    """Loading a run's tokenizer (eval, decode, probe) and the demo's imports neither transformers nor torch."""
    code = ("import sys; from proactive_jax.training.loading import load_tokenizer; "
            "from proactive_jax.data.synthetic import ASSET_DIR, load_tokenizer as synthetic; "
            "t = load_tokenizer(ASSET_DIR); s = synthetic(); "
            "print(type(t).__name__, type(s).__name__, 'transformers' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["JsonTokenizer", "JsonTokenizer", "False", "False"]
