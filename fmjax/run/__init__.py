"""A training run's side effects: the loop, checkpoints, the run directory, preemption, the lock, logs."""
