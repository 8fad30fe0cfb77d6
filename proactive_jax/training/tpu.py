"""TPU slices for planning without a TPU: the chip catalogue (HBM, hosts, grids), topology names, the compile-time
devices of a named slice (libtpu), and reading a compiled program's per-chip memory against the chip's HBM."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import re

from proactive_jax.errors import ProactiveError

GIB = 1024 ** 3

# HBM per chip (GiB) and chips per host of each TPU generation (public Cloud TPU figures)
# (v4 is described as "megacore": one JAX device per chip, as jax.devices() shows on a v4 VM; libtpu's
# "default" would give one device per TensorCore with half the HBM each)
CHIPS = {
    "v4": {"hbm_gib": 32.0, "host": (2, 2, 1), "dims": 3, "chip_config": "megacore"},
    "v5e": {"hbm_gib": 16.0, "host": (2, 2, 1), "dims": 2, "chip_config": "default"},
    "v5p": {"hbm_gib": 95.0, "host": (2, 2, 1), "dims": 3, "chip_config": "default"},
    "v6e": {"hbm_gib": 32.0, "host": (2, 2, 1), "dims": 2, "chip_config": "default"},
}
# accelerator-type aliases (gcloud names): v5litepod-N / v6e-N count chips, v4-N / v5p-N count TensorCores
_ALIAS = {"v5litepod": ("v5e", 1), "v5e": ("v5e", 1), "v6e": ("v6e", 1), "v4": ("v4", 2), "v5p": ("v5p", 2)}
_GRID_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}
_GRID_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8", 256: "4x8x8",
            512: "8x8x8"}


class PlanError(ProactiveError, RuntimeError):
    """The plan cannot be made (bad topology name, missing libtpu, config problem); one-line message."""


class DoesNotFit(RuntimeError):
    """The TPU compiler itself refused the program for lack of HBM (``RESOURCE_EXHAUSTED``)."""

    def __init__(self, message: str, temp_bytes: int | None, available_bytes: int | None):
        super().__init__(message)
        self.temp_bytes, self.available_bytes = temp_bytes, available_bytes


_OOM = re.compile(r"HLO temporaries \(([\d.]+)([KMGT])\) exceeds available HBM \(([\d.]+)([KMGT])\)")


def oom_error(e: Exception) -> DoesNotFit:
    msg = str(e).strip().splitlines()[0]
    m = _OOM.search(str(e))
    unit = lambda v, u: int(float(v) * 1024 ** "KMGT".index(u) * 1024)  # noqa: E731
    if m is None:
        return DoesNotFit(msg, None, None)
    return DoesNotFit(msg, unit(m.group(1), m.group(2)), unit(m.group(3), m.group(4)))


@dataclasses.dataclass(frozen=True)
class Topology:
    chip: str  # v4 | v5e | v5p | v6e
    grid: tuple[int, ...]

    @property
    def name(self) -> str:
        return f"{self.chip}:{'x'.join(map(str, self.grid))}"

    @property
    def chips(self) -> int:
        return math.prod(self.grid)

    @property
    def hbm_bytes(self) -> int:
        return int(CHIPS[self.chip]["hbm_gib"] * GIB)


def parse_topology(name: str) -> Topology:
    """``v5e:4x8`` / ``v4:2x2x4`` (chip grid), or a gcloud accelerator type (``v5litepod-32``, ``v4-32``)."""
    name = name.strip().lower()
    if ":" in name:
        chip, _, grid = name.partition(":")
        if chip not in CHIPS:
            raise PlanError(f"--topology {name!r}: unknown TPU generation {chip!r}; expected one of {sorted(CHIPS)}")
        try:
            dims = tuple(int(x) for x in grid.split("x"))
        except ValueError:
            raise PlanError(f"--topology {name!r}: the grid must look like 4x8 (or 2x2x4 for v4/v5p)") from None
        if len(dims) != CHIPS[chip]["dims"] and not (CHIPS[chip]["dims"] == 3 and len(dims) == 2):
            raise PlanError(f"--topology {name!r}: {chip} slices have a {CHIPS[chip]['dims']}-D chip grid")
        if any(d < 1 for d in dims):
            raise PlanError(f"--topology {name!r}: grid sizes must be positive")
        return Topology(chip, dims)
    kind, _, count = name.rpartition("-")
    if kind not in _ALIAS or not count.isdigit():
        raise PlanError(f"--topology {name!r}: expected CHIP:GRID (e.g. v5e:4x8, v4:2x2x4) or an accelerator type "
                        f"(v5litepod-32, v6e-16, v4-32, v5p-64)")
    chip, per_chip = _ALIAS[kind]
    chips = int(count) // per_chip
    grids = _GRID_3D if CHIPS[chip]["dims"] == 3 else _GRID_2D
    if chips not in grids:
        raise PlanError(f"--topology {name!r}: no standard {chip} slice of {chips} chips; give the grid ({chip}:AxB..)")
    return Topology(chip, tuple(int(x) for x in grids[chips].split("x")))


def require_libtpu() -> None:
    if importlib.util.find_spec("libtpu") is None:
        raise PlanError("libtpu is not installed: `pip install -e \".[tpu]\"` (the tpu extra) to compile for TPU")


def topology_devices(topo: Topology):
    """The abstract devices of ``topo`` (compilation only; nothing runs)."""
    require_libtpu()
    from jax.experimental import topologies

    host = tuple(min(h, g) for h, g in zip(CHIPS[topo.chip]["host"], topo.grid + (1,) * 3))
    try:
        desc = topologies.get_topology_desc(platform="tpu", topology_name=topo.name,
                                            chip_config_name=CHIPS[topo.chip]["chip_config"],
                                            chips_per_host_bounds=host, num_slices=1)
    except Exception as e:  # noqa: BLE001 - libtpu's errors are long; keep the first line
        raise PlanError(f"--topology {topo.name}: libtpu cannot describe it ({str(e).splitlines()[0]})") from None
    devices = list(desc.devices)
    if len(devices) != topo.chips:
        raise PlanError(f"--topology {topo.name}: libtpu describes {len(devices)} devices for {topo.chips} chips")
    return devices


def memory_report(compiled, topo: Topology, headroom: float) -> dict:
    m = compiled.memory_analysis()
    args, out, alias, temp = (int(m.argument_size_in_bytes), int(m.output_size_in_bytes),
                              int(m.alias_size_in_bytes), int(m.temp_size_in_bytes))
    code = int(m.generated_code_size_in_bytes)
    total = args + out - alias + temp + code
    budget = topo.hbm_bytes * (1.0 - headroom)
    return {"argument_bytes": args, "output_bytes": out, "alias_bytes": alias, "temp_bytes": temp,
            "code_bytes": code, "total_bytes": total, "capacity_bytes": topo.hbm_bytes, "headroom": headroom,
            "fits": total <= budget, "margin_bytes": int(budget - total)}


def format_gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB" if abs(n) >= GIB / 10 else f"{n / 2 ** 20:.1f} MiB"
