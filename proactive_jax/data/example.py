"""The streaming example at token level (method.md section 1): what every task renders to and every consumer
(training views, the decode loop, sessions) reads."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from proactive_jax.errors import DataError


class ExampleError(DataError):
    """A streaming example is malformed; the message says which part and why."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class StreamExample:
    """One streaming example at token level (method.md section 1).

    ``prompt``: always-visible tokens; ``units``: the M streamed source units (each a non-empty token
    list); ``end``: the end-of-source marker (read as unit M+1); ``header``: the forced start of the
    answer; ``target``: the L tokens to predict (ends with the end-of-turn token).
    """

    prompt: tuple
    units: tuple
    end: tuple
    header: tuple
    target: tuple

    def __post_init__(self):
        conv = lambda xs: tuple(int(x) for x in xs)
        object.__setattr__(self, "prompt", conv(self.prompt))
        object.__setattr__(self, "end", conv(self.end))
        object.__setattr__(self, "header", conv(self.header))
        object.__setattr__(self, "target", conv(self.target))
        units = tuple(conv(u) for u in self.units)
        object.__setattr__(self, "units", units)
        if not units:
            raise ExampleError("StreamExample.units is empty: a streaming example needs at least one unit")
        for i, u in enumerate(units):
            if not u:
                raise ExampleError(f"StreamExample.units[{i}] is empty: every unit needs at least one token")

    @property
    def M(self) -> int:
        return len(self.units)

    @property
    def L(self) -> int:
        return len(self.target)

    @property
    def source(self) -> tuple:
        """``prompt + units + end``: the source group, positions 0..S-1."""
        return self.prompt + sum(self.units, ()) + self.end

    @property
    def S(self) -> int:
        return len(self.prompt) + sum(len(u) for u in self.units) + len(self.end)

    @property
    def T(self) -> int:
        """Target-group length: header + target."""
        return len(self.header) + len(self.target)

    def visible_counts(self) -> np.ndarray:
        """``V(n)`` for n = 0..M+1: visible source tokens after n reads (method.md section 3)."""
        return visible_counts(len(self.prompt), [len(u) for u in self.units], len(self.end))


def visible_counts(prompt_len: int, unit_lens: Sequence[int], end_len: int) -> np.ndarray:
    """``V(n)``, n = 0..M+1, as an int array of length M+2."""
    c = np.concatenate([[prompt_len], prompt_len + np.cumsum(np.asarray(unit_lens, np.int64))])
    return np.concatenate([c, [c[-1] + end_len]]).astype(np.int32)
