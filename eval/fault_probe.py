"""Fault probe: run the ``proactive-jax`` CLIs on a tiny trained run the way a new user (and an unlucky operator)
would, and count the outcomes per category.

    python eval/fault_probe.py [--work DIR] [--jobs 2] [--only SUBSTRING]

Outcomes: ``ok`` (a success case succeeded and its check held), ``one-line`` (a user error ended as one line on
stderr with a non-zero exit code, nothing damaged), ``traceback``, ``hang`` (over the timeout), ``data-loss``
(a check of what is on disk failed after the case) and ``silently-wrong`` (exit 0 where an error was due, or
a wrong result). Prints one row per case and the totals; ``--json`` writes them too.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "tiny-synthetic.yaml"
TINY = [
    "model.config={num_hidden_layers: 1, hidden_size: 32, intermediate_size: 64, num_attention_heads: 2, "
    "num_key_value_heads: 1, head_dim: 16}",
    "data.synthetic.n_train=64", "data.synthetic.n_valid=0", "data.valid_batches=0", "data.buckets=[[24, 24]]",
    "data.global_batch_size=16", "objective.kl_topk=8", "optim.lr=3e-3", "optim.warmup_steps=2", "steps=6",
    "checkpoint.every=2", "checkpoint.keep=10", "eval_every=0", "progress=false", "tensorboard=false",
]
EVAL = ["task=lookup", "heads=[batch]", "num_examples=4", "calibration_split=null", "max_new_tokens=6",
        "batch_size=4", "progress=false"]
WORKER = textwrap.dedent("""
    import builtins, errno, json, os, signal, sys
    from proactive_jax import cli
    from proactive_jax.training import loop
    mode, at, args = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
    real_add = loop._StepRecords.add
    def add(self, s, m, t):
        real_add(self, s, m, t)
        if s + 1 == at and mode in ("INT", "TERM"):
            os.kill(os.getpid(), getattr(signal, "SIG" + mode))
        elif s + 1 == at:
            real_open = builtins.open
            def open_(file, mode="r", *a, **k):
                if any(c in mode for c in "wax+") and "checkpoints" in str(file):
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(file))
                return real_open(file, mode, *a, **k)
            builtins.open = open_
    loop._StepRecords.add = add
    sys.exit(cli.main(["train", *args]))
""")


@dataclasses.dataclass
class Case:
    category: str
    name: str
    argv: list  # after "python"
    expect: str = "error"  # "error" (one line, rc 2), "ok", or an exit code as a string
    setup: Callable[[Path], None] | None = None
    check: Callable[[Path, subprocess.CompletedProcess], str | None] | None = None  # a failure message or None
    env: dict = dataclasses.field(default_factory=dict)
    timeout: float = 180.0
    stdin: bytes | None = None  # fed to the command's standard input (None: an open pipe that stays silent)
    signal_after: tuple | None = None  # ("INT" | "KILL" | ..., seconds): sent to the command after that long
    teardown: Callable[[Path], None] | None = None


def _cli(*args) -> list:
    return ["-m", "proactive_jax", *args]


def _steps(run: Path) -> list:
    d = run / "checkpoints"
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []


def _flip(path: Path, offset_frac: float = 0.5) -> None:
    raw = bytearray(path.read_bytes())
    i = int(len(raw) * offset_frac)
    raw[i:i + 4] = bytes(b ^ 0x5A for b in raw[i:i + 4])
    path.write_bytes(bytes(raw))


def _largest_chunk(step_dir: Path) -> Path:
    return max((f for f in (step_dir / "params").rglob("*") if f.is_file() and "/d/" in str(f)),
               key=lambda f: f.stat().st_size)


def build_cases(work: Path, run: Path, hf: Path) -> list[Case]:
    cases: list[Case] = []

    def train(*over):
        return _cli("train", str(CONFIG), *TINY, "out_dir={d}/t", *over)

    def intact(*_):
        return None if _steps(run) == [2, 4, 6] else f"reference run changed: {_steps(run)}"

    # -- config-time validation --------------------------------------------------------------------------------
    for over in ("checkpoint.keep=0", "checkpoint.keep=-1", "steps=0", "checkpoint.every=-1", "eval_every=-1",
                 "log_every=-1", "stepz=3", "steps=abc", "data.task=nope", "data.buckets=[[4, 4]]",
                 "model.hf_dir=/no/such/dir", "data.synthetic.tasks=[nope]", "optim.lr=-1", "mesh.fsdp=3"):
        cases.append(Case("config", over, train(over),
                          check=lambda d, p: None if not (d / "t" / "checkpoints").exists() else "wrote checkpoints"))
    cases.append(Case("config", "missing config file", _cli("train", "/no/such.yaml")))
    cases.append(Case("config", "override without =", _cli("train", str(CONFIG), "steps")))

    # -- checkpoints: corrupt, swapped, truncated, rollback ---------------------------------------------------
    def copy_run(dst):
        return lambda d: shutil.copytree(run, d / dst)

    def corrupt(dst):
        def f(d):
            shutil.copytree(run, d / dst)
            _flip(_largest_chunk(d / dst / "checkpoints" / "6"))
        return f

    def swapped(dst):
        def f(d):
            shutil.copytree(run, d / dst)
            shutil.rmtree(d / dst / "checkpoints" / "6" / "params")
            shutil.copytree(d / dst / "checkpoints" / "4" / "params", d / dst / "checkpoints" / "6" / "params")
        return f

    for label, mk in (("flipped bytes", corrupt), ("params of another step", swapped)):
        cases.append(Case("checkpoint", f"export: {label}", _cli("export", "--checkpoint", "{d}/r", "--out", "{d}/hf"),
                          setup=mk("r"), check=lambda d, p: "wrote an export" if (d / "hf").exists() else None))
        cases.append(Case("checkpoint", f"decode: {label}", _cli("decode", "--checkpoint", "{d}/r", "--head", "batch",
                                                                 "--text", "a b"), setup=mk("r")))
        cases.append(Case("checkpoint", f"resume: {label}", _cli("train", str(CONFIG), *TINY, "out_dir={d}/r"),
                          setup=mk("r")))
        cases.append(Case("checkpoint", f"resume: {label}, on_corrupt=fallback",
                          _cli("train", str(CONFIG), *TINY, "out_dir={d}/r", "checkpoint.on_corrupt=fallback"),
                          expect="ok", setup=mk("r"),
                          check=lambda d, p: None if _steps(d / "r") == [2, 4, 6] else f"steps {_steps(d / 'r')}"))
    cases.append(Case("checkpoint", "rollback restore_step=2",
                      _cli("train", str(CONFIG), *TINY, "out_dir={d}/r", "checkpoint.restore_step=2",
                           "checkpoint.keep=2"), expect="ok", setup=copy_run("r"),
                      check=lambda d, p: None if _steps(d / "r") == [4, 6] and
                      len(list((d / "r" / "checkpoints" / "rolled_back").glob("*-*"))) == 2 else f"{_steps(d / 'r')}"))
    cases.append(Case("checkpoint", "export --step 3 (absent)",
                      _cli("export", "--checkpoint", str(run), "--step", "3", "--out", "{d}/hf")))
    cases.append(Case("checkpoint", "export into a non-HF directory",
                      _cli("export", "--checkpoint", str(run), "--out", "{d}/busy"),
                      setup=lambda d: ((d / "busy").mkdir(), (d / "busy" / "notes.txt").write_text("mine")),
                      check=lambda d, p: None if (d / "busy" / "notes.txt").read_text() == "mine" else "replaced"))
    cases.append(Case("checkpoint", "export a missing run", _cli("export", "--checkpoint", "{d}/none", "--out",
                                                                "{d}/hf")))

    def hf_copy(mutate):
        def f(d):
            shutil.copytree(hf, d / "hf")
            mutate(d / "hf")
        return f

    def truncate(h):
        st = h / "model.safetensors"
        st.write_bytes(st.read_bytes()[:-100])

    def config_type(h):
        c = json.loads((h / "config.json").read_text())
        c["hidden_size"] = "32"
        (h / "config.json").write_text(json.dumps(c))

    def pickles(h):
        (h / "model.safetensors").unlink()
        (h / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")

    for label, mut in (("truncated safetensors", truncate),
                       ("flipped tensor bytes", lambda h: _flip(h / "model.safetensors", 0.999)),
                       ("config.json field of the wrong type", config_type), ("pickle weights only", pickles)):
        cases.append(Case("hf", f"hf-check: {label}", _cli("hf-check", "{d}/hf"), setup=hf_copy(mut)))
    cases.append(Case("hf", "hf-check: NaN weights", _cli("hf-check", "{d}/hf"), expect="1", setup=hf_copy(_nan_hf),
                      check=lambda d, p: None if "non-finite" in p.stderr else "NaN not named"))

    # -- eval --------------------------------------------------------------------------------------------------
    ev = lambda *extra: _cli("eval", f"checkpoint={run}", *EVAL, "out_dir={d}/e", *extra)  # noqa: E731
    cases.append(Case("eval", "batch_size=0", ev("batch_size=0")))
    cases.append(Case("eval", "unknown head", ev("heads=[nope]")))
    cases.append(Case("eval", "layers=-9: on a 1-layer model", ev("heads=['attention:tau=0.5,layers=-9:']")))
    cases.append(Case("eval", "quantile without calibration", ev("heads=['entropy:tau=q0.9']"),
                      check=lambda d, p: None if "q0.9" in p.stderr else "message does not say q0.9"))
    cases.append(Case("eval", "tokenizer is a Hub id", ev("tokenizer=Qwen/Qwen2.5-3B")))
    cases.append(Case("eval", "missing checkpoint", _cli("eval", "checkpoint={d}/none", *EVAL, "out_dir={d}/e")))
    cases.append(Case("eval", "stale dir: another step", ev("step=6"), setup=_eval_at(run, 4),
                      check=lambda d, p: None if json.loads((d / "e" / "fingerprint.json").read_text())["info"]["step"]
                      == 4 else "fingerprint replaced"))
    cases.append(Case("eval", "stale dir: fresh=true", ev("step=6", "fresh=true"), expect="ok", setup=_eval_at(run, 4),
                      check=lambda d, p: None if json.loads((d / "e" / "fingerprint.json").read_text())["info"]["step"]
                      == 6 else "not restarted"))
    cases.append(Case("eval", "same fingerprint resumes", ev("step=4"), expect="ok", setup=_eval_at(run, 4)))
    cases.append(Case("eval", "non-UTF-8 jsonl dataset",
                      _cli("eval", f"checkpoint={run}", "task=squad", "dataset={source: files, path: {d}/bad.jsonl}",
                           "heads=[batch]", "progress=false", "out_dir={d}/e"),
                      setup=lambda d: (d / "bad.jsonl").write_bytes(b'{"context": "\xff\xfe"}\n')))

    # -- offline -----------------------------------------------------------------------------------------------
    off = lambda ds: _cli("eval", f"checkpoint={run}", "task=squad", f"dataset={ds}", "heads=[batch]",  # noqa: E731
                          "progress=false", "out_dir={d}/e")
    cases.append(Case("offline", "hub dataset, no offline switch", off("{source: hub, path: rajpurkar/squad}"),
                      env={"HF_HUB_OFFLINE": None, "HF_DATASETS_OFFLINE": None}, timeout=150))
    cases.append(Case("offline", "hub dataset, HF_DATASETS_OFFLINE=1", off("{source: hub, path: rajpurkar/squad}"),
                      env={"HF_DATASETS_OFFLINE": "1"}, timeout=150))
    cases.append(Case("offline", "tfds squad, no offline switch", off("{source: tfds, path: squad, name: v1.1}"),
                      env={"HF_HUB_OFFLINE": None, "HF_DATASETS_OFFLINE": None}, timeout=150,
                      check=lambda d, p: "wrote into $HOME" if any((d / "home").rglob("tensorflow_datasets")) else None))

    # -- signals and a full disk -------------------------------------------------------------------------------
    for mode, code in (("INT", "130"), ("TERM", "0")):
        cases.append(Case("signal", f"SIG{mode} at step 3", ["{d}/worker.py", mode, "3",
                                                             json.dumps([str(CONFIG), *TINY, "out_dir={d}/r"])],
                          expect=code, setup=_worker,
                          check=lambda d, p: None if _steps(d / "r")[-1:] == [3] else f"saved {_steps(d / 'r')}"))
    cases.append(Case("disk", "full disk from step 5", ["{d}/worker.py", "ENOSPC", "5",
                                                        json.dumps([str(CONFIG), *TINY, "out_dir={d}/r"])],
                      setup=_worker, check=_saved_before_full_disk_intact))
    cases.append(Case("data", "truncated tokenization cache is rebuilt",
                      _cli("train", str(CONFIG), *TINY, "out_dir={d}/r", "steps=8"), expect="ok",
                      setup=_truncated_cache(run)))
    for c in cases:
        if c.check is None and c.expect == "error":
            c.check = intact
    return cases


def _saved_before_full_disk_intact(d: Path, p) -> str | None:
    """The saves completed before the disk filled (step 2; step 4 was in flight) restore and verify."""
    from proactive_jax.training.checkpoint import restore_params

    steps = _steps(d / "r")
    if 2 not in steps or not set(steps) <= {2, 4}:
        return f"steps {steps}"
    for s in steps:
        try:
            restore_params(d / "r", s)
        except Exception as e:  # noqa: BLE001
            return f"step {s} does not restore: {e}"
    return None if "No space left on device" in p.stderr else "the error does not say the disk is full"


def _nan_hf(h: Path) -> None:
    from proactive_jax.models.hf import keep_on_host, load_pretrained
    from proactive_jax.models.hf_export import save_pretrained

    cfg, params = load_pretrained(h, place=keep_on_host)
    params["norm"]["weight"][0] = float("nan")
    tmp = h.parent / "nan-src"
    save_pretrained(cfg, params, tmp, tokenizer_dir=h)
    shutil.rmtree(h)
    tmp.rename(h)


def _eval_at(run: Path, step: int):
    def f(d):
        subprocess.run([sys.executable, *_cli("eval", f"checkpoint={run}", f"step={step}", *EVAL,
                                              f"out_dir={d / 'e'}")], check=True, capture_output=True, env=_env(d, {}),
                       cwd=str(ROOT))
    return f


def _worker(d: Path) -> None:
    (d / "worker.py").write_text(WORKER)


def _truncated_cache(run: Path):
    def f(d):
        shutil.copytree(run, d / "r")
        for c in (d / "r" / "cache").glob("*.npz"):
            c.write_bytes(c.read_bytes()[:100])
    return f


def _env(d: Path, extra: dict) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT), TOKENIZERS_PARALLELISM="false",
               HOME=str(d / "home"), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    (d / "home").mkdir(exist_ok=True)
    for k, v in extra.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env


def run_case(c: Case, d: Path) -> tuple[str, str, float]:
    d.mkdir(parents=True, exist_ok=True)
    if c.setup:
        c.setup(d)
    argv = [a.replace("{d}", str(d)) for a in c.argv]
    t0 = time.time()
    try:
        p = _run(c, argv, d)
    except subprocess.TimeoutExpired:
        return "hang", f"over {c.timeout:.0f} s", time.time() - t0
    took = time.time() - t0
    try:
        return _judge(c, d, p, took)
    finally:
        if c.teardown is not None:
            c.teardown(d)


def _run(c: Case, argv: list, d: Path) -> subprocess.CompletedProcess:
    """The command, fed ``c.stdin`` (bytes) and signalled per ``c.signal_after``; output decoded leniently."""
    import signal

    proc = subprocess.Popen([sys.executable, *argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=_env(d, c.env), cwd=str(ROOT))
    try:
        if c.signal_after is not None:  # stdin stays open (a live session waiting for input) until the signal
            name, after = c.signal_after
            if c.stdin:
                proc.stdin.write(c.stdin)
                proc.stdin.flush()
            try:
                proc.wait(timeout=after)
            except subprocess.TimeoutExpired:
                proc.send_signal(getattr(signal, "SIG" + name))
            out, err = proc.communicate(timeout=c.timeout)
        else:
            out, err = proc.communicate(c.stdin if c.stdin is not None else b"", timeout=c.timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    dec = lambda b: b.decode("utf-8", "replace")  # noqa: E731
    return subprocess.CompletedProcess(argv, proc.returncode, dec(out), dec(err))


def _judge(c: Case, d: Path, p, took: float) -> tuple[str, str, float]:
    err = p.stderr.strip()
    last = err.splitlines()[-1] if err else ""
    if "Traceback (most recent call last)" in err:
        return "traceback", last[:160], took
    bad = c.check(d, p) if c.check else None
    if c.expect == "error":
        if p.returncode == 0:
            return "silently-wrong", "exit 0", took
        if bad:
            return "data-loss", bad, took
        one = last.startswith("proactive-jax ") and p.returncode == 2
        return ("one-line" if one else "silently-wrong"), last[:160], took
    want = 0 if c.expect == "ok" else int(c.expect)
    if p.returncode != want:
        return "silently-wrong", f"exit {p.returncode}, expected {want}: {last[:140]}", took
    if bad:
        return ("data-loss" if c.category in ("checkpoint", "disk", "signal") else "silently-wrong"), bad, took
    return "ok", last[:160], took


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/proactive_fault_probe")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--only", default=None, help="run the cases whose category or name contains this")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "eval"))
    run, hf = work / "ref", work / "ref-hf"
    base = _env(work, {})
    subprocess.run([sys.executable, *_cli("train", str(CONFIG), *TINY, f"out_dir={run}")], check=True, env=base,
                   capture_output=True, cwd=str(ROOT))
    subprocess.run([sys.executable, *_cli("export", "--checkpoint", str(run), "--out", str(hf))], check=True,
                   env=base, capture_output=True, cwd=str(ROOT))
    from fault_cases_inputs import build_input_cases, make_audio_checkpoint, write_audio_files

    audio_dir, audio_hf = work / "audio", work / "audio-hf"
    write_audio_files(audio_dir)
    make_audio_checkpoint(audio_hf)
    ev = lambda *extra: _cli("eval", f"checkpoint={run}", *EVAL, "out_dir={d}/e", *extra)  # noqa: E731
    tr = lambda *extra: _cli("train", str(CONFIG), *TINY, *extra)  # noqa: E731
    cases = [c for c in build_cases(work, run, hf) + build_input_cases(Case, _cli, work, run, audio_hf, audio_dir,
                                                                        tr, ev, _steps)
             if args.only is None or args.only in c.category or args.only in c.name]
    rows = []
    with cf.ThreadPoolExecutor(args.jobs) as ex:
        futs = {ex.submit(run_case, c, work / f"case{i:03d}"): c for i, c in enumerate(cases)}
        for f in cf.as_completed(futs):
            c = futs[f]
            outcome, detail, took = f.result()
            rows.append({"category": c.category, "case": c.name, "outcome": outcome, "seconds": round(took, 1),
                         "detail": detail})
            print(f"{outcome:15s} {took:6.1f}s  [{c.category}] {c.name}: {detail}", flush=True)
    totals: dict = {}
    for r in rows:
        totals[r["outcome"]] = totals.get(r["outcome"], 0) + 1
    print("\ntotals:", json.dumps(totals, sort_keys=True), f"({len(rows)} cases)")
    if args.json:
        Path(args.json).write_text(json.dumps({"totals": totals, "cases": rows}, indent=1) + "\n")
    return 0 if set(totals) <= {"ok", "one-line"} else 1


if __name__ == "__main__":
    sys.exit(main())
