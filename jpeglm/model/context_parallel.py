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
from jax.sharding import PartitionSpec as P

from jpeglm.errors import ConfigError
from jpeglm.model.sharding import logical_to_spec

AXIS = "context"
# Logical names of queries (and attention outputs): [batch, length, heads, head_dim].
Q_NAMES = ("act_batch", "act_len", "act_heads", "act_head_dim")


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


def per_device(local_fn, q_BxLxNxH, k_BxLxNxH, v_BxLxNxH, segment_ids_BxL, extra=(),
               extra_specs=()):
  """Runs `local_fn(q, k, v, q_segment_ids, kv_segment_ids, *extra)` on each device's shard
  of the rows, heads (over `tensor`) and queries (over `context`); the keys, values and
  their segment ids come gathered over `context`: the whole row, in the balanced order."""
  mesh = jax.sharding.get_abstract_mesh()
  q_spec = logical_to_spec(Q_NAMES, q_BxLxNxH.shape, dict(mesh.shape))
  seg_spec = None if segment_ids_BxL is None else P(q_spec[0], q_spec[1])
  gather = context_size() > 1

  def local(q, k, v, seg, *rest):
    if gather:
      k, v = (jax.lax.all_gather(x, AXIS, axis=1, tiled=True) for x in (k, v))
    seg_kv = seg
    if gather and seg is not None:
      seg_kv = jax.lax.all_gather(seg, AXIS, axis=1, tiled=True)
    return local_fn(q, k, v, seg, seg_kv, *rest)

  return jax.shard_map(local, mesh=mesh,
                       in_specs=(q_spec, q_spec, q_spec, seg_spec, *extra_specs),
                       out_specs=q_spec, check_vma=False)(
                           q_BxLxNxH, k_BxLxNxH, v_BxLxNxH, segment_ids_BxL, *extra)
