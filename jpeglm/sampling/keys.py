"""The random key of every sampled token: a function of (seed, prompt index, token index).

A prompt's sample must not depend on which rows it shares a batch with, or on which slot of
a continuous batch it lands in: then a fixed batch, a batch of one and continuous batching
give it the same tokens. So no key is ever split along the batch; each prompt has its own
key, `fold_in(key(seed), index)`, and its j-th generated token draws with
`fold_in(prompt key, j)`.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp


def prompt_keys(seed: int, indices: Sequence[int]) -> jax.Array:
  """Keys [B] of the prompts numbered `indices` in a request sampled with `seed`."""
  base = jax.random.key(seed)
  return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(base, jnp.asarray(indices, jnp.uint32))


def token_keys(prompt_keys_B: jax.Array, steps_B: jax.Array) -> jax.Array:
  """Keys [B] for each row's token number `steps_B` (0: the first generated token)."""
  steps_B = jnp.broadcast_to(jnp.asarray(steps_B, jnp.uint32), prompt_keys_B.shape)
  return jax.vmap(jax.random.fold_in)(prompt_keys_B, steps_B)
