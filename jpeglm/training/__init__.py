"""Pretraining: the trainer and its step, state, optimizer and losses; checkpoints and the
data iterator's state; stop codes, goodput and metrics; the batch layout the data fills."""
