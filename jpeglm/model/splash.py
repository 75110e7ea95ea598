"""Splash attention (the Pallas TPU flash-attention kernel) as a per-device program.

The kernel takes one row's q, k, v as [heads, L, head_dim] and never materialises more
than a block of scores: 0.2 GiB of temporaries for a 7B layer at L=12,288 where XLA's
attention needs 27 GiB. It runs under `jax.shard_map` (rows over data/fsdp, heads over
tensor, queries over context); its mask information (which blocks are empty, full or on
the diagonal) is computed once on the host for the whole L x L mask and sharded by query
blocks (`q_seq_shards`), so each context shard skips exactly its own empty blocks.

Off TPU it runs in Pallas interpret mode: slow, but the same program, so tests on the CPU
check the TPU path's numerics.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as kernel_lib
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as mask_lib
from jax.sharding import NamedSharding, PartitionSpec as P

from jpeglm.model import context_parallel
from jpeglm.errors import ConfigError
from jpeglm.model.sharding import logical_to_spec

# Names the remat policies can save (jpeglm.model.remat): the kernel's own residuals.
RESIDUALS_NAME = "attention_residuals"


@dataclasses.dataclass(frozen=True)
class SplashBlocks:
  """Tile sizes: forward (q, kv) and backward (q, kv); clipped to the sequence."""
  q: int = 512
  kv: int = 512
  q_bwd: int = 512
  kv_bwd: int = 512

  def for_lengths(self, q_len: int, kv_len: int) -> kernel_lib.BlockSizes:
    def fit(block: int, length: int, name: str) -> int:
      block = min(block, length)
      if length % block:
        raise ConfigError(f"model.attention_{name}={block} does not divide the sequence "
                          f"length {length} it tiles")
      return block
    q, kv = fit(self.q, q_len, "block_q"), fit(self.kv, kv_len, "block_kv")
    q_bwd, kv_bwd = fit(self.q_bwd, q_len, "block_q_bwd"), fit(self.kv_bwd, kv_len,
                                                                "block_kv_bwd")
    return kernel_lib.BlockSizes(
        block_q=q, block_kv=kv, block_kv_compute=kv, block_q_dkv=q_bwd, block_kv_dkv=kv_bwd,
        block_kv_dkv_compute=kv_bwd, block_q_dq=q_bwd, block_kv_dq=kv_bwd)


class BalancedCausalMask(mask_lib._ComputableMask):  # pylint: disable=protected-access
  """Causal mask over a row in jpeglm.model.context_parallel's balanced order.

  Rows (queries) read their natural positions from `q_sequence`; columns (keys) are slots
  of the gathered row, turned into natural positions by arithmetic, which the kernel can
  evaluate on its own index vectors.
  """

  def __init__(self, length: int, shards: int):
    self.length, self.shards = length, shards

    def causal(q_positions, kv_slots):
      return q_positions >= context_parallel.natural_position(kv_slots, length, shards)

    super().__init__(shape=(length, length), mask_function=causal)
    self.q_sequence = context_parallel.balanced_order(length, shards)

  def __eq__(self, other: object):
    return (isinstance(other, BalancedCausalMask) and self.length == other.length
            and self.shards == other.shards)

  def __hash__(self):
    return hash((BalancedCausalMask, self.length, self.shards))


def make_kernel(heads: int, length: int, context: int, blocks: SplashBlocks,
                interpret: bool) -> kernel_lib.SplashAttentionKernel:
  """The kernel for `heads` heads of a row of `length` split over `context` shards."""
  mask = (mask_lib.CausalMask((length, length)) if context == 1
          else BalancedCausalMask(length, context))
  # Built inside the trace (its tables become constants); the host-side mask analysis is
  # cached by the library, keyed by the mask's hash.
  return kernel_lib.make_splash_mha(
      mask_lib.MultiHeadMask([mask] * heads), head_shards=1, q_seq_shards=context,
      block_sizes=blocks.for_lengths(length // context, length),
      residual_checkpoint_name=RESIDUALS_NAME, interpret=interpret)


def splash_attention(q_BxLxNxH, k_BxLxNxH, v_BxLxNxH, segment_ids_BxL,
                     blocks: SplashBlocks | None, interpret: bool) -> jax.Array:
  """Causal attention with the splash kernel; k and v have as many heads as q."""
  b, length, n, h = q_BxLxNxH.shape
  blocks = blocks or SplashBlocks()
  mesh = jax.sharding.get_abstract_mesh()
  context = context_parallel.context_size()
  # The kernel does not scale the queries.
  q_BxLxNxH = q_BxLxNxH * jnp.asarray(h ** -0.5, q_BxLxNxH.dtype)

  def local(q, k, v, seg_q, seg_kv, kernel):
    # [b, t, n, h] -> [b, n, t, h]: the kernel takes one row's heads first.
    q, k, v = (x.transpose(0, 2, 1, 3) for x in (q, k, v))
    if seg_q is None:
      out = jax.vmap(kernel)(q, k, v)
    else:
      out = jax.vmap(lambda q1, k1, v1, sq, skv: kernel(
          q1, k1, v1, segment_ids=kernel_lib.SegmentIds(q=sq, kv=skv)))(q, k, v, seg_q, seg_kv)
    return out.transpose(0, 2, 1, 3)

  if mesh.empty or mesh.size == 1:
    kernel = make_kernel(n, length, 1, blocks, interpret)
    return local(q_BxLxNxH, k_BxLxNxH, v_BxLxNxH, segment_ids_BxL, segment_ids_BxL, kernel)

  q_spec = logical_to_spec(context_parallel.Q_NAMES, q_BxLxNxH.shape, dict(mesh.shape))
  local_heads = NamedSharding(mesh, q_spec).shard_shape(q_BxLxNxH.shape)[2]
  kernel = make_kernel(local_heads, length, context, blocks, interpret)
  # Mask information is the same for every head: shard it by query blocks only.
  kernel_spec = kernel.manual_sharding_spec(
      NamedSharding(mesh, P(None, context_parallel.AXIS if context > 1 else None)))
  return context_parallel.per_device(local, q_BxLxNxH, k_BxLxNxH, v_BxLxNxH, segment_ids_BxL,
                              extra=(kernel,), extra_specs=(kernel_spec,))
