"""Causal self-attention kernels and the one place that picks between them.

Kernels (`model.attention`):
  - `einsum`: the reference, an explicit mask over the whole L x L score matrix.
  - `chunked`: query blocks against only the keys at or before them (fastest on CPU).
  - `xla` / `cudnn` / `cudnn_or_xla`: `jax.nn.dot_product_attention` (cuDNN flash on GPU).
  - `splash`: the Pallas splash kernel (TPU; interpret mode elsewhere, for tests), run per
    device under `jax.shard_map`; it never holds more than a block of scores.
  - `auto`: splash on TPU, cuDNN on GPU, chunked on CPU.

With a `context` mesh axis the sequence is sharded (jpeglm.context_parallel): each device
holds its queries, gathers the keys and values of the whole row, and masks by natural
positions, so the balanced (zigzag) sequence order needs no special kernel.

Shapes in names: B batch, T queries, S keys, L both, N query heads, K key/value heads,
G = N // K, H head_dim.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from jpeglm import context_parallel
from jpeglm.errors import ConfigError
from jpeglm.sharding import logical_to_spec

ATTENTION_IMPLS = ("auto", "splash", "einsum", "chunked", "xla", "cudnn", "cudnn_or_xla")
# Query block of the "chunked" attention: blocks above the causal diagonal are skipped.
ATTENTION_CHUNK = 128
Q_NAMES = ("act_batch", "act_len", "act_heads", "act_head_dim")


def resolve(impl: str, platform: str) -> str:
  """The kernel `impl` means on `platform` ("tpu", "gpu", "cpu")."""
  if impl not in ATTENTION_IMPLS:
    raise ConfigError(f"model.attention={impl!r}: choose one of {ATTENTION_IMPLS}")
  if impl == "auto":
    return {"tpu": "splash", "gpu": "cudnn"}.get(platform, "chunked")
  if impl == "cudnn_or_xla":
    return "cudnn" if platform == "gpu" else "xla"
  return impl


def attention_einsum(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, segment_ids_BxS, q_offset: int = 0,
                     q_segment_ids_BxT=None, q_index_T=None, kv_index_S=None) -> jax.Array:
  """Reference attention: explicit causal (and segment) mask, softmax in float32.

  Queries are positions q_offset .. q_offset + T - 1 of the keys' sequence (0: the same),
  or, when given, the natural positions `q_index_T` against keys at `kv_index_S` (the
  context-parallel layout, where neither is contiguous).
  """
  b, t, n, h = q_BxTxNxH.shape
  s, k_heads = k_BxSxKxH.shape[1], k_BxSxKxH.shape[2]
  q_BxTxKxGxH = q_BxTxNxH.reshape(b, t, k_heads, n // k_heads, h)
  logits_BxKxGxTxS = jnp.einsum("btkgh,bskh->bkgts", q_BxTxKxGxH, k_BxSxKxH,
                                preferred_element_type=jnp.float32) * (h ** -0.5)
  if q_index_T is None:
    q_index_T = q_offset + jnp.arange(t)
  if kv_index_S is None:
    kv_index_S = jnp.arange(s)
  mask_BxTxS = (q_index_T[:, None] >= kv_index_S[None, :])[None]
  if segment_ids_BxS is not None:
    if q_segment_ids_BxT is None:
      q_segment_ids_BxT = segment_ids_BxS[:, q_offset:q_offset + t]
    mask_BxTxS = mask_BxTxS & (q_segment_ids_BxT[:, :, None] == segment_ids_BxS[:, None, :])
  logits_BxKxGxTxS = jnp.where(mask_BxTxS[:, None, None], logits_BxKxGxTxS,
                               jnp.finfo(jnp.float32).min)
  probs_BxKxGxTxS = jax.nn.softmax(logits_BxKxGxTxS, axis=-1).astype(v_BxSxKxH.dtype)
  out_BxTxKxGxH = jnp.einsum("bkgts,bskh->btkgh", probs_BxKxGxTxS, v_BxSxKxH)
  return out_BxTxKxGxH.reshape(b, t, n, h)


def attention_chunked(q_BxLxNxH, k_BxLxKxH, v_BxLxKxH, segment_ids_BxL,
                      chunk: int = ATTENTION_CHUNK) -> jax.Array:
  """Causal attention by query blocks, each against only the keys at or before it.

  The same arithmetic as `attention_einsum` row by row, but the blocks above the diagonal
  are never computed: about half the work and memory of a full L x L at long context.
  """
  l = q_BxLxNxH.shape[1]
  if l <= chunk or l % chunk:
    return attention_einsum(q_BxLxNxH, k_BxLxKxH, v_BxLxKxH, segment_ids_BxL)
  outs = []
  for start in range(0, l, chunk):
    end = start + chunk
    outs.append(attention_einsum(q_BxLxNxH[:, start:end], k_BxLxKxH[:, :end],
                                 v_BxLxKxH[:, :end],
                                 None if segment_ids_BxL is None else segment_ids_BxL[:, :end],
                                 q_offset=start))
  return jnp.concatenate(outs, axis=1)


def attention_fused(q_BxLxNxH, k_BxLxKxH, v_BxLxKxH, segment_ids_BxL, impl: str) -> jax.Array:
  """`jax.nn.dot_product_attention` (cuDNN flash attention or XLA), causal by `is_causal`.

  With no segment ids (the paper's concatenate-and-chunk packing) no mask is built at all.
  Packed documents need a B x 1 x L x L boolean mask: the public fused API has no segment
  ids, only per-row lengths, which cannot express several documents in one row.
  """
  mask = None
  if segment_ids_BxL is not None:
    mask = (segment_ids_BxL[:, None, :, None] == segment_ids_BxL[:, None, None, :])
  return jax.nn.dot_product_attention(q_BxLxNxH, k_BxLxKxH, v_BxLxKxH, mask=mask,
                                      is_causal=True, implementation=impl)


def _repeat_kv(x_BxSxKxH: jax.Array, n_heads: int) -> jax.Array:
  """Grouped-query keys/values as one per query head (per-device kernels need equal heads)."""
  k_heads = x_BxSxKxH.shape[2]
  return x_BxSxKxH if k_heads == n_heads else jnp.repeat(x_BxSxKxH, n_heads // k_heads, axis=2)


def per_device(local_fn, q_BxLxNxH, k_BxLxNxH, v_BxLxNxH, segment_ids_BxL, extra=(),
               extra_specs=()):
  """Runs `local_fn(q, k, v, q_segment_ids, kv_segment_ids, *extra)` on each device's shard
  of the rows, heads (over `tensor`) and queries (over `context`); the keys, values and
  their segment ids come gathered over `context`: the whole row, in the balanced order."""
  mesh = jax.sharding.get_abstract_mesh()
  q_spec = logical_to_spec(Q_NAMES, q_BxLxNxH.shape, dict(mesh.shape))
  seg_spec = None if segment_ids_BxL is None else P(q_spec[0], q_spec[1])
  gather = context_parallel.context_size() > 1

  def local(q, k, v, seg, *rest):
    if gather:
      k, v = (jax.lax.all_gather(x, context_parallel.AXIS, axis=1, tiled=True) for x in (k, v))
    seg_kv = seg
    if gather and seg is not None:
      seg_kv = jax.lax.all_gather(seg, context_parallel.AXIS, axis=1, tiled=True)
    return local_fn(q, k, v, seg, seg_kv, *rest)

  return jax.shard_map(local, mesh=mesh,
                       in_specs=(q_spec, q_spec, q_spec, seg_spec, *extra_specs),
                       out_specs=q_spec, check_vma=False)(
                           q_BxLxNxH, k_BxLxNxH, v_BxLxNxH, segment_ids_BxL, *extra)


def attention_context_einsum(q_BxLxNxH, k_BxLxNxH, v_BxLxNxH, segment_ids_BxL) -> jax.Array:
  """Reference attention with the sequence sharded over `context`: per device, its queries
  against the gathered keys, masked by natural positions."""
  length = q_BxLxNxH.shape[1]
  shards = context_parallel.context_size()
  order_L = jnp.asarray(context_parallel.balanced_order(length, shards))

  def local(q, k, v, seg_q, seg_kv):
    t = q.shape[1]
    q_index = jax.lax.dynamic_slice_in_dim(
        order_L, jax.lax.axis_index(context_parallel.AXIS) * t, t)
    return attention_einsum(q, k, v, seg_kv, q_segment_ids_BxT=seg_q, q_index_T=q_index,
                            kv_index_S=order_L)

  return per_device(local, q_BxLxNxH, k_BxLxNxH, v_BxLxNxH, segment_ids_BxL)


def attend(q_BxLxNxH, k_BxLxKxH, v_BxLxKxH, segment_ids_BxL, impl: str,
           splash_blocks=None, interpret: bool = False) -> jax.Array:
  """Causal attention with the resolved kernel `impl` (see `resolve`)."""
  if impl == "splash":
    from jpeglm import splash  # the Pallas TPU ops import only when used
    n = q_BxLxNxH.shape[2]
    return splash.splash_attention(q_BxLxNxH, _repeat_kv(k_BxLxKxH, n), _repeat_kv(v_BxLxKxH, n),
                                   segment_ids_BxL, splash_blocks, interpret)
  if context_parallel.context_size() > 1:
    n = q_BxLxNxH.shape[2]
    return attention_context_einsum(q_BxLxNxH, _repeat_kv(k_BxLxKxH, n),
                                    _repeat_kv(v_BxLxKxH, n), segment_ids_BxL)
  if impl == "einsum":
    return attention_einsum(q_BxLxNxH, k_BxLxKxH, v_BxLxKxH, segment_ids_BxL)
  if impl == "chunked":
    return attention_chunked(q_BxLxNxH, k_BxLxKxH, v_BxLxKxH, segment_ids_BxL)
  return attention_fused(q_BxLxNxH, k_BxLxKxH, v_BxLxKxH, segment_ids_BxL, impl)

