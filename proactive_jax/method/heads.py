"""Decision heads: map the decoder's state at one step to READ or WRITE (method.md section 5).

A head is a small pure ``jnp`` function of one example's :class:`DecisionState` and its parameter values;
it returns ``(write, score)``: a bool and a float32 statistic (logged at every decision, used to calibrate
tau as a quantile). Three rules hold for every head and are applied by :func:`decide`, not by the heads
(a decision made by a rule is *forced*: the head's statistic did not decide):

- ``n = M+1`` (everything read): always WRITE;
- ``decide_at=word``: only word-starting candidates are decided; a continuation candidate is written
  without reading (the first target token always starts word 1);
- ``n < min_read`` (heads with a ``min_read`` parameter): READ.

Heads are selected by spec strings (grammar below), parsed by :func:`parse_head` into a frozen, hashable
:class:`HeadSpec`. Adding a head = one function + one entry in :data:`HEADS`.

Spec grammar::

    spec  := NAME [ ":" param ( "," param )* ]
    param := KEY "=" VALUE
    NAME  := batch | wait-k | entropy | attention | alignatt | probe
    ("layers" is a comma list itself: in "attention:tau=0.5,layers=0,2" the "2" continues "layers")

=========== ============================ =====================================================================
head        parameters (default)         WRITE iff (besides the rules above)
=========== ============================ =====================================================================
batch       --                           n = M+1 (score: n / (M+1))
wait-k      k (required, int >= 1)       n >= min(k + w - 1, M+1) for the candidate's word number w
            decide_at (word)             (decide_at=token: every token is a word). score: n - required
entropy     tau (required, in [0, 1])    H(softmax(logits)) / log|V| <= tau
            min_read (0)                 score: the normalised entropy
attention   tau (required, in [0, 1])    stat=entropy: mean over heads and ``layers`` of the normalised
            layers (":" = all)           entropy of the attention over the streamed source (units and end,
            stat (entropy | max)         not the prompt) <= tau (focused); stat=max: mean of the largest
            min_read (2, must be >= 2)   renormalised attention probability >= tau (focused = high mass).
                                         min_read < 2 is rejected: with < 2 streamed units the statistic is
                                         degenerate ("focused" by construction). score: the statistic
alignatt    f (2, int >= 1)              lag >= f (AlignAtt, Papi et al. 2023): the current target query's
            layers (":" = all)           attention, summed over heads and averaged over ``layers``, has its
            min_read (0)                 argmax over the streamed source tokens read so far (units only, not
                                         the prompt: see below) in unit u; lag = n - u (0: the newest unit).
                                         READ iff that unit is one of the last f read (u > n - f). n <= f:
                                         every read unit is recent, so READ (n = 0: nothing streamed, lag 0).
                                         Ties go to the earliest token. No tau (``tau=`` is refused): sweep f
                                         as separate specs. score: the lag
probe       tau (required, in [0, 1])    p >= tau, p = a learned probe's p(V(n) suffices for the next token)
            min_read (0)                 on the hidden state of the current target query
                                         (:mod:`.probe`); score: p
every head  decide_at (token; wait-k:    ``token``: decide before every token; ``word``: only before
            word)                        word-starting candidates
=========== ============================ =====================================================================

:func:`write_direction` says whether a head WRITEs on a low or a high statistic; a quantile threshold
``tau=qX`` (see :mod:`.calibration`) means "a fraction X of the calibration states would WRITE" whatever
the direction.

``layers`` is a python-slice-like spec over the model's layers: ``-4:``, ``:``, ``0,2``, ``1``, ``::2``,
resolved against the layer count by :func:`resolve_layers`.

Inside the jitted decode loop the head *name* is a traced switch index and every parameter a traced value
(:func:`encode_head`), so sweeping tau, k or even the head never recompiles; only whether the attention
statistics / the probe / the head-summed source attention (``alignatt``) are computed at all is static
(:attr:`HeadSpec.needs_stats`, :attr:`HeadSpec.needs_probe`, :attr:`HeadSpec.needs_src_attn`).

Why ``alignatt`` ignores the prompt: the prompt holds the attention sinks (the first token, the chat
template), which take most of the attention mass of many heads; with the prompt in the argmax the head
would WRITE almost unconditionally (a prompt token is never among the last f units). Over the streamed
units only, the argmax is AlignAtt's "where is the target token aligned in the source read so far".
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


class DecisionState(NamedTuple):
    """One example's state before one decision (all scalars are int32 / bool arrays or Python numbers)."""

    logits: Array  # [V] next-token logits given V(n) (float32)
    stats: Array  # [layers, H, 2] attention stats of the current target query (entropy, max); zeros if unused
    n: Array  # read count 0..M+1
    M: Array  # number of content units
    written: Array  # target tokens written so far
    words: Array  # target words started among the written tokens (the first token starts word 1)
    word_start: Array  # bool: the candidate (greedy argmax) token starts a word
    probe: Array | None = None  # float32 p(sufficient) of a learned probe on this state (None: no probe)
    src_attn: Array | None = None  # [layers, S] the target query's head-summed attention over source slots
    src_unit: Array | None = None  # [S] int32 unit number (1..n) of each streamed source slot; 0: prompt / unread


# ---------------------------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Param:
    """One head parameter: ``kind`` is float | int | choice | layers."""

    kind: str
    default: Any = None  # None = required
    lo: float | None = None
    hi: float | None = None
    choices: tuple = ()
    why: str = ""  # appended to a below-``lo`` error: why the bound exists


def _parse_value(head: str, key: str, p: Param, raw: str):
    raw = raw.strip()
    where = f"head {head!r}, parameter {key!r}"
    if p.kind == "float":
        try:
            v = float(raw)
        except ValueError:
            raise ValueError(f"{where}: expected a number, got {raw!r}") from None
        if not math.isfinite(v) or (p.lo is not None and not v >= p.lo) or (p.hi is not None and not v <= p.hi):
            raise ValueError(f"{where}: {v} is outside [{p.lo}, {p.hi}]")
        return v
    if p.kind == "int":
        try:
            v = int(raw)
        except ValueError:
            raise ValueError(f"{where}: expected an integer, got {raw!r}") from None
        if p.lo is not None and v < p.lo:
            raise ValueError(f"{where}: {v} must be >= {int(p.lo)}" + (f" ({p.why})" if p.why else ""))
        return v
    if p.kind == "choice":
        if raw not in p.choices:
            raise ValueError(f"{where}: expected one of {list(p.choices)}, got {raw!r}")
        return raw
    if p.kind == "layers":
        _layer_items(raw, where)  # syntax check now; range check in resolve_layers
        return raw.replace(" ", "")
    raise AssertionError(p.kind)


def _layer_items(spec: str, where: str = "layers"):
    items = []
    for part in spec.replace(" ", "").split(","):
        if not part:
            raise ValueError(f"{where}: empty item in layer spec {spec!r}")
        try:
            if ":" in part:
                bits = part.split(":")
                if len(bits) > 3:
                    raise ValueError
                vals = [int(b) if b else None for b in bits]
                if len(vals) == 3 and vals[2] == 0:
                    raise ValueError
                items.append(slice(*vals))
            else:
                items.append(int(part))
        except ValueError:
            raise ValueError(f"{where}: bad layer spec {spec!r}; expected e.g. '-4:', ':', '0,2' or '1'") from None
    return items


def resolve_layers(spec: str, num_layers: int) -> tuple[int, ...]:
    """Layer indices (sorted, unique) selected by a layer spec; ValueError if empty or out of range."""
    out = set()
    for it in _layer_items(spec):
        if isinstance(it, slice):
            for b in (it.start, it.stop):  # '-9:' on a 2-layer model is a typo, not "all layers"
                if b is not None and not -num_layers <= b <= num_layers:
                    raise ValueError(f"layers={spec!r}: slice bound {b} out of range for a model with "
                                     f"{num_layers} layers (expected {-num_layers}..{num_layers})")
            out.update(range(num_layers)[it])
        else:
            if not -num_layers <= it < num_layers:
                raise ValueError(f"layers={spec!r}: layer {it} out of range for a model with {num_layers} layers")
            out.add(it % num_layers)
    if not out:
        raise ValueError(f"layers={spec!r} selects no layer of a model with {num_layers} layers")
    return tuple(sorted(out))


# ---------------------------------------------------------------------------------------------
# The heads: fn(values, state) -> (write bool, score float32). ``values`` holds every parameter of
# the registry (python or traced), with ``layers`` as a [num_layers] weight vector summing to one
# and choices as their index.
# ---------------------------------------------------------------------------------------------

def _f32(x):
    return jnp.asarray(x, jnp.float32)


def batch_head(v, s: DecisionState):
    return s.n >= s.M + 1, _f32(s.n) / _f32(s.M + 1)


def wait_k_head(v, s: DecisionState):
    # word number of the candidate if it starts a word (continuations never get here: decide() writes them)
    w = jnp.where(v["word_level"], s.words, s.written) + 1
    required = jnp.minimum(v["k"] + w - 1, s.M + 1)
    return s.n >= required, _f32(s.n - required)


def normalised_entropy(logits: Array) -> Array:
    """Shannon entropy of softmax(logits) divided by log|V| (float32, in [0, 1])."""
    lp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    h = -jnp.sum(jnp.exp(lp) * lp, axis=-1)
    return h / np.float32(np.log(logits.shape[-1]))


def entropy_head(v, s: DecisionState):
    h = normalised_entropy(s.logits)
    return h <= v["tau"], h


ATTENTION_STATS = ("entropy", "max")


def attention_score(stats: Array, layer_weights: Array, stat_index) -> Array:
    """Mean over heads, weighted over layers, of stats[..., stat_index]; stats [layers, H, 2]."""
    per_layer = jnp.mean(stats.astype(jnp.float32), axis=-2)  # [layers, 2]
    both = jnp.sum(per_layer * jnp.asarray(layer_weights, jnp.float32)[:, None], axis=0)  # [2]
    return both[stat_index]


def attention_head(v, s: DecisionState):
    score = attention_score(s.stats, v["layers"], v["stat"])
    is_max = v["stat"] == ATTENTION_STATS.index("max")
    focused = jnp.where(is_max, score >= v["tau"], score <= v["tau"])
    return focused, score


def alignatt_lag(src_attn: Array, src_unit: Array, layer_weights: Array, n) -> Array:
    """n - u for the unit u holding the most-attended streamed source token (int32; 0 when n = 0).

    ``src_attn`` [layers, S] (head-summed attention over source slots), ``src_unit`` [S] (unit of each slot,
    0 for the prompt and unread slots), ``layer_weights`` [layers]. Ties go to the earliest slot."""
    a = jnp.sum(src_attn.astype(jnp.float32) * jnp.asarray(layer_weights, jnp.float32)[:, None], axis=0)
    streamed = (src_unit >= 1) & (src_unit <= n)
    best = jnp.argmax(jnp.where(streamed, a, -jnp.inf))
    return jnp.where(jnp.any(streamed), n - src_unit[best], 0).astype(jnp.int32)


def alignatt_head(v, s: DecisionState):
    if s.src_attn is None:  # traced only as an unused branch: a decoder running alignatt computes src_attn
        return False, _f32(-1.0)
    lag = alignatt_lag(s.src_attn, s.src_unit, v["layers"], s.n)
    return lag >= v["f"], _f32(lag)


def probe_head(v, s: DecisionState):
    p = _f32(0.0) if s.probe is None else _f32(s.probe)
    return p >= v["tau"], p


@dataclasses.dataclass(frozen=True)
class HeadDef:
    fn: Callable
    params: Mapping[str, Param]
    needs_stats: bool = False
    needs_probe: bool = False
    needs_src_attn: bool = False
    decide_at: str = "token"  # default of the common decide_at parameter
    doc: str = ""
    refused: Mapping[str, str] = dataclasses.field(default_factory=dict)  # parameter -> why it is not one


TAU = Param("float", None, 0.0, 1.0)
ATTENTION_MIN_READ_WHY = ("the attention head needs min_read >= 2: with fewer than two streamed units the "
                          "statistic is degenerate, 'focused' by construction (entropy 0, max mass 1)")
COMMON = {"decide_at": Param("choice", None, choices=("token", "word"))}

HEADS: dict[str, HeadDef] = {
    "batch": HeadDef(batch_head, {}, doc="read everything, then write"),
    "wait-k": HeadDef(wait_k_head, {"k": Param("int", None, 1)}, decide_at="word",
                      doc="read k units before the first word, one more before each next word"),
    "entropy": HeadDef(entropy_head, {"tau": TAU, "min_read": Param("int", 0, 0)},
                       doc="write when the next-token entropy / log|V| <= tau"),
    "attention": HeadDef(attention_head, {"tau": TAU, "layers": Param("layers", ":"),
                                          "stat": Param("choice", "entropy", choices=ATTENTION_STATS),
                                          "min_read": Param("int", 2, 2, why=ATTENTION_MIN_READ_WHY)},
                         needs_stats=True, doc="write when attention over the streamed source is focused"),
    "alignatt": HeadDef(alignatt_head, {"f": Param("int", 2, 1, why="f = how many of the latest units count as recent"),
                                        "layers": Param("layers", ":"), "min_read": Param("int", 0, 0)},
                        needs_src_attn=True,
                        doc="read while the most-attended streamed source token is in the last f units",
                        refused={"tau": "alignatt has no threshold tau (its rule is discrete); sweep f "
                                        "instead, as separate specs (alignatt:f=1, alignatt:f=2, ...)"}),
    "probe": HeadDef(probe_head, {"tau": TAU, "min_read": Param("int", 0, 0)}, needs_probe=True,
                     doc="write when a learned probe on the hidden state says V(n) suffices (p >= tau)"),
}


def _all_params() -> dict[str, Param]:
    out = dict(COMMON)
    for name, hd in HEADS.items():
        for k, p in hd.params.items():
            if k in out and out[k].kind != p.kind:
                raise AssertionError(f"parameter {k!r} of head {name!r} clashes with another head's kind")
            out.setdefault(k, p)
    return out


# ---------------------------------------------------------------------------------------------
# Specs
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class HeadSpec:
    """A parsed head: ``name`` and every parameter value (defaults filled), as sorted ``(key, value)`` pairs."""

    name: str
    params: tuple = ()

    def __getitem__(self, key):
        for k, v in self.params:
            if k == key:
                return v
        raise KeyError(f"head {self.name!r} has no parameter {key!r}")

    def get(self, key, default=None):
        try:
            return self[key]
        except KeyError:
            return default

    @property
    def decide_at(self) -> str:
        return self["decide_at"]

    @property
    def needs_stats(self) -> bool:
        return HEADS[self.name].needs_stats

    @property
    def needs_probe(self) -> bool:
        return HEADS[self.name].needs_probe

    @property
    def needs_src_attn(self) -> bool:
        return HEADS[self.name].needs_src_attn

    @property
    def writes_high(self) -> bool:
        """True if the head WRITEs when its statistic is high (``score >= tau``), False if when low."""
        return write_direction(self) == "high"

    def replace(self, **kw) -> "HeadSpec":
        """The same head with some parameters changed (validated like the parser does)."""
        return parse_head(self.name + ":" + ",".join(
            f"{k}={v}" for k, v in {**dict(self.params), **kw}.items()))

    def __str__(self):
        if not self.params:
            return self.name
        return self.name + ":" + ",".join(f"{k}={v}" for k, v in self.params)


def parse_head(spec: str | HeadSpec) -> HeadSpec:
    """Parse ``"name:key=value,..."`` into a :class:`HeadSpec`; ValueError with a clear message if bad."""
    if isinstance(spec, HeadSpec):
        if spec.name not in HEADS:
            raise ValueError(f"unknown decision head {spec.name!r}; known heads: {sorted(HEADS)}")
        return parse_head(str(spec))  # re-validated (a HeadSpec may have been built by hand)
    if not isinstance(spec, str):
        raise ValueError(f"a head spec must be a string like 'entropy:tau=0.3', got {type(spec).__name__}")
    name, _, rest = spec.strip().partition(":")
    name = name.strip()
    if name not in HEADS:
        raise ValueError(f"unknown decision head {name!r} in spec {spec!r}; known heads: {sorted(HEADS)}")
    hd = HEADS[name]
    allowed = {**COMMON, **hd.params}
    raw: dict[str, str] = {}
    last = None
    for item in (rest.split(",") if rest.strip() else []):
        if "=" not in item:
            if last is not None and allowed[last].kind == "layers" and item.strip():
                raw[last] += "," + item.strip()  # "layers=0,2": the comma continues the layer list
                continue
            raise ValueError(f"head spec {spec!r}: expected key=value, got {item!r}")
        key, _, val = item.partition("=")
        key = key.strip()
        if key in hd.refused:
            raise ValueError(f"head spec {spec!r}: {hd.refused[key]}")
        if key not in allowed:
            raise ValueError(f"head {name!r} has no parameter {key!r} (spec {spec!r}); "
                             f"its parameters are {sorted(allowed)}")
        if key in raw:
            raise ValueError(f"head spec {spec!r}: parameter {key!r} given twice")
        raw[key] = val
        last = key
    values = {}
    for key, p in allowed.items():
        if key in raw:
            values[key] = _parse_value(name, key, p, raw[key])
        elif key == "decide_at":
            values[key] = hd.decide_at
        elif p.default is None:
            raise ValueError(f"head {name!r} needs parameter {key!r} (spec {spec!r}), e.g. "
                             f"'{name}:{key}=...'")
        else:
            values[key] = p.default
    return HeadSpec(name, tuple(sorted(values.items())))


# ---------------------------------------------------------------------------------------------
# Encoding for the jitted loop, and the decision itself
# ---------------------------------------------------------------------------------------------

HEAD_NAMES = tuple(HEADS)


def encode_head(spec: str | HeadSpec, num_layers: int) -> dict:
    """Every registry parameter as a numpy value (the head's own values, defaults for the others).

    The dict's structure does not depend on the head, so jitted code taking it never recompiles when
    the head or its parameters change. Keys: ``head`` (index into :data:`HEAD_NAMES`), ``word_level``,
    ``layers`` ([num_layers] float32 weights summing to one), choices as int32 indices, numbers.
    """
    spec = parse_head(spec)
    out = {"head": np.int32(HEAD_NAMES.index(spec.name)),
           "word_level": np.bool_(spec.decide_at == "word")}
    for key, p in _all_params().items():
        if key == "decide_at":
            continue
        val = spec.get(key, p.default)
        if p.kind == "layers":
            sel = resolve_layers(val if val is not None else ":", num_layers)
            w = np.zeros(num_layers, np.float32)
            w[list(sel)] = 1.0 / len(sel)
            out[key] = w
        elif p.kind == "choice":
            out[key] = np.int32(p.choices.index(val) if val is not None else 0)
        elif p.kind == "int":
            out[key] = np.int32(val if val is not None else 0)
        else:
            out[key] = np.float32(val if val is not None else 0.0)
    return out


def _branch(fn):
    def run(v, s):
        write, score = fn(v, s)
        return jnp.asarray(write).astype(bool), jnp.asarray(score, jnp.float32)
    return run


def decide_encoded(values: Mapping[str, Any], state: DecisionState):
    """One example's decision from encoded values: ``(write, score, forced)``.

    ``forced``: the head's statistic did not decide: forced WRITEs (n = M+1, or a continuation under
    decide_at=word) and forced READs (n < min_read), in this order of precedence.
    """
    state = DecisionState(*(None if x is None else jnp.asarray(x) for x in state))
    branches = [_branch(hd.fn) for hd in HEADS.values()]
    write_h, score = jax.lax.switch(jnp.asarray(values["head"], jnp.int32), branches, values, state)
    starts = state.word_start | (state.written == 0) | ~jnp.asarray(values["word_level"], bool)
    forced_write = (state.n >= state.M + 1) | ~starts
    blocked = state.n < jnp.asarray(values["min_read"], jnp.int32)
    write = forced_write | (write_h & ~blocked)
    return write, score, forced_write | blocked


def write_direction(spec: str | HeadSpec) -> str:
    """``"low"`` if the head WRITEs when its statistic is <= tau, ``"high"`` if when it is >= tau.

    Quantile calibration uses it so that ``tau=qX`` means the same for every statistic (a fraction X of
    the calibration pool would WRITE). Heads without tau: ``"high"`` (their scores grow with the reads).
    """
    spec = parse_head(spec)  # alignatt: "high" (writes when its lag >= f)
    if spec.name == "entropy" or (spec.name == "attention" and spec["stat"] == "entropy"):
        return "low"
    return "high"


def decide(spec: str | HeadSpec, state: DecisionState, num_layers: int | None = None):
    """One example's decision with a spec: ``(write, score, forced)`` (see :func:`decide_encoded`)."""
    if num_layers is None:
        num_layers = int(np.shape(state.stats)[0]) if np.ndim(state.stats) == 3 else 1
    state = DecisionState(*(None if x is None else jnp.asarray(x) for x in state))
    spec = parse_head(spec)
    if spec.needs_src_attn and (state.src_attn is None or state.src_unit is None):
        raise ValueError(f"head {spec} needs the decision state's src_attn and src_unit (the source attention)")
    return _decide_jit(encode_head(spec, num_layers), state)


_decide_jit = jax.jit(decide_encoded)
