"""Model FLOPs per token and accelerator peaks, for MFU in the training log.

FLOPs per trained token = 6 N (forward + backward matmuls over the parameters) + 12 L d T
(attention scores and values over a context of T; PaLM's convention, not halved for the
causal mask). Embedding lookups are not matmuls, so N counts non-embedding parameters plus
the output head.
"""

from __future__ import annotations

import ml_collections


def matmul_params(model: ml_collections.ConfigDict) -> int:
  d, f, layers = model.d_model, model.d_ff, model.n_layers
  head_dim = d // model.n_heads
  attention = d * head_dim * (2 * model.n_heads + 2 * model.n_kv_heads)
  return layers * (attention + 3 * d * f) + d * model.vocab_size


def flops_per_token(model: ml_collections.ConfigDict, seq_len: int) -> float:
  return 6.0 * matmul_params(model) + 12.0 * model.n_layers * model.d_model * seq_len


def causal_flops_per_token(model: ml_collections.ConfigDict, seq_len: int) -> float:
  """As `flops_per_token` with attention halved for the causal mask (MaxText's convention,
  and what causal kernels such as splash execute): for MFU estimates that compare with
  the FLOPs a kernel actually runs."""
  return flops_per_token(model, seq_len) - 6.0 * model.n_layers * model.d_model * seq_len
