"""Context (sequence) parallelism: the `context` mesh axis shards each row's sequence.

Causal attention gives late positions more keys than early ones, so cutting a row into C
contiguous pieces would leave the last shard with most of the work. The row is instead
laid out in a balanced order: cut into 2C chunks, shard i holds chunks i and 2C-1-i, so
every shard has one early and one late chunk (the "zigzag" of ring-attention papers).

The model permutes tokens, positions and segment ids into this order on entry and its
logits back on exit; in between only attention cares, and it masks by natural positions
(`balanced_order`), so the result equals the unsharded model.
"""

from __future__ import annotations

import jax
import numpy as np

from jpeglm.errors import ConfigError

AXIS = "context"


def context_size() -> int:
  """Size of the `context` axis of the mesh in scope (1 without one)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return 1
  return dict(mesh.shape).get(AXIS, 1)


def balanced_order(length: int, shards: int) -> np.ndarray:
  """Natural position held at each slot of the balanced layout (identity for 1 shard)."""
  if shards == 1:
    return np.arange(length, dtype=np.int32)
  chunks = 2 * shards
  if length % chunks:
    raise ConfigError(f"sequence length {length} is not a multiple of 2 x mesh.context "
                      f"= {chunks}: context parallelism cuts each row into {chunks} chunks")
  chunk = length // chunks
  firsts = [c for i in range(shards) for c in (i, chunks - 1 - i)]
  return (np.asarray(firsts)[:, None] * chunk + np.arange(chunk)).reshape(-1).astype(np.int32)


def natural_position(slot, length: int, shards: int):
  """`balanced_order(length, shards)[slot]` by arithmetic alone, for numpy arrays and for
  index vectors inside a kernel (no table lookups there)."""
  chunk = length // (2 * shards)
  piece, within = slot // chunk, slot % chunk
  pair, second = piece // 2, piece % 2
  # First chunk of a pair: `pair`; second: 2C - 1 - pair.
  return (pair + second * (2 * shards - 1 - 2 * pair)) * chunk + within


def to_balanced(x_BxL, shards: int):
  """Rows [B, L, ...] into the balanced order (a no-op for one shard)."""
  if shards == 1:
    return x_BxL
  return x_BxL[:, balanced_order(x_BxL.shape[1], shards)]


def from_balanced(x_BxL, shards: int):
  """The inverse of `to_balanced`."""
  if shards == 1:
    return x_BxL
  return x_BxL[:, np.argsort(balanced_order(x_BxL.shape[1], shards))]
