"""Pretraining: `train_and_evaluate(config, workdir)`, the program behind `jpeglm train`.

One pure train step, jitted once with shardings and donation. The host never waits on the
device without reason: step N's metrics are read after step N+1 is dispatched. Orbax
checkpoints (state + data iterator + config + tokenizer) are saved asynchronously every
`train.checkpoint_every` steps, at the end, and on SIGTERM; rerunning the same command with
the same workdir resumes where the last checkpoint left off.

Stopping early: every process writes a stop code into its rows of each batch (preempted, out
of time, or no data: see jpeglm.preemption), and all learn the maximum from the same step's
metrics, so all save the same step. A data failure or a non-finite loss (on_nonfinite=stop)
leaves the state unchanged from that step on; the last good step is saved and the run ends
with a one-line error. A failed checkpoint write ends it too, naming the step and path.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm import tqdm

from data_pipeline import host_batches, pipeline
from jpeglm import checkpointing, flops, model as model_lib, multihost, optimizer as opt_lib
from jpeglm import faults as faults_lib, run_setup, sharding
from jpeglm.errors import JpeglmError
from jpeglm.metrics_log import MetricsLog
from jpeglm.train_samples import TrainSamples
from jpeglm import preemption as preemption_lib
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


# The train batch's arrays; the step also takes "stop" (int32 per row, jpeglm.preemption).
_BATCH_DTYPES = {"inputs": np.int32, "targets": np.int32, "segment_ids": np.int32,
                 "positions": np.int32, "weights": np.float32, "target_tokens": np.int32,
                 "target_bytes": np.int32}
_PER_TOKEN = ("inputs", "targets", "segment_ids", "positions", "weights")


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
  started = time.perf_counter()
  budget = 60.0 * float(config.train.get("time_budget_minutes", 0) or 0)
  is_main = jax.process_index() == 0
  run_setup.check_workdir_config(config, workdir)
  model_lib.ModelConfig.from_config(config.model)  # validates before any compute
  mesh = sharding.make_mesh(config.mesh)
  sharding.check_batch_layout(config.train.global_batch, config.train.grad_accum,
                              dict(mesh.shape))
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
  checkpointer.check_writable()
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
  stop_on_nonfinite = train.get("on_nonfinite", "stop") == "stop"
  step_fn = make_train_step(apply_fn, optimizer, schedule, grad_accum=train.grad_accum,
                            z_loss=train.z_loss, skip_nonfinite=not stop_on_nonfinite)
  local_rows = train.global_batch // jax.process_count()
  seq_len = config.data.seq_len
  batch_shapes = {k: (train.global_batch,) + ((seq_len,) if k in _PER_TOKEN else ())
                  for k in _BATCH_DTYPES}
  batch_shardings = {k: sharding.batch_sharding(mesh, len(s), s) for k, s in batch_shapes.items()}
  step_shardings = {**batch_shardings, "stop": batch_shardings["target_tokens"]}
  with jax.set_mesh(mesh):
    jit_step = jax.jit(step_fn, in_shardings=(layout.shardings, step_shardings),
                       out_shardings=(layout.shardings, None), donate_argnums=0)
    jit_eval = jax.jit(make_eval_step(apply_fn),
                       in_shardings=(layout.shardings["params"], batch_shardings))
  # Fed in place of this host's rows once its data has failed; the step then changes nothing.
  empty_rows = {k: np.zeros((local_rows,) + s[1:], _BATCH_DTYPES[k])
                for k, s in batch_shapes.items()}

  eval_config = ml_collections.ConfigDict(config.to_dict())
  eval_config.train.global_batch = local_rows
  metrics_log = MetricsLog(workdir, enabled=is_main)
  samples = TrainSamples(config, workdir, tokenizer, metrics_log, mesh)  # train.sample_every
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

  def save(step: int, data_state: dict) -> None:
    if saved_at[0] == step:
      return  # already saved at this step (a checkpoint step that is also a stop)
    saved_at[0] = step
    began = time.perf_counter()
    merged = {"shards": {}}
    for part in multihost.merge_json(data_state):
      merged["shards"].update(part["shards"])
    checkpointer.save(step, state, merged,
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

  stop = _Stop()

  def finish(step: int, device_metrics) -> None:
    """Reads step `step`'s metrics (already computed: a later step is queued), logs, and
    notes in `stop` any reason to stop; every process reads the same metrics, so all agree."""
    nonlocal last_logged
    m = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
    code, finite = int(m.pop("stop")), bool(m.pop("finite"))
    if code >= preemption_lib.STOP_DATA_FAILED or stop.first_unchanged is not None:
      stop.note(code, step, changed_state=False)
      return  # the step left the state as it was: nothing to log
    if not finite:
      if stop_on_nonfinite:
        stop.nonfinite = (m["loss"], m["grad_norm"])
        stop.note(preemption_lib.STOP_NONFINITE, step, changed_state=False)
        return
      log.warning("step %d: non-finite loss, update skipped", step)
    stop.note(code, step, changed_state=True)
    window.steps += 1
    window.tokens += m.pop("tokens")
    if step % train.log_every == 0 or step == train.steps or code:
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

  def next_rows() -> tuple[dict, int]:
    """This host's rows of the next batch and its stop code."""
    if stop.data_error is None:
      waited = time.perf_counter()
      try:
        local = next(batches)
      except Exception as e:  # noqa: BLE001 - a dead worker, too many bad files, ...
        stop.data_error = _one_line(e)
        log.error("data failed at step %d: %s", step + 1, stop.data_error)
      else:
        window.data_wait += time.perf_counter() - waited
        if local["inputs"].shape[0] != local_rows:
          raise JpeglmError(f"data gave {local['inputs'].shape[0]} rows, expected {local_rows}")
        window.documents += int(np.sum(local["targets"] == eos)) * jax.process_count()
        if preemption.requested:
          return local, preemption_lib.STOP_PREEMPTED
        if budget > 0 and time.perf_counter() - started > budget:
          return local, preemption_lib.STOP_TIME_BUDGET
        return local, preemption_lib.STOP_NONE
    return dict(empty_rows), preemption_lib.STOP_DATA_FAILED

  step = start_step
  recent_data: dict[int, dict | None] = {}  # step -> this host's data state after it
  # The steps trace (and run) with the mesh set, so the model's sharding constraints apply.
  scope = contextlib.ExitStack()
  scope.enter_context(jax.set_mesh(mesh))
  try:
    while step < train.steps and not stop.code:
      local, code = next_rows()
      local = faults.batch(step + 1, local)
      local["stop"] = np.full(local_rows, code, np.int32)
      local["stop"] = np.maximum(local["stop"], checkpointer.stop_code())  # a failed write
      state, device_metrics = jit_step(state, sharding.global_batch_from_local(local, mesh))
      step += 1
      recent_data[step] = batches.get_state() if stop.data_error is None else None
      recent_data.pop(step - 3, None)  # the last good step is at most two behind
      if pending is not None:
        finish(*pending)
      pending = (step, device_metrics)
      bar.update(1)
      checkpointer.check()  # a failed background write stops the run now, not at the next save
      if not stop.code and (step % train.checkpoint_every == 0 or step == train.steps):
        finish(*pending)
        pending = None
        if not stop.code:
          save(step, recent_data[step])
      if not stop.code and train.eval_every and step % train.eval_every == 0:
        evaluate(step)
      if not stop.code:
        samples(step, state["params"])  # grids every train.sample_every steps
      faults.at_step(step, checkpointer.wait)
    if pending is not None:
      finish(*pending)
    if stop.code == preemption_lib.STOP_CHECKPOINT_FAILED:  # on some process: nothing more saved
      raise checkpointer.failure_error(step)
    last_good = stop.last_good(step)
    if stop.first_unchanged:
      # A halted state counts -1; it holds the last good step's weights.
      state = {**state, "step": _scalar_like(state["step"], last_good)}
    had = saved_at[0] == last_good
    if not had:
      save(last_good, recent_data[last_good])
    if step == train.steps and not stop.first_unchanged:
      if train.eval_every and step % train.eval_every:
        last_logged.update(evaluate(step))
    elif stop.code:
      saved = (f"saved step {last_good}" if not had else
               f"step {last_good} was already saved" if last_good else "nothing to save")
      message = stop.describe(train, checkpointer.directory, saved)
      checkpointer.wait()
      if stop.code >= preemption_lib.STOP_DATA_FAILED:
        raise JpeglmError(message)
      if is_main:
        print(f"\n{message}")
    checkpointer.wait()
  finally:
    scope.close()
    bar.close()
    checkpointer.close()
    batches.close()
    metrics_log.close()
    preemption.restore()
  return last_logged


class _Stop:
  """Why this run stops early, as every process learns it from the steps' metrics."""

  def __init__(self):
    self.code = preemption_lib.STOP_NONE
    self.first_unchanged = None  # the first step that left the state as it was
    self.data_error = None  # this host's data failure, one line
    self.nonfinite = None  # (loss, grad norm)

  def note(self, code: int, step: int, changed_state: bool) -> None:
    if not changed_state and self.first_unchanged is None:
      self.first_unchanged = step
    self.code = max(self.code, code)

  def last_good(self, dispatched: int) -> int:
    return self.first_unchanged - 1 if self.first_unchanged else dispatched

  def describe(self, train, directory: str, saved: str) -> str:
    resume = "rerun the same command to resume"
    if self.code == preemption_lib.STOP_TIME_BUDGET:
      return f"time budget of {train.time_budget_minutes} min reached: {saved}; {resume}"
    if self.code == preemption_lib.STOP_PREEMPTED:
      return f"preempted: {saved}; {resume}"
    if self.code == preemption_lib.STOP_DATA_FAILED:
      cause = self.data_error or "on another process (see its log)"
      return f"data failed at step {self.first_unchanged}: {cause}; {saved} in {directory}; {resume}"
    loss, grad_norm = self.nonfinite
    return (f"non-finite loss {loss} (grad norm {grad_norm}) at step {self.first_unchanged}; "
            f"{saved} (the last good state) in {directory}. Lower train.lr, or set "
            f"train.on_nonfinite=skip, and rerun")


def _scalar_like(x: jax.Array, value: int) -> jax.Array:
  return jax.jit(lambda: jnp.asarray(value, x.dtype), out_shardings=x.sharding)()


def _one_line(e: BaseException) -> str:
  lines = [line for line in str(e).splitlines() if line.strip()]
  return f"{type(e).__name__}: {lines[0].strip().rstrip('.')}" if lines else type(e).__name__
