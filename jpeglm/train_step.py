"""The one pure training step: loss and gradients (accumulated over micro-batches), the
optimizer update, and the step's metrics; jitted once by the trainer with shardings and
donation. The model enters as `apply_fn(params, batch) -> logits`."""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from jpeglm.losses import token_losses
from jpeglm.preemption import STOP_DATA_FAILED

LN2 = math.log(2.0)


def _micro_batches(batch: dict, count: int) -> dict:
  """[B, ...] arrays as [count, B / count, ...]; rows stay in order."""
  return {k: v.reshape(count, v.shape[0] // count, *v.shape[1:]) for k, v in batch.items()}


def make_train_step(apply_fn: Callable, optimizer: optax.GradientTransformation,
                    schedule: optax.Schedule, grad_accum: int = 1, z_loss: float = 0.0,
                    skip_nonfinite: bool = False) -> Callable:
  """step(state, batch) -> (state, metrics); state = {"step", "params", "opt_state"}.

  `batch` may hold "stop" (int32 per row, see jpeglm.preemption); metric "stop" is its max.
  A step whose batch some process could not fill (STOP_DATA_FAILED) leaves the state as it
  was. Without `skip_nonfinite`, a non-finite step halts the state: it and every later step
  leave params and optimizer state untouched and set state["step"] to -1, so the host, which
  learns of it a step late, can still save the last good state.
  """

  def step(state: dict, batch: dict) -> tuple[dict, dict]:
    batch = dict(batch)
    stop_B = batch.pop("stop", None)
    stop = jnp.zeros((), jnp.int32) if stop_B is None else jnp.max(stop_B)
    usable = stop < STOP_DATA_FAILED
    total_weight = jnp.maximum(jnp.sum(batch["weights"]), 1.0)

    def loss_fn(params, micro):
      logits = apply_fn(params, micro)
      nll, z_squared = token_losses(logits, micro["targets"], micro["weights"])
      # Normalised by the whole batch's token count, so summed micro-gradients are the
      # gradient of the batch mean.
      return (nll + z_loss * z_squared) / total_weight, nll

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if grad_accum == 1:
      (_, nll), grads = grad_fn(state["params"], batch)
    else:
      def accumulate(carry, micro):
        grads_sum, nll_sum = carry
        (_, nll), grads = grad_fn(state["params"], micro)
        return (jax.tree.map(jnp.add, grads_sum, grads), nll_sum + nll), None

      zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state["params"])
      (grads, nll), _ = jax.lax.scan(accumulate, (zeros, jnp.zeros((), jnp.float32)),
                                     _micro_batches(batch, grad_accum))
      grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, state["params"])

    loss = nll / total_weight
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    count = state["step"]
    if skip_nonfinite:
      apply = usable & finite
      next_count = count + usable.astype(count.dtype)
    else:
      halted = count < 0
      apply = usable & finite & ~halted
      next_count = jnp.where(halted | (usable & ~finite), -1, count + usable.astype(count.dtype))
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(apply, n, o), new, old)
    params, opt_state = keep(params, state["params"]), keep(opt_state, state["opt_state"])
    metrics = {
        "loss": loss,
        "bits_per_byte": nll / LN2 / jnp.maximum(jnp.sum(batch["target_bytes"]), 1),
        "grad_norm": grad_norm,
        "lr": schedule(state["step"]),
        "tokens": jnp.sum(batch["weights"]),
        "finite": finite,
        "stop": stop,
    }
    return {"step": next_count, "params": params, "opt_state": opt_state}, metrics

  return step


def make_eval_step(apply_fn: Callable) -> Callable:
  """eval(params, batch) -> sums {"nll", "tokens", "bytes"} to add up over batches."""

  def evaluate(params, batch: dict) -> dict:
    logits = apply_fn(params, batch)
    nll, _ = token_losses(logits, batch["targets"], batch["weights"])
    return {"nll": nll, "tokens": jnp.sum(batch["weights"]),
            "bytes": jnp.sum(batch["target_bytes"]).astype(jnp.float32)}

  return evaluate
