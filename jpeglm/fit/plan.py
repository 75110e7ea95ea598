"""`jpeglm plan`: search layouts (mesh, micro-batching, remat) by real ahead-of-time compiles.

1. Every candidate is enumerated: mesh (data, fsdp, context, tensor) over the slice's
   devices, gradient accumulation that still splits each micro-batch over data x fsdp,
   and each remat policy.
2. Each gets an arithmetic step time (`step_cost.executed_flops` at the chip's peak) and an
   analytic memory estimate; those far over HBM are dropped before any compile.
3. The rest are compiled in order of arithmetic step time (ties: fewest micro-batches
   first, as each re-reads the weights from HBM), several at once in worker
   processes, each result cached on disk (keyed by the settings that shape the compiled step, topology and versions), until
   `top` of them fit or `max_compiles` ran.
4. Those that fit are ranked by estimated step time: max(compute, HBM traffic, ICI
   collectives) + the cross-slice gradient all-reduce over DCN, from the compiled programs
   (jpeglm.fit.step_cost, jpeglm.fit.collectives) and the published chip figures (jpeglm.fit.chips).
   ICI collectives are assumed hidden under compute (XLA overlaps them on TPU); DCN is not.
   Equal estimates (compute-bound layouts) go to the one whose ICI would cost least exposed.

Splash block sizes are not searched: the kernel is opaque to the compiler's cost analysis,
so an estimate cannot rank them; they stay `model.attention_block_*`.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import itertools
import json
import math
import multiprocessing
import os

import ml_collections

from jpeglm.model import sharding
from jpeglm.fit import step_cost
from jpeglm.errors import ConfigError

REMATS = ("none", "minimal", "save_attention", "save_qkv_proj", "full")
# A candidate whose rough memory estimate is over this many times the HBM is not compiled.
PRUNE_FACTOR = 1.5


@dataclasses.dataclass(frozen=True)
class Candidate:
  data: int
  fsdp: int
  context: int
  tensor: int
  remat: str
  grad_accum: int
  dcn_data: int = 1

  def overrides(self) -> dict[str, object]:
    out = {"mesh.data": self.data, "mesh.fsdp": self.fsdp, "mesh.context": self.context,
           "mesh.tensor": self.tensor, "model.remat": self.remat,
           "train.grad_accum": self.grad_accum}
    if self.dcn_data > 1:
      out["mesh.dcn_data"] = self.dcn_data
    return out

  def flags(self) -> str:
    return " ".join(f"--config.{k}={v}" for k, v in self.overrides().items())

  def apply(self, config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    out = ml_collections.ConfigDict(config.to_dict())
    for key, value in self.overrides().items():
      section, name = key.split(".")
      out[section][name] = value
    return out


@dataclasses.dataclass
class Result:
  candidate: Candidate
  fits: bool | None
  peak_bytes: int | None
  step_seconds: float | None  # estimate
  compute_seconds: float | None
  hbm_seconds: float | None
  ici_seconds: float | None
  dcn_seconds: float | None
  mfu: float | None  # estimate
  tokens_per_chip: float | None  # estimate
  note: str = ""


def _powers_of_two(limit: int) -> list[int]:
  return [2 ** i for i in range(int(math.log2(limit)) + 1)] if limit >= 1 else [1]


def candidates(config: ml_collections.ConfigDict, devices_per_slice: int,
               num_slices: int = 1) -> list[Candidate]:
  """Every layout worth compiling for `devices_per_slice` devices in each of `num_slices`."""
  m, train = config.model, config.train
  out = []
  for tensor, context, data in itertools.product(_powers_of_two(8), _powers_of_two(4),
                                                 _powers_of_two(2)):
    if m.n_heads % tensor or m.n_kv_heads % tensor or m.d_ff % tensor:
      continue
    if config.data.seq_len % (2 * context * 128) and context > 1:
      continue  # the balanced order needs 2C chunks, splash tiles of at least 128
    if devices_per_slice % (tensor * context * data):
      continue
    fsdp = devices_per_slice // (tensor * context * data)
    ways = data * fsdp * num_slices
    for remat, grad_accum in itertools.product(REMATS, _powers_of_two(16)):
      if train.global_batch % grad_accum or (train.global_batch // grad_accum) % ways:
        continue
      out.append(Candidate(data, fsdp, context, tensor, remat, grad_accum, num_slices))
  return out


def _cache_key(config: ml_collections.ConfigDict, topology: str, num_slices: int) -> str:
  import jax
  try:
    import libtpu
    tpu_version = getattr(libtpu, "__version__", "")
  except ImportError:
    tpu_version = "none"
  blob = json.dumps([_compiled_settings(config), topology, num_slices, jax.__version__,
                     tpu_version], sort_keys=True, default=str)
  return hashlib.sha256(blob.encode()).hexdigest()[:24]


# The train settings that shape the compiled step; others (data sources, logging, the
# schedule's constants) leave the cache valid when they change.
_COMPILED_TRAIN_KEYS = ("global_batch", "grad_accum", "clip", "weight_decay", "z_loss",
                        "on_nonfinite")


def _compiled_settings(config: ml_collections.ConfigDict) -> dict:
  train = config.train
  return {"model": config.model.to_dict(), "mesh": config.mesh.to_dict(),
          "seq_len": config.data.seq_len, "packing": config.data.get("packing"),
          "train": {k: train.get(k) for k in _COMPILED_TRAIN_KEYS}}


def _evaluate(args: tuple[dict, str, int]) -> dict:
  """Worker: compile one candidate and estimate its step (runs in a fresh process)."""
  config_dict, topology, num_slices = args
  from jpeglm.fit import collectives
  from jpeglm.fit import compile_check
  from jpeglm.fit.chips import CHIPS

  config = ml_collections.ConfigDict(config_dict)
  try:
    report = compile_check.check(config, topology, num_slices=num_slices)
  except ConfigError as e:
    return {"fits": False, "note": str(e)}
  out = {"fits": report.fits, "peak_bytes": report.peak_bytes, "note": report.note,
         "method": report.method}
  if report.step_seconds_floor is None:
    return out
  chip = CHIPS[compile_check.parse_topology(topology).generation]
  compute = report.flops / chip.flops
  hbm = report.bytes_accessed / chip.hbm_bandwidth
  ici = collectives.ici_seconds(report.collective_bytes or {}, chip.ici_bandwidth)
  dcn = 0.0
  if num_slices > 1:  # the gradients' all-reduce across slices: twice a parameter shard
    dcn = 2.0 * report.param_bytes / chip.dcn_bandwidth
  step = max(compute, hbm, ici) + dcn
  tokens = config.train.global_batch * config.data.seq_len
  out.update(step_seconds=step, compute_seconds=compute, hbm_seconds=hbm, ici_seconds=ici,
             dcn_seconds=dcn, mfu=report.model_flops / (step * chip.flops * report.num_devices),
             tokens_per_chip=tokens / step / report.num_devices)
  return out


def plan(config: ml_collections.ConfigDict, topology: str, num_slices: int = 1,
         global_batch: int | None = None, top: int = 3, max_compiles: int = 12,
         jobs: int = 2, cache_path: str | None = None, log=print) -> list[Result]:
  """Searches layouts for `config` on `topology`; returns the compiled ones, best first."""
  from jpeglm.fit import compile_check

  config = ml_collections.ConfigDict(config.to_dict())
  if global_batch:
    config.train.global_batch = global_batch
  if topology == "local":
    import jax
    per_slice, hbm = len(jax.devices()) // num_slices, None
  else:
    spec = compile_check.parse_topology(topology)
    per_slice, hbm = spec.devices, spec.hbm_bytes
  all_candidates = candidates(config, per_slice, num_slices)
  if not all_candidates:
    raise ConfigError(f"no layout splits train.global_batch={config.train.global_batch} over "
                      f"{per_slice * num_slices} devices")
  platform = "cpu" if topology == "local" else "tpu"
  queue = compile_order(config, all_candidates, per_slice * num_slices, platform, hbm)
  log(f"plan: {len(all_candidates)} layouts, {len(queue)} left after the memory estimate; "
      f"compiling at most {max_compiles}, in order of arithmetic step time, {jobs} at a time")

  cache = _load_cache(cache_path)
  results: list[Result] = []
  failed: list[Candidate] = []
  context = multiprocessing.get_context("spawn")
  with concurrent.futures.ProcessPoolExecutor(max_workers=max(jobs, 1),
                                              mp_context=context) as pool:
    while queue and len(results) < max_compiles:
      queue = [c for c in queue if not any(_needs_more_memory(c, f) for f in failed)]
      batch, queue = queue[:max(jobs, 1)], queue[max(jobs, 1):]
      keys = [_cache_key(c.apply(config), topology, num_slices) for c in batch]
      futures = {k: pool.submit(_evaluate, (c.apply(config).to_dict(), topology, num_slices))
                 for c, k in zip(batch, keys) if k not in cache}
      for k, f in futures.items():
        cache[k] = f.result()
      _save_cache(cache_path, cache)
      for c, k in zip(batch, keys):
        r = Result(candidate=c, **{f.name: cache[k].get(f.name) for f in dataclasses.fields(
            Result) if f.name != "candidate"})
        results.append(r)
        if r.fits is False:
          failed.append(c)
        log(f"  {c.flags()}: " + ("fits" if r.fits else "does not fit" if r.fits is False
                                  else "compiled") +
            (f", ~{r.step_seconds:.2f} s/step" if r.step_seconds else ""))
      if sum(1 for r in results if r.fits is not False) >= top:
        break
  fitting = [r for r in results if r.fits is not False]
  fitting.sort(key=rank_key)
  return fitting + [r for r in results if r.fits is False]


def rank_key(r: Result) -> tuple:
  """Fastest estimated step first; among equals (compute-bound layouts tie at the compute
  time) the one whose ICI collectives would cost least if XLA did not hide them."""
  if r.step_seconds is None:
    return (True, 0.0, 0.0)
  exposed = (max(r.compute_seconds or 0.0, r.hbm_seconds or 0.0) + (r.ici_seconds or 0.0)
             + (r.dcn_seconds or 0.0))
  return (False, r.step_seconds, exposed)


def compile_order(config: ml_collections.ConfigDict, layouts: list[Candidate], devices: int,
                  platform: str, hbm: float | None) -> list[Candidate]:
  """The layouts worth compiling, in the order to compile them: those the analytic memory
  estimate puts far over `hbm` dropped; fastest arithmetic first; among equals those the
  estimate fits in `hbm` first, then the fewest micro-batches: each micro-batch reads the weights from HBM again, and ordering
  equals by memory safety instead (most micro-batches first) spent the compile budget on
  16-micro-batch layouts that HBM traffic, not compute, bounds (the 7B at 128-256 chips)."""
  from jpeglm.fit import compile_check

  scored = []
  for c in layouts:
    cfg = c.apply(config)
    mesh = dict(zip(sharding.MESH_AXES, sharding.mesh_shape(cfg.mesh, devices)))
    over = False
    if hbm is not None:
      rough = compile_check.analytic_report(cfg, None, devices, "plan")
      if rough.peak_bytes > PRUNE_FACTOR * hbm:
        continue
      over = rough.peak_bytes > hbm  # kept (the estimate is rough), but tried after
    scored.append((step_cost.executed_flops(cfg, mesh, platform), over, c.grad_accum, c))
  scored.sort(key=lambda x: x[:3])  # stable: equal layouts keep the enumeration's order
  return [c for *_, c in scored]


def _needs_more_memory(c: Candidate, failed: Candidate) -> bool:
  """True when `c` is `failed`'s layout with no more remat and no more micro-batches: it
  needs at least as much memory, so it cannot fit either."""
  same_mesh = (c.data, c.fsdp, c.context, c.tensor, c.dcn_data) == (
      failed.data, failed.fsdp, failed.context, failed.tensor, failed.dcn_data)
  return (same_mesh and REMATS.index(c.remat) <= REMATS.index(failed.remat)
          and c.grad_accum <= failed.grad_accum)


def _load_cache(path: str | None) -> dict:
  if path and os.path.exists(path):
    try:
      with open(path) as f:
        return json.load(f)
    except (OSError, ValueError):
      return {}  # a damaged cache only costs compiles
  return {}


def _save_cache(path: str | None, cache: dict) -> None:
  if not path:
    return
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(cache, f)
  os.replace(tmp, path)
