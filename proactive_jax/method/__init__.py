"""The paper's method: streaming examples and read schedules, the training objective, decision heads and the
streaming decode loop."""
