"""``proactive-jax plan``: topology names, the shape fallback, the verdict, and one real TPU compile (subprocess)."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from proactive_jax.training import plan, tpu
from proactive_jax.training.run_config import ModelSection, load_run_config

ROOT = Path(__file__).resolve().parents[2]
HAVE_LIBTPU = importlib.util.find_spec("libtpu") is not None


@pytest.mark.parametrize("name,chip,grid", [
    ("v5e:4x8", "v5e", (4, 8)), ("v5litepod-32", "v5e", (4, 8)), ("v6e-16", "v6e", (4, 4)),
    ("v4-32", "v4", (2, 2, 4)), ("v4:2x2x4", "v4", (2, 2, 4)), ("v5p-16", "v5p", (2, 2, 2)), ("V5E:2x2", "v5e", (2, 2)),
])
def test_parse_topology(name, chip, grid):
    t = tpu.parse_topology(name)
    assert (t.chip, t.grid) == (chip, grid)
    assert t.chips == int(__import__("math").prod(grid))


@pytest.mark.parametrize("bad,needle", [("v9:2x2", "unknown TPU generation"), ("v5e:4by8", "grid"),
                                        ("v5litepod-12", "no standard"), ("tpu", "expected CHIP:GRID")])
def test_parse_topology_errors(bad, needle):
    with pytest.raises(tpu.PlanError, match=needle):
        tpu.parse_topology(bad)


def test_missing_libtpu_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(tpu.PlanError) as e:
        tpu.require_libtpu()
    assert "[tpu]" in str(e.value) and "\n" not in str(e.value)


def test_shipped_configs_fall_back_to_their_config_json():
    for yaml_name, json_name in (("qwen2.5-3b-iwslt-ende.yaml", "qwen2.5-3b.json"), ("qwen3-4b-squad.yaml", "qwen3-4b.json"),
                                 ("qwen2-audio-7b-librispeech.yaml", "qwen2-audio-7b.json")):
        run = load_run_config(ROOT / "configs" / yaml_name)
        if Path(run.model.hf_dir).is_dir():
            pytest.skip(f"{run.model.hf_dir} exists on this machine")
        sec = plan.shape_model_section(run.model, ROOT)
        assert sec.hf_dir is None and Path(sec.config_json).name == json_name and sec.init == "random"
    missing = ModelSection(hf_dir="/nonexistent/SomeOtherModel", init="hf")
    with pytest.raises(tpu.PlanError, match="model.config_json"):
        plan.shape_model_section(missing, ROOT)


def test_verdict_and_advice():
    m = SimpleNamespace(argument_size_in_bytes=2 * tpu.GIB, output_size_in_bytes=2 * tpu.GIB,
                        alias_size_in_bytes=2 * tpu.GIB, temp_size_in_bytes=13 * tpu.GIB,
                        generated_code_size_in_bytes=0)
    compiled = SimpleNamespace(memory_analysis=lambda: m)
    topo = tpu.parse_topology("v5e:4x8")
    rep = tpu.memory_report(compiled, topo, headroom=0.0)
    assert rep["total_bytes"] == 15 * tpu.GIB and rep["fits"] and rep["margin_bytes"] == tpu.GIB
    rep = tpu.memory_report(compiled, topo, headroom=0.25)
    assert not rep["fits"] and rep["margin_bytes"] == -3 * tpu.GIB
    run = load_run_config(ROOT / "configs" / "tiny-synthetic.yaml")
    from proactive_jax.training.state import resolve_model_config
    tips = plan.advice(rep, run, resolve_model_config(run.model))
    assert any("logit_chunk" in t for t in tips) and any("micro_batch_size=16" in t for t in tips)
    assert "DOES NOT FIT with 25% headroom: over by 3.00 GiB" in plan.format_report({
        **rep, "model": {"model_type": "qwen3", "params": 1, "dtype": "float32", "remat": "none",
                         "attention": "dense"}, "logit_chunk": 0, "topology": topo.name, "chips": 32, "mesh": {},
        "global_batch_size": 32, "accum_steps": 1, "bucket": [24, 24], "packed_length": 72, "compile_s": 1.0,
        "state_bytes": 0, "state_bytes_per_chip": 0, "replicated_state_bytes": 0, "advice": tips})


@pytest.mark.parametrize("per_row,kink", [(0.02, 0.0), (0.02, 0.004), (0.001, 0.0), (0.5, 0.0), (0.02, 0.05)])
def test_max_batch_search_brackets_the_largest_fitting_batch(monkeypatch, per_row, kink):
    """--max-batch on a fake memory model (affine, or bending upwards so the affine extrapolation from
    batches 64/128 overshoots, as Qwen3-4B did): the answer == the largest fitting chip-multiple (brute
    force over the same model) whenever the search says it is exact, and every compile is counted."""
    topo = tpu.parse_topology("v5e:4x8")  # 32 chips, 16 GiB; 25% headroom -> 12 GiB
    gib = lambda rows: (1.0 + per_row * rows + kink * max(rows - 128, 0) ** 1.5 / 10) * tpu.GIB  # noqa: E731
    calls = []

    def fake_compile(spec, run, bucket):
        calls.append(run.data.global_batch_size)
        return SimpleNamespace(rows=run.data.global_batch_size), None

    monkeypatch.setattr(plan, "build_spec", lambda run, devices: None)
    monkeypatch.setattr(plan, "compile_step", fake_compile)
    monkeypatch.setattr(plan, "memory_report", lambda c, t, h: {"total_bytes": int(gib(c.rows))})
    run = load_run_config(ROOT / "configs" / "tiny-synthetic.yaml")
    run = plan._with_batch(run, 64)
    out = plan.max_global_batch(run, None, topo, None, 0.25, {"total_bytes": int(gib(64))}, max_compiles=8)
    budget = 12 * tpu.GIB
    brute = max([b for b in range(32, 100_000, 32) if gib(b) <= budget], default=None)
    assert len(calls) == len(out["max_batch_tried"]) - 1 <= 9  # batch 64 came with the first compile
    assert all(gib(b) <= budget for b in [out["max_global_batch"]] if b is not None)
    if out["max_batch_exact"]:
        assert out["max_global_batch"] == brute
    assert out["max_batch_exact"] or (per_row, kink) == (0.001, 0.0)  # 11,000 rows: more than 8 doublings away


@pytest.mark.skipif(not HAVE_LIBTPU, reason="libtpu not installed (pip install -e '.[tpu]'); CI installs it")
def test_plan_compiles_tiny_run_for_a_tpu_slice():
    """The real CLI in a subprocess: the tiny run, FSDP over a v5e 2x2 slice, chunked loss, the Pallas kernel."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
    env.pop("XLA_FLAGS", None)
    cmd = [sys.executable, "-m", "proactive_jax", "plan", "configs/tiny-synthetic.yaml", "mesh.data=1",
           "mesh.fsdp=-1", "objective.logit_chunk=8", "model.remat=dots_saveable", "model.attention=pallas", "--topology", "v5e:2x2", "--json"]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads(res.stdout.strip().splitlines()[-1])
    assert (r["topology"], r["chips"], r["mesh"]) == ("v5e:2x2", 4, {"data": 1, "fsdp": 4})
    assert r["bucket"] == [24, 24] and r["global_batch_size"] == 32 and r["logit_chunk"] == 8
    assert r["model"]["remat"] == "dots_saveable" and r["model"]["attention"] == "pallas"
    assert r["pallas_kernels"] >= 3  # the attention kernel compiled by Mosaic: forward, dq, dk/dv
    for k in ("argument_bytes", "output_bytes", "temp_bytes", "total_bytes", "capacity_bytes", "compile_s"):
        assert r[k] > 0, k
    assert r["capacity_bytes"] == 16 * tpu.GIB and r["fits"] is True and r["advice"] == []
    assert r["total_bytes"] == r["argument_bytes"] + r["output_bytes"] - r["alias_bytes"] + r["temp_bytes"] + r["code_bytes"]
    # FSDP: the train state is split over the 4 chips (norm vectors of 64 may stay whole), never replicated
    assert r["state_bytes_per_chip"] < 0.3 * r["state_bytes"]
    assert r["replicated_state_bytes"] < 0.05 * r["state_bytes"]


def test_compiler_refusal_is_a_does_not_fit_verdict():
    msg = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO temporaries (22.86G) "
           "exceeds available HBM (15.25G).")
    e = tpu.oom_error(RuntimeError(msg))
    assert e.temp_bytes == int(22.86 * tpu.GIB) and e.available_bytes == int(15.25 * tpu.GIB)
    run = load_run_config(ROOT / "configs" / "tiny-synthetic.yaml")
    from proactive_jax.training.state import resolve_model_config
    spec = SimpleNamespace(model=resolve_model_config(run.model), mesh=SimpleNamespace(shape={"data": 1, "fsdp": 4}))
    rep = plan.refused_report(run, spec, tpu.parse_topology("v5e:2x2"), (24, 24), 0.0, e)
    assert not rep["fits"] and rep["margin_bytes"] < 0 and rep["advice"]
    assert "DOES NOT FIT" in plan.format_report(rep) and "22.86 GiB" in plan.format_report(rep)


def test_decode_shape_keys_and_errors():
    run = load_run_config(ROOT / "configs" / "tiny-synthetic.yaml")
    from proactive_jax.training.plan_decode import parse_decode

    d = parse_decode("batch=8,tgt=32,head=wait-k:k=3", run)
    assert (d.batch, d.tgt, d.head) == (8, 32, "wait-k:k=3")
    assert d.src == max(b[0] for b in run.data.buckets) and d.units == d.src  # defaults from the run's buckets
    for bad, needle in (("rows=8", "KEY=VALUE"), ("batch=eight", "not an integer"), ("tgt=0", ">= 1"),
                        ("src=8,prompt=16", "exceeds src")):
        with pytest.raises(tpu.PlanError, match=needle):
            parse_decode(bad, run)


@pytest.mark.skipif(not HAVE_LIBTPU, reason="libtpu not installed (pip install -e '.[tpu]'); CI installs it")
def test_plan_compiles_the_decode_loop_for_a_tpu_slice():
    """`plan --decode`: the eval decode loop (prefill + while_loop, KV caches) for v5e 2x2, rows over the chips."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
    env.pop("XLA_FLAGS", None)
    cmd = [sys.executable, "-m", "proactive_jax", "plan", "configs/tiny-synthetic.yaml", "--topology", "v5e:2x2",
           "--decode", "batch=64,src=256,tgt=64,header=8,prompt=8,unit=4,units=32", "--json"]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads(res.stdout.strip().splitlines()[-1])
    assert (r["mode"], r["chips"], r["cache_slots"], r["params_layout"]) == ("decode", 4, 328, "replicated")
    assert r["fits"] is True and r["capacity_bytes"] == 16 * tpu.GIB
    assert r["argument_bytes"] >= r["fp32_params_bytes"]  # the parameters are whole on every chip
    # the KV caches (2 x layers x rows x slots x kv heads x head dim) are split with the rows: a chip's
    # temporaries hold its quarter, not the whole 5.4 MB
    assert r["kv_cache_bytes_per_chip"] <= r["temp_bytes"] < 4 * r["kv_cache_bytes_per_chip"]
    assert r["total_bytes"] == r["argument_bytes"] + r["output_bytes"] - r["alias_bytes"] + r["temp_bytes"] + r["code_bytes"]
