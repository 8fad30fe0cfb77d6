"""A learned decision head from the model's own signals (method.md section 5, "learned heads"; ours).

*Self-labels* (no external labels): for a training example, a target position j and a read count n, the
partial view V(n) is **sufficient** for the next token when the stream view's next-token distribution and
the full view's agree: same argmax and ``KL(P_full || P_stream(n)) <= eps`` (full vocabulary). Both views
come out of one forward of the packed dual view the training step computes (:func:`.objective.packed_inputs`:
batch copy = full view, stream copy = the schedule's view), for several schedules per example (multinomial
draws and a sweep of constant read counts), so both labels occur. States with n = M+1 are forced WRITEs and
never labelled.

*Probe*: a linear map or a 2-layer MLP on the features of the current target query: the frozen final
(normed) hidden state, optionally plus the next-token entropy and the mean attention entropy / max mass
over the streamed source (:func:`state_features`), standardised with training-set statistics. It predicts
p(sufficient), trained with BCE after the fine-tune (backbone frozen). The ``probe:tau=...`` head
(:mod:`.heads`) WRITEs when p >= tau.

*Oracle labels* (the external-label baseline, synthetic tasks only): the true alignment is known
(:func:`oracle_read_counts`), so the same probe can be trained on "n >= the read count the token needs".

Parameters are a flat dict of float32 arrays (``mu``, ``sigma``, ``feature_mask`` and ``w``/``b`` or
``w1``/``b1``/``w2``/``b2``), saved as safetensors next to a run's checkpoint (:func:`save_probe`), never
inside a Hugging Face export.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from functools import partial
from pathlib import Path
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from proactive_jax.models.config import ModelConfig
from proactive_jax.models.qwen import hidden_to_logits
from proactive_jax.method.attention_stats import hidden_and_stats
from proactive_jax.method.heads import normalised_entropy
from proactive_jax.method.objective import ObjectiveConfig, loss_rows, pack_batch, packed_inputs, stream_limits
from proactive_jax.method.shapes import stream_bucket
from proactive_jax.data.example import StreamExample
from proactive_jax.errors import ProactiveError

log = logging.getLogger(__name__)

NUM_STAT_FEATURES = 3  # next-token entropy, mean attention entropy, mean attention max mass
PROBE_KINDS = ("linear", "mlp")


class ProbeError(ProactiveError, ValueError):
    """Bad probe input or file; the message names what is wrong."""


# ---------------------------------------------------------------------------------------------
# Features and the probe itself (pure jnp)
# ---------------------------------------------------------------------------------------------

def state_features(hidden, logits, stats=None):
    """``[..., D + 3]``: hidden state, normalised next-token entropy, mean attention entropy and max mass.

    ``hidden`` [..., D], ``logits`` [..., V], ``stats`` [..., layers, H, 2] or None (zeros)."""
    ent = normalised_entropy(logits)[..., None]
    if stats is None:
        att = jnp.zeros(ent.shape[:-1] + (2,), jnp.float32)
    else:
        att = jnp.mean(stats.astype(jnp.float32), axis=(-3, -2))
    return jnp.concatenate([hidden.astype(jnp.float32), ent, att], axis=-1)


def probe_logit(probe: Mapping, feats):
    """The probe's logit for features ``[..., F]`` (linear if ``probe`` has ``w``, else a ReLU MLP)."""
    x = (feats - probe["mu"]) / probe["sigma"] * probe["feature_mask"]
    if "w" in probe:
        return (x @ probe["w"] + probe["b"])[..., 0]
    h = jax.nn.relu(x @ probe["w1"] + probe["b1"])
    return (h @ probe["w2"] + probe["b2"])[..., 0]


def probe_prob(probe: Mapping, hidden, logits, stats=None):
    """p(sufficient) of the state(s) with final hidden state ``hidden`` (see :func:`state_features`)."""
    return jax.nn.sigmoid(probe_logit(probe, state_features(hidden, logits, stats)))


def uses_stats(probe: Mapping) -> bool:
    """Whether the probe reads the attention statistics (so the decoder must compute them)."""
    m = np.asarray(probe["feature_mask"])
    return bool(np.any(m[-2:] != 0))


def init_probe(key, num_features: int, kind: str = "mlp", hidden: int = 64, use_stats: bool = True,
               mu=None, sigma=None) -> dict:
    if kind not in PROBE_KINDS:
        raise ProbeError(f"probe kind {kind!r}; expected one of {PROBE_KINDS}")
    f = num_features
    mask = np.ones(f, np.float32)
    if not use_stats:
        mask[-NUM_STAT_FEATURES:] = 0.0
    out = {"mu": jnp.zeros(f) if mu is None else jnp.asarray(mu, jnp.float32),
           "sigma": jnp.ones(f) if sigma is None else jnp.asarray(sigma, jnp.float32),
           "feature_mask": jnp.asarray(mask)}
    k1, k2 = jax.random.split(key)
    if kind == "linear":
        out.update(w=jnp.zeros((f, 1)), b=jnp.zeros((1,)))
    else:
        out.update(w1=jax.random.normal(k1, (f, hidden)) * np.sqrt(2.0 / f), b1=jnp.zeros((hidden,)),
                   w2=jax.random.normal(k2, (hidden, 1)) * np.sqrt(1.0 / hidden), b2=jnp.zeros((1,)))
    return {k: jnp.asarray(v, jnp.float32) for k, v in out.items()}


# ---------------------------------------------------------------------------------------------
# Self-labels from the packed dual view
# ---------------------------------------------------------------------------------------------

def row_read_counts(batch, phi):
    """Read count of the state each target row decides: row r predicts y_j (j = r - H + 2), at phi(j)."""
    t_cap = batch["target"].shape[1]
    r = jnp.arange(t_cap)[None, :]
    j = jnp.clip(r - batch["header_len"][:, None] + 2, 1, jnp.maximum(batch["target_len"][:, None], 1))
    return jnp.take_along_axis(phi, j - 1, axis=1)


def full_kl(p_logits, q_logits):
    """KL(softmax(p) || softmax(q)) over the whole vocabulary, per row (float32)."""
    lp = jax.nn.log_softmax(p_logits.astype(jnp.float32), -1)
    lq = jax.nn.log_softmax(q_logits.astype(jnp.float32), -1)
    return jnp.sum(jnp.exp(lp) * (lp - lq), -1)


@partial(jax.jit, static_argnums=(0, 1))
def dual_view_states(config: ModelConfig, obj: ObjectiveConfig, params, batch, phi):
    """One packed dual-view forward under schedule ``phi``: per target row, both views' logits, the
    stream view's features, the decided state's read count and whether the row is a decided state.

    Returns ``dict(full_logits, stream_logits [B,T,V], stream_stats [B,T,layers,H,2], features [B,T,F],
    n [B,T], valid [B,T])``; ``valid``:
    the row predicts a target token and n <= M (n = M+1 is a forced WRITE)."""
    limits = stream_limits(batch, phi)
    tokens, positions, mv = packed_inputs(batch, limits, obj)
    hidden, stats = hidden_and_stats(config, params, tokens, positions, mv, batch["prompt_len"])
    s_cap, t_cap = batch["source"].shape[1], batch["target"].shape[1]
    h = hidden[:, s_cap:]
    logits = hidden_to_logits(config, params, h)
    st = jnp.transpose(stats[:, :, s_cap + t_cap:], (1, 2, 0, 3, 4))  # [B, T, layers, H, 2]
    _, mask = loss_rows(batch)
    n = row_read_counts(batch, phi)
    return {"full_logits": logits[:, :t_cap], "stream_logits": logits[:, t_cap:], "stream_stats": st,
            "features": state_features(h[:, t_cap:], logits[:, t_cap:], st), "n": n,
            "valid": mask & (n <= batch["num_units"][:, None])}


def self_labels(full_logits, stream_logits, eps: float):
    """Sufficient iff same argmax and KL(P_full || P_stream) <= eps; returns ``(label, kl)``."""
    kl = full_kl(full_logits, stream_logits)
    same = jnp.argmax(full_logits, -1) == jnp.argmax(stream_logits, -1)
    return same & (kl <= eps), kl


def sweep_schedules(batch, n: int):
    """The constant schedule phi = min(n, M+1) for every row (a sweep over read counts)."""
    t_cap = batch["target"].shape[1]
    m = np.asarray(batch["num_units"])
    return np.minimum(np.full((len(m), t_cap), n), (m + 1)[:, None]).astype(np.int32)


# ---------------------------------------------------------------------------------------------
# Oracle labels on the synthetic tasks (the true alignment is known)
# ---------------------------------------------------------------------------------------------

def oracle_read_counts(text_example, num_target_tokens: int) -> np.ndarray:
    """Per target token y_1..y_L: the smallest read count whose view determines it (the true alignment).

    lookup: the answer token needs its evidence unit (``meta["evidence_unit"] + 1``); the end-of-turn
    token after it is determined by then as well (single-word answers). word-map: target word k needs
    its aligned source words (its own word, and the noun after an adjective when the pair is swapped);
    the end-of-turn token needs the end marker (n = M+1: a sentence may always go on with "and").
    Needs a word-level tokenizer (one token per word), like the shipped synthetic one."""
    from proactive_jax.data.synthetic import WORD_MAP_DICT
    from proactive_jax.data.synthetic_study import STUDY_TASKS, study_oracle_read_counts

    if text_example.task in STUDY_TASKS:  # ledger, verb-final, synonym-map: meta["oracle"] (exact)
        return study_oracle_read_counts(text_example, num_target_tokens)
    M = len(text_example.units)
    if text_example.task == "lookup":
        ev = int(text_example.meta["evidence_unit"]) + 1
        return np.full(num_target_tokens, ev, np.int32)
    if text_example.task == "word-map":
        words = [u.strip() for u in text_example.units]
        adjs, nouns = WORD_MAP_DICT["adj"], WORD_MAP_DICT["noun"]
        need = np.arange(1, M + 1)  # target word k aligned to source word k (0-based) -> k + 1 reads
        k = 0
        while k < M - 1:
            if words[k] in adjs and words[k + 1] in nouns:
                need[k] = need[k + 1] = k + 2  # swapped pair: both target words need the noun
                k += 2
            else:
                k += 1
        need = np.maximum.accumulate(need)
        out = np.full(num_target_tokens, M + 1, np.int32)  # the end-of-turn token (and anything extra)
        out[:min(M, num_target_tokens)] = need[:num_target_tokens]
        return out
    raise ProbeError(f"oracle labels exist only for the synthetic tasks (lookup, word-map, the study tasks), "
                     f"not {text_example.task!r}")


# ---------------------------------------------------------------------------------------------
# Collecting a labelled set, training, saving
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ProbeData:
    features: np.ndarray  # [N, F] float32
    labels: np.ndarray  # [N] bool
    n: np.ndarray  # [N] read count of each state
    example: np.ndarray  # [N] example index


# Longer than ~80 lines would be a smell; this is the host loop over schedules and chunks, nothing more.

def external_read_counts(text_example, num_target_tokens: int) -> np.ndarray:
    """Per target token: the read counts a plausible external annotator gives (the study tasks' realistic,
    imperfect labels: ledger the first evidence, verb-final the length-ratio diagonal, synonym-map the concept
    word without its look-ahead); the external-label baseline of the probe."""
    from proactive_jax.data.synthetic_study import STUDY_TASKS, study_external_read_counts

    if text_example.task not in STUDY_TASKS:
        raise ProbeError(f"external labels exist for the study tasks {sorted(STUDY_TASKS)} only, "
                         f"not {text_example.task!r}")
    return study_external_read_counts(text_example, num_target_tokens)

def collect(config: ModelConfig, params, examples: Sequence[StreamExample], *, eps: float = 0.1,
            multinomial_draws: int = 2, sweep: bool = True, oracle: Sequence[np.ndarray] | None = None,
            target_offset=0, trailing_reads: bool = True, batch_size: int = 64, seed: int = 0) -> ProbeData:
    """Labelled probe states of ``examples`` (teacher-forced on their targets).

    Schedules per example: ``multinomial_draws`` budget draws (method.md section 4) and, with ``sweep``,
    every constant read count 0..M. Labels: self-labels with ``eps``, or, with ``oracle`` (per example
    the per-token read counts of :func:`oracle_read_counts`), ``n >= oracle[j]``."""
    from proactive_jax.method.objective import batch_schedules

    examples = list(examples)
    if not examples:
        raise ProbeError("no examples to collect probe states from")
    if oracle is not None and len(oracle) != len(examples):
        raise ProbeError(f"{len(oracle)} oracle label rows for {len(examples)} examples")
    s_cap, t_cap, m_cap = stream_bucket(examples)
    obj = ObjectiveConfig(schedule="multinomial", trailing_reads=trailing_reads, target_offset=target_offset)
    feats, labels, ns, exs = [], [], [], []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        batch = pack_batch(chunk, (s_cap, t_cap), batch_size=batch_size, m_cap=m_cap)
        batch["row_id"] = np.arange(start, start + batch_size, dtype=np.int32)
        jb = jax.tree_util.tree_map(jnp.asarray, batch)
        scheds = [np.asarray(batch_schedules(jb, jax.random.PRNGKey(seed * 1000 + d), obj))
                  for d in range(multinomial_draws)]
        if sweep:
            scheds += [sweep_schedules(batch, n) for n in range(m_cap + 1)]
        orc = None
        if oracle is not None:
            orc = np.full((batch_size, t_cap), 1 << 20, np.int32)
            for i, o in enumerate(oracle[start:start + batch_size]):
                orc[i, :len(o)] = o
        for phi in scheds:
            out = dual_view_states(config, obj, params, jb, jnp.asarray(phi, jnp.int32))
            valid = np.asarray(out["valid"])
            if orc is None:
                lab = np.asarray(self_labels(out["full_logits"], out["stream_logits"], eps)[0])
            else:
                n = np.asarray(out["n"])
                r = np.arange(t_cap)[None, :]
                j = np.clip(r - batch["header_len"][:, None] + 2, 1, np.maximum(batch["target_len"][:, None], 1))
                lab = n >= np.take_along_axis(orc, j - 1, axis=1)
            b_idx, r_idx = np.nonzero(valid)
            feats.append(np.asarray(out["features"])[b_idx, r_idx])
            labels.append(lab[b_idx, r_idx])
            ns.append(np.asarray(out["n"])[b_idx, r_idx])
            exs.append(b_idx + start)
    return ProbeData(np.concatenate(feats).astype(np.float32), np.concatenate(labels).astype(bool),
                     np.concatenate(ns).astype(np.int32), np.concatenate(exs).astype(np.int32))


def _bce(probe, x, y):
    z = probe_logit(probe, x)
    return jnp.mean(jnp.maximum(z, 0) - z * y + jnp.log1p(jnp.exp(-jnp.abs(z))))


def train_probe(data: ProbeData, *, kind: str = "mlp", hidden: int = 64, use_stats: bool = True,
                steps: int = 500, lr: float = 3e-3, batch_size: int = 1024, weight_decay: float = 1e-4,
                seed: int = 0, valid_fraction: float = 0.1) -> tuple[dict, dict]:
    """Fit the probe with BCE (Adam); returns ``(probe, report)`` with train/held-out loss and accuracy.

    The held-out part is a split by example (``valid_fraction`` of the examples)."""
    import optax

    x, y = data.features, data.labels.astype(np.float32)
    if len(x) == 0:
        raise ProbeError("no labelled probe states")
    rng = np.random.default_rng(seed)
    n_ex = int(data.example.max()) + 1
    held = rng.random(n_ex) < valid_fraction
    va = held[data.example]
    tr = ~va if (~va).any() else np.ones_like(va)
    mu = x[tr].mean(0)
    sigma = x[tr].std(0) + 1e-6
    probe = init_probe(jax.random.PRNGKey(seed), x.shape[1], kind, hidden, use_stats, mu, sigma)
    opt = optax.adamw(lr, weight_decay=weight_decay)
    frozen = ("mu", "sigma", "feature_mask")
    trainable = {k: v for k, v in probe.items() if k not in frozen}
    const = {k: probe[k] for k in frozen}
    state = opt.init(trainable)

    @jax.jit
    def step(tp, st, xb, yb):
        loss, g = jax.value_and_grad(lambda t: _bce({**t, **const}, xb, yb))(tp)
        upd, st = opt.update(g, st, tp)
        return optax.apply_updates(tp, upd), st, loss

    xt, yt = x[tr], y[tr]
    bs = min(batch_size, len(xt))
    for _ in range(steps):
        idx = rng.integers(0, len(xt), bs)
        trainable, state, _ = step(trainable, state, jnp.asarray(xt[idx]), jnp.asarray(yt[idx]))
    probe = {**trainable, **const}

    def report(mask):
        if not mask.any():
            return {}
        z = np.asarray(probe_logit(probe, jnp.asarray(x[mask])))
        return {"bce": float(_bce(probe, jnp.asarray(x[mask]), jnp.asarray(y[mask]))),
                "accuracy": float(np.mean((z >= 0) == (y[mask] > 0.5))), "positive_rate": float(y[mask].mean()),
                "states": int(mask.sum())}
    return probe, {"train": report(tr), "held_out": report(va)}


def save_probe(path: str | Path, probe: Mapping, info: Mapping | None = None) -> Path:
    """Write the probe as safetensors (atomic), with ``info`` (labels, eps, kind, ...) as JSON metadata."""
    from safetensors.numpy import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: np.ascontiguousarray(np.asarray(v, np.float32)) for k, v in probe.items()}, str(tmp),
              metadata={"proactive_jax": "probe", "info": json.dumps(dict(info or {}), default=float)})
    tmp.replace(path)
    return path


def load_probe(path: str | Path) -> tuple[dict, dict]:
    """``(probe, info)`` from a file written by :func:`save_probe`; ProbeError naming the file if bad."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ProbeError(f"{path}: no probe file (train one with `proactive-jax probe train`)")
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            arrays = {k: jnp.asarray(f.get_tensor(k), jnp.float32) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types
        raise ProbeError(f"{path}: not a readable safetensors probe ({type(e).__name__}: {e})") from None
    if meta.get("proactive_jax") != "probe":
        raise ProbeError(f"{path}: safetensors file without proactive_jax probe metadata")
    need = {"mu", "sigma", "feature_mask"}
    layers = {"w", "b"} if "w" in arrays else {"w1", "b1", "w2", "b2"}
    if not (need | layers) <= set(arrays):
        raise ProbeError(f"{path}: probe tensors {sorted(arrays)}; expected {sorted(need | layers)}")
    return arrays, json.loads(meta.get("info", "{}"))


def check_probe(probe: Mapping, config: ModelConfig, where: str = "probe") -> None:
    """The probe's feature size must be the model's hidden size + 3."""
    f = int(np.shape(probe["mu"])[0])
    want = config.hidden_size + NUM_STAT_FEATURES
    if f != want:
        raise ProbeError(f"{where}: probe expects {f} features but this model gives {want} "
                         f"(hidden_size {config.hidden_size} + {NUM_STAT_FEATURES}); was it trained on another model?")
