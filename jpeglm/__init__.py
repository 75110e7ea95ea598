"""jpeglm: pretraining codec language models (JPEG-LM, AVC-LM) in JAX."""

__version__ = "0.1.0"
