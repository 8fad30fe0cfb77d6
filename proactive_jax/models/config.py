"""Model configuration and its conversion to and from Hugging Face ``config.json``.

``ModelConfig`` is frozen and hashable so that it can be a static argument of ``jax.jit``.
Both config layouts of ``transformers`` are read: v4 (``rope_theta`` + ``rope_scaling``) and v5
(``rope_parameters`` holding ``rope_type``, ``rope_theta`` and the scaling keys).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np

SUPPORTED_ARCHITECTURES = {
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}
SUPPORTED_ROPE_TYPES = ("default", "linear", "yarn", "llama3")
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")
# rematerialisation of each decoder or audio encoder layer in the backward pass (``model.remat``): True = "full"
REMAT_POLICIES = ("none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable", "save_attention_out")


def remat_policy_name(remat: bool | str) -> str:
    """The REMAT_POLICIES name of a ``remat`` option: True means "full", False "none"."""
    if isinstance(remat, bool):
        return "full" if remat else "none"
    return remat


# attention implementation (``model.attention``); see models/attention.py
ATTENTION_IMPLS = ("dense", "pallas", "cudnn", "auto")
# former spellings -> the name they have now (a one-line error names the new one)
RENAMED_ATTENTION_IMPLS = {"splash": "pallas"}


def renamed_attention_message(name: str) -> str:
    return (f"attention {name!r} is now called {RENAMED_ATTENTION_IMPLS[name]!r} (this package's block-sparse Pallas "
            f"kernel; it is not JAX's splash attention): set model.attention={RENAMED_ATTENTION_IMPLS[name]}")


from proactive_jax.errors import ConfigError  # noqa: E402,F401  (re-exported: models.config.ConfigError)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    model_type: str = "qwen3"
    vocab_size: int = 256
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 16
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    # rope scaling as a sorted tuple of (key, value) pairs (hashable); None = plain RoPE
    rope_scaling: tuple | None = None
    max_position_embeddings: int = 32768
    tie_word_embeddings: bool = True
    qkv_bias: bool = False
    o_bias: bool = False
    qk_norm: bool = True
    bos_token_id: int | None = None
    eos_token_id: int | tuple | None = None
    pad_token_id: int | None = None
    # compute options (not part of the checkpoint)
    dtype: str = "float32"
    scan_layers: bool = True
    remat: bool | str = False  # a REMAT_POLICIES name; True means "full", False "none"
    attention: str = "dense"  # an ATTENTION_IMPLS name

    @property
    def remat_policy(self) -> str:
        """The remat policy name ("none", "full", ...), with the booleans mapped."""
        return remat_policy_name(self.remat)

    def __post_init__(self):
        if self.model_type not in SUPPORTED_ARCHITECTURES:
            raise ConfigError(
                f"model_type {self.model_type!r} is not supported; expected one of {sorted(SUPPORTED_ARCHITECTURES)}"
            )
        if self.dtype not in COMPUTE_DTYPES:
            raise ConfigError(f"dtype {self.dtype!r} is not supported; expected one of {COMPUTE_DTYPES}")
        if self.remat_policy not in REMAT_POLICIES:
            raise ConfigError(f"remat {self.remat!r} is not supported; expected true/false or one of {REMAT_POLICIES}")
        if self.attention in RENAMED_ATTENTION_IMPLS:
            raise ConfigError(renamed_attention_message(self.attention))
        if self.attention not in ATTENTION_IMPLS:
            raise ConfigError(f"attention {self.attention!r} is not supported; expected one of {ATTENTION_IMPLS}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}"
            )
        if self.head_dim % 2:
            raise ConfigError(f"head_dim={self.head_dim} must be even for RoPE")
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "head_dim"):
            if int(getattr(self, name)) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        rs = self.rope_scaling_dict
        if rs is not None:
            kind = rs.get("rope_type", "default")
            if kind not in SUPPORTED_ROPE_TYPES:
                raise ConfigError(
                    f"rope scaling type {kind!r} is not supported; expected one of {SUPPORTED_ROPE_TYPES}"
                )

    @property
    def rope_scaling_dict(self) -> dict | None:
        return None if self.rope_scaling is None else dict(self.rope_scaling)

    @property
    def eos_ids(self) -> tuple:
        if self.eos_token_id is None:
            return ()
        if isinstance(self.eos_token_id, (tuple, list)):
            return tuple(int(x) for x in self.eos_token_id)
        return (int(self.eos_token_id),)

    def replace(self, **kw) -> "ModelConfig":
        if "rope_scaling" in kw:
            kw["rope_scaling"] = _freeze_rope_scaling(kw["rope_scaling"])
        return dataclasses.replace(self, **kw)

    def num_params(self) -> int:
        """Parameter count from the config alone (matches the model's parameter tree)."""
        d, f, h, kv, hd = (self.hidden_size, self.intermediate_size, self.num_attention_heads,
                           self.num_key_value_heads, self.head_dim)
        attn = d * h * hd + 2 * d * kv * hd + h * hd * d
        if self.qkv_bias:
            attn += h * hd + 2 * kv * hd
        if self.o_bias:
            attn += d
        if self.qk_norm:
            attn += 2 * hd
        layer = attn + 3 * d * f + 2 * d
        total = self.num_hidden_layers * layer + self.vocab_size * d + d
        if not self.tie_word_embeddings:
            total += self.vocab_size * d
        return total


def _freeze_rope_scaling(rs: Mapping | tuple | None) -> tuple | None:
    if rs is None:
        return None
    if isinstance(rs, tuple):
        rs = dict(rs)
    out = {}
    for k, v in rs.items():
        if isinstance(v, list):
            v = tuple(v)
        out[str(k)] = v
    if "type" in out and "rope_type" not in out:
        out["rope_type"] = out.pop("type")
    out.pop("type", None)
    if out.get("rope_type", "default") == "default" and set(out) <= {"rope_type"}:
        return None
    return tuple(sorted(out.items()))


# ---------------------------------------------------------------------------------------------
# Hugging Face config.json
# ---------------------------------------------------------------------------------------------



_HF_INT_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "max_position_embeddings")
_HF_FLOAT_KEYS = ("rms_norm_eps", "rope_theta")
_HF_BOOL_KEYS = ("tie_word_embeddings", "attention_bias", "use_sliding_window")
_HF_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")


def _check_hf_types(hf: Mapping[str, Any], source: str) -> None:
    """Every known field of config.json has the JSON type transformers writes; errors name file and key."""
    def bad(key, want):
        v = hf[key]
        raise ConfigError(f"{source}: key {key!r} is {v!r} ({type(v).__name__}); expected {want}")

    def is_int(v):
        return (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer())

    for key in _HF_INT_KEYS:
        if hf.get(key) is not None and not is_int(hf[key]):
            bad(key, "an integer")
    for key in _HF_FLOAT_KEYS:
        if hf.get(key) is not None and (isinstance(hf[key], bool) or not isinstance(hf[key], (int, float))):
            bad(key, "a number")
    for key in _HF_BOOL_KEYS:
        if hf.get(key) is not None and not isinstance(hf[key], bool):
            bad(key, "true or false")
    for key in _HF_ID_KEYS:
        v = hf.get(key)
        if v is not None and not (is_int(v) or (isinstance(v, list) and all(is_int(x) for x in v))):
            bad(key, "a token id, a list of token ids or null")
    for key in ("rope_scaling", "rope_parameters"):
        if hf.get(key) is not None and not isinstance(hf[key], Mapping):
            bad(key, "a JSON object or null")


def from_hf_dict(hf: Mapping[str, Any], *, dtype: str = "float32", source: str = "config.json",
                 **compute) -> ModelConfig:
    """Build a ModelConfig from a parsed HF ``config.json`` (transformers v4 or v5 layout)."""
    hf = dict(hf)
    model_type = hf.get("model_type")
    archs = hf.get("architectures") or []
    if model_type not in SUPPORTED_ARCHITECTURES:
        raise ConfigError(
            f"{source}: unsupported architecture model_type={model_type!r} architectures={archs}; "
            f"expected model_type in {sorted(SUPPORTED_ARCHITECTURES)} "
            f"({', '.join(SUPPORTED_ARCHITECTURES.values())})"
        )
    required = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    missing = [k for k in required if k not in hf]
    if missing:
        raise ConfigError(f"{source}: missing required keys {missing}")
    _check_hf_types(hf, source)
    if hf.get("use_sliding_window"):
        raise ConfigError(f"{source}: use_sliding_window=true is not supported (Qwen checkpoints ship it false)")
    if hf.get("layer_types") and any(t != "full_attention" for t in hf["layer_types"]):
        raise ConfigError(f"{source}: layer_types other than 'full_attention' are not supported")

    # rope: v5 `rope_parameters` or v4 `rope_theta` + `rope_scaling`
    rope_params = hf.get("rope_parameters")
    if rope_params:
        rope_params = dict(rope_params)
        if any(isinstance(v, Mapping) for v in rope_params.values()):
            raise ConfigError(f"{source}: per-layer-type rope_parameters are not supported")
        theta = float(rope_params.get("rope_theta", hf.get("rope_theta", 10000.0)))
        scaling = {k: v for k, v in rope_params.items() if k != "rope_theta"}
    else:
        theta = float(hf.get("rope_theta", 10000.0))
        scaling = dict(hf["rope_scaling"]) if hf.get("rope_scaling") else None
    scaling = _freeze_rope_scaling(scaling)
    if scaling is not None:
        sd = dict(scaling)
        if sd.get("rope_type") in ("yarn", "llama3") and "original_max_position_embeddings" not in sd:
            sd["original_max_position_embeddings"] = hf.get(
                "original_max_position_embeddings", hf.get("max_position_embeddings", 32768))
            scaling = tuple(sorted(sd.items()))
        if sd.get("rope_type") not in SUPPORTED_ROPE_TYPES:
            raise ConfigError(
                f"{source}: rope scaling type {sd.get('rope_type')!r} is not supported; "
                f"expected one of {SUPPORTED_ROPE_TYPES}"
            )

    heads = int(hf["num_attention_heads"])
    head_dim = hf.get("head_dim") or int(hf["hidden_size"]) // heads
    is_qwen3 = model_type == "qwen3"
    eos = hf.get("eos_token_id")
    if isinstance(eos, list):
        eos = tuple(eos)
    return ModelConfig(
        model_type=model_type,
        vocab_size=int(hf["vocab_size"]),
        hidden_size=int(hf["hidden_size"]),
        intermediate_size=int(hf["intermediate_size"]),
        num_hidden_layers=int(hf["num_hidden_layers"]),
        num_attention_heads=heads,
        num_key_value_heads=int(hf.get("num_key_value_heads") or heads),
        head_dim=int(head_dim),
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        rope_theta=theta,
        rope_scaling=scaling,
        max_position_embeddings=int(hf.get("max_position_embeddings", 32768)),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        qkv_bias=bool(hf.get("attention_bias", False)) if is_qwen3 else True,
        o_bias=bool(hf.get("attention_bias", False)) if is_qwen3 else False,
        qk_norm=is_qwen3,
        bos_token_id=hf.get("bos_token_id"),
        eos_token_id=eos,
        pad_token_id=hf.get("pad_token_id"),
        dtype=dtype,
        **compute,
    )


def to_hf_dict(cfg: ModelConfig, *, layout: str = "v4", torch_dtype: str = "float32") -> dict:
    """HF ``config.json`` content for ``cfg``; loads with transformers 4.45+ and 5.x."""
    hf: dict[str, Any] = {
        "architectures": [SUPPORTED_ARCHITECTURES[cfg.model_type]],
        "model_type": cfg.model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": cfg.rms_norm_eps,
        "max_position_embeddings": cfg.max_position_embeddings,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "use_sliding_window": False,
        "sliding_window": None,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "use_cache": True,
        "torch_dtype": torch_dtype,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": list(cfg.eos_token_id) if isinstance(cfg.eos_token_id, tuple) else cfg.eos_token_id,
    }
    if cfg.pad_token_id is not None:
        hf["pad_token_id"] = cfg.pad_token_id
    if cfg.model_type == "qwen3":
        hf["attention_bias"] = cfg.qkv_bias
    scaling = cfg.rope_scaling_dict
    if layout == "v5":
        rp = {"rope_type": "default", "rope_theta": cfg.rope_theta}
        if scaling:
            rp.update(scaling)
        hf["rope_parameters"] = rp
    elif layout == "v4":
        hf["rope_theta"] = cfg.rope_theta
        hf["rope_scaling"] = dict(scaling) if scaling else None
    else:
        raise ConfigError(f"layout must be 'v4' or 'v5', got {layout!r}")
    return hf


def load_hf_config(path: str | Path, **kw) -> ModelConfig:
    """Read ``config.json`` (a file or the directory holding it)."""
    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
    if not p.is_file():
        raise FileNotFoundError(f"{p}: config.json not found (expected a Hugging Face model directory)")
    try:
        hf = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{p}: not valid JSON ({e})") from None
    return from_hf_dict(hf, source=str(p), **kw)


# ---------------------------------------------------------------------------------------------
# RoPE frequencies (static, numpy): one place for every scaling kind
# ---------------------------------------------------------------------------------------------

def rope_frequencies(cfg: ModelConfig) -> tuple[np.ndarray, float]:
    """Inverse frequencies ``[head_dim // 2]`` (float32) and the cos/sin scale, as transformers computes them."""
    dim = cfg.head_dim
    base = cfg.rope_theta
    inv = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / dim))
    rs = cfg.rope_scaling_dict
    kind = "default" if rs is None else rs.get("rope_type", "default")
    if kind == "default":
        return inv.astype(np.float32), 1.0
    if kind == "linear":
        return (inv / float(rs["factor"])).astype(np.float32), 1.0
    if kind == "llama3":
        factor = float(rs["factor"])
        lo, hi = float(rs["low_freq_factor"]), float(rs["high_freq_factor"])
        old = float(rs["original_max_position_embeddings"])
        lo_wl, hi_wl = old / lo, old / hi
        wl = 2 * math.pi / inv
        inv_l = np.where(wl > lo_wl, inv / factor, inv)
        smooth = (old / wl - lo) / (hi - lo)
        smoothed = (1 - smooth) * inv_l / factor + smooth * inv_l
        medium = ~(wl < hi_wl) & ~(wl > lo_wl)
        return np.where(medium, smoothed, inv_l).astype(np.float32), 1.0
    if kind == "yarn":
        factor = rs.get("factor")
        omax = float(rs["original_max_position_embeddings"])
        if factor is None:
            factor = cfg.max_position_embeddings / omax
        factor = float(factor)

        def mscale(scale, m=1.0):
            return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

        att = rs.get("attention_factor")
        if att is None:
            m, mad = rs.get("mscale"), rs.get("mscale_all_dim")
            att = mscale(factor, m) / mscale(factor, mad) if (m and mad) else mscale(factor)
        beta_fast = rs.get("beta_fast") or 32
        beta_slow = rs.get("beta_slow") or 1

        def corr_dim(rot):
            return (dim * math.log(omax / (rot * 2 * math.pi))) / (2 * math.log(base))

        low, high = corr_dim(beta_fast), corr_dim(beta_slow)
        if rs.get("truncate", True):
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, dim - 1)
        if low == high:
            high += 0.001
        ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - low) / (high - low), 0, 1)
        pos_freqs = base ** (np.arange(0, dim, 2).astype(np.float32) / dim)
        extra, inter = 1.0 / pos_freqs, 1.0 / (factor * pos_freqs)
        extra_factor = 1 - ramp
        inv = inter * (1 - extra_factor) + extra * extra_factor
        return inv.astype(np.float32), float(att)
    raise ConfigError(f"rope scaling type {kind!r} is not supported; expected one of {SUPPORTED_ROPE_TYPES}")
