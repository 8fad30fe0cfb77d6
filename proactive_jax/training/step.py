"""The optimizer and the jitted, sharded train step.

One step: ``fold_in(key(seed), step)`` -> per-row read schedules (keys ``fold_in(key, global row)``) -> the
packed dual-view loss sums (``method.objective.packed_loss_sums``) -> ``jax.value_and_grad`` -> (optional)
``lax.scan`` over microbatches accumulating token *sums* -> divide once by the token count of the whole
global batch -> global-norm clipping + AdamW (warmup, cosine/linear decay, no decay on norms/biases) ->
update of the float32 master weights (compute in ``ModelConfig.dtype``, remat by ``ModelConfig.remat``).
A non-finite loss or gradient norm leaves the state untouched. The train state is donated, so the update
happens in place. Steps are cached per static :class:`StepSpec`, so repeated runs share one compilation.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from proactive_jax.method.objective import ObjectiveConfig, naive_loss_sums, num_loss_tokens, packed_loss_sums, weighted_total
from proactive_jax.models.kinds import is_audio
from proactive_jax.models.config import ModelConfig
from proactive_jax.training.mesh import (BATCH_AXES, batch_sharding, opt_state_shardings, param_shardings, path_keys, replicated, stacked,
                   text_path)
from proactive_jax.errors import ConfigError
from proactive_jax.training.run_config import OptimSection

log = logging.getLogger(__name__)


def warmup_steps(optim: OptimSection, total_steps: int) -> int:
    if optim.warmup_steps:
        return int(optim.warmup_steps)
    return int(round(optim.warmup_ratio * total_steps))


def make_schedule(optim: OptimSection, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to ``lr``, then cosine / linear decay to ``lr * end_lr_ratio`` at ``total_steps``."""
    total = max(int(total_steps), 1)
    warm = min(warmup_steps(optim, total), total)
    end = optim.lr * optim.end_lr_ratio
    if optim.schedule == "constant":
        decay = optax.constant_schedule(optim.lr)
    elif optim.schedule == "linear":
        decay = optax.linear_schedule(optim.lr, end, max(total - warm, 1))
    else:
        decay = optax.cosine_decay_schedule(optim.lr, max(total - warm, 1), alpha=optim.end_lr_ratio)
    if warm == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, optim.lr, warm), decay], [warm])


def decay_mask(params):
    """True where weight decay applies: matrices; not norms (``*norm*`` names) and not biases."""
    def want(path, leaf):
        names = path_keys(path)
        if not names:
            return leaf.ndim >= 2
        if names[-1] == "bias" or any("norm" in n for n in names):
            return False
        per_layer_ndim = leaf.ndim - (1 if stacked(text_path(names)) else 0)
        return per_layer_ndim >= 2

    return jax.tree_util.tree_map_with_path(want, params)


def make_optimizer(optim: OptimSection, total_steps: int) -> optax.GradientTransformation:
    parts = []
    if optim.clip_norm is not None:
        parts.append(optax.clip_by_global_norm(optim.clip_norm))
    parts.append(optax.adamw(make_schedule(optim, total_steps), b1=optim.b1, b2=optim.b2, eps=optim.eps,
                             weight_decay=optim.weight_decay, mask=decay_mask))
    return optax.chain(*parts)


def seq_tokens(batch) -> jax.Array:
    """Non-padding positions of the packed dual view ``S + 2T`` over the valid rows."""
    per_row = batch["source_len"] + 2 * (batch["header_len"] + batch["target_len"])
    return jnp.sum(per_row * batch["example_mask"])


def loss_and_grads(config: ModelConfig, obj: ObjectiveConfig, params, batch, key, *, accum_steps: int = 1,
                   packed: bool = True, mesh: Mesh | None = None, grad_shardings=None, sums_fn: Callable | None = None,
                   frozen: dict | None = None):
    """``(loss, terms, grads)`` of the global batch, token-averaged over the WHOLE batch.

    ``sums_fn(config, obj, params, batch, key)`` gives the loss sums (default: the packed or naive text loss;
    audio: :func:`sums_function`). ``frozen``: top-level parameter groups held constant (merged into
    ``params`` for the loss, not differentiated: ``grads`` covers ``params`` only).

    With ``accum_steps = k > 1`` the batch (B rows) is split into k microbatches of B/k rows, row
    ``a*k + j`` going to microbatch j (so every device keeps its own rows), and a ``lax.scan`` accumulates
    the gradients of the token *sums*; everything is divided once by the global token count. Row ``r`` of
    the global batch always draws its schedule with ``fold_in(key, r)``, so the result equals one large
    batch (to float rounding).
    """
    sums_fn = sums_fn or (packed_loss_sums if packed else naive_loss_sums)
    frozen = frozen or {}
    count = num_loss_tokens(batch)
    n = jnp.maximum(count, 1).astype(jnp.float32)
    b = batch["target"].shape[0]
    k = int(accum_steps)
    if b % k:
        raise ValueError(f"batch of {b} rows does not split into {k} microbatches")

    def micro_loss(p, mb):
        sums = sums_fn(config, obj, {**p, **frozen}, mb, key)
        return weighted_total(sums, obj) / n, sums

    vg = jax.value_and_grad(micro_loss, has_aux=True)
    if k == 1:
        mb = dict(batch)
        mb["row_id"] = jnp.arange(b, dtype=jnp.int32)
        (loss, sums), grads = vg(params, mb)
        if grad_shardings is not None:  # reduce-scatter straight into the parameters' layout
            grads = jax.lax.with_sharding_constraint(grads, grad_shardings)
    else:
        m = b // k
        micro = {name: x.reshape((m, k) + x.shape[1:]).swapaxes(0, 1) for name, x in batch.items()}
        micro["row_id"] = jnp.arange(b, dtype=jnp.int32).reshape(m, k).T
        if mesh is not None:
            spec = NamedSharding(mesh, P(None, BATCH_AXES))
            micro = jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, spec), micro)
        zeros = jax.tree.map(jnp.zeros_like, params)
        if grad_shardings is not None:
            zeros = jax.lax.with_sharding_constraint(zeros, grad_shardings)
        zero_sums = {name: jnp.zeros((), jnp.float32) for name in ("batch", "mslm", "kl")}

        def body(carry, mb):
            g_acc, l_acc, s_acc = carry
            (l, s), g = vg(params, mb)
            g_acc = jax.tree.map(jnp.add, g_acc, g)
            if grad_shardings is not None:
                g_acc = jax.lax.with_sharding_constraint(g_acc, grad_shardings)
            return (g_acc, l_acc + l, jax.tree.map(jnp.add, s_acc, s)), None

        (grads, loss, sums), _ = jax.lax.scan(body, (zeros, jnp.zeros((), jnp.float32), zero_sums), micro)
    terms = {name: v / n for name, v in sums.items()}
    return loss, {**terms, "tokens": count}, grads


def _under_mesh(mesh: Mesh):
    """Trace ``fn`` with ``mesh`` as the abstract mesh (``jax.sharding.use_abstract_mesh``), so kernels that need
    ``shard_map`` (Pallas attention) find it; the shardings stay the explicit ``in/out_shardings`` of the jit."""
    def wrap(fn):
        @functools.wraps(fn)
        def inner(*args):
            with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
                return fn(*args)
        return inner
    return wrap


@dataclasses.dataclass(frozen=True)
class AudioOptions:
    """The audio loss's static options (``RunConfig.audio``): encoder frozen | train, its mask, the conv edge."""

    encoder: str = "frozen"
    encoder_mask: str = "causal"
    conv_edge: str = "zero"


@dataclasses.dataclass(frozen=True)
class StepSpec:
    model: ModelConfig  # or an AudioModelConfig (then ``audio`` is set)
    objective: ObjectiveConfig
    optim: OptimSection
    total_steps: int
    accum_steps: int
    packed: bool
    seed: int
    mesh: Mesh
    param_sharding: str = "fsdp"
    audio: AudioOptions | None = None


def make_spec(run, model_cfg, mesh: Mesh, total_steps: int) -> StepSpec:
    """The step of ``run`` (a ``RunConfig``) for ``model_cfg`` on ``mesh``: what ``loop.train`` and ``plan`` build."""
    audio = None
    if is_audio(model_cfg):
        a = run.audio
        audio = AudioOptions(a.encoder, a.encoder_mask, a.conv_edge)
        if not run.packed:
            raise ConfigError("packed=false (the naive two-pass reference) is text only; audio runs use packed=true")
    return StepSpec(model_cfg, run.objective, run.optim, total_steps, run.data.accum_steps, run.packed, run.seed,
                    mesh, run.mesh.param_sharding, audio)


def sums_function(spec: StepSpec) -> Callable:
    """``(config, obj, params, batch, key) -> sums`` of the spec: the text loss, or the audio loss with the
    encoder inside (``method.audio_objective.audio_loss_sums``)."""
    if spec.audio is None:
        return packed_loss_sums if spec.packed else naive_loss_sums
    from proactive_jax.method.audio_objective import audio_loss_sums

    a = spec.audio
    return lambda config, obj, p, b, k: audio_loss_sums(config, obj, p, b, k, a.encoder, a.encoder_mask, a.conv_edge)


def frozen_keys(spec: StepSpec) -> tuple[str, ...]:
    """Top-level parameter groups the step holds constant (no gradient, no optimizer state)."""
    if spec.audio is not None and spec.audio.encoder == "frozen":
        from proactive_jax.method.audio_objective import FROZEN_PARTS

        return FROZEN_PARTS
    return ()


def split_params(spec: StepSpec, params) -> tuple[dict, dict]:
    """``(trainable, frozen)`` top-level groups of ``params``."""
    keys = frozen_keys(spec)
    return {k: v for k, v in params.items() if k not in keys}, {k: v for k, v in params.items() if k in keys}


def make_state_optimizer(spec: StepSpec) -> optax.GradientTransformation:
    """The optimizer of the train state: ``init`` takes the whole params tree and keeps state for the trainable
    groups only; ``update`` takes the trainable groups' gradients."""
    tx = make_optimizer(spec.optim, spec.total_steps)
    if not frozen_keys(spec):
        return tx
    return optax.GradientTransformation(lambda p: tx.init(split_params(spec, p)[0]), tx.update)


@functools.lru_cache(maxsize=32)
def state_shardings(spec: StepSpec):
    """``(state shardings, abstract state)`` for ``{"step", "params", "opt_state"}``."""
    from proactive_jax.models.kinds import abstract_params_of

    abstract_p = abstract_params_of(spec.model)
    p_sh = param_shardings(abstract_p, spec.mesh, spec.param_sharding)
    tx = make_state_optimizer(spec)
    abstract_o = jax.eval_shape(tx.init, abstract_p)
    o_sh = opt_state_shardings(abstract_o, abstract_p, p_sh, spec.mesh)
    sh = {"step": replicated(spec.mesh), "params": p_sh, "opt_state": o_sh}
    abstract = {"step": jax.ShapeDtypeStruct((), jnp.int32), "params": abstract_p, "opt_state": abstract_o}
    return sh, abstract


@functools.lru_cache(maxsize=32)
def build_train_step(spec: StepSpec) -> Callable:
    """The jitted, sharded, donating step ``(state, batch) -> (state, metrics)``."""
    tx = make_state_optimizer(spec)
    schedule = make_schedule(spec.optim, spec.total_steps)
    sh, _ = state_shardings(spec)
    mesh = spec.mesh
    sums_fn = sums_function(spec)
    grad_sh, _ = split_params(spec, sh["params"])

    @_under_mesh(mesh)
    def step_fn(state, batch):
        opt_state, step = state["opt_state"], state["step"]
        params, frozen = split_params(spec, state["params"])  # frozen groups pass through untouched
        key = jax.random.fold_in(jax.random.PRNGKey(spec.seed), step)
        loss, terms, grads = loss_and_grads(spec.model, spec.objective, params, batch, key,
                                            accum_steps=spec.accum_steps, packed=spec.packed, mesh=mesh,
                                            grad_shardings=grad_sh, sums_fn=sums_fn, frozen=frozen)
        gnorm = optax.tree.norm(grads)
        updates, new_opt = tx.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        ok = jnp.isfinite(loss) & jnp.isfinite(gnorm)
        keep = lambda new, old: jnp.where(ok, new, old)  # noqa: E731 - a non-finite step changes nothing
        new_state = {"step": jnp.where(ok, step + 1, step).astype(jnp.int32),
                     "params": {**jax.tree.map(keep, new_params, params), **frozen},
                     "opt_state": jax.tree.map(keep, new_opt, opt_state)}
        metrics = {"loss": loss, **terms, "seq_tokens": seq_tokens(batch), "grad_norm": gnorm,
                   "lr": schedule(step), "finite": ok}
        return new_state, metrics

    return jax.jit(step_fn, in_shardings=(sh, batch_sharding(mesh)),
                   out_shardings=(sh, replicated(mesh)), donate_argnums=(0,))


@functools.lru_cache(maxsize=32)
def build_eval_sums(spec: StepSpec) -> Callable:
    """Jitted ``(params, batch, key) -> (sums, count)`` with the train step's shardings (no gradients)."""
    sh, _ = state_shardings(spec)
    sums_fn = sums_function(spec)

    @_under_mesh(spec.mesh)
    def f(params, batch, key):
        return sums_fn(spec.model, spec.objective, params, batch, key), num_loss_tokens(batch)

    return jax.jit(f, in_shardings=(sh["params"], batch_sharding(spec.mesh), replicated(spec.mesh)),
                   out_shardings=replicated(spec.mesh))


