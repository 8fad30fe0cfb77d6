"""``python -m proactive_jax.training CONFIG [key=value ...]`` | ``python -m proactive_jax.training export ...``
(the same entry points as ``proactive-jax train`` / ``proactive-jax export``; used by the launch scripts)."""
import sys

from .cli import export_main, train_main

if sys.argv[1:2] == ["export"]:
    sys.exit(export_main(sys.argv[2:]))
sys.exit(train_main(sys.argv[1:]))
