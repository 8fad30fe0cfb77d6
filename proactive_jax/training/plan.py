"""Compile a run's real train step (what ``proactive-jax plan`` reports) for a TPU slice on any machine, and read its memory.

No TPU, no weights, no data: with ``libtpu`` installed (the ``tpu`` extra), JAX describes a named TPU
topology (``jax.experimental.topologies``) and compiles for it on the CPU host. The step is the trainer's
own: :func:`.state.resolve_model_config` -> :class:`.step.StepSpec` -> :func:`.step.state_shardings` ->
:func:`.step.build_train_step`, lowered with abstract arguments (``jax.ShapeDtypeStruct`` with the
shardings) and compiled; the batch shapes come from ``method.objective.pack_batch`` for the run's largest
bucket. ``compiled.memory_analysis()`` gives the per-chip HBM of arguments, outputs (aliased by donation),
and temporaries; the report sets them against the chip's capacity and names the knob that helps.
(``cost_analysis()`` is not reliable through scanned layers, so FLOPs are not reported.)
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

from proactive_jax.models.kinds import is_audio, text_config
from proactive_jax.training.tpu import (GIB, DoesNotFit, PlanError, Topology, format_gib, memory_report, oom_error,
                                       topology_devices)

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# The run's step, abstractly
# ---------------------------------------------------------------------------------------------

def shape_model_section(sec, root: Path = Path(".")):
    """``model`` section usable without weights: a missing ``hf_dir`` falls back to ``config_json`` (or to a
    shipped ``configs/<name>.json`` whose name starts the directory's basename, lower-cased)."""
    if sec.hf_dir is None or Path(sec.hf_dir).is_dir():
        return sec
    cfg_json = sec.config_json
    if cfg_json is None:
        base = Path(sec.hf_dir).name.lower()
        hits = sorted((p for p in (root / "configs").glob("*.json") if base.startswith(p.stem.lower())),
                      key=lambda p: -len(p.stem))
        if not hits:
            raise PlanError(f"model.hf_dir={sec.hf_dir} does not exist and no model.config_json is set (nor a "
                            f"configs/*.json matching {base!r}); give model.config_json=PATH to plan without weights")
        cfg_json = str(hits[0])
    log.info("model.hf_dir=%s is absent: shapes from %s", sec.hf_dir, cfg_json)
    return dataclasses.replace(sec, hf_dir=None, config_json=cfg_json, init="random")


def largest_bucket(buckets) -> tuple[int, int]:
    """The bucket with the longest packed sequence ``S + 2T`` (then the most target rows)."""
    return tuple(max(buckets, key=lambda b: (b[0] + 2 * b[1], b[1])))


def abstract_batch(run, bucket, rows: int, sharding, model_cfg=None) -> dict:
    """The step's batch for ``bucket`` as ``ShapeDtypeStruct`` (shapes from ``pack_batch``, the collate; for a
    qwen2_audio model ``training.audio_examples.empty_batch``: plus the mel features of one encoder window)."""
    import jax

    from proactive_jax.method.objective import pack_batch

    if is_audio(model_cfg):
        from proactive_jax.training.audio_examples import empty_batch

        host = empty_batch(model_cfg, bucket, rows, run.data.m_cap)
    else:
        host = pack_batch([], tuple(bucket), batch_size=rows, m_cap=run.data.m_cap or bucket[0])
    return {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharding) for k, v in host.items()}


def build_spec(run, devices):
    """``StepSpec`` of ``run`` on a mesh over ``devices``: what ``training.loop.train`` builds."""
    from proactive_jax.training.mesh import make_mesh
    from proactive_jax.training.state import resolve_model_config
    from proactive_jax.training.step import make_spec

    mesh = make_mesh(run.mesh, devices)
    model_cfg = resolve_model_config(shape_model_section(run.model), run.audio)
    total = run.steps if run.steps else 1000  # the schedule's length does not change the program's memory
    return make_spec(run, model_cfg, mesh, total)


def compile_step(spec, run, bucket):
    """``(compiled, seconds)``: the trainer's jitted step, lowered with abstract state and batch, compiled."""
    import jax

    from proactive_jax.training.mesh import batch_sharding
    from proactive_jax.training.step import build_train_step, state_shardings

    sh, abstract = state_shardings(spec)
    state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, sh)
    batch = abstract_batch(run, bucket, run.data.global_batch_size, batch_sharding(spec.mesh), spec.model)
    t0 = time.perf_counter()
    lowered = build_train_step(spec).lower(state, batch)
    try:
        compiled = lowered.compile()
    except Exception as e:  # noqa: BLE001 - jax raises JaxRuntimeError; only the out-of-HBM one is a verdict
        if "RESOURCE_EXHAUSTED" in str(e):
            raise oom_error(e) from None
        raise
    secs = time.perf_counter() - t0
    log.info("compiled %s rows, bucket %s in %.0f s", run.data.global_batch_size, bucket, secs)
    return compiled, secs


def state_layout(compiled, n_chips: int) -> dict:
    """Bytes of the train state: in total, per chip as compiled, and in leaves the compiled step replicates."""
    import jax
    import numpy as np

    in_sh = compiled.input_shardings[0][0]  # (state, batch) -> state shardings
    shapes = compiled.args_info[0][0]
    total = per_chip = replicated = 0
    for sh, info in zip(jax.tree.leaves(in_sh), jax.tree.leaves(shapes)):
        nbytes = int(np.prod(info.shape)) * np.dtype(info.dtype).itemsize
        shard = int(np.prod(sh.shard_shape(info.shape))) * np.dtype(info.dtype).itemsize
        total += nbytes
        per_chip += shard
        if shard == nbytes and nbytes > 1024 and n_chips > 1:
            replicated += nbytes
    return {"state_bytes": total, "state_bytes_per_chip": per_chip, "replicated_state_bytes": replicated}


def advice(report: dict, run, model_cfg) -> list[str]:
    """The knobs that lower the biggest part of the footprint."""
    tips = []
    if report["temp_bytes"] > report["argument_bytes"]:
        if not run.objective.logit_chunk:
            tips.append("objective.logit_chunk=32 (the loss then holds one chunk of [rows, 32, vocab] logits)")
        if model_cfg.remat_policy == "none":
            tips.append("model.remat=full (recompute each layer in the backward)")
        elif model_cfg.remat_policy != "full":
            tips.append("model.remat=full (save nothing per layer)")
        rows = run.data.micro_batch_size or run.data.global_batch_size
        if rows > 1:
            tips.append(f"data.micro_batch_size={max(rows // 2, 1)} (gradient accumulation halves the activations)")
        tips.append("a shorter largest bucket (data.buckets)")
    if report["argument_bytes"] > 0.5 * report["capacity_bytes"] or not tips:
        tips.append("a larger slice (--topology with more chips: the state is sharded over all of them)")
    return tips


def _with_batch(run, rows: int):
    data = dataclasses.replace(run.data, global_batch_size=rows, micro_batch_size=None)
    return dataclasses.replace(run, data=data)


def max_global_batch(run, devices, topo: Topology, bucket, headroom: float, first: dict,
                     max_compiles: int = 6) -> dict:
    """The largest global batch (a multiple of the chip count, no accumulation) whose step fits. Memory is
    close to affine in the batch: a second compile at twice the batch gives the slope and a first guess;
    then the largest fitting and the smallest failing batch compiled so far bracket the answer and each
    further compile bisects that bracket (chip-multiples), at most ``max_compiles`` after the first two.
    ``max_batch_exact``: the bracket closed (the next chip-multiple up was compiled and does not fit; with
    ``max_global_batch`` None: not even one row per chip fits)."""
    b0, n = run.data.global_batch_size, topo.chips
    budget = topo.hbm_bytes * (1.0 - headroom)

    def total(rows):
        r = _with_batch(run, rows)
        try:
            t = memory_report(compile_step(build_spec(r, devices), r, bucket)[0], topo, headroom)["total_bytes"]
        except DoesNotFit as e:
            t = int(topo.hbm_bytes * 2) if e.temp_bytes is None else e.temp_bytes  # at least the temporaries
        log.info("global batch %d: %.2f GiB per chip", rows, t / GIB)
        return t

    tried = {b0: first["total_bytes"] if not run.data.micro_batch_size else total(b0)}
    tried[2 * b0] = total(2 * b0)
    slope = max((tried[2 * b0] - tried[b0]) / b0, 1.0)
    down = lambda x: int(x // n) * n  # noqa: E731 (chip-multiples)
    guess = down(b0 + (budget - tried[b0]) / slope)  # the affine extrapolation, compiled first

    def bracket():
        return (max([b for b, t in tried.items() if t <= budget], default=0),
                min([b for b, t in tried.items() if t > budget], default=None))

    for _ in range(max_compiles):
        lo, hi = bracket()
        if hi is not None and hi - lo <= n:
            break
        if guess is None or guess in tried or guess <= lo or (hi is not None and guess >= hi):
            guess = 2 * lo if hi is None else max(down((lo + hi) / 2), lo + n)  # grow, or bisect
        tried[guess] = total(guess)
        guess = None
    fits = [b for b, t in tried.items() if t <= budget]
    fails = [b for b, t in tried.items() if t > budget]
    lo, hi = max(fits, default=None), min(fails, default=None)
    out = {"bytes_per_row": int(slope), "max_batch_tried": dict(sorted(tried.items())),
           "max_global_batch": lo, "max_batch_exact": hi is not None and hi - (lo or 0) <= n}
    if lo is not None:
        out["max_batch_total_bytes"] = tried[lo]
    return out


def _num_params(cfg) -> int:
    """Parameters of the whole model (encoder and projector included)."""
    import jax

    from proactive_jax.models.kinds import abstract_params_of

    return sum(int(a.size) for a in jax.tree.leaves(abstract_params_of(cfg)))


def refused_report(run, spec, topo: Topology, bucket, headroom: float, e: DoesNotFit) -> dict:
    """The report when the compiler refuses the program: what it said it needed (temporaries alone)."""
    cfg, n_params = text_config(spec.model), _num_params(spec.model)
    need = e.temp_bytes or 0
    rep = {"topology": topo.name, "chips": topo.chips, "chip": topo.chip, "mesh": dict(spec.mesh.shape),
           "bucket": list(bucket), "packed_length": bucket[0] + 2 * bucket[1],
           "global_batch_size": run.data.global_batch_size, "accum_steps": run.data.accum_steps,
           "model": {"model_type": spec.model.model_type, "params": n_params, "layers": cfg.num_hidden_layers,
                     "vocab_size": cfg.vocab_size, "dtype": cfg.dtype, "remat": cfg.remat_policy,
                     "attention": cfg.attention}, "logit_chunk": run.objective.logit_chunk,
           "fits": False, "compiler_refused": e.args[0], "temp_bytes": need, "total_bytes": need,
           "capacity_bytes": topo.hbm_bytes, "headroom": headroom,
           "margin_bytes": int(topo.hbm_bytes * (1 - headroom) - need)}
    rep["advice"] = advice({"temp_bytes": need, "argument_bytes": 0, "capacity_bytes": topo.hbm_bytes}, run, cfg)
    return rep


def plan(run, topo: Topology, *, headroom: float = 0.0, bucket: tuple[int, int] | None = None,
         search_batch: bool = False) -> dict:
    """Compile ``run``'s train step for ``topo`` and return the report (see ``proactive-jax plan --json``)."""
    micro = run.data.micro_batch_size or run.data.global_batch_size
    if micro % topo.chips:
        raise PlanError(f"the (micro)batch of {micro} rows (data.micro_batch_size or data.global_batch_size) is not "
                        f"a multiple of the {topo.chips} chips of {topo.name}")
    devices = topology_devices(topo)
    spec = build_spec(run, devices)
    bucket = tuple(bucket) if bucket is not None else largest_bucket(run.data.buckets)
    try:
        compiled, secs = compile_step(spec, run, bucket)
    except DoesNotFit as e:
        return refused_report(run, spec, topo, bucket, headroom, e)
    rep = memory_report(compiled, topo, headroom)
    layout = state_layout(compiled, topo.chips)
    cfg, n_params = text_config(spec.model), _num_params(spec.model)
    extra = max_global_batch(run, devices, topo, bucket, headroom, rep) if search_batch else {}
    return {
        "topology": topo.name, "chips": topo.chips, "chip": topo.chip, "mesh": dict(spec.mesh.shape),
        "bucket": list(bucket), "packed_length": bucket[0] + 2 * bucket[1],
        "global_batch_size": run.data.global_batch_size, "accum_steps": run.data.accum_steps,
        "model": {"model_type": spec.model.model_type, "params": n_params, "layers": cfg.num_hidden_layers,
                  "vocab_size": cfg.vocab_size, "dtype": cfg.dtype, "remat": cfg.remat_policy,
                  "attention": cfg.attention},
        "logit_chunk": run.objective.logit_chunk, "compile_s": round(secs, 2), **rep, **layout,
        "pallas_kernels": compiled.as_text().count("tpu_custom_call"),  # Mosaic kernels in the program
        # gradients cannot be fully replicated anywhere in the step if the temporaries are smaller than them
        "fp32_params_bytes": 4 * n_params, "grads_fit_replicated": rep["temp_bytes"] >= 4 * n_params,
        "advice": [] if rep["fits"] else advice(rep, run, cfg), **extra,
    }


def format_count(n: float) -> str:
    """A parameter count with three significant digits: 82.3K, 494M, 3.09B."""
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        v = float(f"{n / size:.3g}")
        if v >= 1:
            return f"{v:g}{unit}"
    return f"{n:.0f}"


def format_report(r: dict) -> str:
    if "compiler_refused" in r:
        return (f"plan: {r['model']['model_type']} on {r['topology']}, global batch {r['global_batch_size']}, bucket "
                f"{r['bucket']}: DOES NOT FIT: the TPU compiler needs {format_gib(r['temp_bytes'])} of temporaries alone "
                f"per chip ({r['compiler_refused']}); try: " + "; ".join(r["advice"]))
    cap = r["capacity_bytes"]
    lines = [
        f"plan: {r['model']['model_type']} {format_count(r['model']['params'])} params, {r['model']['dtype']} compute, "
        f"remat {r['model']['remat']}, attention {r['model']['attention']}, logit_chunk {r['logit_chunk']}",
        f"  slice {r['topology']} ({r['chips']} chips, mesh {r['mesh']}), global batch {r['global_batch_size']} "
        f"in {r['accum_steps']} microbatch(es), bucket S,T = {r['bucket'][0]},{r['bucket'][1]} "
        f"(packed {r['packed_length']})",
        f"  compiled in {r['compile_s']:.1f} s; per-chip HBM:",
        f"    arguments    {format_gib(r['argument_bytes'])}  (train state {format_gib(r['state_bytes_per_chip'])} of "
        f"{format_gib(r['state_bytes'])} in total; fully replicated state leaves: {format_gib(r['replicated_state_bytes'])})",
        f"    outputs      {format_gib(r['output_bytes'])}  (of which {format_gib(r['alias_bytes'])} alias the donated state)",
        f"    temporaries  {format_gib(r['temp_bytes'])}"
        + ("" if r.get("grads_fit_replicated", True) else
           f"  (< the {format_gib(r['fp32_params_bytes'])} of fp32 gradients: never fully replicated)"),
        f"    total        {format_gib(r['total_bytes'])} of {format_gib(cap)} ({100 * r['total_bytes'] / cap:.0f}%)",
    ]
    keep = f" with {100 * r['headroom']:.0f}% headroom" if r["headroom"] else ""
    if "max_global_batch" in r:
        mb = r["max_global_batch"]
        lines.append(f"  largest global batch that fits{keep} (no accumulation): "
                     + (f"{mb} ({format_gib(r['max_batch_total_bytes'])}; ~{format_gib(r['bytes_per_row'])} per row)"
                        + ("" if r.get("max_batch_exact") else "; the next chip-multiple up was not compiled "
                           "(search budget), so a larger one may fit") if mb else "none found"))
    if r["fits"]:
        lines.append(f"  verdict: FITS{keep}, {format_gib(r['margin_bytes'])} to spare")
    else:
        lines.append(f"  verdict: DOES NOT FIT{keep}: over by {format_gib(-r['margin_bytes'])}; try: " + "; ".join(r["advice"]))
    return "\n".join(lines)
