"""The eval and decode commands end to end on tiny random HF checkpoints (synthetic and SQuAD fixture data)."""
import json
from pathlib import Path

import pytest

from proactive_jax.cli import main
from proactive_jax.data.synthetic import ASSET_DIR
from proactive_jax.models.hf_export import save_pretrained
from proactive_jax.models.qwen import init_params
from tests.helpers import FIXTURES, tiny_qwen3

FIX = FIXTURES / "data"
HEADS = "heads=[batch, 'wait-k:k=1|2', 'entropy:tau=0.5', 'attention:tau=0.6,layers=-1:,min_read=2']"


@pytest.fixture(scope="module")
def synthetic_ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt_syn")
    cfg = tiny_qwen3(vocab_size=128, eos_token_id=3)
    save_pretrained(cfg, init_params(cfg, 0), d, tokenizer_dir=ASSET_DIR)
    return d


@pytest.fixture(scope="module")
def bpe_ckpt(tmp_path_factory):
    from tests.tokenizers_util import qwen_style_tokenizer, qwen_style_tokenizer_dir
    tok = qwen_style_tokenizer("qwen2.5")
    d = tmp_path_factory.mktemp("ckpt_bpe")
    cfg = tiny_qwen3(vocab_size=len(tok) + (-len(tok)) % 8)
    save_pretrained(cfg, init_params(cfg, 1), d, tokenizer_dir=qwen_style_tokenizer_dir("qwen2.5"))
    return d


def _check_outputs(out: Path, n_rows: int, quality: str):
    for name in ("results.json", "table.md", "quality_latency.png", "records.jsonl"):
        assert (out / name).exists(), name
    assert (out / "quality_latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the main table (the curve-area table follows it after a blank line)
    rows = [l for l in (out / "table.md").read_text().split("\n\n")[0].splitlines() if l.startswith("|")]
    assert rows[0].split("|")[2].strip() == quality
    assert len(rows) == 2 + n_rows
    res = json.loads((out / "results.json").read_text())
    return res


def test_eval_cli_synthetic_resumes(synthetic_ckpt, tmp_path, capsys):
    out = tmp_path / "ev"
    args = ["eval", f"checkpoint={synthetic_ckpt}", "task=lookup", "num_examples=6", "calibration_split=null",
            HEADS, "max_new_tokens=4", "batch_size=4", f"out_dir={out}", "progress=false"]
    assert main(args) == 0
    res = _check_outputs(out, 5, "acc")
    assert {s["family"] for s in res["settings"]} == {"batch", "wait-k", "entropy", "attention"}
    printed = capsys.readouterr().out
    assert "| method |" in printed and "decode" in printed
    # drop half of the decode records: the re-run decodes exactly those again and gives the same table
    lines = (out / "records.jsonl").read_text().splitlines()
    keep = [l for i, l in enumerate(lines) if i % 2 == 0]
    (out / "records.jsonl").write_text("".join(l + "\n" for l in keep))
    table = (out / "table.md").read_text()
    assert main(args) == 0
    assert len((out / "records.jsonl").read_text().splitlines()) == len(lines)
    assert (out / "table.md").read_text() == table


def test_eval_cli_squad_fixture(bpe_ckpt, tmp_path):
    out = tmp_path / "squad"
    assert main(["eval", f"checkpoint={bpe_ckpt}", "task=squad", "dataset.source=files",
                 f"dataset.path={FIX / 'squad_v1.1_sample.jsonl'}", "split=validation", "calibration_split=null",
                 "num_examples=4", "heads=[batch, 'wait-k:k=3']", "max_new_tokens=3", f"out_dir={out}",
                 "progress=false"]) == 0
    res = _check_outputs(out, 2, "F1")
    ex = res["settings"][0]["examples"][0]
    assert len(ex["references"]) >= 2, "every gold answer is kept for scoring"


def test_eval_cli_bad_inputs(synthetic_ckpt, tmp_path, capsys):
    assert main(["eval", f"checkpoint={synthetic_ckpt}", "heads=[greedy]", f"out_dir={tmp_path}"]) == 2
    assert "unknown decision head 'greedy'" in capsys.readouterr().err
    assert main(["eval", f"checkpoint={synthetic_ckpt}", "metric=meteor", f"out_dir={tmp_path}"]) == 2
    assert "unknown metric" in capsys.readouterr().err
    assert main(["eval", f"checkpoint={tmp_path / 'missing'}", f"out_dir={tmp_path}"]) == 2
    assert "no such checkpoint" in capsys.readouterr().err
    assert main(["eval", "num_exampels=3"]) == 2
    assert "num_exampels" in capsys.readouterr().err


def test_decode_cli(synthetic_ckpt, capsys):
    assert main(["decode", "--checkpoint", str(synthetic_ckpt), "--head", "wait-k:k=2", "--prompt", "which fruit ?",
                 "--text", "the cat sat on a red pear", "--max-new-tokens", "3"]) == 0
    out = capsys.readouterr().out
    lines = [l for l in out.splitlines() if l.startswith(("READ", "WRITE"))]
    assert lines[0].startswith("READ") and lines[1].startswith("READ") and lines[2].startswith("WRITE")
    assert "phi: [2," in out
    assert main(["decode", "--checkpoint", str(synthetic_ckpt), "--head", "entropy:tau=2", "--text", "a b"]) == 2
    assert "tau" in capsys.readouterr().err


def test_errors_are_one_hierarchy():
    from proactive_jax import errors as E
    from proactive_jax.data.loaders import LoaderError
    from proactive_jax.errors import DataError
    from proactive_jax.evaluation.results import EvalError
    from proactive_jax.data.example import ExampleError
    from proactive_jax.models.safetensors_io import CheckpointError as A
    from proactive_jax.training.checkpoint import CheckpointError as B
    from proactive_jax.training.loop import TrainingDiverged
    from proactive_jax.errors import ConfigError

    assert A is B is E.CheckpointError and issubclass(E.CorruptCheckpointError, A)
    for cls in (LoaderError, DataError, EvalError, ExampleError, ConfigError, A, TrainingDiverged,
                E.OfflineError):
        assert issubclass(cls, E.ProactiveError), cls
    for cls in (LoaderError, DataError, EvalError, ExampleError, ConfigError, A):
        assert issubclass(cls, ValueError), cls  # existing `except ValueError` handlers keep working


def test_run_guarded_one_line_exit_codes_and_tracebacks(capsys):
    import errno

    from proactive_jax.cli import run_guarded
    from proactive_jax.errors import ConfigError, TrainingDiverged

    def raising(e):
        def f():
            raise e
        return f

    assert run_guarded("p", raising(ConfigError("a.b: expected\nan int"))) == 2
    assert capsys.readouterr().err == "p: a.b: expected an int\n"
    assert run_guarded("p", raising(TrainingDiverged("step 3: nan"))) == 3
    assert run_guarded("p", raising(OSError(errno.ENOSPC, "No space left on device", "/x/y"))) == 2
    assert "p: /x/y: No space left on device (free disk space" in capsys.readouterr().err
    assert run_guarded("p", raising(PermissionError(errno.EACCES, "Permission denied", "/r"))) == 2
    assert run_guarded("p", raising(KeyboardInterrupt())) == 130
    assert capsys.readouterr().err.splitlines()[-1] == "p: interrupted"
    with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback
        run_guarded("p", lambda: 1 / 0)
    with pytest.raises(OSError):  # so does an OS error no user causes
        run_guarded("p", raising(OSError(errno.EIO, "Input/output error")))
