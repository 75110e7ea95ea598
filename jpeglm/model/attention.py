"""Causal self-attention kernels and the one place that picks between them.

Kernels (`model.attention`):
  - `einsum`: the reference, an explicit mask over the whole L x L score matrix.
  - `chunked`: query blocks against only the keys at or before them, the backward pass
    recomputing each block from the saved log-sum-exp (fastest on CPU).
  - `xla` / `cudnn` / `cudnn_or_xla`: `jax.nn.dot_product_attention` (cuDNN flash on GPU).
  - `splash`: the Pallas splash kernel (TPU; interpret mode elsewhere, for tests), run per
    device under `jax.shard_map`; it never holds more than a block of scores.
  - `auto`: splash on TPU, cuDNN on GPU, chunked on CPU.

With a `context` mesh axis the sequence is sharded (jpeglm.model.context_parallel): each device
holds its queries, gathers the keys and values of the whole row, and masks by natural
positions, so the balanced (zigzag) sequence order needs no special kernel.

Shapes in names: B batch, T queries, S keys, L both, N query heads, K key/value heads,
G = N // K, H head_dim.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from jpeglm.model import context_parallel
from jpeglm.errors import ConfigError

ATTENTION_IMPLS = ("auto", "splash", "einsum", "chunked", "xla", "cudnn", "cudnn_or_xla")
# Query block of the "chunked" attention: blocks above the causal diagonal are skipped.
ATTENTION_CHUNK = 128
Q_NAMES = context_parallel.Q_NAMES
# Names the remat policies can save (jpeglm.model.remat): a kernel's own residuals.
RESIDUALS_NAME = "attention_residuals"


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

  The blocks above the diagonal are never computed (about half the work of a full L x L),
  and the backward pass recomputes each block's probabilities from the saved log-sum-exp
  instead of keeping them (FlashAttention's residuals: q, k, v, the output and one float
  per query): on CPU that is less memory traffic than the scores of every block. Heads
  are moved in front of the length once, so each block is one batched matmul per
  key/value head with its G query heads as extra rows.
  """
  b, l, n, h = q_BxLxNxH.shape
  k_heads = k_BxLxKxH.shape[2]
  g = n // k_heads
  # Rows in (position, query head of the group) order: [B, K, L*G, H].
  q_BxKxRxH = (q_BxLxNxH.reshape(b, l, k_heads, g, h).transpose(0, 2, 1, 3, 4)
               .reshape(b, k_heads, l * g, h))
  k_BxKxLxH, v_BxKxLxH = (x.transpose(0, 2, 1, 3) for x in (k_BxLxKxH, v_BxLxKxH))
  out_BxKxRxH = _blockwise_attention(q_BxKxRxH, k_BxKxLxH, v_BxKxLxH, segment_ids_BxL,
                                     min(chunk, l))
  return (out_BxKxRxH.reshape(b, k_heads, l, g, h).transpose(0, 2, 1, 3, 4)
          .reshape(b, l, n, h))


def _query_blocks(length: int, chunk: int) -> list[tuple[int, int]]:
  return [(start, min(start + chunk, length)) for start in range(0, length, chunk)]


def _block_scores(q_BxKxRxH, k_BxKxSxH, start: int, g: int, segment_ids_BxL) -> jax.Array:
  """Scaled, masked float32 scores [B, K, R, S]: the query rows of positions start .. S - 1
  (R = their count x G) against the keys 0 .. S - 1."""
  r, h = q_BxKxRxH.shape[2], q_BxKxRxH.shape[3]
  s = k_BxKxSxH.shape[2]
  scores_BxKxRxS = jnp.einsum("bkrh,bksh->bkrs", q_BxKxRxH, k_BxKxSxH,
                              preferred_element_type=jnp.float32) * (h ** -0.5)
  q_pos_R = start + jnp.arange(r) // g
  mask_BxRxS = (q_pos_R[:, None] >= jnp.arange(s)[None, :])[None]
  if segment_ids_BxL is not None:
    seg_q_BxR = jnp.repeat(segment_ids_BxL[:, start:s], g, axis=1)
    mask_BxRxS = mask_BxRxS & (seg_q_BxR[:, :, None] == segment_ids_BxL[:, None, :s])
  return jnp.where(mask_BxRxS[:, None], scores_BxKxRxS, jnp.finfo(jnp.float32).min)


def _blockwise_forward(q_BxKxRxH, k_BxKxLxH, v_BxKxLxH, segment_ids_BxL, chunk):
  """(output [B, K, R, H], log-sum-exp of each row's scores [B, K, R] in float32)."""
  l = k_BxKxLxH.shape[2]
  g = q_BxKxRxH.shape[2] // l
  outs, lses = [], []
  for start, end in _query_blocks(l, chunk):
    scores = _block_scores(q_BxKxRxH[:, :, start * g:end * g], k_BxKxLxH[:, :, :end], start, g,
                           segment_ids_BxL)
    top = jnp.max(scores, axis=-1, keepdims=True)
    p = jnp.exp(scores - top)
    total = jnp.sum(p, axis=-1, keepdims=True)
    out = jnp.einsum("bkrs,bksh->bkrh", p.astype(v_BxKxLxH.dtype), v_BxKxLxH[:, :, :end],
                     preferred_element_type=jnp.float32)
    outs.append((out / total).astype(q_BxKxRxH.dtype))
    lses.append((top + jnp.log(total))[..., 0])
  return jnp.concatenate(outs, axis=2), jnp.concatenate(lses, axis=2)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _blockwise_attention(q_BxKxRxH, k_BxKxLxH, v_BxKxLxH, segment_ids_BxL, chunk):
  return _blockwise_forward(q_BxKxRxH, k_BxKxLxH, v_BxKxLxH, segment_ids_BxL, chunk)[0]


def _blockwise_attention_fwd(q_BxKxRxH, k_BxKxLxH, v_BxKxLxH, segment_ids_BxL, chunk):
  out, lse = _blockwise_forward(q_BxKxRxH, k_BxKxLxH, v_BxKxLxH, segment_ids_BxL, chunk)
  out, lse = (checkpoint_name(x, RESIDUALS_NAME) for x in (out, lse))
  return out, (q_BxKxRxH, k_BxKxLxH, v_BxKxLxH, segment_ids_BxL, out, lse)


def _blockwise_attention_bwd(chunk, residuals, dout_BxKxRxH):
  q, k, v, segment_ids_BxL, out, lse_BxKxR = residuals
  l, h = k.shape[2], k.shape[3]
  g = q.shape[2] // l
  # d(softmax): ds = p * (dp - sum(p * dp)), and sum(p * dp) = sum(dout * out) per row.
  delta_BxKxR = jnp.sum(dout_BxKxRxH.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)
  dk = jnp.zeros(k.shape, jnp.float32)
  dv = jnp.zeros(v.shape, jnp.float32)
  dqs = []
  for start, end in _query_blocks(l, chunk):
    rows = slice(start * g, end * g)
    q_blk, dout_blk = q[:, :, rows], dout_BxKxRxH[:, :, rows]
    scores = _block_scores(q_blk, k[:, :, :end], start, g, segment_ids_BxL)
    p = jnp.exp(scores - lse_BxKxR[:, :, rows, None])
    dv = dv.at[:, :, :end].add(jnp.einsum("bkrs,bkrh->bksh", p.astype(dout_blk.dtype), dout_blk,
                                          preferred_element_type=jnp.float32))
    dp = jnp.einsum("bkrh,bksh->bkrs", dout_blk, v[:, :, :end],
                    preferred_element_type=jnp.float32)
    ds = (p * (dp - delta_BxKxR[:, :, rows, None]) * (h ** -0.5)).astype(q.dtype)
    dqs.append(jnp.einsum("bkrs,bksh->bkrh", ds, k[:, :, :end],
                          preferred_element_type=jnp.float32))
    dk = dk.at[:, :, :end].add(jnp.einsum("bkrs,bkrh->bksh", ds, q_blk,
                                          preferred_element_type=jnp.float32))
  dq = jnp.concatenate(dqs, axis=2)
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None


_blockwise_attention.defvjp(_blockwise_attention_fwd, _blockwise_attention_bwd)


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

  return context_parallel.per_device(local, q_BxLxNxH, k_BxLxNxH, v_BxLxNxH, segment_ids_BxL)


def attend(q_BxLxNxH, k_BxLxKxH, v_BxLxKxH, segment_ids_BxL, impl: str,
           splash_blocks=None, interpret: bool = False) -> jax.Array:
  """Causal attention with the resolved kernel `impl` (see `resolve`)."""
  if impl == "splash":
    from jpeglm.model import splash  # the Pallas TPU ops import only when used
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

