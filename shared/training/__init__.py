"""What every stage's training shares: configs, the loop, checkpoints, schedules, logging."""
