"""`proactive-jax decode --live`: units from standard input as they arrive, writes printed as they happen."""
import argparse
import io

import pytest

from proactive_jax.cli import main
from proactive_jax.data.synthetic import ASSET_DIR
from proactive_jax.cli.decode import add_decode_args, run_live
from proactive_jax.models.hf_export import save_pretrained
from proactive_jax.models.qwen import init_params
from tests.helpers import tiny_qwen3

TEXT = "the quick fox sees the owl"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt_live")
    cfg = tiny_qwen3(vocab_size=128, eos_token_id=3)  # as in test_simuleval_agent: shares its compiled step
    save_pretrained(cfg, init_params(cfg, 0), d, tokenizer_dir=ASSET_DIR)
    return d


class Feed:
    """A stdin that hands out one line per readline and logs how much had been printed by then."""

    def __init__(self, lines, out):
        self.lines, self.out, self.printed_at_read = list(lines), out, []

    def readline(self):
        self.printed_at_read.append(len(self.out.getvalue()))
        return self.lines.pop(0) + "\n" if self.lines else ""


def test_live_prints_writes_as_units_arrive(ckpt, capsys):
    p = argparse.ArgumentParser()
    add_decode_args(p)
    args = p.parse_args(["--checkpoint", str(ckpt), "--head", "wait-k:k=2", "--live", "--max-new-tokens", "9"])
    out = io.StringIO()
    stdin = Feed(TEXT.split(), out)  # one word per line
    assert run_live(args, stdin=stdin, stdout=out) == 0
    live = out.getvalue().strip()
    # wait-k:k=2 writes after the 2nd word: output appeared before the later words were even read
    assert stdin.printed_at_read[1] == 0 < stdin.printed_at_read[2] < stdin.printed_at_read[-1]
    assert "phi: [2, 3, 4, 5, 6, 7" in capsys.readouterr().err
    # the same words as one offline decode (stream_decode on the whole example) print the same output
    assert main(["decode", "--checkpoint", str(ckpt), "--head", "wait-k:k=2", "--text", TEXT,
                 "--max-new-tokens", "9"]) == 0
    assert f"output: {live!r}" in capsys.readouterr().out


def test_live_bad_input(ckpt, capsys):
    p = argparse.ArgumentParser()
    add_decode_args(p)
    args = p.parse_args(["--checkpoint", str(ckpt), "--head", "wait-k:k=2", "--live", "--max-new-tokens", "9",
                         "--unit", "token"])
    assert run_live(args, stdin=io.StringIO("a b\n"), stdout=io.StringIO()) == 2
    assert "--live streams words" in capsys.readouterr().err
    assert main(["decode", "--checkpoint", str(ckpt)]) == 2
    assert "--text TEXT, or --live" in capsys.readouterr().err


def _live_args(ckpt, *extra):
    p = argparse.ArgumentParser()
    add_decode_args(p)
    return p.parse_args(["--checkpoint", str(ckpt), "--head", "wait-k:k=2", "--live", "--max-new-tokens", "4",
                         *extra])


def test_live_without_any_word_is_one_line(ckpt, capsys):
    """Standard input that ends before a word (``< /dev/null``, blank lines) is refused like ``--text ""``."""
    for stdin in ("", "\n  \n"):
        assert run_live(_live_args(ckpt), stdin=io.StringIO(stdin), stdout=io.StringIO()) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1] == "proactive-jax decode: standard input ended before any word: nothing to stream"


def test_live_undecodable_bytes_are_read_as_replacement_characters(ckpt, capsys):
    """Bytes that are not UTF-8 reach Python's text stdin as lone surrogates; they become U+FFFD (one warning)
    instead of a TypeError inside the tokenizer."""
    raw = b"the \xff\xfe owl \x80 sees\n".decode("utf-8", "surrogateescape")
    assert run_live(_live_args(ckpt), stdin=io.StringIO(raw), stdout=io.StringIO()) == 0
    err = capsys.readouterr().err
    assert err.count("not valid UTF-8") == 1 and "Traceback" not in err
    assert "M = 5" in err  # the, \ufffd\ufffd, owl, \ufffd, sees: 5 words, all read


def test_tokenizer_that_is_not_a_local_directory_is_one_line(ckpt, capsys):
    assert main(["decode", "--checkpoint", str(ckpt), "--tokenizer", "Qwen/Qwen2.5-3B-Instruct", "--text", "a b"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tokenizers are local directories" in err[0]
