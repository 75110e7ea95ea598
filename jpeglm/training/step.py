"""The one pure training step: loss and gradients (accumulated over micro-batches), the
optimizer update, and the step's metrics. The model enters as `apply_fn(params, batch) ->
logits`.

`build(config, mesh)` is the one place the step is jitted (shardings, donation) together with
the state layout and the abstract batch it takes: the trainer, compile-check, plan and the
tests all use it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from data_pipeline import batch_spec
from jpeglm.training.losses import token_losses
from jpeglm.training.stop_codes import STOP_DATA_FAILED

LN2 = math.log(2.0)


def _micro_batches(batch: dict, count: int) -> dict:
  """[B, ...] arrays as [count, B / count, ...]; rows stay in order."""
  return {k: v.reshape(count, v.shape[0] // count, *v.shape[1:]) for k, v in batch.items()}


def make_train_step(apply_fn: Callable, optimizer: optax.GradientTransformation,
                    schedule: optax.Schedule, grad_accum: int = 1, z_loss: float = 0.0,
                    skip_nonfinite: bool = False) -> Callable:
  """step(state, batch) -> (state, metrics); state = {"step", "params", "opt_state"}.

  `batch` may hold "stop" (int32 per row, see jpeglm.training.stop_codes); metric "stop" is its max.
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


@dataclasses.dataclass(frozen=True)
class TrainStep:
  """The trainer's jitted steps and the layouts they take."""
  step: Callable  # (state, batch) -> (state, metrics); the state is donated
  eval: Callable  # (params, batch without "stop") -> sums {"nll", "tokens", "bytes"}
  layout: "StateLayout"  # noqa: F821 - jpeglm.training.state.StateLayout
  batch: dict  # name -> ShapeDtypeStruct of the global batch, with its sharding
  optimizer: optax.GradientTransformation

  def empty_rows(self, rows: int) -> dict[str, np.ndarray]:
    """`rows` rows that train nothing (fed once a host's data has failed), without "stop"."""
    return batch_spec.zeros(rows, self.batch["inputs"].shape[1])


def build(config: ml_collections.ConfigDict, mesh: Mesh) -> TrainStep:
  """The train step of `config` on `mesh`, jitted with the state's and batch's shardings."""
  from jpeglm.model import transformer as model_lib
  from jpeglm.training import optimizer as opt_lib
  from jpeglm.model import sharding
  from jpeglm.training.state import state_layout

  train = config.train
  on_nonfinite = train.on_nonfinite  # "stop" or "skip", checked on load (config_io.settle)
  optimizer = opt_lib.make_optimizer(train)
  layout = state_layout(config, mesh, optimizer)
  apply_fn = model_lib.make_apply_fn(layout.graphdef,
                                     segment_masking=config.data.packing == "document")
  step_fn = make_train_step(apply_fn, optimizer, opt_lib.learning_rate_schedule(train),
                            grad_accum=train.grad_accum, z_loss=train.z_loss,
                            skip_nonfinite=on_nonfinite == "skip")
  batch = {k: jax.ShapeDtypeStruct(shape, dtype,
                                   sharding=sharding.batch_sharding(mesh, len(shape), shape))
           for k, (shape, dtype) in batch_spec.shapes(train.global_batch,
                                                      config.data.seq_len).items()}
  shardings = {k: v.sharding for k, v in batch.items()}
  eval_shardings = {k: s for k, s in shardings.items() if k in batch_spec.DATA}
  with jax.set_mesh(mesh):
    step = jax.jit(step_fn, in_shardings=(layout.shardings, shardings),
                   out_shardings=(layout.shardings, None), donate_argnums=0)
    evaluate = jax.jit(make_eval_step(apply_fn),
                       in_shardings=(layout.shardings["params"], eval_shardings))
  return TrainStep(step, evaluate, layout, batch, optimizer)
