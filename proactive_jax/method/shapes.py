"""Shape buckets: the padded sizes that jitted programs are compiled for (one compilation per bucket, not per
example), shared by the decode loop, the probe's state collection and calibration."""

from __future__ import annotations

from typing import Sequence


def bucket(x: int, minimum: int = 1) -> int:
    """Round up to the next ``2^k`` or ``3 * 2^(k-1)`` (1, 2, 3, 4, 6, 8, 12, 16, 24, ...); at most 1/3 waste."""
    x = max(int(x), int(minimum), 1)
    p = 1
    while p < x:
        p *= 2
    c = 3 * p // 4
    return c if (p >= 4 and c >= x) else p


def stream_bucket(examples: Sequence) -> tuple[int, int, int]:
    """``(S cap, T cap, M cap)`` of a batch of ``StreamExample``s: the source (at least 8), target (at least 4)
    and unit-count buckets of the packed views."""
    return (bucket(max(e.S for e in examples), 8), bucket(max(e.T for e in examples), 4),
            bucket(max(e.M for e in examples)))
