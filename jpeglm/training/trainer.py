"""Pretraining: `train_and_evaluate(config, workdir)`, the program behind `jpeglm train`.

One pure train step, jitted once with shardings and donation. The host never waits on the
device without reason: step N's metrics are read after step N+1 is dispatched. Orbax
checkpoints (state + data iterator + config + tokenizer) are saved asynchronously every
`train.checkpoint_every` steps, at the end, and on SIGTERM; rerunning the same command with
the same workdir resumes where the last checkpoint left off.

Stopping early: every process writes a stop code into its rows of each batch (preempted, out
of time, or no data: see jpeglm.training.stop_codes), and all learn the maximum from the same step's
metrics, so all save the same step. A data failure or a non-finite loss (on_nonfinite=stop)
leaves the state unchanged from that step on; the last good step is saved and the run ends
with a one-line error. A failed checkpoint write ends it too, naming the step and path.

Where the wall time went (startup and compile, steps, data wait, checkpoints, evaluation,
steps redone after a restart) is printed as one `goodput` line at the end: jpeglm.training.goodput.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable
from typing import Protocol

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm import tqdm

from data_pipeline import host_batches, pipeline
from jpeglm.training import checkpointing
from jpeglm.fit import chips, flops
from jpeglm.model import transformer as model_lib
from jpeglm.runtime import files, multihost
from jpeglm.training import goodput as goodput_lib
from jpeglm.training import run_setup
from jpeglm.model import sharding
from jpeglm.training import step as train_step
from jpeglm.errors import JpeglmError
from jpeglm.training.metrics_log import MetricsLog
from jpeglm.training.samples import TrainSamples
from jpeglm.training import stop_codes
from jpeglm.training.stop_codes import PreemptionFlag
from jpeglm.training.state import init_state
from jpeglm.training.step import LN2

log = logging.getLogger("jpeglm.training.trainer")


class StepHooks(Protocol):
  """What a test may do to a run at a chosen step (jpeglm.training.faults.Faults)."""

  def batch(self, step: int, rows: dict) -> dict: ...

  def at_step(self, step: int, finish_writes: Callable[[], None]) -> None: ...


def _train_iterator(config, tokenizer) -> host_batches.HostBatches:
  num_shards = int(config.data.num_shards) or jax.process_count()
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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       step_hooks: StepHooks | None = None) -> dict:
  """Trains (or resumes) the run in `workdir`; returns the last logged metrics.

  `step_hooks` (tests' fault injection, jpeglm.training.faults) sees each host batch before
  it is sent and each step once dispatched; real runs pass none."""
  started = time.perf_counter()
  is_main = jax.process_index() == 0
  train = config.train

  setup = _set_up(config, workdir, is_main)
  mesh, tokenizer, checkpointer, built = (setup.mesh, setup.tokenizer, setup.checkpointer,
                                          setup.built)
  state, start_step, batches = setup.state, setup.start_step, setup.batches

  metrics_log = MetricsLog(workdir, enabled=is_main)
  goodput = goodput_lib.Goodput(workdir, started, start_step, train.steps, enabled=is_main)
  samples = TrainSamples(config, workdir, tokenizer, metrics_log, mesh)  # train.sample_every
  stop = _Stop()
  feed = _Feed(config.train, batches, built, tokenizer.eos_id, stop, started)
  window = _MetricsWindow(config, feed, stop, metrics_log, is_main, start_step)
  saves = _Saves(config, workdir, checkpointer, metrics_log, goodput, start_step)
  evaluate = _Evaluator(config, tokenizer, built, mesh, metrics_log, goodput)
  step = start_step
  try:
    # The steps trace (and run) with the mesh set, so the model's sharding constraints apply.
    with jax.set_mesh(mesh):
      while step < train.steps and not stop.code:
        with goodput.timed("data_wait"):
          local = feed.next_rows(step + 1)
          if step_hooks is not None:
            local = step_hooks.batch(step + 1, local)
        local["stop"] = np.maximum(local["stop"], checkpointer.stop_code())  # a failed write
        state, device_metrics = built.step(state, sharding.global_batch_from_local(local, mesh))
        step += 1
        feed.dispatched(step)
        window.dispatched(step, device_metrics)  # reads the step before's metrics
        goodput.dispatched(step)
        checkpointer.check()  # a failed background write stops the run now, not at the next save
        if not stop.code and (step % train.checkpoint_every == 0 or step == train.steps):
          window.flush()
          if not stop.code:
            saves.save(step, state, feed.data_state(step))
        if not stop.code and train.eval_every and step % train.eval_every == 0:
          evaluate(step, state["params"])
        if not stop.code:
          with goodput.timed("evaluation"):  # sample grids count as evaluation time
            samples(step, state["params"])  # grids every train.sample_every steps
        if step_hooks is not None:
          step_hooks.at_step(step, checkpointer.wait)
      window.flush()
      if stop.code == stop_codes.STOP_CHECKPOINT_FAILED:  # on some process: nothing more saved
        raise checkpointer.failure_error(step)

      # The end: save the last good step (once), evaluate a finished run, explain a stop.
      state, message = stop.save_last_good(step, state, saves, feed, train,
                                           checkpointer.directory)
      if message is None and train.eval_every and step % train.eval_every:
        window.last_logged.update(evaluate(step, state["params"]))
      with goodput.timed("checkpoint_blocking"):
        checkpointer.wait()
      _report_goodput(goodput, metrics_log, step, is_main)
      if message and stop.code >= stop_codes.STOP_DATA_FAILED:
        raise JpeglmError(message)
      if message and is_main:
        print(f"\n{message}")
  finally:
    window.close()
    checkpointer.close()
    batches.close()
    metrics_log.close()
    feed.close()
  return window.last_logged


@dataclasses.dataclass
class _Setup:
  mesh: jax.sharding.Mesh
  tokenizer: object  # ByteTokenizer
  checkpointer: checkpointing.Checkpointer
  built: train_step.TrainStep
  state: dict
  start_step: int
  batches: host_batches.HostBatches


def _set_up(config, workdir: str, is_main: bool) -> _Setup:
  """Everything that can be refused is refused here, before any compute; then the state,
  restored or fresh, and the data iterator where the checkpoint left it."""
  train = config.train
  run_setup.check_workdir_config(config, workdir)
  mesh = sharding.make_mesh(config.mesh)
  model_cfg = model_lib.ModelConfig.from_config(config.model, mesh.devices.flat[0].platform)
  sharding.check_batch_layout(train.global_batch, train.grad_accum, dict(mesh.shape))
  if is_main:
    files.makedirs(workdir)
  tokenizer = run_setup.resolve_tokenizer(config, workdir, is_main, multihost.barrier)
  if is_main:
    run_setup.write_config(config, workdir)
  checkpointer = checkpointing.Checkpointer(
      os.path.join(workdir, run_setup.CHECKPOINT_DIR), keep=train.keep_checkpoints)
  checkpointer.check_writable()
  # Counted on every process, so that all of them refuse together, before any compute.
  sizes = pipeline.split_sizes(config)
  if sizes.eval == 0 and train.eval_every > 0:
    raise JpeglmError(f"{sizes.line}: no items to evaluate on; raise data.eval_fraction, name "
                      "data.eval_source, or set train.eval_every=0")
  built = train_step.build(config, mesh)
  state, start_step, data_state, resumed = _restore_or_init(config, mesh, built, checkpointer)
  batches = _train_iterator(config, tokenizer)
  if data_state is not None:
    batches.set_state(data_state)
  if is_main:
    # An imported checkpoint (jpeglm import) resumes from step 0.
    print(("resuming from step %d" % start_step) if resumed else "starting from step 0",
          f"in {workdir}: {sum(x.size for x in jax.tree.leaves(state['params'])):,} parameters, "
          f"mesh {dict(mesh.shape)}, {jax.process_count()} process(es); attention "
          f"{model_cfg.attention_kernel}, remat {model_cfg.remat}, {model_cfg.dtype}")
    print(sizes.line, flush=True)
  return _Setup(mesh, tokenizer, checkpointer, built, state, start_step, batches)


def _restore_or_init(config, mesh, built: train_step.TrainStep,
                     checkpointer: checkpointing.Checkpointer
                     ) -> tuple[dict, int, dict | None, bool]:
  """(state, step, data iterator state, restored?) of the latest checkpoint, or a fresh
  state."""
  def same_model(meta: dict) -> None:
    run_setup.check_same_model(ml_collections.ConfigDict(meta["config"]).model, config.model,
                               f"{checkpointer.directory} (step {meta.get('step')})")

  restored = checkpointer.restore(built.layout.abstract, check_meta=same_model)
  if restored is None:
    return init_state(config, mesh, built.optimizer)[0], 0, None, False
  return restored.state, restored.step, restored.data, True


class _Feed:
  """This host's rows of each batch, with its stop code (jpeglm.training.stop_codes) in "stop", and
  the data iterator's state after the last few steps (the last good one is saved)."""

  def __init__(self, train: ml_collections.ConfigDict, batches: host_batches.HostBatches,
               built: train_step.TrainStep, eos: int, stop: "_Stop", started: float):
    self.batches, self.stop, self.eos, self.started = batches, stop, eos, started
    self.budget = 60.0 * float(train.time_budget_minutes or 0)
    self.rows = train.global_batch // jax.process_count()
    self.empty_rows = built.empty_rows(self.rows)  # once the data failed; trains nothing
    self.preemption = PreemptionFlag()
    self.recent: dict[int, dict | None] = {}  # step -> data state after it
    self.waited = 0.0  # seconds in next(batches), and documents read, since the last take
    self.documents = 0

  def next_rows(self, step: int) -> dict:
    local, code = self._next(step)
    return {**local, "stop": np.full(self.rows, code, np.int32)}

  def _next(self, step: int) -> tuple[dict, int]:
    if self.stop.data_error is None:
      began = time.perf_counter()
      try:
        local = next(self.batches)
      except Exception as e:  # noqa: BLE001 - a dead worker, too many bad files, ...
        self.stop.data_error = _one_line(e)
        log.error("data failed at step %d: %s", step, self.stop.data_error)
      else:
        self.waited += time.perf_counter() - began
        if local["inputs"].shape[0] != self.rows:
          raise JpeglmError(f"data gave {local['inputs'].shape[0]} rows, expected {self.rows}")
        self.documents += int(np.sum(local["targets"] == self.eos)) * jax.process_count()
        if self.preemption.requested:
          return local, stop_codes.STOP_PREEMPTED
        if self.budget > 0 and time.perf_counter() - self.started > self.budget:
          return local, stop_codes.STOP_TIME_BUDGET
        return local, stop_codes.STOP_NONE
    return dict(self.empty_rows), stop_codes.STOP_DATA_FAILED

  def dispatched(self, step: int) -> None:
    self.recent[step] = self.batches.get_state() if self.stop.data_error is None else None
    self.recent.pop(step - 3, None)  # the last good step is at most two behind

  def data_state(self, step: int) -> dict | None:
    return self.recent[step]

  def take_counts(self) -> tuple[float, int]:
    """(seconds waited, documents read) since the last call."""
    out, self.waited, self.documents = (self.waited, self.documents), 0.0, 0
    return out

  def close(self) -> None:
    self.preemption.restore()


class _MetricsWindow:
  """Owns "finish step N": reads a dispatched step's metrics once a later step is queued,
  notes any reason to stop in `stop` (every process reads the same metrics, so all agree),
  and logs every `train.log_every` steps with host-side rates over the window."""

  def __init__(self, config, feed: _Feed, stop: "_Stop", metrics_log: MetricsLog,
               is_main: bool, start_step: int):
    self.train, self.feed, self.stop, self.metrics_log = config.train, feed, stop, metrics_log
    self.stop_on_nonfinite = self.train.on_nonfinite == "stop"
    seq_len = config.data.seq_len
    self.flops_per_step = (flops.flops_per_token(config.model, seq_len)
                           * self.train.global_batch * seq_len)
    self.peak = chips.peak_flops(jax.devices()[0].device_kind)
    self.bar = tqdm(total=self.train.steps, initial=start_step, disable=not is_main,
                    unit="step", dynamic_ncols=True)
    self.pending = None  # (step, device metrics) of the step dispatched last, not yet read
    self.last_logged: dict = {}
    self._reset()

  def _reset(self) -> None:
    self.start, self.steps, self.tokens, self.documents, self.data_wait = (
        time.perf_counter(), 0, 0.0, 0, 0.0)

  def dispatched(self, step: int, device_metrics) -> None:
    """Step `step` is queued: the step before it is finished now."""
    self.flush()
    self.pending = (step, device_metrics)
    self.bar.update(1)

  def flush(self) -> None:
    """Finishes the pending step, if any (each step is finished exactly once)."""
    if self.pending is not None:
      pending, self.pending = self.pending, None
      self._finish(*pending)

  def _finish(self, step: int, device_metrics) -> None:
    m = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
    code, finite = int(m.pop("stop")), bool(m.pop("finite"))
    if code >= stop_codes.STOP_DATA_FAILED or self.stop.first_unchanged is not None:
      self.stop.note(code, step, changed_state=False)
      return  # the step left the state as it was: nothing to log
    if not finite:
      if self.stop_on_nonfinite:
        self.stop.nonfinite = (m["loss"], m["grad_norm"])
        self.stop.note(stop_codes.STOP_NONFINITE, step, changed_state=False)
        return
      log.warning("step %d: non-finite loss, update skipped", step)
    self.stop.note(code, step, changed_state=True)
    self.steps += 1
    self.tokens += m.pop("tokens")
    if step % self.train.log_every == 0 or step == self.train.steps or code:
      self._log(step, m)

  def _log(self, step: int, m: dict) -> None:
    seconds = time.perf_counter() - self.start
    waited, documents = self.feed.take_counts()
    _, skipped = self.feed.batches.bad_inputs()
    m.update(steps_per_second=self.steps / seconds, tokens_per_second=self.tokens / seconds,
             images_per_second=documents / seconds, data_wait_fraction=waited / seconds,
             bad_inputs=skipped)
    if self.peak:
      m["mfu"] = self.flops_per_step / (seconds / max(self.steps, 1)) / (
          self.peak * jax.device_count())
    self.metrics_log.write(step, m)
    self.bar.set_postfix(loss=f"{m['loss']:.4f}", bpb=f"{m['bits_per_byte']:.3f}",
                         tok_s=f"{m['tokens_per_second']:,.0f}", refresh=False)
    self.last_logged = {"step": step, **m}
    self._reset()

  def close(self) -> None:
    self.bar.close()


class _Saves:
  """Checkpoint saves: each step at most once, with the data state merged over processes."""

  def __init__(self, config, workdir: str, checkpointer: checkpointing.Checkpointer,
               metrics_log: MetricsLog, goodput: goodput_lib.Goodput, saved_at: int):
    self.config, self.checkpointer, self.metrics_log = config, checkpointer, metrics_log
    self.goodput = goodput
    self.tokenizer_path = files.join(workdir, run_setup.TOKENIZER_FILE)
    self.saved_at = saved_at

  def save(self, step: int, state: dict, data_state: dict) -> None:
    if self.saved_at == step:
      return  # already saved at this step (a checkpoint step that is also a stop)
    self.saved_at = step
    began = time.perf_counter()
    with self.goodput.timed("checkpoint_blocking"):
      merged = {"shards": {}}
      for part in multihost.merge_json(data_state):
        merged["shards"].update(part["shards"])
      self.checkpointer.save(step, state, merged,
                             _checkpoint_meta(self.config, self.tokenizer_path, step))
    # Only this part blocks training; Orbax writes the files in the background meanwhile.
    self.metrics_log.write(step, {"checkpoint_blocking_seconds": time.perf_counter() - began})


class _Evaluator:
  """Held-out loss and bits per byte. Every process reads the whole (small) held-out split;
  identical rows on each process leave the mean unchanged, and no split is ever too small
  for the process count."""

  def __init__(self, config, tokenizer, built: train_step.TrainStep, mesh, metrics_log,
               goodput: goodput_lib.Goodput):
    self.config = ml_collections.ConfigDict(config.to_dict())
    self.config.train.global_batch = config.train.global_batch // jax.process_count()
    self.tokenizer, self.built, self.mesh, self.metrics_log = tokenizer, built, mesh, metrics_log
    self.goodput = goodput

  def __call__(self, step: int, params) -> dict:
    with self.goodput.timed("evaluation"):
      return self._evaluate(step, params)

  def _evaluate(self, step: int, params) -> dict:
    sums = {"nll": 0.0, "tokens": 0.0, "bytes": 0.0}
    with pipeline.make_eval_iterator(self.config, self.tokenizer, process_index=0,
                                     process_count=1) as eval_batches:
      for local in eval_batches:
        out = jax.device_get(self.built.eval(
            params, sharding.global_batch_from_local(local, self.mesh)))
        for k in sums:
          sums[k] += float(out[k])
    result = {"eval_loss": sums["nll"] / max(sums["tokens"], 1.0),
              "eval_bits_per_byte": sums["nll"] / LN2 / max(sums["bytes"], 1.0)}
    self.metrics_log.write(step, result)
    return result


def _report_goodput(goodput: goodput_lib.Goodput, metrics_log: MetricsLog, step: int,
                    is_main: bool) -> None:
  """The `goodput ...` line (where this attempt's time went, and the workdir's over all
  attempts), also in metrics.jsonl as goodput/* keys."""
  summary = goodput.finish()
  metrics_log.write(step, summary, prefix="goodput/")
  if is_main:
    print(goodput_lib.line(summary))


class _Stop:
  """Why this run stops early, as every process learns it from the steps' metrics."""

  def __init__(self):
    self.code = stop_codes.STOP_NONE
    self.first_unchanged = None  # the first step that left the state as it was
    self.data_error = None  # this host's data failure, one line
    self.nonfinite = None  # (loss, grad norm)

  def note(self, code: int, step: int, changed_state: bool) -> None:
    if not changed_state and self.first_unchanged is None:
      self.first_unchanged = step
    self.code = max(self.code, code)

  def last_good(self, dispatched: int) -> int:
    return self.first_unchanged - 1 if self.first_unchanged else dispatched

  def save_last_good(self, step: int, state: dict, saves: "_Saves", feed: _Feed, train,
                     directory: str) -> tuple[dict, str | None]:
    """Saves the last good step unless it is saved already; returns the state as saved and,
    for a run that stopped early, the one line that says why and what was saved."""
    last_good = self.last_good(step)
    if self.first_unchanged:
      # A halted state counts -1; it holds the last good step's weights.
      state = {**state, "step": _scalar_like(state["step"], last_good)}
    had = saves.saved_at == last_good
    if not had:
      saves.save(last_good, state, feed.data_state(last_good))
    if step == train.steps and not self.first_unchanged:
      return state, None
    saved = (f"saved step {last_good}" if not had else
             f"step {last_good} was already saved" if last_good else "nothing to save")
    return state, self.describe(train, directory, saved)

  def describe(self, train, directory: str, saved: str) -> str:
    resume = "rerun the same command to resume"
    if self.code == stop_codes.STOP_TIME_BUDGET:
      return f"time budget of {train.time_budget_minutes} min reached: {saved}; {resume}"
    if self.code == stop_codes.STOP_PREEMPTED:
      return f"preempted: {saved}; {resume}"
    if self.code == stop_codes.STOP_DATA_FAILED:
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
