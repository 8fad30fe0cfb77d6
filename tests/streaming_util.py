"""Random streaming examples for tests."""
import numpy as np

from proactive_jax.data.example import StreamExample


def random_example(rng: np.random.Generator, vocab: int = 97, max_units: int = 5, max_unit_len: int = 3,
                   max_target: int = 5, max_prompt: int = 4) -> StreamExample:
    tok = lambda n: tuple(int(x) for x in rng.integers(3, vocab, n))
    m = int(rng.integers(1, max_units + 1))
    return StreamExample(
        prompt=tok(int(rng.integers(1, max_prompt + 1))),
        units=tuple(tok(int(rng.integers(1, max_unit_len + 1))) for _ in range(m)),
        end=tok(int(rng.integers(1, 3))),
        header=tok(int(rng.integers(1, 4))),
        target=tok(int(rng.integers(1, max_target + 1))),
    )


def random_phi(rng: np.random.Generator, ex: StreamExample) -> np.ndarray:
    """A random non-decreasing schedule with values in 0..M+1."""
    return np.sort(rng.integers(0, ex.M + 2, ex.L)).astype(np.int32)
