"""Discoverable options: `COMMAND --help` lists every config key (type, default, doc) generated from the config
dataclasses; the example eval configs load."""
import dataclasses
from pathlib import Path
from typing import Literal

import pytest

from proactive_jax.cli import main
from proactive_jax.config import describe_fields, field_docs, format_fields

ROOT = Path(__file__).resolve().parents[2]


@dataclasses.dataclass(frozen=True)
class _Inner:
    """A section. ``width``: how wide it is. ``depth``: how deep (e.g. 3). Not a key: ``other``."""

    width: int = 4
    depth: int | None = None
    name: str = "x"  # the trailing comment wins over the docstring


@dataclasses.dataclass(frozen=True)
class _Outer:
    path: str  # required: no default
    # a comment block above a field
    # that runs over two lines
    mode: Literal["a", "b"] = "a"
    inner: _Inner = _Inner()
    maybe: _Inner | None = None  # an optional section
    items: tuple[str, ...] = ("p", "q")
    extra: dict = dataclasses.field(default_factory=dict)


def test_describe_fields_types_defaults_docs_and_dotted_keys():
    rows = {k: (t, d, doc) for k, t, d, doc in describe_fields(_Outer)}
    assert list(rows) == ["path", "mode", "inner.width", "inner.depth", "inner.name", "maybe", "maybe.width",
                          "maybe.depth", "maybe.name", "items", "extra"]
    assert rows["path"] == ("str", "required", "required: no default")
    assert rows["mode"] == ("one of 'a', 'b'", '"a"', "a comment block above a field that runs over two lines")
    assert rows["inner.width"] == ("int", "4", "how wide it is")  # from the class docstring
    assert rows["inner.depth"] == ("int or null", "null", "how deep (e.g. 3)")
    assert rows["inner.name"][2] == "the trailing comment wins over the docstring"
    assert rows["maybe"] == ("a mapping (_Inner) or null", "null", "an optional section")
    assert rows["items"][:2] == ("a list of str", '["p", "q"]') and rows["extra"][:2] == ("dict", "{}")
    assert field_docs(_Inner)["width"] == "how wide it is"
    text = format_fields(_Outer)
    assert "  inner.width: int = 4  # how wide it is" in text.splitlines()


@pytest.mark.parametrize("argv,keys", [
    (["eval", "--help"], ["num_examples: int = 200", "calibration_split: str or null", "render.unit", "heads:",
                          "dataset.source: str = required", "configs/eval-text.yaml"]),
    (["train", "--help"], ["optim.lr: float = 5e-05  # peak learning rate", "data.buckets", "checkpoint.every",
                           "model.remat", "tensorboard: bool = false", "audio.stream.dir"]),
    (["plan", "--help"], ["optim.lr", "mesh.fsdp", "--topology"]),
    (["probe", "train", "--help"], ["eps: float = 0.1", "labels: str", "num_examples", "kind"]),
    (["demo", "--help"], ["finetune_steps: int", "probe_eps", "speech.steps: int", "--quick"]),
])
def test_help_lists_every_config_key(argv, keys, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0
    out = capsys.readouterr().out
    for k in keys:
        assert k in out, (k, out[-3000:])


def test_eval_help_lists_every_eval_config_field(capsys):
    from proactive_jax.evaluation.evaluate import EvalConfig

    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    out = capsys.readouterr().out
    for f in dataclasses.fields(EvalConfig):
        assert f"\n  {f.name}" in out or f"\n  {f.name}." in out, f.name


@pytest.mark.parametrize("name", ["eval-text.yaml", "eval-speech.yaml"])
def test_example_eval_configs_load(name):
    from proactive_jax.evaluation.evaluate import load_eval_config
    from proactive_jax.evaluation.sweep import expand_sweep

    cfg = load_eval_config(str(ROOT / "configs" / name))
    assert cfg.checkpoint and cfg.dataset is not None and cfg.calibration_split != cfg.split
    assert all(expand_sweep(h) for h in cfg.heads)
    over = load_eval_config(str(ROOT / "configs" / name), ["num_examples=3", "out_dir=/tmp/x"])
    assert (over.num_examples, over.out_dir) == (3, "/tmp/x")
