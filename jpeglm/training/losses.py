"""Next-token cross entropy in float32, with a token mask and an optional z-loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def token_losses(logits_BxLxV: jax.Array, targets_BxL: jax.Array, weights_BxL: jax.Array
                 ) -> tuple[jax.Array, jax.Array]:
  """(sum of weighted next-token NLL in nats, sum of weighted log(Z)^2), in float32.

  Sums, not means: the train step divides by the whole batch's token count, so gradients
  accumulated over micro-batches add up to the gradient of the batch mean.
  """
  logits_BxLxV = logits_BxLxV.astype(jnp.float32)
  weights_BxL = weights_BxL.astype(jnp.float32)
  log_z_BxL = jax.nn.logsumexp(logits_BxLxV, axis=-1)
  target_logit_BxL = jnp.take_along_axis(logits_BxLxV, targets_BxL[..., None], axis=-1)[..., 0]
  nll = jnp.sum((log_z_BxL - target_logit_BxL) * weights_BxL)
  z_squared = jnp.sum(jnp.square(log_z_BxL) * weights_BxL)
  return nll, z_squared


def cross_entropy(logits_BxLxV: jax.Array, targets_BxL: jax.Array,
                  weights_BxL: jax.Array | None = None, z_loss: float = 0.0
                  ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Mean weighted next-token loss (nats) plus `z_loss * mean(log(Z)^2)`.

  `targets_BxL[b, i]` is the token that follows position i (the data pipeline shifts);
  `weights_BxL` is 1 for real tokens and 0 for padding. Returns (loss, aux) with aux
  {"nll": mean NLL without the z term, "z_loss": mean log(Z)^2, "weight": token count}.
  """
  if weights_BxL is None:
    weights_BxL = jnp.ones(targets_BxL.shape, jnp.float32)
  nll_sum, z_sum = token_losses(logits_BxLxV, targets_BxL, weights_BxL)
  total = jnp.sum(weights_BxL.astype(jnp.float32))
  weight = jnp.maximum(total, 1.0)
  nll, z_squared = nll_sum / weight, z_sum / weight
  loss = nll + z_loss * z_squared if z_loss else nll
  return loss, {"nll": nll, "z_loss": z_squared, "weight": total}
