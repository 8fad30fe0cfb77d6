"""Train step: ours (the jitted packed dual-view step) against the paper's two-pass PyTorch step, same weights and data.

    python eval/bench_peer_train.py                  # Qwen2.5-0.5B layer shapes, 4 layers, vocab 32768, B=4 S=32 T=16
    python eval/bench_peer_train.py --qa             # a QA-like shape: S=256, T=16
    python eval/bench_peer_train.py --tiny           # seconds
    python eval/bench_peer_train.py --device gpu --shape 1.5b --layers 28 --vocab 151936 --dtype bfloat16 ...

The peer (PyTorch + transformers ``Qwen2ForCausalLM``, one process, eager) runs the two views as two forward
passes over ``[source (S_cap) | header+target (T_cap)]`` with GPE positions (source 0.., target 0..): the batch
view under a plain causal mask (2-D padding mask, transformers builds the causal part), the stream view under a
4-D additive mask implementing the read schedule (target row r sees the source tokens with index < limit(r), the
shift-by-one rule of method.md section 3; source rows never see the target); logits at the target rows only;
loss = (batch NLL + stream NLL + 0.1 * KL_top100(batch view -> stream view, teacher detached, both renormalised
over the teacher's top 100)) / predicted tokens; backward, global-norm clip 1.0, AdamW. Ours: the project's
train step (``training.step.build_train_step``, as eval/bench_train.py builds it) with ``objective.schedule:
given``, so both sides train on exactly the same read schedules (drawn here: Delta ~ Multinomial(M+1, uniform
over L+1 cells), method.md section 4).

Checked first (exit 1 on failure): the three loss terms of step 0 (same weights, same batch) agree between the
two (relative 1e-4 in float32). Then interleaved rounds of ``--steps`` steps each; medians reported, with the
model FLOPs per step of each side (analytic, eval/bench_train.py's ``model_flops``: 6 * params * positions +
the LM head on the target rows + the attention score/value matmuls, forward + backward), the measured 2048^3
matmul rate of this machine (jax and torch) and the resulting MFU.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--qa", action="store_true", help="S=256, T=16")
    p.add_argument("--shape", default="0.5b", choices=("tiny", "0.5b", "1.5b", "3b"))
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=32768)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--S", type=int, default=32)
    p.add_argument("--T", type=int, default=16)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--device", default="cpu", choices=("cpu", "gpu"))
    p.add_argument("--attention", default="dense", help="ours' model.attention (dense | cudnn | ...)")
    p.add_argument("--remat", action="store_true", help="ours: remat; the peer: gradient checkpointing")
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=2, help="steps per side and round")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rtol", type=float, default=1e-4)
    p.add_argument("--torch-threads", type=int, default=None)
    p.add_argument("--profile", action="store_true",
                   help="also time the gradient of the layers' MLPs with stacked vs per-layer weights (jax)")
    p.add_argument("--peak-tflops", type=float, default=None, help="also an MFU against this peak (GPU)")
    a = p.parse_args(argv)
    if a.tiny:
        a.shape, a.layers, a.vocab = "tiny", 2, 512
    if a.qa:
        a.S, a.T = 256, 16
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

from bench_train import model_flops  # noqa: E402
from peer_common import build_weights, load, machine, matmul_rate, median, shape_dict, stacked_vs_separate  # noqa: E402
from proactive_jax import StreamExample  # noqa: E402
# internal names (one place to update when the package is restructured)
from proactive_jax.method.objective import ObjectiveConfig, pack_batch  # noqa: E402
from proactive_jax.training import mesh as TM, step as TS  # noqa: E402
from proactive_jax.training.run_config import MeshSection, OptimSection  # noqa: E402

if ARGS.torch_threads:
    torch.set_num_threads(ARGS.torch_threads)
if ARGS.device == "gpu" and ARGS.dtype == "float32":
    jax.config.update("jax_default_matmul_precision", "highest")  # the step-0 check compares true fp32


def random_batch(rng, b, s_cap, t_cap, vocab):
    """B streaming examples filling the bucket (words of 1-3 tokens) and their read schedules phi."""
    tok = lambda k: tuple(int(x) for x in rng.integers(10, vocab, k))  # noqa: E731
    exs, phis = [], []
    for _ in range(b):
        s = int(rng.integers(s_cap * 3 // 4, s_cap + 1))
        t = int(rng.integers(t_cap * 3 // 4, t_cap + 1))
        units, left = [], s - 6
        while left > 0:
            k = min(left, int(rng.integers(1, 4)))
            units.append(tok(k))
            left -= k
        ex = StreamExample(prompt=tok(4), units=units, end=tok(2), header=tok(2), target=tok(t - 2))
        delta = rng.multinomial(ex.M + 1, np.full(ex.L + 1, 1.0 / (ex.L + 1)))
        exs.append(ex)
        phis.append(np.cumsum(delta)[1:])  # phi(j) = Delta_0 + ... + Delta_j, j = 1..L; phi(L) = M+1
    return pack_batch(exs, (s_cap, t_cap), batch_size=b, phi=phis)


class Peer:
    """The two-pass step in PyTorch (eager, one process)."""

    def __init__(self, model, lr, dev, dtype):
        self.model, self.dev, self.dtype = model.train(), dev, dtype
        self.opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)

    def tensors(self, hb):
        t = lambda x: torch.as_tensor(np.asarray(x), device=self.dev).long()  # noqa: E731
        src, tgt = t(hb["source"]), t(hb["target"])
        b, s_cap = src.shape
        t_cap = tgt.shape[1]
        ar_s, ar_t = torch.arange(s_cap, device=self.dev), torch.arange(t_cap, device=self.dev)
        s_ok = ar_s[None] < t(hb["source_len"])[:, None]
        hl, tl = t(hb["header_len"]), t(hb["target_len"])
        t_ok = ar_t[None] < (hl + tl)[:, None]
        ids = torch.cat([src, tgt], 1)
        pos = torch.cat([ar_s.expand(b, -1), ar_t.expand(b, -1)], 1)
        valid = torch.cat([s_ok, t_ok], 1)
        # stream limits by the shift-by-one rule: row r sees V(phi(clip(r - H + 2, 1, L)))
        phi, vis = t(hb["phi"]), t(hb["vis"])
        j = torch.clamp(ar_t[None] - hl[:, None] + 2, min=1)
        j = torch.minimum(j, torch.clamp(tl, min=1)[:, None])
        lim = torch.gather(vis, 1, torch.gather(phi, 1, j - 1))
        # 4-D mask: source rows causal over the source; target rows causal over the target + source index < limit
        n = s_cap + t_cap
        idx = torch.arange(n, device=self.dev)
        is_t = idx >= s_cap
        same = (is_t[:, None] == is_t[None, :]) & (idx[None, :] <= idx[:, None])
        qlim = torch.cat([torch.zeros(b, s_cap, dtype=torch.long, device=self.dev), lim], 1)
        src_vis = is_t[None, :, None] & ~is_t[None, None, :] & (idx[None, None, :] < qlim[:, :, None])
        vis_m = (same[None] | src_vis) & valid[:, None, :]
        vis_m |= torch.eye(n, dtype=torch.bool, device=self.dev)[None]  # padding rows see themselves: no NaN
        add = torch.zeros(vis_m.shape, dtype=torch_dtype_of(self.dtype), device=self.dev)
        add.masked_fill_(~vis_m, torch.finfo(add.dtype).min)
        r = ar_t[None]
        loss_mask = (r >= hl[:, None] - 1) & (r <= (hl + tl)[:, None] - 2) & (t(hb["example_mask"])[:, None] > 0)
        labels = torch.cat([tgt[:, 1:], torch.zeros_like(tgt[:, :1])], 1)
        return dict(ids=ids, pos=pos, pad=valid.long(), mask4=add[:, None], labels=labels, loss_mask=loss_mask,
                    s_cap=s_cap, count=max(int(loss_mask.sum()), 1))

    def logits(self, d, mask):
        h = self.model.model(input_ids=d["ids"], position_ids=d["pos"], attention_mask=mask).last_hidden_state
        return self.model.lm_head(h[:, d["s_cap"]:]).float()

    def losses(self, d, k=100):
        lb = self.logits(d, d["pad"])  # batch view: plain causal mask (+ padding)
        ls = self.logits(d, d["mask4"])  # stream view: the read schedule's 4-D mask
        m = d["loss_mask"]
        nll = lambda lg: -torch.where(m, torch.log_softmax(lg, -1).gather(-1, d["labels"][..., None])[..., 0],  # noqa
                                      0.0).sum()
        tv, ti = torch.topk(lb.detach(), k, -1)
        lpt = torch.log_softmax(tv, -1)
        lps = torch.log_softmax(ls.gather(-1, ti), -1)
        kl = torch.where(m, (lpt.exp() * (lpt - lps)).sum(-1), 0.0).sum()
        return {"batch": nll(lb), "mslm": nll(ls), "kl": kl}

    def step(self, d):
        s = self.losses(d)
        loss = (s["batch"] + s["mslm"] + 0.1 * s["kl"]) / d["count"]
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        return {k: float(v.detach()) / d["count"] for k, v in s.items()}


def torch_dtype_of(name):
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def torch_matmul_rate(dev, dtype, n=2048, repeats=5):
    a = torch.randn(n, n, device=dev, dtype=torch_dtype_of(dtype))
    b = torch.randn(n, n, device=dev, dtype=torch_dtype_of(dtype))
    best = float("inf")
    for _ in range(repeats + 1):
        if dev == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        a @ b
        if dev == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2.0 * n ** 3 / best


def sync(dev):
    if dev == "cuda":
        torch.cuda.synchronize()


def main():
    a = ARGS
    tdev = "cuda" if a.device == "gpu" else "cpu"
    shape = shape_dict(a.shape, a.layers, a.vocab)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="peer_train-") as tmp:  # removed once ours has loaded the weights
        model, cfg, params = build_weights(shape, tmp, seed=a.seed, device=tdev, dtype="float32", jax_dtype=a.dtype)
    cfg = cfg.replace(attention=a.attention, remat=a.remat)
    if a.dtype != "float32":
        model = model.to(torch_dtype_of(a.dtype))  # the peer trains in bf16 weights (no master copy)
    if a.remat:
        model.gradient_checkpointing_enable()
    print(f"weights built, saved and loaded in {time.perf_counter() - t0:.1f} s")
    print(f"machine: {machine(a.device)}")
    hb = random_batch(np.random.default_rng(a.seed), a.batch, a.S, a.T, cfg.vocab_size)

    # ours: the project's train step, schedule "given" (the phi above)
    mesh = TM.make_mesh(MeshSection())
    optim = OptimSection(lr=a.lr, schedule="constant", clip_norm=1.0)
    spec = TS.StepSpec(cfg, ObjectiveConfig(schedule="given"), optim, 10_000, 1, True, 0, mesh, "fsdp")
    sh, _ = TS.state_shardings(spec)
    p = jax.device_put(params, sh["params"])
    state = {"step": jax.device_put(jnp.int32(0), sh["step"]), "params": p,
             "opt_state": jax.jit(TS.make_optimizer(optim, 10_000).init, out_shardings=sh["opt_state"])(p)}
    step = TS.build_train_step(spec)
    batch = TM.global_batch(hb, TM.batch_sharding(mesh), 1)
    t0 = time.perf_counter()
    state, m = step(state, batch)
    ours0 = {k: float(m[k]) for k in ("batch", "mslm", "kl")}
    ours_first = time.perf_counter() - t0
    peer = Peer(model, a.lr, tdev, a.dtype)
    d = peer.tensors(hb)
    t0 = time.perf_counter()
    peer0 = peer.step(d)
    sync(tdev)
    peer_first = time.perf_counter() - t0

    bad = []
    print(f"step 0 (same weights, batch, schedules), B={a.batch} S={a.S} T={a.T}, {int(hb['target_len'].sum())} "
          f"predicted tokens:")
    for k in ("batch", "mslm", "kl"):
        rel = abs(ours0[k] - peer0[k]) / max(abs(peer0[k]), 1e-12)
        ok = rel <= a.rtol or (k == "kl" and abs(ours0[k] - peer0[k]) <= a.rtol * ours0["batch"])
        print(f"  {k:6s} ours {ours0[k]:.7f}  peer {peer0[k]:.7f}  rel diff {rel:.2e}  {'ok' if ok else 'DIFFERS'}")
        if not ok:
            bad.append(k)
    if bad:
        print(f"MISMATCH at step 0: {bad} differ beyond rtol {a.rtol}", file=sys.stderr)
        sys.exit(1)

    if a.rounds < 1:  # --rounds 0: the equality check only
        print("step-0 loss terms equal; no timing (--rounds 0)")
        return
    times = {"ours": [], "peer": []}
    rates = {"jax": [], "torch": []}  # the matmul rate is measured in every round: the same load as the steps
    for r in range(a.rounds):
        rates["jax"].append(matmul_rate(a.dtype, repeats=3))
        rates["torch"].append(torch_matmul_rate(tdev, a.dtype, repeats=3))
        t0 = time.perf_counter()
        for _ in range(a.steps):
            state, m = step(state, batch)
        jax.block_until_ready(state)
        times["ours"].append((time.perf_counter() - t0) / a.steps)
        t0 = time.perf_counter()
        for _ in range(a.steps):
            peer.step(d)
        sync(tdev)
        times["peer"].append((time.perf_counter() - t0) / a.steps)
        print(f"round {r + 1}/{a.rounds}: ours {times['ours'][-1] * 1e3:.1f} ms, peer {times['peer'][-1] * 1e3:.1f} ms, "
              f"matmul jax {rates['jax'][-1] / 1e9:.1f} / torch {rates['torch'][-1] / 1e9:.1f} GFLOP/s; {load()}")
    rate_j, rate_t = median(rates["jax"]), median(rates["torch"])
    peak = max(rate_j, rate_t)
    flops = {"ours": model_flops(cfg, hb, packed=True), "peer": model_flops(cfg, hb, packed=False)}
    print(f"\nmodel: Qwen2 {shape}, {cfg.num_params() / 1e6:.1f} M params, {a.dtype}, attention {a.attention}, "
          f"remat {a.remat}")
    print(f"first step (compile / warm-up included): ours {ours_first:.1f} s, peer {peer_first:.2f} s")
    print(f"measured 2048^3 {a.dtype} matmul (median over the rounds of the best of 3): jax {rate_j / 1e9:.1f} "
          f"GFLOP/s, torch {rate_t / 1e9:.1f} GFLOP/s; "
          f"peak used for MFU: {peak / 1e9:.1f} GFLOP/s")
    print(f"{'side':5s} {'median ms':>10s} {'min ms':>8s} {'max ms':>8s} {'GFLOP/step':>10s} {'GFLOP/s':>8s} "
          f"{'MFU':>6s}" + ("  MFU(peak)" if a.peak_tflops else ""))
    for side in ("ours", "peer"):
        mt = median(times[side])
        print(f"{side:5s} {mt * 1e3:10.1f} {min(times[side]) * 1e3:8.1f} {max(times[side]) * 1e3:8.1f} "
              f"{flops[side] / 1e9:10.2f} {flops[side] / mt / 1e9:8.2f} {flops[side] / mt / peak:6.3f}"
              + (f"  {flops[side] / mt / (a.peak_tflops * 1e12):.3f}" if a.peak_tflops else ""))
    ratio = median(times["peer"]) / median(times["ours"])
    print(f"peer / ours step time: {ratio:.2f}x (same examples and schedules; ours runs S+2T positions, the "
          f"peer 2(S+T))")
    if a.profile:  # our decoder stacks the layers' weights ([layers, ...], lax.scan): what that costs here
        t = a.batch * (a.S + 2 * a.T)
        ms_st, ms_sep, gf = stacked_vs_separate(cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size, (t,),
                                                grad=True, repeats=3)[t]
        print(f"gradient of the {cfg.num_hidden_layers} MLPs on {t} tokens (jax): stacked + lax.scan {ms_st:.0f} ms "
              f"({gf / ms_st * 1e3:.1f} GFLOP/s), separate arrays {ms_sep:.0f} ms ({gf / ms_sep * 1e3:.1f} GFLOP/s)")
    print(load())


if __name__ == "__main__":
    main()
