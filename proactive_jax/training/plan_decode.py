"""``proactive-jax plan CONFIG --decode batch=..,src=..,tgt=..``: compile the streaming decode loop for a TPU slice.

What ``proactive-jax eval`` runs (``method.decode``: the prefill and the jitted ``lax.while_loop`` over the
decision step, KV caches of ``src + header + tgt`` slots) lowered with abstract arguments for a topology,
and its per-chip HBM read from ``memory_analysis()`` as for the train step. There is no eval config with
shapes (an eval config names a checkpoint), so the model's shape comes from the run config's ``model``
section (its ``dtype`` is the compute dtype; parameters are float32, as ``models.loading.load_model`` gives
them) and the decode shapes from ``--decode``.

Serving layout (decision): parameters replicated on every chip, the batch split over all chips (data-
parallel decode: what one eval process does on its chips; a 1-chip topology such as ``v5e:1x1`` plans one
chip). A model whose replicated parameters do not fit a chip is a DOES NOT FIT verdict.
"""

from __future__ import annotations

import dataclasses
import logging
import time

from proactive_jax.training.plan import format_count, shape_model_section
from proactive_jax.training.tpu import (DoesNotFit, PlanError, Topology, format_gib, memory_report, oom_error,
                                       topology_devices)

log = logging.getLogger(__name__)

# --decode keys: rows (all chips together), source slots, written tokens, and the finer cache shapes
DECODE_KEYS = {"batch": 16, "src": None, "tgt": 64, "prompt": 32, "unit": 8, "header": 16, "units": None,
               "head": "attention:tau=0.5"}


@dataclasses.dataclass(frozen=True)
class DecodeShape:
    batch: int  # rows of one decode loop (the eval batch_size), over all chips
    src: int  # source slots S_cap (prompt + units + end marker)
    tgt: int  # max_new_tokens: target slots for written tokens
    prompt: int  # prompt tokens fed by the prefill
    unit: int  # tokens fed by one READ (the longest unit)
    header: int  # header slots
    units: int  # M_cap: source units
    head: str  # decision head ("attention" also computes the attention statistics; "probe" keeps hidden)


def parse_decode(text: str, run) -> DecodeShape:
    """``batch=16,src=288,tgt=64[,prompt=..,unit=..,header=..,units=..,head=..]``; ``src`` defaults to the run's
    largest source bucket, ``units`` to ``src``."""
    vals = dict(DECODE_KEYS)
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, eq, value = part.partition("=")
        if not eq or key not in DECODE_KEYS:
            raise PlanError(f"--decode {text!r}: {part!r} is not KEY=VALUE with KEY one of {sorted(DECODE_KEYS)}")
        if key == "head":
            vals[key] = value
            continue
        try:
            vals[key] = int(value)
        except ValueError:
            raise PlanError(f"--decode {text!r}: {key}={value!r} is not an integer") from None
        if vals[key] < 1:
            raise PlanError(f"--decode {text!r}: {key} must be >= 1")
    if vals["src"] is None:
        vals["src"] = max(b[0] for b in run.data.buckets)
    if vals["prompt"] == DECODE_KEYS["prompt"] and "prompt=" not in text:
        vals["prompt"] = min(vals["prompt"], vals["src"])
    if vals["units"] is None:
        vals["units"] = vals["src"]
    if vals["prompt"] > vals["src"]:
        raise PlanError(f"--decode {text!r}: prompt={vals['prompt']} exceeds src={vals['src']}")
    return DecodeShape(**vals)


def compile_decode(model_cfg, shape: DecodeShape, devices):
    """``(compiled, seconds, cache_bytes)``: ``method.decode``'s loop lowered for ``devices`` (see module doc)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    from proactive_jax.method.decode import StepShapes, _decode_impl
    from proactive_jax.method.decode_inputs import host_batch
    from proactive_jax.method.heads import encode_head, parse_head
    from proactive_jax.models.qwen import abstract_params

    spec = parse_head(shape.head)
    mesh = Mesh(np.asarray(devices, dtype=object), ("data",))
    rep, rows = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    v = model_cfg.vocab_size
    key = (shape.prompt, shape.src, shape.unit, shape.header, shape.units)
    batch, p_cap, u = host_batch([], shape.batch, shape.tgt, 0, np.ones(v, bool), np.zeros(v, bool), key)
    sh = StepShapes(model_cfg, spec.needs_stats, spec.needs_probe, shape.tgt, p_cap, u, shape.src, shape.header)
    head_vals = encode_head(spec, model_cfg.num_hidden_layers)
    if spec.needs_probe:
        raise PlanError("--decode head=probe: plan the probe's decode with head=attention (same caches; the "
                        "probe adds one [batch, hidden] state)")
    # vocabulary-long tables are per model, not per row: replicated like the parameters
    b_sh = {k: rows if np.ndim(x) and x.shape[0] == shape.batch and k not in ("word_start", "eos") else rep
            for k, x in batch.items()}
    ab = lambda x, s: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype, sharding=s)  # noqa: E731
    params = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=rep), abstract_params(model_cfg))
    args = (params, jax.tree.map(lambda x: ab(x, rep), head_vals), {k: ab(x, b_sh[k]) for k, x in batch.items()})
    fn = jax.jit(lambda p, h, b: _decode_impl(sh, False, p, h, b), out_shardings=rows)
    t0 = time.perf_counter()
    try:
        compiled = fn.lower(*args).compile()
    except Exception as e:  # noqa: BLE001 - only the out-of-HBM refusal is a verdict
        if "RESOURCE_EXHAUSTED" in str(e):
            raise oom_error(e) from None
        raise
    secs = time.perf_counter() - t0
    cache = (2 * model_cfg.num_hidden_layers * shape.batch * sh.capacity * model_cfg.num_key_value_heads
             * model_cfg.head_dim * jnp.dtype(model_cfg.dtype).itemsize)
    log.info("compiled the decode loop (%d rows, %d cache slots) in %.0f s", shape.batch, sh.capacity, secs)
    return compiled, secs, cache


def plan_decode(run, topo: Topology, shape: DecodeShape, *, headroom: float = 0.0) -> dict:
    """Compile the decode loop of ``run``'s model for ``topo``; the report (``proactive-jax plan --decode``)."""
    from proactive_jax.training.state import resolve_model_config

    if shape.batch % topo.chips:
        raise PlanError(f"--decode batch={shape.batch} is not a multiple of the {topo.chips} chips of {topo.name} "
                        f"(rows are split over the chips)")
    cfg = resolve_model_config(shape_model_section(run.model))
    base = {"mode": "decode", "topology": topo.name, "chips": topo.chips, "chip": topo.chip,
            "decode": dataclasses.asdict(shape), "cache_slots": shape.src + shape.header + shape.tgt,
            "model": {"model_type": cfg.model_type, "params": cfg.num_params(), "layers": cfg.num_hidden_layers,
                      "vocab_size": cfg.vocab_size, "dtype": cfg.dtype}, "params_layout": "replicated",
            "fp32_params_bytes": 4 * cfg.num_params()}
    try:
        compiled, secs, cache = compile_decode(cfg, shape, topology_devices(topo))
    except DoesNotFit as e:
        need = e.temp_bytes or 0
        return {**base, "fits": False, "compiler_refused": e.args[0], "temp_bytes": need, "total_bytes": need,
                "capacity_bytes": topo.hbm_bytes, "headroom": headroom,
                "margin_bytes": int(topo.hbm_bytes * (1 - headroom) - need), "advice": decode_advice(shape)}
    rep = memory_report(compiled, topo, headroom)
    return {**base, "compile_s": round(secs, 2), "kv_cache_bytes_per_chip": cache // topo.chips, **rep,
            "advice": [] if rep["fits"] else decode_advice(shape)}


def decode_advice(shape: DecodeShape) -> list[str]:
    tips = [f"fewer rows per loop (eval batch_size={max(shape.batch // 2, 1)}: the KV caches halve)",
            "a shorter cache (max source length / max_new_tokens)",
            "more chips (--topology: the rows are split over them)"]
    return tips


def format_decode_report(r: dict) -> str:

    d = r["decode"]
    head = (f"plan (decode): {r['model']['model_type']} {format_count(r['model']['params'])} params (float32, "
            f"replicated on every chip), {r['model']['dtype']} compute, head {d['head']}\n"
            f"  slice {r['topology']} ({r['chips']} chips, rows split over them), batch {d['batch']}, source slots "
            f"{d['src']}, max new tokens {d['tgt']}, header {d['header']} -> {r['cache_slots']} cache slots")
    if "compiler_refused" in r:
        return (head + f"\n  DOES NOT FIT: the TPU compiler needs {format_gib(r['temp_bytes'])} of temporaries alone "
                f"({r['compiler_refused']}); try: " + "; ".join(r["advice"]))
    cap = r["capacity_bytes"]
    lines = [head, f"  compiled in {r['compile_s']:.1f} s; per-chip HBM:",
             f"    arguments    {format_gib(r['argument_bytes'])}  (params {format_gib(r['fp32_params_bytes'])})",
             f"    outputs      {format_gib(r['output_bytes'])}",
             f"    temporaries  {format_gib(r['temp_bytes'])}  (KV caches {format_gib(r['kv_cache_bytes_per_chip'])})",
             f"    total        {format_gib(r['total_bytes'])} of {format_gib(cap)} ({100 * r['total_bytes'] / cap:.0f}%)"]
    keep = f" with {100 * r['headroom']:.0f}% headroom" if r["headroom"] else ""
    lines.append(f"  verdict: FITS{keep}, {format_gib(r['margin_bytes'])} to spare" if r["fits"] else
                 f"  verdict: DOES NOT FIT{keep}: over by {format_gib(-r['margin_bytes'])}; try: " + "; ".join(r["advice"]))
    return "\n".join(lines)
