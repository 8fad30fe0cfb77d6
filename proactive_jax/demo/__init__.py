"""The embedded default (``proactive-jax demo``): tiny streaming models trained on the built-in text tasks
(:mod:`.text`) and speech tasks (:mod:`.speech`, run in a child process beside the text stages), their decision
heads evaluated, and the paper-style tables and target checks (:mod:`.report`)."""
