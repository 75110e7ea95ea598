"""Bits per byte of a model on whole images: teacher-forced NLL of BOS + tokens + EOS, per byte
of the codec stream.

Each image's sequence is cut into rows of `model.max_len` predictions (the model's context;
a later row starts without the earlier row's context, as concatenate-and-chunk training
does). Rows are padded to one shape; the NLL is the trainer's (`losses.token_losses`), so the
number means what the `bits_per_byte` in metrics.jsonl means. `token_bits` keeps it per
token (jpeglm.evaluation.stream_parts splits it by stream part).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jpeglm.model import transformer as model_lib
from jpeglm.training.state import abstract_params


def sequence_rows(streams_tokens: list[list[int]], bos: int, eos: int, row_len: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(inputs, targets, weights), each [rows, row_len]: every image's BOS+tokens+EOS as
  next-token pairs, cut into rows, zero-weight padding at the ends."""
  rows_in, rows_out, rows_w = [], [], []
  for tokens in streams_tokens:
    sequence = [bos, *tokens, eos]
    inputs, targets = sequence[:-1], sequence[1:]
    for start in range(0, len(inputs), row_len):
      piece_in, piece_out = inputs[start:start + row_len], targets[start:start + row_len]
      pad = row_len - len(piece_in)
      rows_in.append(piece_in + [0] * pad)
      rows_out.append(piece_out + [0] * pad)
      rows_w.append([1.0] * len(piece_in) + [0.0] * pad)
  return (np.asarray(rows_in, np.int32), np.asarray(rows_out, np.int32),
          np.asarray(rows_w, np.float32))


def token_bits(config, params, tokenizer, streams: list[bytes], batch_rows: int = 4
               ) -> list[np.ndarray]:
  """Per stream, the model's bits for each of its tokens and then for EOS (teacher-forced
  from BOS, rows of `model.max_len` as `sequence_rows` cuts them)."""
  apply = model_lib.make_apply_fn(abstract_params(config).graphdef, segment_masking=False)

  @jax.jit
  def nll(params, inputs, targets):
    logits = apply(params, {"inputs": inputs}).astype(jnp.float32)  # as losses.token_losses
    log_z = jax.nn.logsumexp(logits, axis=-1)
    return log_z - jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]

  encoded = [tokenizer.encode(s) for s in streams]
  inputs, targets, weights = sequence_rows(encoded, tokenizer.bos_id, tokenizer.eos_id,
                                           int(config.model.max_len))
  pad = -len(inputs) % batch_rows  # whole batches: one compiled shape
  inputs, targets = (np.pad(x, ((0, pad), (0, 0))) for x in (inputs, targets))
  weights = np.pad(weights, ((0, pad), (0, 0)))
  rows = [np.asarray(nll(params, inputs[i:i + batch_rows], targets[i:i + batch_rows]))
          for i in range(0, len(inputs), batch_rows)]
  flat = np.concatenate(rows)[weights > 0] / math.log(2.0)
  out, at = [], 0
  for tokens in encoded:
    out.append(flat[at:at + len(tokens) + 1])
    at += len(tokens) + 1
  return out


def bits_per_byte(config, params: dict, streams: list[bytes], tokenizer,
                  batch_rows: int = 4, bits: list[np.ndarray] | None = None) -> float:
  """Model bits per codec byte over `streams` (whole files, as the model was trained on);
  `bits`: their `token_bits`, when already computed."""
  if bits is None:
    bits = token_bits(config, params, tokenizer, streams, batch_rows)
  return float(sum(b.sum() for b in bits)) / sum(len(s) for s in streams)
