"""The embedded default end to end: `proactive-jax demo --quick` (files, table structure, determinism)."""
import json
import math

import pytest

from proactive_jax.cli import main
from proactive_jax.demo.report import check_text_targets
from proactive_jax.demo.text import load_demo_config

# the determinism check runs --quick twice with fewer steps (same stages, same code paths)
SMALL = ["pretrain_steps=30", "finetune_steps=10", "n_test=16", "n_calib=8", "n_train=200", "progress=false",
         "probe_examples=20", "probe_steps=20", "ablation_mslm_only=false"]


def _table_rows(text):
    rows = [l for l in text.splitlines() if l.startswith("|")]
    return [[c.strip() for c in r.split("|")[1:-1]] for r in rows]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo_quick")
    # the quick start's stages with its earlier, shorter pretraining and the MSLM-only ablation (what the tests
    # check is the stages and the files, not what the models learn)
    assert main(["demo", "--quick", "--out", str(out), "progress=false", "pretrain_steps=400",
                 "ablation_mslm_only=true"]) == 0
    return out


def test_quick_demo_writes_everything(quick_run, capsys):
    out = quick_run
    for name in ("results.json", "table.md", "traces.txt", "lookup_quality_latency.png",
                 "word-map_quality_latency.png"):
        assert (out / name).exists(), name
    for task in ("lookup", "word-map"):
        assert (out / f"{task}_quality_latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        for model in ("proactive", "batch-ft", "mslm-only", "oracle-probe"):
            assert (out / "eval" / model / task / "results.json").exists()
    # the probes live next to the run's checkpoint (never in an HF export) and load back
    from proactive_jax.method.probe import load_probe
    for name, labels in (("probe.safetensors", "self"), ("probe-oracle.safetensors", "oracle")):
        _, info = load_probe(out / "runs" / "proactive" / name)
        assert info["labels"] == labels and 0.0 < info["positive_rate"] < 1.0
    res = json.loads((out / "results.json").read_text())
    assert set(res["tasks"]) == {"lookup", "word-map"}
    for task, per_model in res["tasks"].items():  # wait-k is decoded once, on the proactive model
        assert any(x["family"] == "wait-k" for x in per_model["proactive"])
        assert {x["family"] for m in ("batch-ft", "mslm-only") for x in per_model[m]} >= {"batch", "entropy"}
        assert {x["family"] for m in ("batch-ft", "mslm-only") for x in per_model[m]} <= {"batch", "entropy", "attention"}
    assert {t["target"].split(":")[0] for t in res["targets"]} >= {"lookup", "word-map"}
    table = (out / "table.md").read_text()
    sections = table.split("### ")[1:]
    assert [s.splitlines()[0].strip() for s in sections] == ["lookup", "word-map"]
    for sec in sections:
        rows = _table_rows(sec)
        header = rows[0]
        assert header[0] == "method" and header[2:4] == ["AIL", "RCO"]
        if sec.startswith("word-map"):
            assert header == ["method", "BLEU", "AIL", "RCO", "AL", "LAAL", "curve area"]
        else:
            assert header == ["method", "acc", "AIL", "RCO", "curve area"]
        body = rows[2:]
        methods = [r[0] for r in body]
        assert methods[0] == "batch"
        assert any(m.startswith("wait-k") for m in methods)
        assert any(m.startswith("proactive-entropy") for m in methods)
        assert any(m.startswith("proactive-attention") for m in methods)
        assert any(m.startswith("proactive-alignatt f=2") for m in methods)
        assert any(m.startswith("batch-ft+") for m in methods)
        assert any(m.startswith("mslm-only+entropy") for m in methods)
        assert any(m.startswith("proactive-probe (self-labels) tau=q0.9 (") for m in methods)
        assert any(m.startswith("proactive-probe (oracle labels)") for m in methods)
        # calibrated rows say what was written and what it resolved to, never the parameter dump
        assert any(m.startswith("proactive-entropy tau=q0.9 (") for m in methods)
        assert not any("min_read" in m or "decide_at" in m for m in methods)
        areas = [float(r[-1]) for r in body if r[-1]]
        assert areas and all(a >= 0 for a in areas)
        for r in body:
            assert len(r) == len(header)
            float(r[1]), float(r[2])
            assert 0.0 <= float(r[3]) <= 1.0  # RCO
        batch_row = body[0]
        assert float(batch_row[3]) == 1.0
    targets = {t["target"] for t in res["targets"]}
    assert any("q0.9-calibrated entropy" in t for t in targets)
    assert any("self-labelled probe" in t for t in targets)
    assert any("the best of entropy/attention/alignatt" in t for t in targets)
    assert any("MSLM without SPSD" in t for t in targets)
    traces = (out / "traces.txt").read_text()
    assert "READ" in traces and "WRITE" in traces


def test_quick_demo_is_deterministic(tmp_path):
    tables = []
    for i in range(2):
        out = tmp_path / f"run{i}"
        assert main(["demo", "--quick", "--out", str(out)] + SMALL) == 0
        tables.append((out / "table.md").read_text())
    assert tables[0] == tables[1]


def test_demo_config_errors(tmp_path):
    from proactive_jax.errors import ConfigError
    with pytest.raises(ConfigError, match="finetune_step"):
        load_demo_config(None, ["finetune_step=3"])
    assert main(["demo", "--out", str(tmp_path), "pretrain_steps=abc"]) == 2
    with pytest.raises(ConfigError, match="unknown synthetic task 'qa'"):
        load_demo_config(None, ["tasks=[qa]"])
    with pytest.raises(ConfigError, match=r"heads\.lookup: .*unknown decision head 'greedy'"):
        load_demo_config(None, ["heads.lookup=[greedy]"])
    with pytest.raises(ConfigError, match="probe_heads"):
        load_demo_config(None, ["heads.lookup=[batch, 'probe:tau=0.5']"])
    with pytest.raises(ConfigError, match="not a probe head"):
        load_demo_config(None, ["probe_heads=['entropy:tau=0.5']"])
    with pytest.raises(ConfigError, match=r"heads\.lookup: .*alignatt has no threshold tau"):
        load_demo_config(None, ["heads.lookup=[batch, 'alignatt:tau=0.5']"])
    with pytest.raises(ConfigError, match=r"heads\.lookup: .*'f': 0 must be >= 1"):
        load_demo_config(None, ["heads.lookup=[batch, 'alignatt:f=0|2']"])
    with pytest.raises(ConfigError, match=r"speech: unknown keys \['stepz'\]"):
        load_demo_config(None, ["speech.stepz=3"])
    assert main(["demo", "--out", str(tmp_path), "speech.stepz=3"]) == 2  # the one-line error, no traceback
    with pytest.raises(ConfigError, match=r"speech\.steps"):  # typed, before a child could start with it
        load_demo_config(None, ["speech.steps=abc"])
    with pytest.raises(ConfigError, match=r"speech\.parallel"):
        load_demo_config(None, ["speech.parallel=1.5"])
    assert not (tmp_path / "runs").exists() and not (tmp_path / "speech").exists(), "nothing runs on a bad config"


def test_check_targets_on_handmade_results():
    def s(family, setting, q, rco, ail):
        return {"family": family, "setting": setting, "headline": q, "latency": {"rco": rco, "ail": ail}}
    res = {"lookup": {"proactive": {"settings": [s("batch", "batch", 100, 1.0, 4), s("wait-k", "wait-k:k=3", 30, .2, -8),
                                                 s("entropy", "entropy:tau=0.1", 97, 0.6, -3)]},
                      "batch-ft": {"settings": [s("entropy", "entropy:tau=0.1", 40, 0.6, -3)]}}}
    got = {t["target"]: t["pass"] for t in check_text_targets(res)}
    assert all(got.values()) and len(got) == 3
    res["lookup"]["proactive"]["settings"][2]["latency"]["rco"] = 0.9
    assert not check_text_targets(res)[0]["pass"]


def test_probe_target_against_the_best_hand_crafted_head():
    """The probe's curve area is compared with the best of entropy/attention and, stricter,
    of entropy/attention/alignatt; the areas are the demo's curve areas (batch closes every curve)."""
    from proactive_jax.demo.report import head_comparison_targets
    from proactive_jax.evaluation.results import curve_area

    def s(family, q, rco):
        return {"family": family, "setting": family, "headline": q, "latency": {"rco": rco, "ail": 0.0}}
    pts = {"entropy": [(0.6, 90.0)], "attention": [(0.7, 80.0)], "alignatt": [(0.3, 70.0)], "probe": [(0.5, 85.0)]}
    settings = [s("batch", 100.0, 1.0)] + [s(f, q, r) for f, ps in pts.items() for r, q in ps]
    got = {t["target"]: t for t in head_comparison_targets({"word-map": {"proactive": {"settings": settings}}})}
    area = {f: curve_area(ps, 100.0) for f, ps in pts.items()}
    assert area["alignatt"] > area["probe"] > area["entropy"] > area["attention"]  # the case being tested
    loose = got["word-map: self-labelled probe curve area >= the best of entropy/attention"]
    strict = got["word-map: self-labelled probe curve area >= the best of entropy/attention/alignatt"]
    assert loose["pass"] and not strict["pass"]
    assert strict["alignatt_area"] == pytest.approx(area["alignatt"]) and "alignatt_area" not in loose
    assert loose["probe_area"] == pytest.approx(area["probe"])
    no_alignatt = [x for x in settings if x["family"] != "alignatt"]
    targets = [t["target"] for t in head_comparison_targets({"word-map": {"proactive": {"settings": no_alignatt}}})]
    assert not any("alignatt" in t for t in targets)


def test_default_sweeps_include_alignatt_and_fit_the_probe_budget():
    """alignatt is swept on both tasks (full and --quick); the probe gets no more sweep points than the
    hand-crafted heads (the comparison stays fair)."""
    from proactive_jax.evaluation.sweep import expand_sweep
    for quick in (False, True):
        cfg = load_demo_config(None, quick=quick)
        n_probe = sum(len(expand_sweep(sw)) for sw in cfg.probe_heads)
        for task in cfg.tasks:
            fams = {}
            for sw in cfg.heads[task]:
                fams[sw.split(":")[0]] = len(expand_sweep(sw))
            assert "alignatt" in fams
            assert n_probe <= max(fams[f] for f in ("entropy", "attention", "alignatt"))
        # the probe's fixed taus are spread in logit space (its p is nearly binary: 0.2..0.8 are one decision)
        fixed = [s for sw in cfg.probe_heads for s in expand_sweep(sw) if s.quantile is None]
        z = sorted(math.log(t / (1 - t)) for t in (dict(s.written)["tau"] for s in fixed) for t in [float(t)])
        assert len(z) >= 2 and z[-1] == pytest.approx(0.0)
        assert all(b - a >= 3.9 for a, b in zip(z, z[1:])) and z[0] <= -7.9
        assert any(s.quantile == 0.9 for sw in cfg.probe_heads for s in expand_sweep(sw))


def test_shipped_demo_yaml_equals_builtin_defaults():
    from pathlib import Path
    yaml_path = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"
    assert load_demo_config(str(yaml_path)) == load_demo_config(None)
    assert load_demo_config(str(yaml_path), quick=True) == load_demo_config(None, quick=True)
    assert load_demo_config(str(yaml_path), smoke=True) == load_demo_config(None, smoke=True)


def test_probe_cli_trains_next_to_the_run_and_eval_uses_it(quick_run, tmp_path):
    """`proactive-jax probe train` on the demo's proactive run, then `proactive-jax eval` with probe heads."""
    from proactive_jax.method.probe import load_probe
    run = quick_run / "runs" / "proactive"
    out = tmp_path / "p.safetensors"
    assert main(["probe", "train", f"checkpoint={run}", "task=word-map", "num_examples=16", "steps=20",
                 "labels=oracle", f"out={out}"]) == 0
    _, info = load_probe(out)
    assert info["labels"] == "oracle" and info["examples"] == 16
    assert main(["probe", "train", f"checkpoint={run}", "labels=maybe"]) == 2
    ev = tmp_path / "eval"
    assert main(["eval", f"checkpoint={run}", "task=word-map", "num_examples=6", "calibration_examples=6",
                 "heads=[batch, 'probe:tau=0.5|q0.9']", f"probe={out}", f"out_dir={ev}", "progress=false"]) == 0
    res = json.loads((ev / "results.json").read_text())
    labels = [s["label"] for s in res["settings"]]
    assert labels[:2] == ["batch", "probe tau=0.5"] and labels[2].startswith("probe tau=q0.9 (")


def test_demo_stops_when_a_training_stage_is_stopped_by_a_signal(tmp_path, monkeypatch, capsys):
    """SIGTERM / Ctrl-C during a stage stops the whole demo (exit 130), not just that stage's training."""
    from proactive_jax.training import loop

    calls = []

    def fake_train(run, **kw):
        calls.append(run.out_dir)
        return loop.TrainResult(params={}, history=[], out_dir=tmp_path / "x", step=3, stopped="signal",
                                evals=[], model_config=None)

    monkeypatch.setattr(loop, "train", fake_train)
    assert main(["demo", "--quick", "--out", str(tmp_path), "progress=false"]) == 130
    assert len(calls) == 1  # the pretraining stage only: nothing after it ran
    err = capsys.readouterr()
    assert "interrupted" in err.err and "stopped by a signal at step 3" in err.out

