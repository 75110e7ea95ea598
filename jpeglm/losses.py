"""Next-token cross entropy in float32, with a token mask and an optional z-loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def cross_entropy(logits_BxLxV: jax.Array, targets_BxL: jax.Array,
                  weights_BxL: jax.Array | None = None, z_loss: float = 0.0
                  ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Mean weighted next-token loss (nats) plus `z_loss * mean(log(Z)^2)`.

  `targets_BxL[b, i]` is the token that follows position i (the data pipeline shifts);
  `weights_BxL` is 1 for real tokens and 0 for padding. Returns (loss, aux) with aux
  {"nll": mean NLL without the z term, "z_loss": mean log(Z)^2, "weight": token count}.
  """
  logits_BxLxV = logits_BxLxV.astype(jnp.float32)
  if weights_BxL is None:
    weights_BxL = jnp.ones(targets_BxL.shape, jnp.float32)
  weights_BxL = weights_BxL.astype(jnp.float32)
  log_z_BxL = jax.nn.logsumexp(logits_BxLxV, axis=-1)
  target_logit_BxL = jnp.take_along_axis(logits_BxLxV, targets_BxL[..., None], axis=-1)[..., 0]
  weight = jnp.maximum(jnp.sum(weights_BxL), 1.0)
  nll = jnp.sum((log_z_BxL - target_logit_BxL) * weights_BxL) / weight
  z_squared = jnp.sum(jnp.square(log_z_BxL) * weights_BxL) / weight
  loss = nll + z_loss * z_squared if z_loss else nll
  return loss, {"nll": nll, "z_loss": z_squared, "weight": jnp.sum(weights_BxL)}
