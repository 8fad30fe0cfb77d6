"""Subprocesses a test module starts when it starts and the tests that need them collect (they overlap the
module's in-process work, which on 2 cores halves its wall time)."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cpu_env(devices: int = 8, fast_compile: bool = False, **extra) -> dict:
    """The environment of a CPU subprocess with ``devices`` fake devices that imports this checkout."""
    env = dict(os.environ)
    flags = f"--xla_force_host_platform_device_count={devices}"
    if fast_compile:  # halves CPU compile time; only where results are not compared with another process's
        flags += " --xla_backend_optimization_level=0"
    env.update(XLA_FLAGS=flags, JAX_PLATFORMS="cpu",
               PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""), TOKENIZERS_PARALLELISM="false")
    env.update(extra)
    return env


class Procs:
    """Named Python subprocesses; stdout (and stderr, unless piped) go to ``tmp/NAME.log``."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.procs = {}

    def start(self, name: str, argv: list, env: dict, *, pipe_stderr: bool = False):
        log = open(self.tmp / f"{name}.log", "w")
        stderr = subprocess.PIPE if pipe_stderr else subprocess.STDOUT
        self.procs[name] = (subprocess.Popen([sys.executable, *argv], stdout=log, stderr=stderr, env=env,
                                             cwd=str(ROOT), text=True), log)

    def wait(self, name: str, timeout: float):
        """(return code, piped stderr or None); the return code is None when it ran past ``timeout``
        (it is then killed)."""
        proc, log = self.procs[name]
        try:
            _, err = proc.communicate(timeout=timeout)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            rc, err = None, None
        log.close()
        return rc, err

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text()

    def stop(self):
        for proc, log in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
