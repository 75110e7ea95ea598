"""Decoding with a key/value cache: the cache, and attention of new tokens against it.

`model.Transformer` and `model.Block` take an optional `KVCache`, as jax-llm-examples'
`forward_layer` does, so training and decoding run the same layer code, the same sharding
rules and (for a prompt's prefill) the same attention kernel. Only a decode step's attention
differs: new queries against the cache, computed here with einsums over the *filled* part
of the cache only, a chunk at a time (a `lax` loop up to the filled length, online softmax
as in flash-decoding). A step at slot s reads about s keys per layer, not the whole context.

Prompts of different lengths share a batch by left padding: slot s of row b holds position
s - starts[b]; slots before starts[b] are padding and never attended to. The filled length is
one number for the whole batch (rows decoded in lockstep), or one per row (continuous
batching, `jpeglm.sampling.continuous`: each row holds its own prompt, started at its own
time); the layout [Y, B, K, S, H] is the same either way.

Shapes in names: Y layers, B batch, T new tokens, S cache slots, C slots per chunk,
N query heads, K key/value heads, G = N // K, H head_dim.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jpeglm.model.sharding import constrain

# Slots read per iteration of a decode step's loop; the cache holds a whole number of them.
# Larger: fewer loop iterations; smaller: less reading past the filled length.
CHUNK = 256
CACHE_NAMES = ("layers", "act_batch", "act_kv_heads", None, "act_head_dim")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
  """Every layer's keys and values, [Y, B, K, S, H], and how far they are filled.

  Slots next to each other per head (as Hugging Face's cache lays them out): a chunk of one
  head is contiguous, which made a decode step's attention 5x faster on CPU than [.., S, K, H].
  """
  k: jax.Array
  v: jax.Array
  starts_B: jax.Array  # int32: first real slot of each row (its left padding)
  # int32: slots filled, a scalar (the same for every row) or [B] (each row its own)
  length: jax.Array

  @classmethod
  def init(cls, n_layers: int, batch: int, size: int, n_kv_heads: int, head_dim: int,
           dtype, starts_B: jax.Array | None = None) -> "KVCache":
    """An empty cache with room for at least `size` slots (rounded up to whole chunks)."""
    size = -(-size // CHUNK) * CHUNK
    shape = (n_layers, batch, n_kv_heads, size, head_dim)
    starts_B = jnp.zeros((batch,), jnp.int32) if starts_B is None else starts_B
    return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype),
               jnp.asarray(starts_B, jnp.int32), jnp.zeros((), jnp.int32))

  @property
  def size(self) -> int:
    return self.k.shape[3]

  @property
  def per_row(self) -> bool:
    return self.length.ndim == 1

  def lengths(self) -> jax.Array:
    """Filled slots as [1, 1] (one for all rows) or [B, 1]: broadcasts against [B, t]."""
    return jnp.reshape(self.length, (-1, 1))

  def positions(self, t: int) -> jax.Array:
    """Positions [B, t] of the next t slots (0 inside a row's padding)."""
    slots_xT = self.lengths() + jnp.arange(t, dtype=jnp.int32)[None, :]
    return jnp.maximum(slots_xT - self.starts_B[:, None], 0)

  def segment_ids(self, t: int) -> jax.Array:
    """[B, t]: 1 for real slots, 0 for padding: a prefill's kernels mask padding by segment."""
    slots_xT = self.lengths() + jnp.arange(t, dtype=jnp.int32)[None, :]
    return (slots_xT >= self.starts_B[:, None]).astype(jnp.int32)

  def write(self, k_YxBxTxKxH: jax.Array, v_YxBxTxKxH: jax.Array) -> "KVCache":
    """Every layer's new keys and values at slots length .. length+T-1, in one in-place write
    (a layer only reads the cache, so it is never copied layer by layer)."""
    t = k_YxBxTxKxH.shape[2]
    k_YxBxKxTxH, v_YxBxKxTxH = (x.transpose(0, 1, 3, 2, 4).astype(self.k.dtype)
                                for x in (k_YxBxTxKxH, v_YxBxTxKxH))
    if self.per_row:  # each row at its own slot
      k = write_rows(self.k, k_YxBxKxTxH, self.length)
      v = write_rows(self.v, v_YxBxKxTxH, self.length)
    else:
      k = jax.lax.dynamic_update_slice_in_dim(self.k, k_YxBxKxTxH, self.length, 3)
      v = jax.lax.dynamic_update_slice_in_dim(self.v, v_YxBxKxTxH, self.length, 3)
    return dataclasses.replace(self, k=constrain(k, CACHE_NAMES), v=constrain(v, CACHE_NAMES),
                               length=self.length + t)


def write_rows(cache_YxBxKxSxH: jax.Array, new_YxBxKxTxH: jax.Array, at_B: jax.Array,
               row_loop: bool = True) -> jax.Array:
  """`new` written at slot at_B[b] of each row b: by default as a loop of one slice update per
  row, which XLA does in place. The single scatter (`row_loop=False`) copies the cache: on CPU
  16 ms a step at 32 rows of 1,280 slots against 0.7 ms, and compiled for TPU (v5p, the 1b at
  12,288) it kept a copy of the device's cache in temporaries, 46x-2,000x the bytes of the loop
  (benchmarks/aot_decode_tpu.py, docs/results.md). Not checked on a GPU."""
  if not row_loop:
    scatter = jax.vmap(lambda old, new, at: jax.lax.dynamic_update_slice_in_dim(old, new, at, 2),
                       in_axes=(1, 1, 0), out_axes=1)
    return scatter(cache_YxBxKxSxH, new_YxBxKxTxH, at_B)

  def one_row(b, cache_YxBxKxSxH):
    new_Yx1xKxTxH = jax.lax.dynamic_slice_in_dim(new_YxBxKxTxH, b, 1, 1)
    return jax.lax.dynamic_update_slice(cache_YxBxKxSxH, new_Yx1xKxTxH, (0, b, 0, at_B[b], 0))
  return jax.lax.fori_loop(0, cache_YxBxKxSxH.shape[1], one_row, cache_YxBxKxSxH)


def attend_cached(q_BxTxNxH: jax.Array, k_new_BxTxKxH: jax.Array, v_new_BxTxKxH: jax.Array,
                  cache: KVCache, layer: jax.Array) -> jax.Array:
  """Causal attention of T new tokens (slots length .. length+T-1) over the filled slots of
  `layer`'s cache and over each other, with one softmax across both.

  The cache is read in chunks of CHUNK slots, only up to its filled length; chunks are
  combined with a running max and sum (online softmax), all in float32.
  """
  b, t, n, h = q_BxTxNxH.shape
  kv_heads = k_new_BxTxKxH.shape[2]
  scale = h ** -0.5
  q_BxTxKxGxH = q_BxTxNxH.reshape(b, t, kv_heads, n // kv_heads, h)
  q_BxKxGxTxH = q_BxTxKxGxH.transpose(0, 2, 3, 1, 4)

  # The new tokens against themselves: causal, padding masked, never empty (a token always
  # sees itself, so a padding slot's output is finite, and ignored).
  new_BxKxGxTxT = jnp.einsum("btkgh,bukh->bkgtu", q_BxTxKxGxH, k_new_BxTxKxH,
                             preferred_element_type=jnp.float32) * scale
  index_T = jnp.arange(t)
  real_BxT = cache.lengths() + index_T[None, :] >= cache.starts_B[:, None]
  valid_BxTxT = ((index_T[:, None] >= index_T[None, :]) & real_BxT[:, None, :]
                 | (index_T[:, None] == index_T[None, :]))
  new_BxKxGxTxT = jnp.where(valid_BxTxT[:, None, None], new_BxKxGxTxT, -jnp.inf)
  max_BxKxGxT = new_BxKxGxTxT.max(-1)
  probs_BxKxGxTxT = jnp.exp(new_BxKxGxTxT - max_BxKxGxT[..., None])
  sum_BxKxGxT = probs_BxKxGxTxT.sum(-1)
  acc_BxKxGxTxH = jnp.einsum("bkgtu,bukh->bkgth", probs_BxKxGxTxT.astype(v_new_BxTxKxH.dtype),
                             v_new_BxTxKxH, preferred_element_type=jnp.float32)

  def chunk(i, carry):
    max_BxKxGxT, sum_BxKxGxT, acc_BxKxGxTxH = carry
    start = i * CHUNK
    at = (layer, 0, 0, start, 0)
    size = (1, b, kv_heads, CHUNK, h)
    k_BxKxCxH = constrain(jax.lax.dynamic_slice(cache.k, at, size)[0], CACHE_NAMES[1:])
    v_BxKxCxH = constrain(jax.lax.dynamic_slice(cache.v, at, size)[0], CACHE_NAMES[1:])
    logits_BxKxGxTxC = jnp.einsum("bkgth,bkch->bkgtc", q_BxKxGxTxH, k_BxKxCxH,
                                  preferred_element_type=jnp.float32) * scale
    slots_C = start + jnp.arange(CHUNK, dtype=jnp.int32)
    valid_BxC = ((slots_C[None, :] < cache.lengths())
                 & (slots_C[None, :] >= cache.starts_B[:, None]))
    logits_BxKxGxTxC = jnp.where(valid_BxC[:, None, None, None, :], logits_BxKxGxTxC, -jnp.inf)
    new_max = jnp.maximum(max_BxKxGxT, logits_BxKxGxTxC.max(-1))
    rescale = jnp.exp(max_BxKxGxT - new_max)
    probs_BxKxGxTxC = jnp.exp(logits_BxKxGxTxC - new_max[..., None])
    acc_BxKxGxTxH = acc_BxKxGxTxH * rescale[..., None] + jnp.einsum(
        "bkgtc,bkch->bkgth", probs_BxKxGxTxC.astype(v_BxKxCxH.dtype), v_BxKxCxH,
        preferred_element_type=jnp.float32)
    return new_max, sum_BxKxGxT * rescale + probs_BxKxGxTxC.sum(-1), acc_BxKxGxTxH

  # Per-row lengths: every row reads up to the longest; the chunks past a row's own length are
  # wholly masked and add exactly nothing (a factor exp(0) = 1 and a sum of zeros).
  chunks = (jnp.max(cache.length) + CHUNK - 1) // CHUNK
  _, sum_BxKxGxT, acc_BxKxGxTxH = jax.lax.fori_loop(
      0, chunks, chunk, (max_BxKxGxT, sum_BxKxGxT, acc_BxKxGxTxH))
  out_BxKxGxTxH = acc_BxKxGxTxH / sum_BxKxGxT[..., None]
  return out_BxKxGxTxH.transpose(0, 3, 1, 2, 4).reshape(b, t, n, h).astype(q_BxTxNxH.dtype)
