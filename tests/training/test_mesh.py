"""Mesh construction and FSDP partition specs."""
import pytest

from proactive_jax.models.qwen import abstract_params
from proactive_jax.training import mesh as TM
from proactive_jax.training.run_config import MeshSection
from tests.training.util import SMALL


def test_fsdp_specs_and_mesh_shapes():
    ab = abstract_params(SMALL)
    spec = lambda p, a: TM.param_partition_spec(p, a.shape, 4)  # noqa: E731
    # the vocabulary axis of the embedding / LM head only when nothing else divides
    assert tuple(spec(("embed_tokens", "embedding"), ab["embed_tokens"]["embedding"])) == (None, "fsdp")
    assert tuple(spec(("lm_head", "kernel"), ab["lm_head"]["kernel"])) == ("fsdp", None)
    assert tuple(TM.param_partition_spec(("lm_head", "kernel"), (30, 128), 4)) == (None, "fsdp")
    assert tuple(spec(("layers", "mlp", "up_proj", "kernel"), ab["layers"]["mlp"]["up_proj"]["kernel"])) == (
        None, None, "fsdp")  # [layers, 32, 64]: the largest axis
    q = ab["layers"]["self_attn"]["q_proj"]["kernel"]  # [layers, 32, 32]: never the layers axis
    assert tuple(spec(("layers", "self_attn", "q_proj", "kernel"), q))[0] is None
    assert tuple(TM.param_partition_spec(("x",), (3, 5), 4)) == ()  # nothing divides: replicated
    with pytest.raises(Exception, match="does not match the 8 devices"):
        TM.make_mesh(MeshSection(data=3, fsdp=2))
    assert dict(TM.make_mesh(MeshSection(data=-1, fsdp=4)).shape) == {"data": 2, "fsdp": 4}
