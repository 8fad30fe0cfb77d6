"""`proactive-jax decode --live --long-form`: a stream longer than any one-turn window just runs; a unit that cannot
fit the window is one error line, and what was written stays written."""
import argparse
import io

import pytest

from proactive_jax.cli.decode import add_decode_args, run_live
from proactive_jax.data.synthetic import ASSET_DIR
from proactive_jax.models.hf_export import save_pretrained
from proactive_jax.models.qwen import init_params
from tests.helpers import tiny_qwen3

WORDS = "the quick fox sees the owl . a red cat finds the blue pear ?".split()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt_longform")
    cfg = tiny_qwen3(vocab_size=128, eos_token_id=3)  # as in test_decode: shares its compiled programs
    save_pretrained(cfg, init_params(cfg, 0), d, tokenizer_dir=ASSET_DIR)
    return d


def _args(ckpt, *extra):
    p = argparse.ArgumentParser()
    add_decode_args(p)
    return p.parse_args(["--checkpoint", str(ckpt), "--head", "wait-k:k=2", "--live", "--max-new-tokens", "8",
                         *extra])


def test_a_long_stream_runs_and_writes_throughout(ckpt, capsys):
    lines = (WORDS * 40)[:600]  # 600 words through a 64-token window; a one-turn session holds far fewer
    out = io.StringIO()
    printed = []

    class Feed:
        def readline(self):
            printed.append(len(out.getvalue()))
            return lines.pop(0) + "\n" if lines else ""

    assert run_live(_args(ckpt, "--window", "64"), stdin=Feed(), stdout=out) == 0
    assert "long-form: 600 units" in capsys.readouterr().err
    assert all(printed[k] < printed[k + 100] for k in range(0, 500, 100))  # writes in every hundred words


def test_a_blank_line_ends_a_turn(ckpt, capsys):
    out = io.StringIO()
    text = "the quick fox sees the owl\n\na red cat finds the blue pear\n\n\nthe owl\n"
    assert run_live(_args(ckpt, "--window", "64"), stdin=io.StringIO(text), stdout=out) == 0
    assert "long-form: 15 units" in capsys.readouterr().err
    assert len(out.getvalue().strip().splitlines()) == 3  # one line of output per turn


def test_a_unit_that_cannot_fit_the_window_is_one_error_line(ckpt, capsys):
    out = io.StringIO()
    stdin = io.StringIO("the quick fox\nthe owl\n" + " ".join(WORDS * 2) + "\nmore words\n")
    assert run_live(_args(ckpt, "--window", "64", "--unit", "sentence"), stdin=stdin, stdout=out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "window=64" in err[-1] and err[-1].startswith("proactive-jax decode: push:")
    assert out.getvalue().strip(), "what was written before the bad unit stays written"
    assert run_live(_args(ckpt, "--window", "16"), stdin=io.StringIO("a\n"), stdout=io.StringIO()) == 2
    assert "--window 16" in capsys.readouterr().err
