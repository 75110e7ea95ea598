"""Choosing the next token from logits: temperature, top-k, top-p, an allowed-token mask.

Pure JAX on a batch, so it runs inside the jitted decode loop. Filters follow their usual
definitions: top-k keeps the k largest logits; top-p keeps the smallest set of tokens whose
probability mass reaches p (the most likely token always stays); temperature 0 is greedy.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

NEG_INF = -1e30


def scaled_logits(logits_BxV: jax.Array, allowed_BxV: jax.Array | None,
                  temperature: float) -> jax.Array:
  """float32 logits with disallowed tokens at -inf, divided by the temperature (when above
  0): what every filter and draw starts from, so that the samplers' values agree bit for bit."""
  logits_BxV = logits_BxV.astype(jnp.float32)
  if allowed_BxV is not None:
    logits_BxV = jnp.where(allowed_BxV, logits_BxV, NEG_INF)
  if temperature > 0:
    logits_BxV = logits_BxV / temperature
  return logits_BxV


def filter_logits(logits_BxV: jax.Array, temperature: float, top_k: int, top_p: float,
                  allowed_BxV: jax.Array | None = None) -> jax.Array:
  """Logits with disallowed and filtered-out tokens at -inf, scaled by 1/temperature."""
  logits_BxV = scaled_logits(logits_BxV, allowed_BxV, temperature)
  vocab = logits_BxV.shape[-1]
  if 0 < top_k < vocab:
    # The min of the k values, not their last: XLA:CPU turns a top_k read only at [:, -1:]
    # into a full sort of the vocabulary (20x slower); the two are the same value.
    kth_B1 = jnp.min(jax.lax.top_k(logits_BxV, top_k)[0], axis=-1, keepdims=True)
    logits_BxV = jnp.where(logits_BxV >= kth_B1, logits_BxV, NEG_INF)
  if 0 < top_p < 1:
    order_BxV = jnp.argsort(-logits_BxV, axis=-1)
    sorted_BxV = jnp.take_along_axis(logits_BxV, order_BxV, axis=-1)
    probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
    # Mass strictly before each token: keep a token while that mass is below p.
    before_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV
    keep_sorted_BxV = before_BxV < top_p
    keep_BxV = jnp.zeros_like(keep_sorted_BxV).at[
        jnp.arange(logits_BxV.shape[0])[:, None], order_BxV].set(keep_sorted_BxV)
    logits_BxV = jnp.where(keep_BxV, logits_BxV, NEG_INF)
  return logits_BxV


def choose(key: jax.Array, logits_BxV: jax.Array, temperature: float, top_k: int, top_p: float,
           allowed_BxV: jax.Array | None = None) -> jax.Array:
  """Next token ids [B]: greedy at temperature 0, else a sample from the filtered logits."""
  filtered_BxV = filter_logits(logits_BxV, temperature, top_k, top_p, allowed_BxV)
  if temperature <= 0:
    return jnp.argmax(filtered_BxV, axis=-1).astype(jnp.int32)
  return jax.random.categorical(key, filtered_BxV, axis=-1).astype(jnp.int32)


def choose_rows(keys_B: jax.Array, logits_BxV: jax.Array, temperature: float, top_k: int,
                top_p: float, allowed_BxV: jax.Array | None = None) -> jax.Array:
  """`choose`, each row drawing with its own key (`jpeglm.sampling.keys`): a row's token
  is the same whatever rows it is batched with."""
  def one_row(key, logits_V, allowed_V):
    allowed_1xV = None if allowed_V is None else allowed_V[None]
    return choose(key, logits_V[None], temperature, top_k, top_p, allowed_1xV)[0]
  return jax.vmap(one_row)(keys_B, logits_BxV, allowed_BxV)
