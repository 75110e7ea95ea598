"""Documents -> fixed-length LM rows, with Grain's own packing datasets.

Each document BOS t1 .. tn EOS becomes `inputs` = BOS t1 .. tn and `targets` = t1 .. tn EOS
before packing, so the two stay aligned however a row is cut and every target is a real
next token. Two packings:
  - "concat" (the paper): documents concatenated and chunked to seq_len
    (ConcatThenSplitIterDataset). A row is one sequence: segment id 1, positions 0..L-1;
    attention crosses document boundaries, as in JPEG-LM.
  - "document": whole documents packed first-fit (FirstFitPackIterDataset) with segment ids
    1, 2, .. and positions restarting at 0, so the model can mask attention across
    documents. A document longer than seq_len is cut into seq_len pieces first.
Padding has segment id 0 and weight 0.
"""

from __future__ import annotations

import grain
import numpy as np

from data_pipeline import batch_spec

PACKINGS = ("concat", "document")
# Bins open at once in first-fit packing: more bins, less padding, more documents in flight.
DOCUMENT_PACKING_BINS = 8


def to_lm_example(document: dict) -> dict:
  tokens_N = document["tokens"]
  return {"inputs": tokens_N[:-1], "targets": tokens_N[1:]}


class SplitLongExamples(grain.experimental.FlatMapTransform):
  """Cuts an example longer than `seq_len` into seq_len pieces (document packing needs each
  piece to fit one row)."""

  max_fan_out = 1 << 20  # only read by map-style flat maps; the iterator form takes any count

  def __init__(self, seq_len: int):
    self.seq_len = seq_len

  def flat_map(self, example: dict) -> list[dict]:
    length = len(example["inputs"])
    return [{k: v[start:start + self.seq_len] for k, v in example.items()}
            for start in range(0, length, self.seq_len)]


def pack(examples: grain.IterDataset, packing: str, seq_len: int, seed: int) -> grain.IterDataset:
  """Rows {"inputs", "targets", "segment_ids", "positions"} of length seq_len."""
  lengths = {"inputs": seq_len, "targets": seq_len}
  if packing == "concat":
    packed = grain.experimental.ConcatThenSplitIterDataset(examples, length_struct=lengths)
    return packed.map(_concat_row)
  if packing == "document":
    split = grain.experimental.FlatMapIterDataset(examples, SplitLongExamples(seq_len))
    packed = grain.experimental.FirstFitPackIterDataset(
        split, length_struct=lengths, num_packing_bins=DOCUMENT_PACKING_BINS, seed=seed,
        shuffle_bins=True)
    return packed.map(_document_row)
  raise ValueError(f"packing={packing!r}: choose one of {PACKINGS}")


def _concat_row(row: dict) -> dict:
  real_L = row["inputs_segment_ids"] > 0
  return {"inputs": row["inputs"], "targets": row["targets"],
          "segment_ids": real_L.astype(np.int32),
          "positions": np.where(real_L, np.arange(len(real_L), dtype=np.int32), 0)}


def _document_row(row: dict) -> dict:
  return {"inputs": row["inputs"], "targets": row["targets"],
          "segment_ids": row["inputs_segment_ids"], "positions": row["inputs_positions"]}


class FinishBatch(grain.transforms.Map):
  """Adds the loss mask and the byte counts bits-per-byte needs, and fixes dtypes.

  `target_bytes[b]` is the number of codec bytes the weighted targets of row b stand for (each
  token's piece length; EOS counts 0), so bits/byte = sum(loss_nats * weights) / ln 2 /
  sum(target_bytes), exactly, even for documents split across rows.
  """

  def __init__(self, piece_lengths: np.ndarray):
    self.piece_lengths = np.asarray(piece_lengths, np.int32)

  def map(self, batch: dict) -> dict:
    targets_BxL = batch["targets"].astype(np.int32)
    weights_BxL = (batch["segment_ids"] > 0).astype(np.float32)
    bytes_BxL = self.piece_lengths[targets_BxL] * (weights_BxL > 0)
    return batch_spec.conform({  # the arrays and dtypes of data_pipeline.batch_spec
        "inputs": batch["inputs"], "targets": targets_BxL,
        "segment_ids": batch["segment_ids"], "positions": batch["positions"],
        "weights": weights_BxL, "target_tokens": weights_BxL.sum(axis=1),
        "target_bytes": bytes_BxL.sum(axis=1)})


def piece_lengths(tokenizer) -> np.ndarray:
  """Bytes per token id (0 for specials)."""
  return np.array([len(tokenizer.piece_bytes(i)) for i in range(tokenizer.vocab_size)], np.int32)
