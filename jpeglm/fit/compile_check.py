"""Ahead-of-time fit check: compile the train step for a device topology and read its memory.

`jpeglm compile-check --config CFG --topology T` builds the same jitted step as the trainer
(state layout, shardings, donation) from shapes only, compiles it for T and reports per-device
bytes: parameters and optimizer state (exact, from the shardings), and the compiler's
arguments / outputs / temporaries (`compiled.memory_analysis()`).

Topologies:
  - Cloud TPU names `v4-N`, `v5p-N` (N TensorCores, 2 per chip, megacore: one JAX device per
    chip), `v5e-N` / `v5litepod-N`, `v6e-N` (N chips). Compiled with libtpu on any machine
    (`pip install 'jpeglm[tpu]'`) through `jax.experimental.topologies`; without libtpu the
    report is an analytic estimate, and says so.
  - `local`: this machine's devices (e.g. fake CPU devices), compiled by the local backend.
A program that needs more HBM than a TPU has fails to compile with RESOURCE_EXHAUSTED: that
is reported as "does not fit" with the compiler's figures.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re

import jax
import ml_collections
import numpy as np

from jpeglm.errors import ConfigError
from jpeglm.fit.chips import ALIASES, GIB, TPUS


# Compiling for a topology touches no chip, so several compile checks (parallel tests, a
# table script) may load libtpu at once; without this the second waits on a lock file.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")



@dataclasses.dataclass(frozen=True)
class Topology:
  """A Cloud TPU slice, e.g. v5p-64: 32 chips, 32 devices (megacore), 8 hosts."""
  name: str
  generation: str
  chips: int
  hosts: int
  hbm_bytes: int  # per device
  jax_name: str  # "v5:4x4x2"
  chip_config: str
  chips_per_host_bounds: tuple[int, int, int]

  @property
  def devices(self) -> int:
    return self.chips  # megacore (v4, v5p) and single-core chips (v5e, v6e): one per chip


def _grid(chips: int, dims: int) -> list[int]:
  """Chip grid for a power-of-two chip count: 3-D tori from 2x2x1, 2-D from 1x1."""
  shape = [2, 2, 1] if dims == 3 else [1, 1]
  if chips < math.prod(shape):
    raise ConfigError(f"{chips} chips: the smallest {dims}-D slice has {math.prod(shape)}")
  while math.prod(shape) < chips:
    smallest = min(shape)
    # 3-D: grow the first smallest axis (4x4x2 for 32 chips); 2-D: the last (2x4, 16x16).
    order = range(len(shape)) if dims == 3 else reversed(range(len(shape)))
    shape[next(i for i in order if shape[i] == smallest)] *= 2
  return shape


def parse_topology(name: str) -> Topology:
  """Cloud TPU slice name (v4-128, v5p-64, v5e-256, v5litepod-16, v6e-16) -> Topology."""
  m = re.fullmatch(r"(v\d+[a-z]*)-(\d+)", name.strip().lower())
  if not m:
    raise ConfigError(f"--topology {name!r}: expected a Cloud TPU slice like v5p-64, v4-128, "
                      "v5e-256, v6e-16, or 'local'")
  gen = ALIASES.get(m.group(1), m.group(1))
  if gen not in TPUS:
    raise ConfigError(f"--topology {name!r}: unknown TPU generation {m.group(1)!r}; "
                      f"choose one of {sorted(TPUS)}")
  spec = TPUS[gen]
  prefix, chip_config, cores_per_unit = spec.jax_prefix, spec.chip_config, spec.cores_per_unit
  hbm, per_host, dims = spec.hbm_bytes, spec.chips_per_host, spec.grid_dims
  count = int(m.group(2))
  chips = count // cores_per_unit
  if chips < 1 or count % cores_per_unit or chips & (chips - 1):
    raise ConfigError(f"--topology {name!r}: {gen} slices have a power-of-two number of chips "
                      f"({'TensorCores = 2 x chips' if cores_per_unit == 2 else 'chips'})")
  grid = _grid(chips, dims)
  single_host = chips <= (4 if dims == 3 else 8)
  hosts = 1 if single_host else chips // per_host
  if dims == 3:
    bounds = (2, 2, 1)
  else:
    bounds = (min(grid[0], 2), min(grid[1], 4 if single_host else 2), 1)
  return Topology(name=f"{gen}-{count}", generation=gen, chips=chips, hosts=hosts, hbm_bytes=hbm,
                  jax_name=f"{prefix}:{'x'.join(map(str, grid))}", chip_config=chip_config,
                  chips_per_host_bounds=bounds)


def tpu_devices(topology: Topology, num_slices: int = 1) -> list:
  """The topology's (compile-only) devices, `num_slices` slices of it (joined over DCN);
  raises RuntimeError when libtpu is missing."""
  from jax.experimental import topologies

  desc = topologies.get_topology_desc(
      platform="tpu", topology_name=topology.jax_name, chip_config_name=topology.chip_config,
      chips_per_host_bounds=topology.chips_per_host_bounds, num_slices=num_slices,
      wrap=(False, False, False))
  return list(desc.devices)


@dataclasses.dataclass
class FitReport:
  topology: str
  num_devices: int
  mesh: dict[str, int]
  method: str  # "compiled (<platform>)" or "analytic estimate"
  param_bytes: int  # per device, exact from the shardings
  opt_bytes: int  # per device
  batch_bytes: int  # per device
  temp_bytes: int | None  # activations + temporaries (compiler) or the estimate
  peak_bytes: int | None  # what one device needs at once
  hbm_bytes: int | None  # what one device has (None: host memory, not checked)
  note: str = ""
  attention: str = ""  # the kernel compiled (model.attention resolved for the platform)
  remat: str = ""
  flops: float | None = None  # per device per step, the compiled program's cost analysis
  bytes_accessed: float | None = None  # per device per step (HBM traffic)
  model_flops: float | None = None  # per step, all devices; causal attention halved
  peaks: tuple[float, float] | None = None  # (FLOP/s, HBM bytes/s) of one device
  collective_bytes: dict[str, float] | None = None  # per device per step, by kind

  @property
  def step_seconds_floor(self) -> float | None:
    """Estimated lower bound on step time: compute or HBM traffic at peak, whichever is
    slower; ignores communication and overheads."""
    if self.flops is None or self.peaks is None:
      return None
    return max(self.flops / self.peaks[0], (self.bytes_accessed or 0.0) / self.peaks[1])

  @property
  def mfu_ceiling(self) -> float | None:
    """Model FLOPs per step over what the devices could do in the floor time (estimate)."""
    floor = self.step_seconds_floor
    if not floor or not self.model_flops:
      return None
    return self.model_flops / (floor * self.peaks[0] * self.num_devices)

  @property
  def fits(self) -> bool | None:
    if self.hbm_bytes is None or self.peak_bytes is None:
      return None
    return self.peak_bytes <= self.hbm_bytes

  def lines(self) -> list[str]:
    gib = lambda b: "?" if b is None else f"{b / GIB:,.2f} GiB [{b:,} B]"
    mesh = " x ".join(f"{k}={v}" for k, v in self.mesh.items())
    verdict = {None: "not checked (no HBM limit for this backend)", True: "FITS",
               False: "DOES NOT FIT"}[self.fits]
    out = [f"topology {self.topology}: {self.num_devices} devices, mesh {mesh}",
           f"method: {self.method}"]
    if self.attention:
      out.append(f"attention kernel: {self.attention}, remat: {self.remat}")
    out += [
           f"per device: parameters {gib(self.param_bytes)}, optimizer state "
           f"{gib(self.opt_bytes)}, batch {gib(self.batch_bytes)}, "
           f"activations/temporaries {gib(self.temp_bytes)}",
           f"per device peak: {gib(self.peak_bytes)} of {gib(self.hbm_bytes)} HBM: {verdict}"]
    if self.step_seconds_floor is not None:
      out.append(f"estimates (cost analysis vs published peaks {self.peaks[0] / 1e12:.0f} "
                 f"TFLOP/s, {self.peaks[1] / 1e9:.0f} GB/s): step time >= "
                 f"{self.step_seconds_floor:.3f} s, MFU <= {100 * (self.mfu_ceiling or 0):.0f}% "
                 "(causal attention halved)")
    if self.note:
      out.append(f"note: {self.note}")
    return out


def _sharded_bytes(abstract_tree) -> int:
  """Bytes one device holds of a tree of ShapeDtypeStructs with shardings."""
  return sum(math.prod(x.sharding.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize
             for x in jax.tree.leaves(abstract_tree))


_OOM = re.compile(r"required (for HLO temporaries )?\(([\d.]+)([KMGT]?)\) exceeds available HBM "
                  r"\(([\d.]+)([KMGT]?)\)")


def _size(value: str, unit: str) -> int:
  return int(float(value) * 1024 ** " KMGT".index(unit or " "))


def compile_train_step(config: ml_collections.ConfigDict, devices, topology_name: str,
                       hbm_bytes: int | None, peaks: tuple[float, float] | None = None
                       ) -> FitReport:
  """Lowers and compiles the trainer's step for `devices`; reads the per-device memory."""
  from jpeglm.fit import flops
  from jpeglm.model import transformer as model_lib
  from jpeglm.model import sharding
  from jpeglm.training import step as train_step

  mesh = sharding.make_mesh(config.mesh, devices=devices)
  sharding.check_batch_layout(config.train.global_batch, config.train.grad_accum,
                              dict(mesh.shape))
  model_cfg = model_lib.ModelConfig.from_config(config.model, devices[0].platform)
  train = config.train
  built = train_step.build(config, mesh)  # the trainer's own step, state layout and batch
  layout, batch = built.layout, built.batch
  report = FitReport(
      topology=topology_name, num_devices=len(devices), mesh=dict(mesh.shape),
      method=f"compiled ahead of time ({devices[0].platform})",
      param_bytes=_sharded_bytes(layout.abstract["params"]),
      opt_bytes=_sharded_bytes(layout.abstract["opt_state"]) + _sharded_bytes(
          layout.abstract["step"]),
      batch_bytes=_sharded_bytes(batch), temp_bytes=None, peak_bytes=None, hbm_bytes=hbm_bytes,
      attention=model_cfg.attention_kernel, remat=model_cfg.remat, peaks=peaks,
      model_flops=flops.causal_flops_per_token(config.model, config.data.seq_len)
      * train.global_batch * config.data.seq_len)
  with jax.set_mesh(mesh):
    lowered = built.step.lower(layout.abstract, batch)
    try:
      compiled = lowered.compile()
    except Exception as e:  # XlaRuntimeError; its class moves between jax versions
      m = _OOM.search(str(e))
      if "RESOURCE_EXHAUSTED" not in str(e) or not m:
        raise
      required, report.hbm_bytes = _size(m.group(2), m.group(3)), _size(m.group(4), m.group(5))
      if m.group(1):  # temporaries alone; the state and batch come on top
        report.temp_bytes = required
        required += report.param_bytes + report.opt_bytes + report.batch_bytes
      report.peak_bytes = required
      report.note = "RESOURCE_EXHAUSTED from the TPU compiler: " + m.group(0)
      return report
  from jpeglm.fit.collectives import collective_bytes
  report.collective_bytes = collective_bytes(compiled.as_text())
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  if cost:
    report.flops = float(cost.get("flops", 0.0)) or None
    report.bytes_accessed = float(cost.get("bytes accessed", 0.0)) or None
  analysis = compiled.memory_analysis()
  report.temp_bytes = int(analysis.temp_size_in_bytes)
  # Donated state aliases its outputs: arguments + outputs - aliased + temporaries.
  report.peak_bytes = int(analysis.argument_size_in_bytes + analysis.output_size_in_bytes
                          - analysis.alias_size_in_bytes + analysis.temp_size_in_bytes
                          + analysis.generated_code_size_in_bytes)
  return report


def activation_estimate(config: ml_collections.ConfigDict, axis_sizes: dict[str, int]) -> int:
  """Rough per-device bytes of activations, gradients-in-flight and logits of one step.

  Batch rows split over data x fsdp, heads / MLP / vocab over tensor. Saved per layer: the
  residual stream (remat=full) or ~(8 d + 3 d_ff) values per token (no remat); plus one layer
  recomputed in the backward pass, attention scores (not for flash/chunked kernels), logits
  in float32 twice (value and gradient) and float32 gradients the size of the parameters'
  shard are added by the caller.
  """
  m, train = config.model, config.train
  act = np.dtype(m.dtype).itemsize
  rows = math.ceil(train.global_batch / train.grad_accum / (axis_sizes["data"] *
                                                             axis_sizes["fsdp"]))
  tokens = rows * config.data.seq_len // axis_sizes.get("context", 1)
  t = axis_sizes["tensor"]
  per_layer_live = (4 * m.d_model + 3 * m.d_ff / t) * act
  saved = m.d_model * act if m.remat == "full" else per_layer_live + 4 * m.d_model * act
  scores = 0
  if m.attention in ("einsum", "xla", "cudnn_or_xla"):  # the XLA path materialises L x L
    scores = rows * math.ceil(m.n_heads / t) * config.data.seq_len ** 2 * 4 * 2
  logits = tokens * math.ceil(m.vocab_size / t) * 4 * 2
  return int(tokens * (m.n_layers * saved + per_layer_live) + scores + logits)


def analytic_report(config: ml_collections.ConfigDict, topology: Topology | None,
                    num_devices: int, why: str) -> FitReport:
  """The memory_report figures plus an activation estimate, for when nothing can compile."""
  from jpeglm.fit.memory_report import memory_report

  mem = memory_report(config, num_devices)
  grads = mem.param_bytes  # gradients: one more copy of the parameter shards
  temp = activation_estimate(config, mem.mesh) + grads
  b = config.train.global_batch
  rows = math.ceil(b / (mem.mesh["data"] * mem.mesh["fsdp"]))
  from data_pipeline import batch_spec
  batch = sum(math.prod(shape) * np.dtype(dtype).itemsize
              for shape, dtype in batch_spec.shapes(rows, config.data.seq_len).values())
  return FitReport(
      topology=topology.name if topology else "local", num_devices=num_devices, mesh=mem.mesh,
      method="analytic estimate (NOT compiled)", param_bytes=mem.param_bytes,
      opt_bytes=mem.adam_bytes + 4, batch_bytes=batch, temp_bytes=temp,
      peak_bytes=mem.param_bytes + mem.adam_bytes + batch + temp,
      hbm_bytes=topology.hbm_bytes if topology else None,
      note=f"{why}; parameters and optimizer state are exact, activations are a rough "
           "estimate (jpeglm.fit.compile_check.activation_estimate). Install the TPU compiler "
           "with: pip install 'jpeglm[tpu]'")


def check(config: ml_collections.ConfigDict, topology_name: str,
          analytic: bool = False, estimate: bool = True, num_slices: int = 1) -> FitReport:
  """Compile-check `config` for `topology_name` ('local' or a Cloud TPU slice name).

  On a TPU, a config that fits also gets the labelled estimates (step-time floor, MFU
  ceiling): two more small compiles (`estimate=False` skips them). `num_slices` > 1: that
  many slices joined over DCN, data parallel across them (`mesh.dcn_data`).
  """
  from jpeglm.model import sharding

  if num_slices > 1:
    if sharding.dcn_data(config.mesh) not in (1, num_slices):
      raise ConfigError(f"mesh.dcn_data={config.mesh.dcn_data} but --num-slices {num_slices}")
    config = ml_collections.ConfigDict(config.to_dict())
    config.mesh.dcn_data = num_slices
  if topology_name == "local":
    devices = jax.devices()
    sharding.mesh_shape(config.mesh, len(devices))
    if analytic:
      return analytic_report(config, None, len(devices), "asked for --analytic")
    return compile_train_step(config, devices, "local", None)
  topology = parse_topology(topology_name)
  count = topology.devices * num_slices
  sharding.mesh_shape(config.mesh, count)  # a one-line error if it cannot fit
  if analytic:
    return analytic_report(config, topology, count, "asked for --analytic")
  try:
    devices = tpu_devices(topology, num_slices)
  except Exception as e:  # no libtpu: RuntimeError / ValueError depending on the version
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
    return analytic_report(config, topology, count, f"no TPU compiler available ({first})")
  name = topology.name if num_slices == 1 else f"{num_slices} x {topology.name}"
  from jpeglm.fit.chips import CHIPS
  chip = CHIPS[topology.generation]
  report = compile_train_step(config, devices, name, topology.hbm_bytes,
                              (chip.flops, chip.hbm_bandwidth))
  report.method += f", {topology.jax_name} {topology.chip_config}"
  if report.fits and estimate:
    _add_step_cost(report, config, devices)
  else:
    report.peaks = None  # the scanned program's raw costs are no basis for an estimate
  return report


def _add_step_cost(report: FitReport, config: ml_collections.ConfigDict, devices) -> None:
  """Replaces the scanned program's raw costs with the whole step's (jpeglm.fit.step_cost)."""
  from jpeglm.fit import step_cost

  def costs(small):
    r = compile_train_step(small, devices, report.topology, None)
    return r.flops or 0.0, r.bytes_accessed or 0.0, r.collective_bytes or {}

  cost = step_cost.estimate(
      config, costs, step_cost.executed_flops(config, report.mesh, devices[0].platform))
  report.flops, report.bytes_accessed = cost.flops, cost.bytes_accessed
  report.collective_bytes = cost.collective_bytes
