"""Streaming decode throughput: the jitted KV-cached loop vs a naive full-recompute Python loop.

    python eval/bench_decode.py [--batch-sizes 1,8,32] [--examples 32] [--head wait-k:k=3]

For each batch size, both decoders process the same ``--examples`` random streaming examples on a small
random Qwen3-style model (greedy, the same head) and must produce the same tokens and read schedules. The
naive decoder is what one writes first: a Python loop that, at every decision, re-runs the whole
forward pass over ``[visible source | header + written tokens]`` for the batch (padded to one length,
one compiled forward), then applies the head. Reported: decoded tokens/s, reads/s, and the speed-up
(naive time / cached time), each the fastest of ``--repeats`` timed runs after a warm-up (compilation
excluded, reported separately as first-call time minus run time).

``--baseline FILE``: also time the decode loop of another ``decode.py`` (e.g. the previous commit's:
``git show HEAD~1:proactive_jax/method/decode.py > /tmp/decode_old.py``), loaded as a module next to the
current one, in the same process and interleaved with it (base, new, base, new, ...), so both see the same
machine load; their outputs must agree. Reported per decoder: the fastest and the median run, decisions/s,
and new / base time. ``--no-naive`` skips the naive decoder. The load average (``os.getloadavg``) is printed
before and after each batch size.

Memory traffic: per decision, the bytes a step must read at least (every weight once, the embedding table
aside, plus the KV cache over its whole capacity, the accelerator path; the CPU path reads a window of it, so
this is an upper bound there), divided by the decisions that step makes (one per active row); ``GB/s`` is that
traffic over the measured time, and on a GPU with a known peak (``--hbm-gbps`` overrides) its fraction of the
HBM bandwidth.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from proactive_jax.models.config import ModelConfig  # noqa: E402
from proactive_jax.method.decode import stream_decode  # noqa: E402
from proactive_jax.method.heads import DecisionState, decide_encoded, encode_head, parse_head  # noqa: E402
from proactive_jax.models.attention import MaskVectors  # noqa: E402
from proactive_jax.method.attention_stats import HeadStatistics  # noqa: E402
from proactive_jax.models.qwen import abstract_params, apply_hidden, hidden_to_logits  # noqa: E402
from proactive_jax.data.example import StreamExample  # noqa: E402


def bench_config() -> ModelConfig:
    return ModelConfig(model_type="qwen3", vocab_size=512, hidden_size=128, intermediate_size=256,
                       num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                       qkv_bias=False, o_bias=False, qk_norm=True, tie_word_embeddings=False,
                       max_position_embeddings=1024)


def random_params(cfg, seed=0, logit_scale=30.0):
    rng = np.random.default_rng(seed)

    def leaf(path, x):
        if getattr(path[-1], "key", None) == "weight":
            return jnp.ones(x.shape, x.dtype)
        return jnp.asarray(rng.normal(0.0, 0.02, x.shape), x.dtype)

    p = jax.tree_util.tree_map_with_path(leaf, abstract_params(cfg))
    p["norm"]["weight"] = p["norm"]["weight"] * logit_scale  # peaked logits: no argmax near-ties
    return p


# peak HBM bandwidth, GB/s, by device kind substring (vendor data sheets)
HBM_GBPS = {"H200": 4800.0, "H100": 3350.0, "A100": 2039.0, "L4": 300.0, "A10": 600.0}


def weight_bytes(cfg, params) -> int:
    """Bytes of the weights a decode step reads: all of them but the embedding table (one row per token)."""
    total = sum(int(np.prod(x.shape)) * jnp.dtype(cfg.dtype).itemsize for x in jax.tree.leaves(params))
    if cfg.tie_word_embeddings:
        return total  # the table is the LM head too: read whole
    return total - cfg.vocab_size * cfg.hidden_size * jnp.dtype(cfg.dtype).itemsize


def step_traffic(cfg, params, results, batch_size, capacity):
    """``(steps, bytes)`` of a batched decode over ``results``: each batch of rows runs as many loop steps as its
    longest row has decisions (plus the prefill), every step reading the weights and the whole cache."""
    cache = 2 * cfg.num_hidden_layers * batch_size * capacity * cfg.num_key_value_heads * cfg.head_dim \
        * jnp.dtype(cfg.dtype).itemsize
    steps = sum(1 + max(len(r.writes) for r in results[i:i + batch_size])
                for i in range(0, len(results), batch_size))
    return steps, steps * (weight_bytes(cfg, params) + cache)


def hbm_peak(args) -> float | None:
    if args.hbm_gbps:
        return args.hbm_gbps
    kind = jax.devices()[0].device_kind
    return next((v for k, v in HBM_GBPS.items() if k in kind), None) if jax.devices()[0].platform == "gpu" else None


def random_examples(rng, count, vocab, units):
    t = lambda n: tuple(int(x) for x in rng.integers(4, vocab, int(n)))
    return [StreamExample(prompt=t(rng.integers(6, 12)), units=tuple(t(rng.integers(1, 4)) for _ in range(units)),
                          end=t(2), header=t(4), target=(3,)) for _ in range(count)]


class Naive:
    """Full recompute at every decision, batched, section-3 mask vectors; a Python loop around jitted calls."""

    def __init__(self, cfg, params, head, max_new, eos_ids):
        self.cfg, self.params, self.max_new = cfg, params, max_new
        self.vals = encode_head(head, cfg.num_hidden_layers)
        self.needs_stats = parse_head(head).needs_stats
        self.eos = set(eos_ids)
        stats_on = self.needs_stats

        def fwd(params, ids, pos, seg, idx, lim, ss, row):
            out = apply_hidden(cfg, params, ids, pos, MaskVectors(seg, idx, lim),
                               hook=HeadStatistics() if stats_on else None, probe_args=ss)
            h, st = out.hidden, (out.attention_probe[0] if stats_on else None)
            b = jnp.arange(ids.shape[0])
            logits = hidden_to_logits(cfg, params, h[b, row][:, None])[:, 0]
            if stats_on:
                st = jnp.transpose(st[:, b, row], (1, 0, 2, 3))
            else:
                st = jnp.zeros((ids.shape[0], cfg.num_hidden_layers, cfg.num_attention_heads, 2), jnp.float32)
            return logits, st

        self.fwd = jax.jit(fwd)
        self.decide = jax.jit(jax.vmap(decide_encoded, in_axes=(None, 0)))

    def __call__(self, examples, T):
        B = len(examples)
        n = np.zeros(B, int)
        ys = [[] for _ in range(B)]
        phis = [[] for _ in range(B)]
        words = np.zeros(B, np.int32)
        done = np.zeros(B, bool)
        Vs = [e.visible_counts() for e in examples]
        while not done.all():
            ids, pos, seg, idx, lim = (np.zeros((B, T), np.int32) for _ in range(5))
            seg[:] = -1
            row = np.zeros(B, np.int32)
            for b, e in enumerate(examples):
                sv, y, ph, V = int(Vs[b][n[b]]), ys[b], phis[b], Vs[b]
                H = len(e.header)
                tl = H + len(y)
                toks = list(e.source[:sv]) + list(e.header) + y
                L = len(toks)
                ids[b, :L] = toks
                seg[b, :sv], seg[b, sv:L] = 0, 1
                idx[b, :sv], idx[b, sv:L] = np.arange(sv), np.arange(tl)
                pos[b, :sv], pos[b, sv:L] = np.arange(sv), np.arange(tl)
                lim[b, sv:sv + H] = V[ph[0]] if y else V[n[b]]
                for i in range(1, len(y) + 1):
                    lim[b, sv + H + i - 1] = V[ph[i]] if i < len(y) else V[n[b]]
                row[b] = L - 1
            ss = np.array([len(e.prompt) for e in examples], np.int32)
            logits, stats = self.fwd(self.params, ids, pos, seg, idx, lim, ss, row)
            cand = np.asarray(jnp.argmax(logits, -1))
            st = DecisionState(logits, stats, jnp.asarray(n, jnp.int32),
                               jnp.asarray([e.M for e in examples], jnp.int32),
                               jnp.asarray([len(y) for y in ys], jnp.int32), jnp.asarray(words),
                               jnp.ones(B, bool))
            write = np.asarray(self.decide(self.vals, st)[0])
            for b in range(B):
                if done[b]:
                    continue
                if write[b]:
                    words[b] += 1
                    ys[b].append(int(cand[b]))
                    phis[b].append(int(n[b]))
                    done[b] = cand[b] in self.eos or len(ys[b]) >= self.max_new
                else:
                    n[b] += 1
        return ys, phis, n


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-sizes", default="1,8,32")
    ap.add_argument("--examples", type=int, default=32)
    ap.add_argument("--units", type=int, default=16)
    ap.add_argument("--max-new", type=int, default=24)
    ap.add_argument("--head", default="wait-k:k=3")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per decoder; the fastest is reported")
    ap.add_argument("--baseline", default=None, help="a decode.py to time against the current one, interleaved")
    ap.add_argument("--no-naive", action="store_true", help="skip the naive full-recompute decoder")
    ap.add_argument("--hbm-gbps", type=float, default=None, help="peak memory bandwidth for the fraction column")
    args = ap.parse_args()
    if args.baseline:
        return compare(args)
    cfg = bench_config()
    params = random_params(cfg)
    exs = random_examples(np.random.default_rng(0), args.examples, cfg.vocab_size, args.units)
    eos = []  # every example writes max_new tokens: equal work for both decoders
    T = max(e.S for e in exs) + 4 + args.max_new
    naive = Naive(cfg, params, args.head, args.max_new, eos)
    print(f"device: {jax.devices()[0].device_kind} x{len(jax.devices())}, cpu cores: {os.cpu_count()}; "
          f"model: {cfg.num_hidden_layers} layers, d={cfg.hidden_size}, vocab {cfg.vocab_size}; "
          f"{args.examples} examples x {args.units} units, max_new {args.max_new}, head {args.head}")
    peak = hbm_peak(args)
    print(f"{'batch':>5} {'compile_s':>9} {'cached_s':>8} {'tok/s':>8} {'reads/s':>8} {'B/dec':>9} {'GB/s':>7}"
          f"{' HBM%':>6} | {'naive_s':>8} {'tok/s':>8} {'reads/s':>8} | speed-up")
    for bs in [int(x) for x in args.batch_sizes.split(",")]:
        t0 = time.perf_counter()
        stream_decode(cfg, params, exs, args.head, args.max_new, eos, batch_size=bs)  # compile + run
        t_first = time.perf_counter() - t0
        t_cached = float("inf")
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            res = stream_decode(cfg, params, exs, args.head, args.max_new, eos, batch_size=bs)
            t_cached = min(t_cached, time.perf_counter() - t0)
        t_compile = t_first - t_cached
        toks = sum(len(r.tokens) for r in res)
        reads = sum(int((~r.writes).sum()) for r in res)
        capacity = max(e.S for e in exs) + len(exs[0].header) + args.max_new
        _, traffic = step_traffic(cfg, params, res, bs, capacity)
        gbps = traffic / t_cached / 1e9
        mem = (f"{traffic / sum(len(r.writes) for r in res):>9.0f} {gbps:>7.2f}"
               f"{(f'{100 * gbps / peak:>5.1f}%' if peak else '     -'):>6}")
        if args.no_naive:
            print(f"{bs:>5} {t_compile:>9.2f} {t_cached:>8.3f} {toks / t_cached:>8.0f} {reads / t_cached:>8.0f} "
                  f"{mem} |")
            continue
        naive([exs[0]] * bs, T)  # warm-up / compile for this batch shape
        t_naive = float("inf")
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            nys, nphis = [], []
            for i in range(0, len(exs), bs):
                chunk = exs[i:i + bs]
                ys, phis, _ = naive(chunk + [chunk[-1]] * (bs - len(chunk)), T)
                nys += ys[:len(chunk)]
                nphis += phis[:len(chunk)]
            t_naive = min(t_naive, time.perf_counter() - t0)
        same = all(list(r.tokens) == y and list(r.phi) == p for r, y, p in zip(res, nys, nphis))
        print(f"{bs:>5} {t_compile:>9.2f} {t_cached:>8.3f} {toks / t_cached:>8.0f} {reads / t_cached:>8.0f} "
              f"{mem} | {t_naive:>8.3f} {toks / t_naive:>8.0f} {reads / t_naive:>8.0f} | {t_naive / t_cached:>6.1f}x"
              f"{'' if same else '  (OUTPUTS DIFFER)'}")


def load_decode(path: str):
    """Another ``decode.py`` as a module of its own (it imports the rest of the package as usual)."""
    spec = importlib.util.spec_from_file_location("proactive_jax.method._bench_baseline_decode", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def load() -> str:
    return "load %.2f %.2f %.2f" % os.getloadavg()


def compare(args):
    """The current decode loop against ``--baseline``'s, interleaved in this process."""
    base = load_decode(args.baseline).stream_decode
    cfg = bench_config()
    params = random_params(cfg)
    exs = random_examples(np.random.default_rng(0), args.examples, cfg.vocab_size, args.units)
    eos = []
    print(f"device: {jax.devices()[0].device_kind} x{len(jax.devices())}, cpu cores: {os.cpu_count()}; "
          f"model: {cfg.num_hidden_layers} layers, d={cfg.hidden_size}, vocab {cfg.vocab_size}; "
          f"{args.examples} examples x {args.units} units, max_new {args.max_new}, head {args.head}; "
          f"baseline {args.baseline}")
    print(f"{'batch':>5} {'decisions':>9} {'write%':>6} | {'base_c_s':>8} {'base_min':>8} {'base_med':>8} "
          f"{'dec/s':>7} | {'new_c_s':>7} {'new_min':>8} {'new_med':>8} {'dec/s':>7} | new/base (min, med)")
    for bs in [int(x) for x in args.batch_sizes.split(",")]:
        print(f"  [{load()}]")
        run = {}
        first = {}
        for name, fn in (("base", base), ("new", stream_decode)):
            t0 = time.perf_counter()
            run[name] = fn(cfg, params, exs, args.head, args.max_new, eos, batch_size=bs)
            first[name] = time.perf_counter() - t0
        for a, b in zip(run["base"], run["new"]):
            if list(a.tokens) != list(b.tokens) or list(a.phi) != list(b.phi) or list(a.writes) != list(b.writes):
                raise SystemExit("OUTPUTS DIFFER between the baseline and the current decode loop")
        times = {"base": [], "new": []}
        for _ in range(args.repeats):
            for name, fn in (("base", base), ("new", stream_decode)):
                t0 = time.perf_counter()
                fn(cfg, params, exs, args.head, args.max_new, eos, batch_size=bs)
                times[name].append(time.perf_counter() - t0)
        D = sum(len(r.writes) for r in run["new"])
        W = sum(int(r.writes.sum()) for r in run["new"])
        cols = []
        for name in ("base", "new"):
            t = times[name]
            cols.append(f"{first[name] - min(t):>8.2f} {min(t):>8.3f} {statistics.median(t):>8.3f} "
                        f"{D / min(t):>7.0f}")
        ratio = (min(times["new"]) / min(times["base"]), statistics.median(times["new"]) / statistics.median(times["base"]))
        print(f"{bs:>5} {D:>9} {100 * W / D:>5.0f}% | {cols[0]} | {cols[1]} | {ratio[0]:.2f} {ratio[1]:.2f}")
        print(f"  [{load()}]")


if __name__ == "__main__":
    main()
