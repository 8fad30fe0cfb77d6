"""`proactive-jax decode --text` / `--live`: words outside the tokenizer's vocabulary are named once."""

import io

from proactive_jax.cli import main
from proactive_jax.cli.decode import unknown_words
from proactive_jax.data.synthetic import ASSET_DIR, load_tokenizer
from proactive_jax.models.hf_export import save_pretrained
from proactive_jax.models.qwen import init_params
from tests.helpers import tiny_qwen3


def test_unknown_words_each_once_in_order():
    tok = load_tokenizer()
    assert unknown_words(tok, ["the zebra fox zebra", "which quokka ?"]) == ["zebra", "quokka"]
    assert unknown_words(tok, ["the fox ?", ""]) == []
    assert unknown_words(tok, ["<unk>"]) == []  # the unknown token itself is in the vocabulary


def test_decode_text_warns_once_naming_the_unknown_words(tmp_path, capsys):
    cfg = tiny_qwen3(vocab_size=128, eos_token_id=3)
    save_pretrained(cfg, init_params(cfg, 0), tmp_path, tokenizer_dir=ASSET_DIR)
    assert main(["decode", "--checkpoint", str(tmp_path), "--head", "wait-k:k=2", "--text", "the zebra fox zebra",
                 "--prompt", "which quokka ?", "--max-new-tokens", "3"]) == 0
    out = capsys.readouterr()
    lines = [ln for ln in out.err.splitlines() if "vocabulary" in ln]
    assert lines == ["proactive-jax decode: 2 words not in the tokenizer's vocabulary, read as <unk>: 'zebra', "
                     "'quokka'"]
    assert "READ" in out.out and "output:" in out.out


def test_decode_live_names_each_unknown_word_once(tmp_path, capsys, monkeypatch):
    cfg = tiny_qwen3(vocab_size=128, eos_token_id=3)
    save_pretrained(cfg, init_params(cfg, 0), tmp_path, tokenizer_dir=ASSET_DIR)
    monkeypatch.setattr("sys.stdin", io.StringIO("zebra quokka\nzebra the fox\n"))
    assert main(["decode", "--checkpoint", str(tmp_path), "--head", "wait-k:k=2", "--live",
                 "--max-new-tokens", "20"]) == 0
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "vocabulary" in ln]
    assert lines == [f"proactive-jax decode: {w!r} is not in the tokenizer's vocabulary, read as <unk> (said once "
                     f"per word)" for w in ("zebra", "quokka")]
