"""Compiles the sampler's programs for TPU slices ahead of time, with no TPU present.

Issue 28 keeps the KV cache layout ([Y, B, K, S, H], one filled length per row for continuous
batching) only if it still serves TPU. This script lowers and compiles, for a TPU topology
(`jax.experimental.topologies`, libtpu's compiler; docs/verified-facts.md), the programs the
sampler runs on the 1b shape at the paper's 12,288 context, from shapes only:

  - `Generator` (jpeglm/sampling/generate.py): `prefill` (the prompts into an empty cache,
    splash attention), `forward` (one decode step), `run` (free sampling's device while_loop);
  - `ContinuousBatcher` (jpeglm/sampling/continuous.py): `admit` (a batch-of-one prefill copied
    into one slot), `advance` (one decode step, per-row lengths, the row write
    `kv_cache.write_rows`), `decode` (its device while_loop).

Parameters are `ShapeDtypeStruct`s laid out by the model's sharding rules on a mesh over the
topology's devices (default: `jpeglm sample`'s mesh, data=1 x fsdp=all x tensor=1). Per
program: compiled or the compiler's error, per-device memory (memory_analysis), and for the
single-step programs the compiled HBM bytes of one decode step against the floor of
`jpeglm/fit/decode_bound.py`.

`--write-rows loop` (default) compiles `kv_cache.write_rows` as the sampler runs it, a per-row
loop of slice updates; `scatter` compiles the single scatter, which this script found to copy
the cache on TPU (so the loop became the default everywhere).

Needs libtpu beside jax 0.10.2 (`pip install 'jax[tpu]==0.10.2'`; keep it out of the test venv):

  python benchmarks/aot_decode_tpu.py --topologies v5p-8,v5p-64 --batches 8,32
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from configs.jpeglm import get_config
from jpeglm.fit import compile_check, decode_bound
from jpeglm.fit.chips import CHIPS, GIB
from jpeglm.fit.collectives import collective_bytes
from jpeglm.model import kv_cache, sharding
from jpeglm.model.transformer import ModelConfig
from jpeglm.sampling import inference_model
from jpeglm.sampling.continuous import ContinuousBatcher
from jpeglm.sampling.generate import Generator, SamplingSettings, prefill_length
from jpeglm.sampling.keys import prompt_keys
from jpeglm.training.state import abstract_params

PROGRAMS = ("prefill", "forward", "run", "admit", "advance", "decode")
EOS = 2  # any id: shapes only


def parse_args():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--topologies", default="v5p-8,v5p-64",
                 help="Cloud TPU slice names (jpeglm.fit.compile_check.parse_topology)")
  p.add_argument("--batches", default="8,32")
  p.add_argument("--config", default="size=1b", help="configs/jpeglm.py argument")
  p.add_argument("--param-dtype", default="bfloat16", choices=("bfloat16", "float32"),
                 help="weights as sampled (the config trains float32 weights)")
  p.add_argument("--mesh", default="data=1,fsdp=-1,tensor=1",
                 help="mesh sizes (jpeglm sample's default: fsdp over every device)")
  p.add_argument("--prompt", type=int, default=3072, help="prompt tokens (prefill width)")
  p.add_argument("--programs", default=",".join(PROGRAMS))
  p.add_argument("--write-rows", default="loop", choices=("scatter", "loop"))
  p.add_argument("--no-step-bytes", action="store_true",
                 help="skip the 1- and 2-layer compiles behind the bytes-per-step figure")
  return p.parse_args()


def gib(b) -> str:
  return "?" if b is None else f"{b / GIB:.2f}"


# ---- abstract inputs ------------------------------------------------------------------------

def laid_out(tree, mesh, batch: int):
  """ShapeDtypeStructs with shardings: 5-D leaves as the KV cache, leaves led by the batch
  over the batch axes, the rest replicated."""
  sizes = dict(mesh.shape)

  def one(x):
    if x.ndim == 5:
      spec = sharding.logical_to_spec(kv_cache.CACHE_NAMES, x.shape, sizes)
    elif x.ndim >= 1 and x.shape[0] == batch:
      spec = sharding.logical_to_spec(("act_batch",) + (None,) * (x.ndim - 1), x.shape, sizes)
    else:
      spec = P()
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh, spec))
  return jax.tree.map(one, tree)


def model_setup(config, mesh):
  cfg = ModelConfig.from_config(config.model, mesh.devices.flat[0].platform)
  params = abstract_params(config, mesh).abstract
  gen = Generator(params, cfg, eos_id=EOS, max_len=cfg.max_len,
                  settings=SamplingSettings(1.0, 50, 1.0), mesh=mesh)
  return cfg, params, gen


def lowerings(config, mesh, batch: int, prompt: int, names, size: int | None = None):
  """{program: (jitted function, abstract arguments, static kwargs)}; `size`: cache slots
  a row (default: the sampler's, the whole context)."""
  cfg, params, g = model_setup(config, mesh)
  sds = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype)
  width = prefill_length(prompt, cfg)
  size = size or g.cache_size
  cache = jax.eval_shape(lambda: inference_model.init_cache(cfg, batch, size))
  keys_B = jax.eval_shape(lambda: prompt_keys(0, range(batch)))
  out = {}
  lay = functools.partial(laid_out, mesh=mesh, batch=batch)
  if "prefill" in names:
    out["prefill"] = (g._prefill, (params, *lay((sds((batch, width), jnp.int32),
                                                 sds((batch,), jnp.int32)))), {"size": size})
  if "forward" in names:
    out["forward"] = (g._forward, (params, *lay((cache, sds((batch,), jnp.int32)))), {})
  if "run" in names:
    out["run"] = (g._run, (params, *lay((cache, sds((batch, cfg.vocab_size), jnp.float32),
                                         keys_B, sds((batch, cache.size), jnp.int32),
                                         sds((), jnp.int32)))), {})
  cb = ContinuousBatcher(g, batch)
  slots = jax.eval_shape(functools.partial(cb._empty_impl, size, cfg.max_len - prompt))
  slots = lay(slots)
  if "admit" in names:
    key = jax.eval_shape(lambda: prompt_keys(0, [0])[0])
    out["admit"] = (cb._admit, (params, slots, *lay((sds((1, width), jnp.int32),
                                                      sds((), jnp.int32), sds((), jnp.int32),
                                                      key, sds((), jnp.int32)))), {})
  if "advance" in names:
    out["advance"] = (cb._advance, (params, slots, *lay((sds((batch,), jnp.int32),
                                                         sds((batch,), bool)))), {})
  if "decode" in names:
    out["decode"] = (cb._decode, (params, slots, *lay((sds((), jnp.int32),
                                                       sds((), bool)))), {})
  return g, out


@dataclasses.dataclass
class Result:
  ok: bool
  seconds: float
  error: str = ""
  memory: dict | None = None  # bytes per device
  bytes_accessed: float | None = None  # per device, XLA's cost analysis (loops counted once)
  collectives: dict | None = None


def compile_one(fn, args, kwargs, mesh) -> Result:
  started = time.perf_counter()
  try:
    with jax.set_mesh(mesh):
      compiled = fn.lower(*args, **kwargs).compile()
  except Exception as e:  # noqa: BLE001  (XlaRuntimeError moves between jax versions)
    text = str(e)
    oom = compile_check._OOM.search(text)
    first = oom.group(0) if oom else " ".join(text.split())[:600]
    return Result(False, time.perf_counter() - started, f"{type(e).__name__}: {first}")
  m = compiled.memory_analysis()
  memory = {"arguments": m.argument_size_in_bytes, "outputs": m.output_size_in_bytes,
            "aliased": m.alias_size_in_bytes, "temporaries": m.temp_size_in_bytes,
            "code": m.generated_code_size_in_bytes}
  memory["peak"] = (memory["arguments"] + memory["outputs"] - memory["aliased"]
                    + memory["temporaries"] + memory["code"])
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return Result(True, time.perf_counter() - started, memory=memory,
                bytes_accessed=float(cost.get("bytes accessed", 0.0)) if cost else None,
                collectives=collective_bytes(compiled.as_text()))


def step_bytes(config, mesh, batch: int, prompt: int, program: str) -> float | None:
  """Per-device HBM bytes of one whole decode step: the step compiled with 1 and 2 unrolled
  layers (cost analysis counts a scan body once), layers x (2 - 1) + the rest, with a cache
  of one CHUNK of slots a row. The cache's chunk loop runs a data-dependent number of times
  and is counted once, and the in-place cache write is counted as an access of the whole
  cache: with one chunk both match a step whose rows have filled CHUNK slots."""
  got = []
  for layers in (1, 2):
    small = config.copy_and_resolve_references()
    small.model.n_layers, small.model.scan_layers = layers, False
    _, progs = lowerings(small, mesh, batch, min(prompt, kv_cache.CHUNK // 2), [program],
                         size=kv_cache.CHUNK)
    r = compile_one(*progs[program], mesh)
    if not r.ok or r.bytes_accessed is None:
      return None
    got.append(r.bytes_accessed)
  per_layer = got[1] - got[0]
  return got[0] - per_layer + config.model.n_layers * per_layer


def main() -> None:
  args = parse_args()
  kv_cache.write_rows.__defaults__ = (args.write_rows == "loop",)
  config = get_config(args.config)
  config.model.param_dtype = args.param_dtype
  mesh_cfg = {k: int(v) for k, v in (kv.split("=") for kv in args.mesh.split(","))}
  names = [n for n in args.programs.split(",") if n]
  print(f"jax {jax.__version__}; config {args.config}: d {config.model.d_model}, "
        f"{config.model.n_layers} layers, context {config.model.max_len}, weights "
        f"{args.param_dtype}, compute {config.model.dtype}; prompt {args.prompt} tokens; "
        f"write_rows: {args.write_rows}; mesh {args.mesh}")
  rows = []
  for topo_name in args.topologies.split(","):
    topo = compile_check.parse_topology(topo_name)
    devices = compile_check.tpu_devices(topo)
    mesh = sharding.make_mesh(mesh_cfg, devices=devices)
    chip = CHIPS[topo.generation]
    print(f"\n== {topo.name} ({topo.jax_name} {topo.chip_config}): {len(devices)} devices, "
          f"mesh {dict(mesh.shape)}, {gib(topo.hbm_bytes)} GiB HBM and "
          f"{chip.hbm_bandwidth / 1e9:.0f} GB/s per device")
    for batch in (int(b) for b in args.batches.split(",")):
      g, progs = lowerings(config, mesh, batch, args.prompt, names)
      print(f"-- batch {batch}: cache {g.cache_size} -> "
            f"{-(-g.cache_size // kv_cache.CHUNK) * kv_cache.CHUNK} slots a row, "
            f"{gib(decode_bound.cache_bytes(config.model, batch, g.cache_size))} GiB in all")
      print(f"{'program':8} {'status':6} {'s':>5} {'args':>6} {'outs':>6} {'alias':>6} "
            f"{'temp':>6} {'code':>6} {'peak':>6} GiB/dev  bytes(XLA) GB/dev  collectives MB/dev")
      for name, (fn, fargs, kwargs) in progs.items():
        r = compile_one(fn, fargs, kwargs, mesh)
        row = {"topology": topo.name, "batch": batch, "program": name, "result": r}
        rows.append(row)
        if not r.ok:
          print(f"{name:8} FAILED {r.seconds:5.0f}  {r.error}")
          continue
        m = r.memory
        fit = "fits" if m["peak"] <= topo.hbm_bytes else "DOES NOT FIT"
        coll = ", ".join(f"{k} {v / 1e6:.1f}" for k, v in r.collectives.items() if v) or "none"
        print(f"{name:8} ok     {r.seconds:5.0f} {gib(m['arguments']):>6} {gib(m['outputs']):>6} "
              f"{gib(m['aliased']):>6} {gib(m['temporaries']):>6} {gib(m['code']):>6} "
              f"{gib(m['peak']):>6} ({fit})  {r.bytes_accessed / 1e9:.3f}  {coll}")
      if args.no_step_bytes:
        continue
      for name in ("forward", "advance"):
        if name not in names:
          continue
        got = step_bytes(config, mesh, batch, args.prompt, name)
        floor = decode_bound.step_floor(config.model, [kv_cache.CHUNK] * batch,
                                        chip.hbm_bandwidth)
        full = decode_bound.step_floor(config.model, [config.model.max_len] * batch,
                                       chip.hbm_bandwidth)
        n = len(devices)
        if got is None:
          print(f"{name}: step bytes: the 1-/2-layer compile failed")
          continue
        print(f"{name}: one step, rows filled <= {kv_cache.CHUNK} slots: compiled "
              f"{got / 1e9:.3f} GB per device ({got * n / 1e9:.2f} GB over {n} devices) vs "
              f"floor {floor.bytes / 1e9:.3f} GB ({floor.weight_bytes / 1e9:.3f} weights + "
              f"{floor.kv_bytes / 1e9:.3f} KV) = {got * n / floor.bytes:.2f}x the floor; "
              f"floor at a full {config.model.max_len} context: {full.bytes / 1e9:.2f} GB, "
              f"{full.seconds / n * 1e3:.2f} ms over {n} devices' bandwidth")
  failed = [r for r in rows if not r["result"].ok]
  print(f"\n{len(rows) - len(failed)} of {len(rows)} programs compiled")


if __name__ == "__main__":
  main()
