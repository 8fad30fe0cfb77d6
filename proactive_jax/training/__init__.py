"""Training: run configs, the device mesh, the jitted train step, the loop, logs and Orbax checkpoints."""
