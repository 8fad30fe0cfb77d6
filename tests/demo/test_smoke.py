"""`proactive-jax demo --smoke`: every stage of the demo, text and speech, runs on the smallest shapes."""

import json
import re

from proactive_jax.data.synthetic_audio import SPEECH_TASKS
from proactive_jax.demo.text import load_demo_config, stage_names


def test_smoke_runs_every_stage_numbered_truthfully(smoke_demo):
    out, stdout, _ = smoke_demo
    cfg = load_demo_config(None, smoke=True)
    names = stage_names(cfg, speech_on=True)
    assert names == ["data", "pretrain", "proactive", "batch-ft", "probes", "evaluate", "report", "speech"]
    tags = re.findall(r"^\[(\d+)/(\d+)\] (\w+)", stdout, flags=re.M)
    numbers = [int(k) for k, _, _ in tags]
    assert {int(n) for _, n, _ in tags} == {len(names)}
    assert sorted(set(numbers)) == list(range(1, len(names) + 1)) and numbers == sorted(numbers)
    assert [w for k, _, w in tags if int(k) == names.index("probes") + 1] == ["probe", "probe"]  # self, oracle labels
    assert re.search(r"^\[speech 3/3\] evaluate", stdout, flags=re.M)  # the speech stage's own steps, replayed


def test_smoke_writes_every_output(smoke_demo):
    out, stdout, _ = smoke_demo
    for name in ("results.json", "table.md", "traces.txt", "lookup_quality_latency.png",
                 "speech/speech_results.json"):
        assert (out / name).is_file(), name
    res = json.loads((out / "results.json").read_text())
    assert set(res["tasks"]) == {"lookup"}  # the QA-like task only (word-map: --quick and the full demo)
    for task, per_model in res["tasks"].items():
        assert set(per_model) == {"proactive", "batch-ft", "oracle-probe"}
        settings = [s["setting"] for s in per_model["proactive"]]
        assert any(s.startswith("probe:") for s in settings) and any(s.startswith("wait-k") for s in settings)
        calibrated = [s for s in per_model["proactive"] if s.get("quantile") == 0.9]
        assert {s["family"] for s in calibrated} == {"entropy", "probe"}  # the calibration stage ran
        assert all(s["calibration"] and s["tau"] is not None for s in calibrated)
    speech = res["speech"]
    assert set(speech["results"]) == set(SPEECH_TASKS)
    assert all(len(rows) == 3 for rows in speech["results"].values())  # batch, wait-k, entropy
    assert {t["target"].split(":")[0] for t in res["targets"]} >= {"lookup", *SPEECH_TASKS}
    # the report: tables with what chance is, traces a person can read
    table = (out / "table.md").read_text()
    chance = [ln for ln in table.splitlines() if ln.startswith("chance:")]
    assert len(chance) == 1 and chance[0].startswith("chance: guessing scores 16.7 acc on lookup")
    traces = (out / "traces.txt").read_text()
    assert "legend: READ n" in traces and "prompt: " in traces and "[end of source]" in traces
    assert "chance:" in stdout and re.search(r"wrote .*results\.json, table\.md, traces\.txt", stdout)


def test_stage_numbers_follow_the_options():
    full = load_demo_config(None)
    assert stage_names(full, speech_on=True) == ["data", "pretrain", "proactive", "batch-ft", "mslm-only", "probes",
                                                 "evaluate", "report", "speech"]
    quick = load_demo_config(None, quick=True)
    assert "speech" not in stage_names(quick, speech_on=False)
    lean = load_demo_config(None, ["probe=false", "ablation_mslm_only=false"])
    assert stage_names(lean, speech_on=False) == ["data", "pretrain", "proactive", "batch-ft", "evaluate", "report"]


def test_tables_say_what_chance_is():
    from proactive_jax.demo.report import chance_line, paper_table

    def res(acc):
        lat = {"ail": 1.0, "rco": 1.0}
        return {"settings": [{"family": "batch", "setting": "batch", "label": "batch", "headline": acc,
                              "latency": lat, "quantile": None}]}

    assert chance_line("lookup", {"proactive": res(90.0)}) == (
        "chance: guessing scores 16.7 acc on lookup; the trained model reading everything (batch) scores 90.0; "
        "above chance: the model has learned the task")
    assert chance_line("lookup", {"proactive": res(18.0)}).endswith("at chance: the model has not learned the task")
    assert chance_line("word-map", {"proactive": res(40.0)}).startswith(
        "chance: word-map has no guessing level; a model that has learned nothing scores about 0 BLEU")
    table = paper_table("lookup", {"proactive": res(18.0)})
    assert "chance: guessing scores 16.7 acc" in table and "WARNING: quality at chance level" in table
