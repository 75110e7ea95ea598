"""Training throughput and MFU of the 1b config at the paper's 12,288 tokens, bf16, one device.

The step is `jpeglm train`'s own (state layout, jitted step with donation, AdamW), run on
random tokens on every local device as one mesh. MFU = model FLOPs / (step time x peak x
devices), two conventions: ours (jpeglm.fit.flops: 6N + 12 L d T per token, attention counted
whole) and MaxText's (attention halved for the causal mask), which the anchor number uses
(MaxText Llama-2-7B: ~492 TFLOP/s per H100, ~50% MFU at 4,096 tokens).

  .venv/bin/python benchmarks/bench_mfu.py                       # GPU: 1b, L=12,288
  .venv/bin/python benchmarks/bench_mfu.py --size tiny --seq-len 256 --steps 2  # CPU smoke

Knobs: --batch (rows per step), --remat, --attention (auto: cuDNN on GPU, splash on TPU).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--size", default="1b")
  p.add_argument("--seq-len", type=int, default=12288)
  # The best of those measured on one H100 80GB (README): save_matmuls at 3 rows. The 1b
  # config's own save_attention (chosen for TPU slices) gave 42.8% at 4 rows.
  p.add_argument("--batch", type=int, default=3, help="global rows per step")
  p.add_argument("--remat", default="save_matmuls")
  p.add_argument("--attention", default="auto")
  p.add_argument("--dtype", default="bfloat16")
  p.add_argument("--steps", type=int, default=10, help="timed steps")
  p.add_argument("--warmup", type=int, default=2, help="untimed steps (the first compiles)")
  return p.parse_args()


def main() -> None:
  args = parse_args()
  import jax
  import numpy as np

  from configs.jpeglm import get_config
  from jpeglm.fit import chips, flops
  from jpeglm.model import transformer as model_lib
  from jpeglm.model import sharding
  from jpeglm.training import step as train_step
  from jpeglm.training.state import init_state

  config = get_config(f"size={args.size},codec=jpeg")
  config.data.seq_len = config.model.max_len = args.seq_len
  config.model.remat, config.model.attention = args.remat, args.attention
  config.model.dtype = args.dtype
  config.train.global_batch = args.batch
  mesh = sharding.make_mesh({"data": 1, "fsdp": -1, "tensor": 1})
  built = train_step.build(config, mesh)  # the trainer's own step: shardings, donation
  state, _ = init_state(config, mesh, built.optimizer)
  kernel = model_lib.ModelConfig.from_config(config.model, jax.devices()[0].platform)
  b, l = args.batch, args.seq_len
  rng = np.random.default_rng(0)
  tokens = rng.integers(3, config.model.vocab_size, (b, l + 1)).astype(np.int32)
  batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
           "segment_ids": np.ones((b, l), np.int32),
           "positions": np.broadcast_to(np.arange(l, dtype=np.int32), (b, l)).copy(),
           "weights": np.ones((b, l), np.float32), "target_tokens": np.full(b, l, np.int32),
           "target_bytes": np.full(b, l, np.int32), "stop": np.zeros(b, np.int32)}
  with jax.set_mesh(mesh):
    batch = sharding.shard_batch(batch, mesh)
    step = built.step
    times = []
    for i in range(args.warmup + args.steps):
      began = time.perf_counter()
      state, metrics = step(state, batch)
      loss = float(metrics["loss"])  # waits for the step
      if i >= args.warmup:
        times.append(time.perf_counter() - began)
  seconds = statistics.median(times)
  devices = jax.device_count()
  per_token = flops.flops_per_token(config.model, l)
  causal_half = per_token - 6.0 * config.model.n_layers * config.model.d_model * l
  peak = chips.peak_flops(jax.devices()[0].device_kind)
  tokens_per_s = b * l / seconds
  # The flags belong with every figure (docs/results.md): XLA's are read once, from the env.
  print(f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; jax {jax.__version__}, "
        f"{jax.devices()[0].platform}")
  print(f"{args.size} (d {config.model.d_model}, {config.model.n_layers} layers), L={l:,}, "
        f"batch {b}, {args.dtype}, attention {kernel.attention_kernel}, remat {args.remat}, "
        f"{devices} x {jax.devices()[0].device_kind}; loss {loss:.3f}")
  print(f"step {seconds * 1e3:.1f} ms (median of {args.steps}), {tokens_per_s:,.0f} tokens/s, "
        f"{tokens_per_s / devices:,.0f} tokens/s/device")
  if peak:
    achieved = per_token * tokens_per_s / devices
    print(f"model TFLOP/s per device {achieved / 1e12:.1f}; MFU {100 * achieved / peak:.1f}% "
          f"(attention whole), {100 * causal_half * tokens_per_s / devices / peak:.1f}% "
          f"(MaxText: causal attention halved); peak {peak / 1e12:.0f} TFLOP/s")
  else:
    print(f"MFU: no published peak for {jax.devices()[0].device_kind!r} (CPU)")


if __name__ == "__main__":
  main()
