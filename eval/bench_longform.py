"""A long text stream through ``proactive-jax decode --live --long-form``: does it run, write throughout, and stay flat?

Streams ``--words`` words (the synthetic tasks' vocabulary, a sentence end about every 12 words; one word per line,
so one line = one push) through the CLI's live loop in this process (``proactive_jax.cli.main``, standard input
replaced by a reader that records the time of every read and the process memory). Prints the exit status, how
much was written in every tenth of the stream, the process memory (VmRSS) after the first 1,000 words and at the
end, and per-push latency p50/p99 over the first and the last 1,000 words; ``--command`` also runs the literal
``python -m proactive_jax decode --live ...`` on the same stream in a child process (exit status, output size,
peak memory).

    python eval/bench_longform.py --words 20000 --command

Without ``--checkpoint`` it saves a random-init model of the ``tiny`` preset (the demo's model shape) with the
synthetic tokenizer into a temporary directory.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def rss_mb(pid: str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def words(n: int, seed: int = 0) -> list[str]:
    import json

    from proactive_jax.data.synthetic import ASSET_DIR

    vocab = json.loads((Path(ASSET_DIR) / "tokenizer.json").read_text())["model"]["vocab"]
    pool = [w for w in vocab if w.isalpha() and w not in ("system", "user", "assistant")]
    rng = random.Random(seed)
    return [rng.choice(pool) + ("." if rng.random() < 1 / 12 else "") for _ in range(n)]


def tiny_checkpoint(out: Path) -> Path:
    from proactive_jax.data.synthetic import ASSET_DIR
    from proactive_jax.models.config import ModelConfig
    from proactive_jax.models.hf_export import save_pretrained
    from proactive_jax.models.presets import MODEL_PRESETS
    from proactive_jax.models.qwen import init_params

    cfg = ModelConfig(**MODEL_PRESETS["tiny"])
    save_pretrained(cfg, init_params(cfg, 0), out, tokenizer_dir=ASSET_DIR)
    return out


class Reader:
    """Standard input handing out one word per line; records the time and memory at every read."""

    def __init__(self, lines, out):
        self.lines, self.out, self.k = lines, out, 0
        self.times, self.printed, self.rss = [], [], {}

    def readline(self):
        self.times.append(time.perf_counter())
        self.printed.append(len(self.out.getvalue()))
        if self.k in (1000, len(self.lines)):
            self.rss[self.k] = rss_mb()
        if self.k >= len(self.lines):
            return ""
        self.k += 1
        return self.lines[self.k - 1] + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=None, help="default: a random-init tiny-preset model (temporary)")
    p.add_argument("--words", type=int, default=20000)
    p.add_argument("--head", default="wait-k:k=3")
    p.add_argument("--window", type=int, default=256)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--command", action="store_true", help="also run the literal CLI command in a child process")
    args = p.parse_args(argv)

    from proactive_jax.cli import main as cli_main

    tmp = tempfile.TemporaryDirectory()
    ckpt = Path(args.checkpoint) if args.checkpoint else tiny_checkpoint(Path(tmp.name) / "tiny")
    stream = words(args.words)
    cmd = ["decode", "--checkpoint", str(ckpt), "--live", "--long-form", "--window", str(args.window), "--head",
           args.head, "--max-new-tokens", str(args.max_new_tokens)]
    out = io.StringIO()
    reader = Reader(stream, out)
    real_in, real_out = sys.stdin, sys.stdout
    sys.stdin, sys.stdout = reader, out
    t0 = time.perf_counter()
    try:
        rc = cli_main(cmd)
    finally:
        sys.stdin, sys.stdout = real_in, real_out
    wall = time.perf_counter() - t0
    push = np.diff(np.asarray(reader.times)) * 1e3  # push k = between read k and read k + 1 (push + print)
    n = len(push)
    first, last = push[1:1001], push[max(n - 1000, 1):]
    tenth = max(args.words // 10, 1)
    printed = np.asarray(reader.printed)
    per_tenth = [int(printed[min((t + 1) * tenth, len(printed) - 1)] - printed[t * tenth]) for t in range(10)]
    load = os.getloadavg()
    print(f"command: proactive-jax {' '.join(cmd[:2])} <tiny> {' '.join(cmd[3:])}")
    print(f"exit status {rc}; {args.words} words in {wall:.1f} s; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"characters written per tenth of the stream: {per_tenth}")
    r1, r2 = reader.rss.get(1000, float("nan")), reader.rss.get(args.words, float("nan"))
    print("| point | process memory (VmRSS) | per-push latency p50 | p99 |")
    print("|---|---|---|---|")
    print(f"| words 1-1,000 | {r1:.0f} MB (after word 1,000) | {np.percentile(first, 50):.2f} ms | "
          f"{np.percentile(first, 99):.2f} ms |")
    print(f"| last 1,000 words | {r2:.0f} MB (after word {args.words:,}) | {np.percentile(last, 50):.2f} ms | "
          f"{np.percentile(last, 99):.2f} ms |")
    print(f"memory at the end / after 1,000 words: {r2 / r1:.3f}")
    ok = rc == 0 and all(per_tenth) and abs(r2 / r1 - 1) <= 0.10
    if args.command:
        cli = [sys.executable, "-m", "proactive_jax"] + cmd
        peak = 0.0
        proc = subprocess.Popen(cli, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, cwd=Path(__file__).resolve().parents[1])
        try:
            import threading

            def feed():
                for w in stream:
                    proc.stdin.write(w + "\n")
                proc.stdin.close()

            th = threading.Thread(target=feed)
            th.start()
            got = []
            reader_t = threading.Thread(target=lambda: got.append(proc.stdout.read()))
            reader_t.start()
            while proc.poll() is None:
                try:
                    peak = max(peak, rss_mb(str(proc.pid)))
                except (FileNotFoundError, ProcessLookupError):
                    pass
                time.sleep(0.5)
            th.join()
            reader_t.join()
        finally:
            proc.kill() if proc.poll() is None else None
        err = proc.stderr.read().strip().splitlines()
        print(f"child process: `python -m proactive_jax {' '.join(cmd[:2])} <tiny> {' '.join(cmd[3:])}` exit "
              f"status {proc.returncode}, {len(got[0]) if got else 0} characters written, peak VmRSS {peak:.0f} MB; "
              f"its last line: {err[-1] if err else ''}")
        ok = ok and proc.returncode == 0
    print("acceptance:", "met" if ok else "NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
