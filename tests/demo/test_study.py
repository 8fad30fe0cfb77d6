"""`proactive-jax study --quick` end to end: every stage, the files, one report row per claim, and resuming
(finished cells reused; a corrupt cell named in one line and recomputed to the same records)."""
import json

from proactive_jax.cli import main


def test_quick_study_end_to_end_and_resume(tmp_path, capsys):
    out = tmp_path / "study"
    args = ["study", "--quick", "--out", str(out)]
    assert main(args) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["cells"] == {"reused": 0, "computed": 4, "recomputed": 0}
    assert set(res["variants"]) == {"proactive", "lambda=0"}
    ledger = res["tasks"]["ledger"]
    assert ledger["chance"] == 12.5 and 0 < ledger["oracle"]["rco"] < 1 and ledger["batch"]["n_seeds"] == 2
    fams = {s["family"] for s in ledger["settings"]}
    assert fams >= {"batch", "wait-k", "entropy", "write-at-once", "probe-self", "probe-external", "probe-oracle"}
    report = (out / "report.md").read_text()
    claims = report.split("## Claims")[1].split("\n## ")[0]
    rows = [l for l in claims.splitlines() if l.startswith("| ") and not l.startswith("| claim")]
    assert len(rows) == len(res["claims"]) >= 3
    assert all(d["verdict"] in ("reproduced", "not reproduced", "not testable here") for d in res["claims"])
    assert (out / "ledger_quality_latency.png").read_bytes()[:4] == b"\x89PNG"

    capsys.readouterr()
    assert main(args) == 0
    assert json.loads((out / "results.json").read_text())["cells"] == {"reused": 4, "computed": 0, "recomputed": 0}

    cell = out / "cells" / "seed1" / "lambda=0" / "ledger.json"
    before = json.loads(cell.read_text())["settings"]
    cell.write_text(cell.read_text()[:100])
    capsys.readouterr()
    assert main(args) == 0
    said = [l for l in capsys.readouterr().out.splitlines() if "recomputing" in l]
    assert said == [f"study: cell {cell} is unreadable (JSONDecodeError); recomputing it"]
    assert json.loads((out / "results.json").read_text())["cells"] == {"reused": 3, "computed": 1, "recomputed": 1}
    assert json.loads(cell.read_text())["settings"] == before


def test_study_bad_input_is_one_line(tmp_path, capsys):
    for argv in (["--seeds", "0"], ["tasks=[lookup]"], ["seeds=[1, 1]"]):
        assert main(["study", "--out", str(tmp_path)] + argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("proactive-jax study: "), err
