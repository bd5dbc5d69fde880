"""Training: the trainer (setup, loop, step, evaluation, read top to bottom), its lr plan over steps or a time
budget, TensorBoard output."""
