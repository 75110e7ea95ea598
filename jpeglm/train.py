"""The public entry point `jpeglm.train.train_and_evaluate(config, workdir)`; the trainer
itself lives in `jpeglm.training.trainer`."""
from jpeglm.training.trainer import train_and_evaluate

__all__ = ["train_and_evaluate"]
