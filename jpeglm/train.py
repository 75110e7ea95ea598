"""Pretraining: `train_and_evaluate(config, workdir)`, the program behind `jpeglm train`.

One pure train step, jitted once with shardings and donation. The host never waits on the
device without reason: step N's metrics are read after step N+1 is dispatched. Orbax
checkpoints (state + data iterator + config + tokenizer) are saved asynchronously every
`train.checkpoint_every` steps, at the end, and on SIGTERM; rerunning the same command with
the same workdir resumes where the last checkpoint left off.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from data_pipeline import host_batches, pipeline
from jpeglm import checkpointing, flops, model as model_lib, multihost, optimizer as opt_lib
from jpeglm import faults as faults_lib, run_setup, sharding
from jpeglm.errors import JpeglmError
from jpeglm.metrics_log import MetricsLog
from jpeglm.preemption import PreemptionFlag
from jpeglm.train_state import init_state, state_layout
from jpeglm.train_step import LN2, make_eval_step, make_train_step

log = logging.getLogger("jpeglm.train")


def _train_iterator(config, tokenizer) -> host_batches.HostBatches:
  num_shards = int(config.data.get("num_shards", 0)) or jax.process_count()
  shards = host_batches.owned_shards(num_shards, jax.process_index(), jax.process_count())
  if config.train.global_batch % num_shards:
    raise JpeglmError(f"train.global_batch={config.train.global_batch} is not a multiple of "
                      f"data.num_shards={num_shards}")
  return host_batches.HostBatches(
      [pipeline.make_train_iterator(config, tokenizer, process_index=i, process_count=num_shards)
       for i in shards], shards)


def _checkpoint_meta(config, tokenizer_path: str, step: int) -> dict:
  return {"config": config.to_dict(), "tokenizer": checkpointing.encode_file(tokenizer_path),
          "step": int(step)}


class _Window:
  """Host-side sums over one logging window."""

  def __init__(self):
    self.reset()

  def reset(self):
    self.start = time.perf_counter()
    self.steps = 0
    self.tokens = 0.0
    self.documents = 0
    self.data_wait = 0.0


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (or resumes) the run in `workdir`; returns the last logged metrics."""
  is_main = jax.process_index() == 0
  run_setup.check_workdir_config(config, workdir)
  model_lib.ModelConfig.from_config(config.model)  # validates before any compute
  mesh = sharding.make_mesh(config.mesh)
  if is_main:
    os.makedirs(workdir, exist_ok=True)
  tokenizer = run_setup.resolve_tokenizer(config, workdir, is_main, multihost.barrier)
  if is_main:
    run_setup.write_config(config, workdir)

  train = config.train
  optimizer = opt_lib.make_optimizer(train)
  schedule = opt_lib.learning_rate_schedule(train)
  checkpointer = checkpointing.Checkpointer(
      os.path.join(workdir, run_setup.CHECKPOINT_DIR), keep=train.keep_checkpoints)
  layout = state_layout(config, mesh, optimizer)

  def same_model(meta: dict) -> None:
    run_setup.check_same_model(ml_collections.ConfigDict(meta["config"]), config,
                               f"{checkpointer.directory} (step {meta.get('step')})")

  restored = checkpointer.restore(layout.abstract, check_meta=same_model)
  if restored is None:
    state, _ = init_state(config, mesh, optimizer)
    start_step = 0
  else:
    state, start_step = restored.state, restored.step
  batches = _train_iterator(config, tokenizer)
  if restored is not None and restored.data is not None:
    batches.set_state(restored.data)
  if is_main:
    print(("resuming from step %d" % start_step) if restored else "starting from step 0",
          f"in {workdir}: {sum(x.size for x in jax.tree.leaves(state['params'])):,} parameters, "
          f"mesh {dict(mesh.shape)}, {jax.process_count()} process(es)")

  apply_fn = model_lib.make_apply_fn(layout.graphdef,
                                     segment_masking=config.data.packing == "document")
  step_fn = make_train_step(apply_fn, optimizer, schedule, grad_accum=train.grad_accum,
                            z_loss=train.z_loss,
                            skip_nonfinite=train.get("on_nonfinite", "stop") == "skip")
  local_rows = train.global_batch // jax.process_count()
  seq_len = config.data.seq_len
  batch_shapes = {"inputs": (train.global_batch, seq_len), "targets": (train.global_batch, seq_len),
                  "segment_ids": (train.global_batch, seq_len),
                  "positions": (train.global_batch, seq_len),
                  "weights": (train.global_batch, seq_len), "target_tokens": (train.global_batch,),
                  "target_bytes": (train.global_batch,)}
  batch_shardings = {k: sharding.batch_sharding(mesh, len(s), s) for k, s in batch_shapes.items()}
  with jax.set_mesh(mesh):
    jit_step = jax.jit(step_fn, in_shardings=(layout.shardings, batch_shardings),
                       out_shardings=(layout.shardings, None), donate_argnums=0)
    jit_eval = jax.jit(make_eval_step(apply_fn),
                       in_shardings=(layout.shardings["params"], batch_shardings))

  eval_config = ml_collections.ConfigDict(config.to_dict())
  eval_config.train.global_batch = local_rows
  metrics_log = MetricsLog(workdir, enabled=is_main)
  preemption = PreemptionFlag()
  faults = faults_lib.Faults(jax.process_index())
  flops_per_step = flops.flops_per_token(config.model, seq_len) * train.global_batch * seq_len
  peak = flops.peak_flops(jax.devices()[0].device_kind)
  eos = tokenizer.eos_id
  window = _Window()
  last_logged: dict = {}
  pending = None  # (step, device metrics) of the step dispatched last
  bar = tqdm(total=train.steps, initial=start_step, disable=not is_main, unit="step",
             dynamic_ncols=True)

  saved_at = [start_step]

  def save(step: int) -> None:
    if saved_at[0] == step:
      return  # already saved at this step (a checkpoint step that is also a stop)
    saved_at[0] = step
    began = time.perf_counter()
    data_state = {"shards": {}}
    for part in multihost.merge_json(batches.get_state()):
      data_state["shards"].update(part["shards"])
    checkpointer.save(step, state, data_state,
                      _checkpoint_meta(config, os.path.join(workdir, run_setup.TOKENIZER_FILE),
                                       step))
    # Only this part blocks training; Orbax writes the files in the background meanwhile.
    metrics_log.write(step, {"checkpoint_blocking_seconds": time.perf_counter() - began})

  def evaluate(step: int) -> dict:
    sums = {"nll": 0.0, "tokens": 0.0, "bytes": 0.0}
    # Every process reads the whole (small) held-out split; identical rows on each process
    # leave the mean unchanged, and no split is ever too small for the process count.
    with pipeline.make_eval_iterator(eval_config, tokenizer, process_index=0,
                                     process_count=1) as eval_batches:
      for local in eval_batches:
        out = jax.device_get(jit_eval(state["params"],
                                      sharding.global_batch_from_local(local, mesh)))
        for k in sums:
          sums[k] += float(out[k])
    result = {"eval_loss": sums["nll"] / max(sums["tokens"], 1.0),
              "eval_bits_per_byte": sums["nll"] / LN2 / max(sums["bytes"], 1.0)}
    metrics_log.write(step, result)
    return result

  def finish(step: int, device_metrics) -> None:
    """Reads step `step`'s metrics (already computed: a later step is queued) and logs."""
    nonlocal last_logged
    m = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
    if not m.pop("finite"):
      if train.get("on_nonfinite", "stop") == "stop":
        raise JpeglmError(f"non-finite loss {m['loss']} (grad norm {m['grad_norm']}) at step "
                          f"{step}; the last checkpoint is step {checkpointer.latest_step()}. "
                          "Lower train.lr, or set train.on_nonfinite=skip")
      log.warning("step %d: non-finite loss, update skipped", step)
    window.steps += 1
    window.tokens += m.pop("tokens")
    if step % train.log_every == 0 or step == train.steps:
      seconds = time.perf_counter() - window.start
      per_step = seconds / max(window.steps, 1)
      seen, skipped = batches.bad_inputs()
      m.update(steps_per_second=window.steps / seconds, tokens_per_second=window.tokens / seconds,
               images_per_second=window.documents / seconds,
               data_wait_fraction=window.data_wait / seconds, bad_inputs=skipped)
      if peak:
        m["mfu"] = flops_per_step / per_step / (peak * jax.device_count())
      metrics_log.write(step, m)
      bar.set_postfix(loss=f"{m['loss']:.4f}", bpb=f"{m['bits_per_byte']:.3f}",
                      tok_s=f"{m['tokens_per_second']:,.0f}", refresh=False)
      last_logged = {"step": step, **m}
      window.reset()

  step = start_step
  started = time.perf_counter()
  budget = 60.0 * float(train.get("time_budget_minutes", 0) or 0)
  # The steps trace (and run) with the mesh set, so the model's sharding constraints apply.
  scope = contextlib.ExitStack()
  scope.enter_context(jax.set_mesh(mesh))
  try:
    while step < train.steps:
      waited = time.perf_counter()
      local = next(batches)
      window.data_wait += time.perf_counter() - waited
      window.documents += int(np.sum(local["targets"] == eos)) * jax.process_count()
      if local["inputs"].shape[0] != local_rows:
        raise JpeglmError(f"data gave {local['inputs'].shape[0]} rows, expected {local_rows}")
      state, device_metrics = jit_step(state, sharding.global_batch_from_local(local, mesh))
      step += 1
      if pending is not None:
        finish(*pending)
      pending = (step, device_metrics)
      bar.update(1)
      if step % train.checkpoint_every == 0 or step == train.steps:
        finish(*pending)
        pending = None
        save(step)
      if train.eval_every and step % train.eval_every == 0:
        evaluate(step)
      faults.at_step(step)
      stop = preemption.requested
      out_of_time = budget > 0 and time.perf_counter() - started > budget
      if jax.process_count() > 1 and step % train.log_every == 0:
        stop, out_of_time = multihost.any_process(stop), multihost.any_process(out_of_time)
      if (stop or out_of_time) and step < train.steps:
        if pending is not None:
          finish(*pending)
          pending = None
        save(step)
        why = "preempted" if stop else f"time budget of {train.time_budget_minutes} min reached"
        if is_main:
          print(f"\n{why}: saved step {step}; rerun the same command to resume")
        break
    if pending is not None:
      finish(*pending)
    if step == train.steps and train.eval_every and step % train.eval_every:
      last_logged.update(evaluate(step))
  finally:
    scope.close()
    bar.close()
    checkpointer.close()
    batches.close()
    metrics_log.close()
    preemption.restore()
  return last_logged
