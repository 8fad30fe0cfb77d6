"""``python -m proactive_jax COMMAND ...``: the same entry point as ``proactive-jax`` (used by the launch scripts,
where the console script may not be on PATH)."""
import sys

from proactive_jax.cli import main

sys.exit(main())
