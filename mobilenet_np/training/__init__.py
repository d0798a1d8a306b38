"""Training: losses, backward passes, optimizers and schedules for mobilenet-np."""
