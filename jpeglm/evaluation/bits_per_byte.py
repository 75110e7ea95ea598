"""Bits per byte of a model on whole images: teacher-forced NLL of BOS + tokens + EOS, per byte
of the codec stream.

Each image's sequence is cut into rows of `model.max_len` predictions (the model's context;
a later row starts without the earlier row's context, as concatenate-and-chunk training
does). Rows are padded to one shape and evaluated with the trainer's own eval step, so the
number means what the `bits_per_byte` in metrics.jsonl means.
"""

from __future__ import annotations

import math

import jax
import numpy as np

from jpeglm import model as model_lib
from jpeglm.train_state import abstract_params
from jpeglm.train_step import make_eval_step


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


def bits_per_byte(config, params: dict, streams: list[bytes], tokenizer,
                  batch_rows: int = 4) -> float:
  """Model bits per codec byte over `streams` (whole files, as the model was trained on)."""
  graphdef = abstract_params(config).graphdef
  evaluate = jax.jit(make_eval_step(model_lib.make_apply_fn(graphdef, segment_masking=False)))
  inputs, targets, weights = sequence_rows([tokenizer.encode(s) for s in streams],
                                           tokenizer.bos_id, tokenizer.eos_id,
                                           int(config.model.max_len))
  pad_rows = -len(inputs) % batch_rows  # whole batches: one compiled shape
  inputs, targets = (np.pad(x, ((0, pad_rows), (0, 0))) for x in (inputs, targets))
  weights = np.pad(weights, ((0, pad_rows), (0, 0)))
  nll = 0.0
  for start in range(0, len(inputs), batch_rows):
    rows = slice(start, start + batch_rows)
    sums = evaluate(params, {"inputs": inputs[rows], "targets": targets[rows],
                             "weights": weights[rows],
                             "target_bytes": np.zeros(batch_rows, np.int32)})
    nll += float(sums["nll"])
  return nll / math.log(2.0) / sum(len(s) for s in streams)
