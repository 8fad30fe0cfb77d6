"""The names and signatures the package promises at its top level (the README's Python API)."""
import inspect

import proactive_jax
from proactive_jax import metrics


def test_top_level_api():
    for name in ("load_pretrained", "save_pretrained", "forward", "StreamExample", "token_logprobs",
                 "stream_decode"):
        assert hasattr(proactive_jax, name), name
    params = lambda f: list(inspect.signature(f).parameters)  # noqa: E731
    assert params(proactive_jax.forward)[:4] == ["config", "params", "input_ids", "positions"]
    assert params(proactive_jax.token_logprobs)[:4] == ["config", "params", "example", "phi"]
    assert params(proactive_jax.stream_decode)[:8] == ["config", "params", "examples", "head", "max_new_tokens",
                                                        "eos_ids", "word_starts", "batch_size"]
    assert params(proactive_jax.save_pretrained)[:4] == ["config", "params", "out_dir", "tokenizer_dir"]
    ex = proactive_jax.StreamExample(prompt=[1], units=[[2, 3], [4]], end=[5], header=[6], target=[7, 8])
    assert (ex.M, ex.L) == (2, 2)


def test_metric_signatures():
    params = lambda f: list(inspect.signature(f).parameters)  # noqa: E731
    assert params(metrics.al) == ["delays", "source_length", "reference_length"]
    assert params(metrics.laal) == ["delays", "source_length", "reference_length"]
    assert params(metrics.dal) == ["delays", "source_length"]
    assert params(metrics.ap) == ["delays", "source_length", "reference_length"]
    assert params(metrics.rco) == ["phi", "source_length"]
    assert params(metrics.ail) == ["phi", "source_length", "ideal"]
