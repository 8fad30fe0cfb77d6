"""`proactive-jax reproduce` (proactive_jax/cli/reproduce.py): one text cell of the dry run end to end (tiny Qwen2.5
stand-in, the IWSLT fixture in the Hub's parquet layout: plan -> train -> export -> eval -> table), the printed table
with our rows and the paper's numbers beside them, a second run that redoes nothing; then the tables, the plan gate
and the mode guard on hand-written outputs (no compile)."""
import argparse
import json

import pytest

from proactive_jax.cli.reproduce import add_reproduce_args, run_reproduce

CELL = "qwen2.5-3b/iwslt-ende"
# fewer sweep points than the recipe (an eval override, as a user would give one): the paper's three rows + one more
HEADS = "heads=[batch, 'wait-k:k=3|9', 'entropy:tau=q0.9']"


def cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def reproduce(*argv) -> int:
    p = argparse.ArgumentParser()
    add_reproduce_args(p)
    return run_reproduce(p.parse_args([str(a) for a in argv]))


@pytest.fixture
def compile_cache_reset():
    """The dry run turns on JAX's persistent compilation cache (under --out); later tests must not use it."""
    yield
    import jax
    from jax._src import compilation_cache

    jax.config.update("jax_compilation_cache_dir", None)
    compilation_cache.reset_cache()


def test_dry_run_cell_end_to_end_then_resumes(tmp_path, capsys, compile_cache_reset):
    out = tmp_path / "res"
    args = ["--cell", CELL, "--dry-run", "--out", out, "-e", HEADS]
    assert reproduce(*args) == 0
    text = capsys.readouterr().out
    cdir = out / CELL
    for name in ("train_config.yaml", "eval_config.yaml", "train.json", "hf/config.json", "hf/model.safetensors",
                 "eval/results.json", "eval/table.md", "table.md"):
        assert (cdir / name).is_file(), name
    assert "DRY RUN" in text and "NOT the numbers" in text
    rows = {cells(line)[0]: line for line in text.splitlines() if line.startswith("| ")}
    # our rows, each with the paper's row and numbers beside it (Table 1, Qwen2.5-3B, IWSLT-17 en-de)
    assert "Batch | 27.34 | 8.71 | 1.00" in rows["batch"]
    assert "Wait-9 | 21.47 | 6.87 | 0.88" in rows["wait-k k=9"]
    assert "Proactive-Entropy | 23.62 | 8.36 | 0.88" in next(v for k, v in rows.items() if k.startswith("entropy tau=q0.9"))
    assert cells(rows["wait-k k=3"])[4:] == ["", "", "", ""]  # a sweep point the paper does not report
    res = json.loads((cdir / "eval" / "results.json").read_text())
    assert [s["label"].split(" (")[0] for s in res["settings"]] == ["batch", "wait-k k=3", "wait-k k=9", "entropy tau=q0.9"]
    assert json.loads((cdir / "train.json").read_text())["step"] == 3
    table1 = (out / "table1.md").read_text()
    assert table1.startswith("DRY RUN") and "| Qwen2.5-3B-Instruct / MT En->De (IWSLT-17) | BLEU | Batch |" in table1
    t1 = [cells(line) for line in table1.splitlines() if line.startswith("| ")]
    # SQuAD not run here: "pending", the paper's numbers still shown; Qwen3-4B: the paper's are not quoted
    assert ["Qwen2.5-3B-Instruct / Short QA (SQuAD)", "F1", "Batch", "pending", "", "", "74.79", "77.55", "1.00"] in t1
    assert ["Qwen3-4B / Short QA (SQuAD)", "F1", "Batch", "pending", "", "", "not quoted", "", ""] in t1
    eval_cfg = (cdir / "eval_config.yaml").read_text()
    assert "calibration_split: validation" in eval_cfg and "split: test" in eval_cfg
    if (cdir / "plan.json").is_file():  # the plan stage ran (libtpu installed): v5e 2x2, tiny model
        rep = json.loads((cdir / "plan.json").read_text())["report"]
        assert rep["topology"] == "v5e:2x2" and rep["fits"] and rep["model"]["model_type"] == "qwen2"
    stamps = {p: (cdir / p).stat().st_mtime_ns for p in ("train.json", "hf/model.safetensors", "eval/results.json",
                                                          "eval/records.jsonl", "run/metrics.jsonl")}

    assert reproduce(*args) == 0  # the second run: every stage's outputs are there
    text2 = capsys.readouterr().out
    assert "running" not in text2 and "stage timings" not in text2
    for stage in ("train", "export", "eval"):
        assert f"  {stage}: done (outputs in" in text2
    assert {p: (cdir / p).stat().st_mtime_ns for p in stamps} == stamps
    assert "Batch | 27.34 | 8.71 | 1.00" in text2


def _fake_results(path, task, points):
    """A results.json as the evaluator writes it: (label, family, quality, rco) per setting."""
    settings = [{"setting": lab, "label": lab, "family": fam, "quantile": None, "headline": q, "quality_key": "f1",
                 "latency": {"ail": 1.0, "rco": r}, "n": 5} for lab, fam, q, r in points]
    path.mkdir(parents=True)
    (path / "results.json").write_text(json.dumps({"task": task, "settings": settings, "timing": {"device": "test"}}))


def test_tables_from_results_and_table2_tiers(tmp_path, capsys):
    out = tmp_path / "res"
    _fake_results(out / "qwen2.5-3b/squad/eval", "squad", [
        ("batch", "batch", 70.0, 1.0), ("wait-k k=9", "wait-k", 20.0, 0.2),
        ("attention tau=q0.9 layers=-4: (0.5)", "attention", 65.0, 0.8),
        ("attention tau=0.4 layers=-4:", "attention", 40.0, 0.45), ("attention tau=0.5 layers=-4:", "attention", 55.0, 0.7),
        ("attention tau=0.6 layers=-4:", "attention", 45.0, 0.6)])
    assert reproduce("--table", "2", "--out", out, "--stages", "table") == 0
    t2 = (out / "table2.md").read_text()
    assert not t2.startswith("DRY RUN")
    lines = {tuple(c.strip() for c in line.split("|")[1:3]): line for line in t2.splitlines() if line.startswith("| ")}
    # low tier (RCO <= 0.5): the best attention point within the budget; high (<= 0.75): 55.0 at RCO 0.70
    assert "| 40.00 (attention tau=0.4 layers=-4:, RCO 0.45) | 48.74 |" in lines[("low", "ProactiveLLM")]
    assert "| 55.00 (attention tau=0.5 layers=-4:, RCO 0.70) | 58.36 |" in lines[("high", "ProactiveLLM")]
    assert "| pending | 26.56 |" in lines[("low", "ProactiveLLM")]  # MT En->Fr not evaluated yet
    assert "not run (no external labels) | 24.12 |" in lines[("low", "Qwen3-32B Label")]
    squad = (out / "qwen2.5-3b/squad/table.md").read_text()
    assert "| batch | 70.00 | 1.00 | 1.00 | Batch | 74.79 | 77.55 | 1.00 |" in squad
    assert "Proactive-Attention | 71.69 | 59.17 | 0.89 |" in squad
    assert "| Proactive-Entropy |" not in squad  # the paper quotes no entropy row for SQuAD and we ran none


def test_plan_gate_mode_guard_and_bad_cells(tmp_path, capsys, compile_cache_reset):
    from proactive_jax.errors import ConfigError

    out = tmp_path / "res"
    cdir = out / CELL
    cdir.mkdir(parents=True)
    rep = {"topology": "v5e:2x2", "total_bytes": 20 * 2 ** 30, "capacity_bytes": 16 * 2 ** 30, "global_batch_size": 8,
           "bucket": [224, 48], "fits": False, "headroom": 0.25}
    (cdir / "plan.json").write_text(json.dumps({"command": "plan ...", "report": rep}))
    assert reproduce("--cell", CELL, "--dry-run", "--out", out, "--stages", "plan,train") == 1
    text = capsys.readouterr().out
    assert "plan: done" in text and "DOES NOT FIT" in text and "stopped: the plan says" in text
    assert not (cdir / "train.json").exists() and not (cdir / "run").exists()
    assert (cdir / "train_config.yaml").is_file()  # the config as it would run (tiny model, fixture dataset)
    assert "tiny_model.json" in (cdir / "train_config.yaml").read_text()
    with pytest.raises(ConfigError, match="holds dry-run results"):
        reproduce("--cell", CELL, "--out", out, "--stages", "table")
    with pytest.raises(ConfigError, match="unknown cell"):
        reproduce("--cell", "qwen9/nothing", "--out", tmp_path / "x")
    with pytest.raises(ConfigError, match="unknown stage"):
        reproduce("--cell", CELL, "--out", tmp_path / "x", "--stages", "plan,deploy")
    assert reproduce("--list") == 0
    listing = capsys.readouterr().out
    assert "Table 2: qwen2.5-3b/iwslt-enfr, qwen2.5-3b/squad" in listing and "configs/qwen3-4b-mctest.yaml" in listing
