"""One argument style per command (the other spelling read with a one-line notice), quiet third-party logs by
default (-v brings them back), the plan report's parameter count, the TensorBoard notice."""
import logging
import warnings

import pytest

from proactive_jax.cli import COMMANDS, build_parser, main, subparsers
from proactive_jax.cli.startup import normalize_argv, set_verbosity


@pytest.fixture(autouse=True)
def _no_compile_cache(monkeypatch):
    monkeypatch.setenv("PROACTIVE_JAX_CACHE", "off")


def _parse(argv):
    parser = build_parser()
    subs = subparsers(parser)
    argv, cmd, notice = normalize_argv(argv, {n: c.style for n, c in COMMANDS.items()},
                                       lambda n: subs[n]._option_string_actions)
    return parser.parse_args(argv), notice


@pytest.mark.parametrize("argv,config,overrides", [
    (["eval", "--checkpoint", "runs/x", "task=lookup"], None, ["task=lookup", "checkpoint=runs/x"]),
    (["eval", "--checkpoint=runs/x", "--num-examples", "3", "--fresh"], None,
     ["checkpoint=runs/x", "num_examples=3", "fresh=true"]),
    (["eval", "c.yaml", "--heads", "[batch, 'wait-k:k=1|3']", "--seed", "-1"], "c.yaml",
     ["heads=[batch, 'wait-k:k=1|3']", "seed=-1"]),
    (["train", "--steps", "10", "configs/tiny-synthetic.yaml", "--optim.lr=1e-3", "-v"], "configs/tiny-synthetic.yaml",
     ["steps=10", "optim.lr=1e-3"]),
    (["probe", "train", "--checkpoint", "runs/x", "--labels", "oracle"], None, ["checkpoint=runs/x", "labels=oracle"]),
])
def test_config_commands_read_flags_as_overrides(argv, config, overrides):
    args, notice = _parse(argv)
    assert args.config == config or args.config == overrides[0]  # eval/probe: a first key=value is no file
    assert ([args.config] if args.config != config else []) + list(args.overrides) == overrides
    assert notice.startswith("read ") and "key=value" in notice and "\n" not in notice


def test_options_of_config_commands_stay_options():
    args, notice = _parse(["plan", "configs/tiny-synthetic.yaml", "--topology", "v5e:2x2", "--decode",
                           "batch=16,src=64", "--max-batch", "--mesh.fsdp", "4"])
    assert (args.topology, args.decode, args.max_batch) == ("v5e:2x2", "batch=16,src=64", True)
    assert args.overrides == ["mesh.fsdp=4"]
    args, notice = _parse(["demo", "--quick", "--out", "d", "finetune_steps=3"])
    assert (args.quick, args.out, args.overrides, notice) == (True, "d", ["finetune_steps=3"], None)


def test_flag_commands_read_key_value_as_flags():
    args, notice = _parse(["decode", "checkpoint=runs/x", "head=wait-k:k=2", "text=a b=c", "max_new_tokens=3",
                           "live=false", "--prompt", "q=1"])
    assert (args.checkpoint, args.head, args.text, args.max_new_tokens, args.live, args.prompt) == (
        "runs/x", "wait-k:k=2", "a b=c", 3, False, "q=1")
    assert "--checkpoint=runs/x" in notice and "--text='a b=c'" in notice and "--flags" in notice
    args, _ = _parse(["decode", "--checkpoint", "runs/x", "live=true"])
    assert args.live is True
    args, notice = _parse(["export", "checkpoint=runs/x", "out=hf", "step=4"])
    assert (args.checkpoint, args.out, args.step) == ("runs/x", "hf", 4)
    args, notice = _parse(["decode", "--checkpoint", "runs/x", "--text", "t"])
    assert notice is None


@pytest.mark.parametrize("command", [["eval"], ["probe", "train"]])
def test_both_spellings_run_alike(command, tmp_path, capsys):
    missing = tmp_path / "missing"
    assert main([*command, f"checkpoint={missing}", f"out_dir={tmp_path}"] if command == ["eval"]
                else [*command, f"checkpoint={missing}"]) == 2
    canonical = capsys.readouterr().err.strip().splitlines()
    assert len(canonical) == 1 and str(missing) in canonical[0]
    assert main([*command, "--checkpoint", str(missing)] + ([f"--out_dir={tmp_path}"] if command == ["eval"]
                                                             else [])) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[0].startswith(f"proactive-jax {command[0]}: read checkpoint=")
    assert err[1] == canonical[0]


def test_decode_takes_key_value_too(tmp_path, capsys):
    missing = tmp_path / "missing"
    assert main(["decode", "--checkpoint", str(missing), "--text", "a b"]) == 2
    canonical = capsys.readouterr().err.strip().splitlines()
    assert main(["decode", f"checkpoint={missing}", "text=a b"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "decode takes --flags" in err[0] and err[1] == canonical[-1]


def test_quiet_by_default_and_verbose_brings_third_party_warnings_back():
    try:
        set_verbosity(False, status_=False)
        assert logging.getLogger("absl").getEffectiveLevel() == logging.ERROR
        assert logging.getLogger("orbax.checkpoint").getEffectiveLevel() == logging.ERROR
        assert logging.getLogger("jax._src.xla_bridge").getEffectiveLevel() == logging.WARNING  # actionable
        assert logging.getLogger("proactive_jax.models.hf").getEffectiveLevel() <= logging.WARNING  # ours
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            set_verbosity(False, status_=False)
            warnings.warn_explicit("noise", UserWarning, "x.py", 1, module="orbax.checkpoint.manager")
            warnings.warn_explicit("ours", UserWarning, "y.py", 1, module="proactive_jax.models.hf")
        assert [str(w.message) for w in seen] == ["ours"]
        set_verbosity(True)
        assert logging.getLogger("absl").getEffectiveLevel() == logging.WARNING
    finally:
        set_verbosity(False, status_=False)


def test_plan_report_counts_small_models_in_k():
    from proactive_jax.training.plan import format_report

    rep = {"model": {"model_type": "qwen3", "params": 82304, "dtype": "float32", "remat": "none",
                     "attention": "dense"}, "logit_chunk": 0, "topology": "v5e:2x2", "chips": 4,
           "mesh": {"data": 4, "fsdp": 1}, "global_batch_size": 32, "accum_steps": 1, "bucket": [24, 24],
           "packed_length": 72, "compile_s": 12.6, "argument_bytes": 1 << 20, "state_bytes_per_chip": 1 << 20,
           "state_bytes": 1 << 20, "replicated_state_bytes": 1 << 20, "output_bytes": 1 << 20, "alias_bytes": 1 << 20,
           "temp_bytes": 0, "total_bytes": 4 << 20, "capacity_bytes": 16 << 30, "headroom": 0.0, "fits": True,
           "margin_bytes": 16 << 30}
    assert format_report(rep).startswith("plan: qwen3 82.3K params,")
    for n, shown in ((3.09e9, "3.09B"), (494e6, "494M"), (999_950, "1M"), (812, "812")):
        assert format_report({**rep, "model": {**rep["model"], "params": n}}).startswith(f"plan: qwen3 {shown} params")


def test_tensorboard_is_off_by_default_and_asked_for_without_tensorboardx_is_one_notice(tmp_path, caplog):
    from proactive_jax.training.logs import MetricsLog
    from proactive_jax.training.run_config import RunConfig

    assert RunConfig.__dataclass_fields__["tensorboard"].default is False
    import importlib.util

    if importlib.util.find_spec("tensorboardX") is not None:
        pytest.skip("tensorboardX is installed")
    with caplog.at_level(logging.WARNING, logger="proactive_jax.training.logs"):
        m = MetricsLog(tmp_path, enabled=True, tensorboard=True, resume_step=None)
        m.write({"step": 1, "loss": 1.0})
        m.close()
    notes = [r for r in caplog.records if "tensorboardX" in r.getMessage()]
    assert len(notes) == 1 and "tensorboard=false" in notes[0].getMessage() and m.tb is None
    assert (tmp_path / "metrics.jsonl").read_text().count("loss") == 1


def test_probe_summary_is_one_line():
    from proactive_jax.training.probe_training import summary_line

    info = {"labels": "self", "kind": "mlp", "states": 304, "examples": 8, "positive_rate": 0.865,
            "report": {"train": {"bce": 0.85, "accuracy": 0.425}, "held_out": {"bce": 1.416, "accuracy": 0.0658}}}
    line = summary_line(info)
    assert "\n" not in line and "304 labelled states of 8 examples" in line and "held-out accuracy 6.6%" in line
    assert "n/a" in summary_line({**info, "report": {}})
