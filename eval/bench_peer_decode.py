"""Streaming decode: ours (the jitted KV-cached loop) against a PyTorch + transformers peer, same weights and examples.

    python eval/bench_peer_decode.py                 # Qwen2.5-0.5B layer shapes, 4 layers, vocab 32768, fp32, CPU
    python eval/bench_peer_decode.py --tiny          # seconds: 2 layers, d=64, vocab 512
    python eval/bench_peer_decode.py --device gpu --shape 3b --layers 36 --vocab 151936 --dtype bfloat16 \\
        --examples 32 --batch-sizes 1,32 --allow-mismatch   # HBM figures (eval/bench_gpu.sh)

The peer is the predecessor's loop written plainly: batch size 1, a Python loop, ``Qwen2ForCausalLM`` with
``DynamicCache``s. The source cache holds exactly the source read so far (prompt, then each unit or the end
marker as it is READ), so a target row that sees ``V(n)`` simply attends to all of it; the target group
(header + written tokens) has its own K/V, appended after the source K/V for every target forward. GPE
positions (method.md section 2): source 0..S-1, target ``0..`` (target_offset 0). WRITE feeds the greedy token
into the next target slot; READ appends the unit's tokens to the source cache (one forward), then re-feeds
the whole header (nothing written yet) or the last written token, dropping its old K/V (a second forward).
The heads (wait-k at word level over a random word-start table, entropy with tau) follow
proactive_jax/method/heads.py rule for rule: WRITE at n = M+1, continuation tokens are written without a
decision, entropy = H(softmax) / log|V| <= tau.

Checked first: for every head, tokens and per-token read counts phi of every example equal between the peer
and ours at each batch size (mismatch counts printed; exit 1 on any, unless --allow-mismatch, which only the
bf16 GPU timing run uses). Then timed, interleaved in this process: per round and head, ours at each batch size
(one ``stream_decode`` call over all examples) and the peer over the examples in turn; the median of
``--rounds`` is reported; the first calls (compilation, warm-up) are reported separately.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="a seconds-scale run (shape tiny)")
    p.add_argument("--shape", default="0.5b", choices=("tiny", "0.5b", "1.5b", "3b"), help="Qwen2.5 layer shapes")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=32768)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--device", default="cpu", choices=("cpu", "gpu"))
    p.add_argument("--examples", type=int, default=8)
    p.add_argument("--units", type=int, default=8)
    p.add_argument("--max-new", type=int, default=16)
    p.add_argument("--batch-sizes", default=None, help="ours' batch sizes (default 1,<examples>)")
    p.add_argument("--k", type=int, default=3, help="wait-k's k")
    p.add_argument("--tau", default="auto", help="entropy tau; auto: the median entropy along a read-all decode")
    p.add_argument("--heads", default="wait-k,entropy")
    p.add_argument("--logit-scale", type=float, default=None, help="final-norm multiplier (peaked logits)")
    p.add_argument("--word-start-frac", type=float, default=0.7, help="share of the vocabulary starting a word")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds (0: the equality check only)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--peak-gbps", type=float, default=3350.0, help="HBM bandwidth for the GPU utilisation figure")
    p.add_argument("--torch-threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    p.add_argument("--profile", action="store_true", help="also time one forward of each side at 1..8 tokens")
    p.add_argument("--allow-mismatch", action="store_true", help="report mismatches without failing (bf16 timing)")
    a = p.parse_args(argv)
    if a.tiny:
        a.shape, a.layers, a.vocab = "tiny", 2, 512
    if a.logit_scale is None:
        a.logit_scale = 4.0 if a.shape != "tiny" else 8.0
    if a.batch_sizes is None:
        a.batch_sizes = f"1,{a.examples}"
    return a


ARGS = parse_args()
os.environ.setdefault("JAX_PLATFORMS", "cuda" if ARGS.device == "gpu" else "cpu")
# torch (libgomp) and XLA share this process and its cores: spinning OpenMP workers stole the cores from the
# other runtime (measured, eval/NOTES_peers.md), so idle torch threads sleep at once
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
if ARGS.device == "gpu":
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # torch allocates on the same GPU

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import DynamicCache  # noqa: E402

from peer_common import build_weights, load, machine, median, shape_dict, stacked_vs_separate  # noqa: E402
from proactive_jax import StreamExample, stream_decode  # noqa: E402
# internal names (one place to update when the package is restructured): the loop's shape buckets, and the model
# pieces of --profile
from proactive_jax.method.decode_inputs import shape_key  # noqa: E402
from proactive_jax.method.shapes import bucket  # noqa: E402
from proactive_jax.models.attention import causal_vectors  # noqa: E402
from proactive_jax.models.qwen import apply_hidden, hidden_to_logits  # noqa: E402

if ARGS.torch_threads:
    torch.set_num_threads(ARGS.torch_threads)
if ARGS.device == "gpu" and ARGS.dtype == "float32":
    jax.config.update("jax_default_matmul_precision", "highest")  # no TF32: torch keeps fp32 matmuls exact


def random_examples(rng, count, vocab, units):
    t = lambda n: tuple(int(x) for x in rng.integers(4, vocab, int(n)))  # noqa: E731
    return [StreamExample(prompt=t(rng.integers(6, 12)), units=tuple(t(rng.integers(1, 4)) for _ in range(units)),
                          end=t(2), header=t(4), target=(3,)) for _ in range(count)]


class Peer:
    """The PyTorch loop, one example at a time (method.md section 6 on HF's KV cache)."""

    def __init__(self, model, word_start, max_new, device):
        self.model, self.ws, self.max_new, self.dev = model, word_start, max_new, device
        self.forwards = self.kv_read = 0

    def _run(self, ids, pos, cache):
        self.forwards += 1
        self.kv_read += cache.get_seq_length() + len(ids)  # K/V entries each layer reads in this forward
        ids = torch.tensor([ids], device=self.dev)
        pos = torch.tensor([pos], device=self.dev)
        return self.model.model(input_ids=ids, position_ids=pos, cache=cache, use_cache=True).last_hidden_state

    def _source(self, toks, start):
        self._run(toks, list(range(start, start + len(toks))), self.src)

    def _target(self, toks, slot, keep):
        """Feed target-group tokens into slots slot.. after the source read so far; keep ``keep`` old slots."""
        s = self.src.get_seq_length()
        cache = DynamicCache(ddp_cache_data=[
            (torch.cat([l.keys, k[:, :, :keep]], 2), torch.cat([l.values, v[:, :, :keep]], 2)) if k is not None
            else (l.keys, l.values) for l, (k, v) in zip(self.src.layers, self.tgt)])
        h = self._run(toks, list(range(slot, slot + len(toks))), cache)
        self.tgt = [(l.keys[:, :, s:], l.values[:, :, s:]) for l in cache.layers]
        return self.model.lm_head(h[:, -1]).float()[0]

    @torch.no_grad()
    def decode(self, ex, head, k, tau):
        V, M, H = ex.visible_counts(), ex.M, len(ex.header)
        self.src = DynamicCache()
        self.tgt = [(None, None)] * self.model.config.num_hidden_layers
        self._source(list(ex.prompt), 0)
        logits = self._target(list(ex.header), 0, 0)
        n, toks, phi, words = 0, [], [], 0
        word_level = head == "wait-k"
        while True:
            cand = int(torch.argmax(logits))
            starts = bool(self.ws[cand]) or not toks or not word_level
            if n >= M + 1 or not starts:
                write = True
            elif head == "wait-k":
                write = n >= min(k + words, M + 1)  # word number words+1 needs k + words reads
            else:
                lp = torch.log_softmax(logits, -1)
                h = -(lp.exp() * lp).sum() / math.log(logits.shape[-1])
                write = bool(h <= tau)
            if write:
                words += int(bool(self.ws[cand]) or not toks)
                toks.append(cand)
                phi.append(n)
                if len(toks) >= self.max_new:
                    return toks, phi
                logits = self._target([cand], H + len(toks) - 1, H + len(toks) - 1)
            else:
                unit = ex.units[n] if n < M else ex.end
                self._source(list(unit), int(V[n]))
                n += 1
                logits = (self._target(list(ex.header), 0, 0) if not toks
                          else self._target([toks[-1]], H + len(toks) - 1, H + len(toks) - 1))


def profile(model, cfg, params, tdev, repeats=10):
    """Median time of one model forward on t tokens without a cache, logits of the last row only: ours (jitted)
    and the peer (``model.model`` + the LM head), t = 1 (a WRITE), 3 (a unit), 7 (ours' chunk width here)."""
    @jax.jit
    def ours_fwd(p, ids):
        h = apply_hidden(cfg, p, ids, jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape),
                         causal_vectors(*ids.shape)).hidden
        return hidden_to_logits(cfg, p, h[:, -1:])

    print("forward of t tokens, median of %d (ms):   t:   1      3      7" % repeats)
    for side in ("ours", "peer"):
        row = []
        for t in (1, 3, 7):
            ids = np.arange(4, 4 + t)[None]
            if side == "ours":
                fn = lambda: jax.block_until_ready(ours_fwd(params, jnp.asarray(ids, jnp.int32)))  # noqa: E731
            else:
                x = torch.tensor(ids, device=tdev)
                fn = lambda: model.lm_head(model.model(input_ids=x).last_hidden_state[:, -1])  # noqa: E731
            with torch.no_grad():
                fn()
                ts = []
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    fn()
                    sync()
                    ts.append(time.perf_counter() - t0)
            row.append(median(ts) * 1e3)
        print(f"{side:>36s} " + " ".join(f"{x:6.2f}" for x in row))
    # the decoder keeps its layers stacked ([layers, ...] leaves, run by lax.scan); the same MLPs with the layers'
    # weights as separate arrays show what the stacking costs here (XLA copies each layer's slice out first)
    print(f"{cfg.num_hidden_layers} MLPs only (jax), ms:   t:   1      3      7")
    res = stacked_vs_separate(cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size, (1, 3, 7),
                              repeats=repeats)
    for k, name in enumerate(("stacked weights, lax.scan", "separate arrays per layer")):
        print(f"{name:>36s} " + " ".join(f"{res[t][k]:6.2f}" for t in (1, 3, 7)))


def sync():
    if ARGS.device == "gpu":
        torch.cuda.synchronize()


def main():
    a = ARGS
    tdev = "cuda" if a.device == "gpu" else "cpu"
    shape = shape_dict(a.shape, a.layers, a.vocab)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="peer_decode-") as tmp:  # removed once ours has loaded the weights
        model, cfg, params = build_weights(shape, tmp, seed=a.seed, logit_scale=a.logit_scale, device=tdev,
                                           dtype=a.dtype)
    if a.dtype != "float32":  # ours keeps float32 master weights; decode reads them in the compute dtype
        params = jax.tree.map(lambda x: x.astype(a.dtype), params)
    print(f"weights built, saved and loaded in {time.perf_counter() - t0:.1f} s")
    rng = np.random.default_rng(a.seed)
    exs = random_examples(rng, a.examples, cfg.vocab_size, a.units)
    ws = rng.random(cfg.vocab_size) < a.word_start_frac
    bss = [int(x) for x in a.batch_sizes.split(",")]
    peer = Peer(model, ws, a.max_new, tdev)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"machine: {machine(a.device)}")
    print(f"model: Qwen2 {shape}, {n_params / 1e6:.1f} M params, {a.dtype}, logit scale {a.logit_scale}; "
          f"{a.examples} examples x {a.units} units, {a.max_new} new tokens (no eos), word starts "
          f"{ws.mean():.2f}; {load()}")

    def ours(spec, bs):
        return stream_decode(cfg, params, exs, spec, a.max_new, eos_ids=[], word_starts=ws, batch_size=bs)

    tau = a.tau
    t0 = time.perf_counter()
    ours("entropy:tau=0", bss[0])  # compiles the loop (the head is traced: no recompilation below)
    t1 = time.perf_counter()
    ref = ours("entropy:tau=0", bss[0])
    compile_s = {bss[0]: (t1 - t0) - (time.perf_counter() - t1)}  # first call minus the same call compiled
    first_s = {}  # other batch sizes: their first call (the first head), minus that head's steady median below
    if tau == "auto":
        sc = np.concatenate([r.scores[~r.forced] for r in ref])
        tau = round(float(np.median(sc)), 4)
        print(f"entropy along read-all decodes: min {sc.min():.4f} median {tau:.4f} max {sc.max():.4f} -> tau {tau:.4f}")
    tau = float(tau)
    heads = {"wait-k": f"wait-k:k={a.k}", "entropy": f"entropy:tau={tau}"}
    heads = {h: heads[h] for h in a.heads.split(",")}

    # ---- equality --------------------------------------------------------------------------------------------
    bad = 0
    outs = {}
    for h, spec in heads.items():
        t0 = time.perf_counter()
        outs[h] = [peer.decode(e, h, a.k, tau) for e in exs]
        sync()
        t_peer_first = time.perf_counter() - t0
        for bs in bss:
            t0 = time.perf_counter()
            res = ours(spec, bs)
            if bs not in compile_s and bs not in first_s:
                first_s[bs] = time.perf_counter() - t0
            tok_bad = sum(list(r.tokens) != y for r, (y, _) in zip(res, outs[h]))
            phi_bad = sum(list(r.phi) != p for r, (_, p) in zip(res, outs[h]))
            reads = [int(r.phi[-1]) for r in res]
            print(f"check {spec:>20s} batch {bs:>2d}: token mismatches {tok_bad}/{len(exs)}, phi mismatches "
                  f"{phi_bad}/{len(exs)}; final read counts {reads}")
            bad += tok_bad + phi_bad
        print(f"peer first pass ({spec}): {t_peer_first:.2f} s")
    if bad:
        print(f"MISMATCH: {bad} example outputs differ between the peer and ours", file=sys.stderr)
        if not a.allow_mismatch:
            sys.exit(1)
    else:
        print("outputs equal: tokens and phi identical for every example, head and batch size")

    if a.rounds == 0:  # check only (and --profile)
        if a.profile:
            profile(model, cfg, params, tdev)
        return
    # ---- timing ----------------------------------------------------------------------------------------------
    times = {(h, s): [] for h in heads for s in [*bss, "peer"]}
    stats = {}
    for r in range(a.rounds):
        for h, spec in heads.items():
            for bs in bss:
                t0 = time.perf_counter()
                res = ours(spec, bs)
                times[h, bs].append(time.perf_counter() - t0)
                order = sorted(range(len(exs)), key=lambda i: (exs[i].M, exs[i].S)) if bs < len(exs) else range(len(exs))
                order = list(order)
                iters = sum(max(len(res[i].writes) for i in order[g:g + bs]) for g in range(0, len(exs), bs))
                stats[h, bs] = (sum(len(x.writes) for x in res), sum(len(x.tokens) for x in res), iters)
            peer.forwards = peer.kv_read = 0
            t0 = time.perf_counter()
            for e in exs:
                peer.decode(e, h, a.k, tau)
            sync()
            times[h, "peer"].append(time.perf_counter() - t0)
            stats[h, "peer"] = (peer.forwards, peer.kv_read)
        print(f"round {r + 1}/{a.rounds}: {load()}")
    compile_s.update({bs: t - median(times[next(iter(heads)), bs]) for bs, t in first_s.items()})
    print(f"\ncompile (first call minus the steady time of the same call), ours: " + ", ".join(
        f"batch {bs} {compile_s[bs]:.1f} s" for bs in bss))
    print(f"{'head':>20s} {'side':>10s} {'median s':>9s} {'min s':>7s} {'max s':>7s} {'decisions/s':>11s} "
          f"{'tokens/s':>8s} {'ms/iter':>8s} {'peer/side':>9s}")
    wbytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
    for h, spec in heads.items():
        tp = median(times[h, "peer"])
        for side in [*bss, "peer"]:
            ts = times[h, side]
            m = median(ts)
            dec, toks = stats[h, bss[0]][:2]
            per = (m / stats[h, side][2] * 1e3) if side != "peer" else m / stats[h, "peer"][0] * 1e3
            name = f"ours b{side}" if side != "peer" else "peer b1"
            print(f"{spec:>20s} {name:>10s} {m:9.3f} {min(ts):7.3f} {max(ts):7.3f} {dec / m:11.1f} {toks / m:8.1f} "
                  f"{per:8.2f} {tp / m:8.2f}x")
        print(f"{'':>20s} (ms/iter: ours per loop iteration, {stats[h, bss[0]][0]} decisions in "
              f"{', '.join(f'{stats[h, b][2]} iterations at b{b}' for b in bss)}; peer per forward, "
              f"{stats[h, 'peer'][0]} forwards)")
        if a.device == "gpu":
            kv = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * np.dtype(a.dtype).itemsize
            for side in [*bss, "peer"]:
                m = median(times[h, side])
                if side == "peer":
                    nbytes = stats[h, "peer"][0] * wbytes + stats[h, "peer"][1] * kv
                else:  # every iteration reads all weights and the whole dense cache of every (bucketed) row
                    key = shape_key(exs)
                    nbytes = stats[h, side][2] * (wbytes + bucket(side) * (key[1] + key[3] + a.max_new) * kv)
                print(f"{spec:>20s} {('ours b%s' % side) if side != 'peer' else 'peer b1':>10s} HBM "
                      f"{nbytes / m / 1e9:8.1f} GB/s = {nbytes / m / 1e9 / a.peak_gbps:.3f} of {a.peak_gbps:.0f} GB/s")
    if a.profile:
        profile(model, cfg, params, tdev)
    print(load())
    if bad and a.allow_mismatch:
        print(f"(outputs differed in {bad} example checks: timings compare the same work only approximately)")


if __name__ == "__main__":
    main()
