"""Run configs: YAML + overrides -> nested frozen dataclasses; every error names the dotted key."""
import dataclasses
from pathlib import Path

import pytest

from proactive_jax.method.objective import ObjectiveConfig
from proactive_jax.config import apply_overrides, from_dict, load_config, to_dict
from proactive_jax.errors import ConfigError
from proactive_jax.training.run_config import RunConfig, dump_run_config, load_run_config

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ["tiny-synthetic.yaml", "qwen2.5-3b-iwslt-ende.yaml", "qwen3-4b-squad.yaml", "tiny-speech.yaml",
           "qwen2-audio-7b-librispeech.yaml"]


@pytest.mark.parametrize("name", CONFIGS)
def test_shipped_configs_load_and_round_trip(name):
    cfg = load_run_config(ROOT / "configs" / name)
    assert isinstance(cfg, RunConfig)
    again = load_run_config(None, data=to_dict(cfg))
    assert again == cfg
    assert "objective:" in dump_run_config(cfg)


def test_overrides_are_yaml_typed():
    cfg = load_run_config(ROOT / "configs" / "tiny-synthetic.yaml",
                          ["steps=7", "out_dir=/tmp/x", "mesh.fsdp=2", "mesh.data=-1", "data.buckets=[[16, 8]]",
                           "objective.target_offset=contiguous", "optim.clip_norm=null",
                           "model.config.num_hidden_layers=1", "data.micro_batch_size=16", "optim.lr=1e-3"])
    assert cfg.steps == 7 and cfg.out_dir == "/tmp/x" and cfg.mesh.fsdp == 2
    assert cfg.data.buckets == ((16, 8),)
    assert cfg.objective == dataclasses.replace(cfg.objective, target_offset="contiguous")
    assert cfg.optim.clip_norm is None and cfg.optim.lr == 1e-3
    assert cfg.model.config["num_hidden_layers"] == 1
    assert cfg.data.accum_steps == 2


@pytest.mark.parametrize("overrides,needle", [
    (["optim.lrr=1"], "optim.lrr: unknown key (did you mean 'lr'?)"),
    (["bogus=1"], "bogus: unknown key"),
    (["steps=ten"], "steps: expected int"),
    (["steps=true"], "steps: expected int"),
    (["data.global_batch_size=1.5"], "data.global_batch_size: expected int, got 1.5"),
    (["progress=1"], "progress: expected bool"),
    (["data.buckets=[[1, 2, 3]]"], "data.buckets[0]: expected a list [int, int]"),
    (["data.buckets=7"], "data.buckets: expected a list"),
    (["objective.schedule=sometimes"], "objective.schedule='sometimes'"),
    (["objective.kl_topk=0"], "objective.kl_topk must be >= 1"),
    (["mesh.param_sharding=zero3"], "mesh.param_sharding: expected one of 'fsdp', 'replicated'"),
    (["data.micro_batch_size=5"], "micro_batch_size=5 must divide global_batch_size=32"),
    (["model.config.hidden_sise=8"], "model.config.hidden_sise: unknown key (did you mean 'hidden_size'?)"),
    (["model.config.num_hidden_layers=two"], "model.config.num_hidden_layers: expected int"),
    (["model.preset=huge"], "preset 'huge' is unknown"),
    (["mesh=4"], "mesh: expected a mapping (MeshSection)"),
    (["data.render.unit=letter"], "data.render: RenderConfig.unit='letter'"),
    (["steps"], "expected key=value"),
    (["steps=[1"], "not valid YAML"),
])
def test_bad_overrides_name_the_key(overrides, needle):
    with pytest.raises(ConfigError) as e:
        load_run_config(ROOT / "configs" / "tiny-synthetic.yaml", overrides)
    assert needle in str(e.value), str(e.value)
    assert "tiny-synthetic.yaml" in str(e.value)


def test_bad_yaml_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("model:\n  preset: tiny\nsteps: 3\noptim:\n  lr: [1, 2]\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: optim.lr: expected float"):
        load_run_config(p)
    p.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_run_config(p)
    p.write_text("model: {preset: tiny}\n")
    with pytest.raises(ConfigError, match="give steps or epochs"):
        load_run_config(p)
    with pytest.raises(FileNotFoundError, match="config file not found"):
        load_run_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="model: required key missing"):
        load_run_config(None, data={"steps": 3})


def test_generic_builder_for_other_configs():
    @dataclasses.dataclass(frozen=True)
    class Decode:
        max_len: int = 32
        heads: tuple[str, ...] = ("wait-k",)
        temperature: float | None = None

    @dataclasses.dataclass(frozen=True)
    class EvalCfg:
        checkpoint: str
        decode: Decode = Decode()
        objective: ObjectiveConfig = ObjectiveConfig()
        extra: dict = dataclasses.field(default_factory=dict)

    cfg = load_config(EvalCfg, None, ["decode.heads=[wait-k, entropy]", "decode.temperature=1", "extra.a=1"],
                      data={"checkpoint": "runs/x"})
    assert cfg.decode.heads == ("wait-k", "entropy") and cfg.decode.temperature == 1.0 and cfg.extra == {"a": 1}
    with pytest.raises(ConfigError, match=r"decode.max_len: expected int"):
        from_dict(EvalCfg, {"checkpoint": "x", "decode": {"max_len": "long"}})
    with pytest.raises(ConfigError, match=r"checkpoint: required key missing"):
        from_dict(EvalCfg, {})
    assert apply_overrides({"a": {"b": 1}}, ["a.c=2"]) == {"a": {"b": 1, "c": 2}}
    with pytest.raises(ConfigError, match=r"a.b is 1, not a mapping"):
        apply_overrides({"a": {"b": 1}}, ["a.b.c=2"])


@pytest.mark.parametrize("override,message", [
    ("checkpoint.keep=0", r"checkpoint: keep=0: expected >= 1"), ("checkpoint.keep=-1", r"keep=-1: expected >= 1"),
    ("checkpoint.every=-5", r"every=-5: expected >= 0"), ("checkpoint.restore_step=-1", r"restore_step=-1"),
    ("steps=0", r"steps=0: expected >= 1"), ("eval_every=-1", r"eval_every=-1"), ("log_every=-3", r"log_every=-3"),
    ("data.synthetic.tasks=[lookup, nope]", r"unknown synthetic task\(s\) \['nope'\]"),
    ("checkpoint.on_corrupt=maybe", r"checkpoint.on_corrupt: expected one of 'error', 'fallback'"),
])
def test_silently_accepted_values_are_config_errors(override, message):
    from proactive_jax.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        load_run_config(ROOT / "configs" / "tiny-synthetic.yaml", [override])
