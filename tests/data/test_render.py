"""Rendering TextExample -> StreamExample with a Qwen-style byte-level BPE and the synthetic word-level tokenizer."""
import numpy as np
import pytest

from proactive_jax.data import synthetic
from proactive_jax.data.render import (RenderConfig, TemplateParts, TextExample, render_example, split_words,
                                       template_parts, word_start_table)
from proactive_jax.data.example import ExampleError, StreamExample
from tests.tokenizers_util import qwen_style_tokenizer

QWEN25_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."


@pytest.fixture(scope="module")
def q25():
    return qwen_style_tokenizer("qwen2.5")


@pytest.fixture(scope="module")
def q3():
    return qwen_style_tokenizer("qwen3")


@pytest.fixture(scope="module")
def wl():
    return synthetic.load_tokenizer()


def _ex(source, target="Hallo Welt !", prompt="Translate the following English text into German.", id_="ex1"):
    return TextExample(task="mt", id=id_, prompt_text=prompt, units=split_words(source), target_text=target)


@pytest.mark.parametrize("text", ["Hello world !", "  lead and trail  ", "a  double\nnew\n\nline\tx",
                                  "one", "The fox jumped over the dog in 1999.\nLater it slept."])
def test_split_words_rejoins(text):
    units = split_words(text)
    assert "".join(units) == text.strip()
    assert all(u.strip() for u in units)
    assert not units[0][0].isspace()
    assert all(u[0].isspace() for u in units[1:])
    assert [u.strip() for u in units] == text.split()


def test_template_parts_qwen25(q25):
    p = template_parts(q25)
    assert p.prompt_prefix == f"<|im_start|>system\n{QWEN25_SYSTEM}<|im_end|>\n<|im_start|>user\n"
    assert p.end == "<|im_end|>\n"
    assert p.header == "<|im_start|>assistant\n"
    assert p.eot == "<|im_end|>"
    p2 = template_parts(q25, system="Be brief.")
    assert p2.prompt_prefix == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n"
    with pytest.raises(ValueError, match="enable_thinking"):
        template_parts(q25, thinking=True)


def test_template_parts_qwen3_thinking_switch(q3):
    p = template_parts(q3)
    assert p.prompt_prefix == "<|im_start|>user\n"
    assert p.end == "<|im_end|>\n"
    assert p.header == "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    assert p.eot == "<|im_end|>"
    assert template_parts(q3, thinking=True).header == "<|im_start|>assistant\n"
    assert template_parts(q3, system="S").prompt_prefix == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\n"


def test_template_parts_overrides(q25, wl):
    p = template_parts(q25, header="<|im_start|>assistant\nAnswer: ")
    assert p.header == "<|im_start|>assistant\nAnswer: " and p.end == "<|im_end|>\n"
    full = template_parts(None, prompt_prefix="P", end="E", header="H", eot="<|im_end|>")
    assert full == TemplateParts("P", "E", "H", "<|im_end|>")
    wl_parts = template_parts(wl)
    assert wl_parts == TemplateParts("<|im_start|>user\n", "<|im_end|>\n", "<|im_start|>assistant\n", "<|im_end|>")

    class NoTemplate:
        chat_template = None

    with pytest.raises(ValueError, match="no chat_template"):
        template_parts(NoTemplate())


def _dec(tok, ids):
    return tok.decode(list(ids), skip_special_tokens=False)


@pytest.mark.parametrize("style", ["qwen2.5", "qwen3"])
def test_render_qwen_bpe_roundtrip(style):
    tok = qwen_style_tokenizer(style)
    parts = template_parts(tok)
    src = "The quick brown fox jumps over the lazy dog.\nHello  world!"
    ex = _ex(src)
    se = render_example(tok, ex, parts)
    assert isinstance(se, StreamExample)
    assert se.M == len(ex.units)
    assert _dec(tok, se.prompt) == parts.prompt_prefix + ex.prompt_text + "\n"
    assert "".join(_dec(tok, u) for u in se.units) == src
    assert [_dec(tok, u) for u in se.units] == ex.units
    # each unit is exactly the standalone tokenization of its text
    for u, text in zip(se.units, ex.units):
        assert list(u) == tok(text, add_special_tokens=False)["input_ids"]
    assert _dec(tok, se.end) == parts.end
    assert _dec(tok, se.header) == parts.header
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert se.target[-1] == im_end and _dec(tok, se.target[:-1]) == ex.target_text
    assert se.S == len(se.prompt) + sum(map(len, se.units)) + len(se.end)
    # on plain text, unit-by-unit tokens agree with tokenizing the joined source (Qwen pre-tokenizer)
    plain = _ex("Hello world ! The fox jumps over the dog.")
    se2 = render_example(tok, plain, parts)
    assert sum(se2.units, ()) == tuple(tok(plain.source, add_special_tokens=False)["input_ids"])


def test_render_empty_prompt_text_has_no_separator(q25):
    parts = template_parts(q25)
    se = render_example(q25, _ex("Hello world", prompt=""), parts)
    assert _dec(q25, se.prompt) == parts.prompt_prefix


def test_render_token_and_sentence_units(q25):
    parts = template_parts(q25)
    src = "Hello world! The fox jumps. Later it slept"
    ex = _ex(src)
    tok_units = render_example(q25, ex, parts, unit="token")
    assert all(len(u) == 1 for u in tok_units.units)
    assert "".join(_dec(q25, u) for u in tok_units.units) == src
    assert sum(tok_units.units, ()) == tuple(q25(src, add_special_tokens=False)["input_ids"])
    sent = render_example(q25, ex, parts, unit="sentence")
    assert [_dec(q25, u) for u in sent.units] == ["Hello world!", " The fox jumps.", " Later it slept"]
    with pytest.raises(ValueError):
        RenderConfig(unit="paragraph")


def test_render_errors_name_the_example(q25):
    parts = template_parts(q25)
    bad_unit = TextExample(task="mt", id="row-17", prompt_text="p", units=["Hello", " "], target_text="x")
    with pytest.raises(ExampleError, match=r"row-17.*unit 1"):
        render_example(q25, bad_unit, parts)
    with pytest.raises(ExampleError, match=r"row-18.*no units"):
        render_example(q25, TextExample("mt", "row-18", "p", [], "x"), parts)
    with pytest.raises(ExampleError, match=r"row-19.*target text is empty"):
        render_example(q25, _ex("Hello world", target="  ", id_="row-19"), parts)
    long = _ex("word " * 50, id_="row-20")
    with pytest.raises(ExampleError, match=r"row-20.*max_source_tokens=30"):
        render_example(q25, long, parts, max_source_tokens=30)
    with pytest.raises(ExampleError, match=r"row-21.*max_target_tokens=3"):
        render_example(q25, _ex("Hello", target="Hallo Welt wie geht es", id_="row-21"), parts, max_target_tokens=3)
    ok = render_example(q25, long, parts, max_source_tokens=1000, max_target_tokens=100)
    assert ok.M == 50


def test_render_word_level(wl):
    parts = template_parts(wl)
    ex = synthetic.make_task("word-map", 1, seed=3)[0]
    se = render_example(wl, ex, parts)
    assert all(len(u) == 1 for u in se.units)
    assert " ".join(wl.decode(list(u)) for u in se.units) == ex.source
    assert wl.decode(list(se.target[:-1])) == ex.target_text
    assert se.target[-1] == wl.convert_tokens_to_ids("<|im_end|>")
    assert wl.unk_token_id not in se.source + se.target
    assert list(se.prompt[:2]) == wl.convert_tokens_to_ids(["<|im_start|>", "user"])
    assert list(se.header) == wl.convert_tokens_to_ids(["<|im_start|>", "assistant"])


def test_word_start_table_bpe(q25):
    tab = word_start_table(q25)
    assert tab.dtype == bool and tab.shape == (len(q25),)
    vocab = q25.get_vocab()
    for special in ("<|im_start|>", "<|im_end|>", "<|endoftext|>"):
        assert tab[vocab[special]]
    assert tab[vocab["Ġworld"]] and tab[vocab["Ċ"]] and tab[vocab["Ġ"]]
    assert not tab[vocab["Hello"]] and not tab[vocab["!"]]
    # every token of a word-initial unit after the first starts a word exactly at its first token
    parts = template_parts(q25)
    se = render_example(q25, _ex("Hello wonderful world of jumps"), parts)
    for u in se.units[1:]:
        assert tab[u[0]] and not any(tab[t] for t in u[1:])
    padded = word_start_table(q25, vocab_size=len(q25) + 7)
    assert padded.shape == (len(q25) + 7,) and padded[-7:].all() and (padded[: len(q25)] == tab).all()


def test_word_start_table_word_level(wl):
    tab = word_start_table(wl)
    assert tab.shape == (len(wl),) and tab.all()
    assert isinstance(tab, np.ndarray)
