"""The one table per model: every Hugging Face tensor name <-> a parameter path (used by load and export).

Per-layer HF tensors (``model.layers.{layer}....``) are stacked along the leading axis of one parameter leaf
(``params["layers"]...``). HF ``nn.Linear`` weights are ``[out, in]``; Flax kernels are ``[in, out]``, so
those entries carry ``transpose=True``. Qwen2-Audio's table is the text table under ``language_model.``
plus the audio tower and the projector.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping

from proactive_jax.models.kinds import is_audio, text_config
from proactive_jax.models.config import ModelConfig


LAYER = "{layer}"


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One HF tensor name pattern and the parameter leaf it lives in.

    ``hf_name`` holds ``{layer}`` for per-layer tensors, which are stacked on the leaf's leading axis.
    ``transpose``: the HF tensor is the transpose of the (per-layer slice of the) leaf.
    """

    hf_name: str
    path: tuple[str, ...]
    transpose: bool = False

    @property
    def per_layer(self) -> bool:
        return LAYER in self.hf_name

    def name(self, layer: int | None = None) -> str:
        return self.hf_name.format(layer=layer) if self.per_layer else self.hf_name

    def hf_shape(self, leaf_shape: tuple[int, ...]) -> tuple[int, ...]:
        shape = tuple(leaf_shape[1:] if self.per_layer else leaf_shape)
        return shape[::-1] if self.transpose else shape


def _linear(hf_prefix: str, path: tuple[str, ...]) -> tuple[TensorSpec, TensorSpec]:
    return (TensorSpec(hf_prefix + ".weight", path + ("kernel",), transpose=True),
            TensorSpec(hf_prefix + ".bias", path + ("bias",)))


_L = "model.layers." + LAYER + "."
TENSOR_TABLE: tuple[TensorSpec, ...] = (
    TensorSpec("model.embed_tokens.weight", ("embed_tokens", "embedding")),
    TensorSpec(_L + "input_layernorm.weight", ("layers", "input_layernorm", "weight")),
    *_linear(_L + "self_attn.q_proj", ("layers", "self_attn", "q_proj")),
    *_linear(_L + "self_attn.k_proj", ("layers", "self_attn", "k_proj")),
    *_linear(_L + "self_attn.v_proj", ("layers", "self_attn", "v_proj")),
    *_linear(_L + "self_attn.o_proj", ("layers", "self_attn", "o_proj")),
    TensorSpec(_L + "self_attn.q_norm.weight", ("layers", "self_attn", "q_norm", "weight")),
    TensorSpec(_L + "self_attn.k_norm.weight", ("layers", "self_attn", "k_norm", "weight")),
    TensorSpec(_L + "post_attention_layernorm.weight", ("layers", "post_attention_layernorm", "weight")),
    TensorSpec(_L + "mlp.gate_proj.weight", ("layers", "mlp", "gate_proj", "kernel"), transpose=True),
    TensorSpec(_L + "mlp.up_proj.weight", ("layers", "mlp", "up_proj", "kernel"), transpose=True),
    TensorSpec(_L + "mlp.down_proj.weight", ("layers", "mlp", "down_proj", "kernel"), transpose=True),
    TensorSpec("model.norm.weight", ("norm", "weight")),
    TensorSpec("lm_head.weight", ("lm_head", "kernel"), transpose=True),
)
# HF name of the output projection that tied models may (or may not) carry; ignored when tied
TIED_LM_HEAD = "lm_head.weight"

# Qwen2-Audio (model_type qwen2_audio): the text table under ``language_model.`` (the names transformers 5
# saves), then the Whisper-style audio tower and the projector. Conv kernels: HF [out, in, 3] is the
# transpose of the leaf [3, in, out].
_A = "audio_tower.layers." + LAYER + "."
_AUDIO_ENCODER_TABLE: tuple[TensorSpec, ...] = (
    TensorSpec("audio_tower.conv1.weight", ("audio_tower", "conv1", "kernel"), transpose=True),
    TensorSpec("audio_tower.conv1.bias", ("audio_tower", "conv1", "bias")),
    TensorSpec("audio_tower.conv2.weight", ("audio_tower", "conv2", "kernel"), transpose=True),
    TensorSpec("audio_tower.conv2.bias", ("audio_tower", "conv2", "bias")),
    TensorSpec("audio_tower.embed_positions.weight", ("audio_tower", "embed_positions", "embedding")),
    TensorSpec(_A + "self_attn_layer_norm.weight", ("audio_tower", "layers", "self_attn_layer_norm", "scale")),
    TensorSpec(_A + "self_attn_layer_norm.bias", ("audio_tower", "layers", "self_attn_layer_norm", "bias")),
    *_linear(_A + "self_attn.q_proj", ("audio_tower", "layers", "self_attn", "q_proj")),
    TensorSpec(_A + "self_attn.k_proj.weight", ("audio_tower", "layers", "self_attn", "k_proj", "kernel"),
               transpose=True),
    *_linear(_A + "self_attn.v_proj", ("audio_tower", "layers", "self_attn", "v_proj")),
    *_linear(_A + "self_attn.out_proj", ("audio_tower", "layers", "self_attn", "out_proj")),
    TensorSpec(_A + "final_layer_norm.weight", ("audio_tower", "layers", "final_layer_norm", "scale")),
    TensorSpec(_A + "final_layer_norm.bias", ("audio_tower", "layers", "final_layer_norm", "bias")),
    *_linear(_A + "fc1", ("audio_tower", "layers", "fc1")),
    *_linear(_A + "fc2", ("audio_tower", "layers", "fc2")),
    TensorSpec("audio_tower.layer_norm.weight", ("audio_tower", "layer_norm", "scale")),
    TensorSpec("audio_tower.layer_norm.bias", ("audio_tower", "layer_norm", "bias")),
    *_linear("multi_modal_projector.linear", ("multi_modal_projector", "linear")),
)
AUDIO_TENSOR_TABLE: tuple[TensorSpec, ...] = tuple(
    dataclasses.replace(s, hf_name="language_model." + s.hf_name, path=("language_model",) + s.path)
    for s in TENSOR_TABLE) + _AUDIO_ENCODER_TABLE
AUDIO_TIED_LM_HEAD = "language_model." + TIED_LM_HEAD


def _table(config) -> tuple[tuple[TensorSpec, ...], str]:
    """The name table of ``config``'s model and the name of its (tied) output projection."""
    return (AUDIO_TENSOR_TABLE, AUDIO_TIED_LM_HEAD) if is_audio(config) else (TENSOR_TABLE, TIED_LM_HEAD)


def _num_layers(config, spec: TensorSpec) -> int:
    return config.encoder.encoder_layers if spec.path[0] == "audio_tower" else text_config(config).num_hidden_layers


def param_shapes(config: ModelConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Flat ``{path: shape}`` of the model's parameter tree (via ``jax.eval_shape``; nothing allocated)."""
    if is_audio(config):
        from proactive_jax.models.audio import abstract_params
    else:
        from proactive_jax.models.qwen import abstract_params

    return {path: tuple(leaf.shape) for path, leaf in _flatten(abstract_params(config))}


def tensor_layout(config: ModelConfig) -> list[tuple[TensorSpec, tuple[int, ...]]]:
    """The table entries this config uses, with the shape of their parameter leaf, in table order.

    Raises if the model has a parameter that no table entry covers (the table and the model disagree).
    """
    shapes = param_shapes(config)
    table, _ = _table(config)
    layout = [(spec, shapes[spec.path]) for spec in table if spec.path in shapes]
    uncovered = set(shapes) - {spec.path for spec, _ in layout}
    if uncovered:
        raise AssertionError(f"parameters without an entry in the hf name table: {sorted(uncovered)}")
    for spec, shape in layout:
        if spec.per_layer and shape[0] != _num_layers(config, spec):
            raise AssertionError(f"{'/'.join(spec.path)}: leading axis {shape[0]} != its number of layers")
    return layout


def expected_tensors(config: ModelConfig, layout=None) -> dict[str, tuple[int, ...]]:
    """``{HF tensor name: HF shape}`` of a checkpoint of ``config`` (what the exporter writes)."""
    out = {}
    for spec, shape in layout if layout is not None else tensor_layout(config):
        layers = range(shape[0]) if spec.per_layer else [None]
        for i in layers:
            out[spec.name(i)] = spec.hf_shape(shape)
    return out


def _flatten(tree, prefix=()) -> Iterable[tuple[tuple[str, ...], Any]]:
    if isinstance(tree, Mapping):
        for k in sorted(tree):
            yield from _flatten(tree[k], prefix + (str(k),))
    else:
        yield prefix, tree


def _get(tree, path):
    for k in path:
        tree = tree[k]
    return tree


def _set(tree: dict, path, value):
    for k in path[:-1]:
        tree = tree.setdefault(k, {})
    tree[path[-1]] = value


