"""One train step (forward + backward + AdamW, float32) in our stack vs PyTorch + transformers.

Shape: d 512, 8 layers, 8 heads, MLP 1408, vocabulary 320, sequence 1024, batch 4 (the
`small` config). Ours: the step is one pure jitted function of the state, with donation.
Theirs: `LlamaForCausalLM` (sdpa attention) and `torch.optim.AdamW`, 2 threads. Both run in
this process; after their warm-up steps, timed steps alternate (ours, theirs, ours, ...) so
that load from other processes on a shared machine falls on both; medians are reported,
of wall time and of this process's CPU time (user + system, all threads), which moves less
than wall time when other processes share the cores.

  .venv/bin/python benchmarks/bench_train_step.py [--steps 5] [--attention chunked|xla|einsum]

Timings on a shared 2-core machine move by +-20% between runs: compare the ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

D, LAYERS, HEADS, FF, VOCAB, SEQ, BATCH = 512, 8, 8, 1408, 320, 1024, 4


def parse_args():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--steps", type=int, default=5, help="timed steps per framework")
  p.add_argument("--warmup", type=int, default=2, help="untimed steps (the first compiles)")
  p.add_argument("--attention", default="chunked", choices=("chunked", "xla", "einsum"))
  p.add_argument("--remat", default="none", choices=("none", "full", "save_matmuls"))
  p.add_argument("--no-scan", action="store_true", help="unroll the layers instead of scanning")
  p.add_argument("--xla-flags", default="", help="extra XLA_FLAGS for our side")
  p.add_argument("--skip-torch", action="store_true")
  p.add_argument("--skip-jax", action="store_true")
  return p.parse_args()


def timed_alternating(steps_fns: dict, steps: int, warmup: int
                      ) -> tuple[dict[str, float], dict[str, float]]:
  """Median (wall, CPU) seconds per step of each function; timed steps interleave them."""
  for fn in steps_fns.values():
    for _ in range(warmup):
      fn()
  wall = {name: [] for name in steps_fns}
  cpu = {name: [] for name in steps_fns}
  for _ in range(steps):
    for name, fn in steps_fns.items():
      start, start_cpu = time.perf_counter(), time.process_time()
      fn()
      wall[name].append(time.perf_counter() - start)
      cpu[name].append(time.process_time() - start_cpu)
  return ({name: statistics.median(t) for name, t in wall.items()},
          {name: statistics.median(t) for name, t in cpu.items()})


def jax_step(args):
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax
  from flax import nnx

  from jpeglm.training.losses import cross_entropy
  from jpeglm.model.transformer import ModelConfig, Transformer

  cfg = ModelConfig(vocab_size=VOCAB, d_model=D, n_layers=LAYERS, n_heads=HEADS,
                    n_kv_heads=HEADS, d_ff=FF, max_len=SEQ, attention=args.attention,
                    scan_layers=not args.no_scan, remat=args.remat)
  graphdef, params = nnx.split(Transformer(cfg, nnx.Rngs(0)))
  tx = optax.adamw(3e-4, b1=0.9, b2=0.95, weight_decay=0.1)
  state = {"params": params, "opt": tx.init(params)}

  def train_step(state, tokens_BxL1):
    def loss_fn(params):
      logits = nnx.merge(graphdef, params)(tokens_BxL1[:, :-1])
      return cross_entropy(logits, tokens_BxL1[:, 1:])[0]
    loss, grads = jax.value_and_grad(loss_fn)(state["params"])
    updates, opt = tx.update(grads, state["opt"], state["params"])
    return {"params": optax.apply_updates(state["params"], updates), "opt": opt}, loss

  step_fn = jax.jit(train_step, donate_argnums=0)
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(0, VOCAB, (BATCH, SEQ + 1)), jnp.int32)
  holder = {"state": state}

  def step():
    holder["state"], loss = step_fn(holder["state"], tokens)
    jax.block_until_ready(loss)
    holder["loss"] = float(loss)

  step.report = lambda: print(f"jax {jax.__version__}: loss {holder['loss']:.4f}")
  return step


def torch_step(args):
  import numpy as np
  import torch
  import transformers

  torch.set_num_threads(2)
  torch.manual_seed(0)
  config = transformers.LlamaConfig(
      vocab_size=VOCAB, hidden_size=D, intermediate_size=FF, num_hidden_layers=LAYERS,
      num_attention_heads=HEADS, num_key_value_heads=HEADS, max_position_embeddings=SEQ,
      tie_word_embeddings=False, attn_implementation="sdpa")
  model = transformers.LlamaForCausalLM(config).float().train()
  opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1)
  rng = np.random.default_rng(0)
  tokens = torch.from_numpy(rng.integers(0, VOCAB, (BATCH, SEQ + 1)))
  holder = {}

  def step():
    logits = model(input_ids=tokens[:, :-1]).logits
    loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, VOCAB),
                                             tokens[:, 1:].reshape(-1))
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    holder["loss"] = loss.item()

  step.report = lambda: print(f"torch {torch.__version__} + transformers "
                              f"{transformers.__version__}: loss {holder['loss']:.4f}")
  return step


def main() -> None:
  args = parse_args()
  if args.xla_flags:
    os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""), args.xla_flags]).strip()
  tokens = BATCH * SEQ
  print(f"train step, float32: d {D}, {LAYERS} layers, {HEADS} heads, MLP {FF}, vocab {VOCAB}, "
        f"seq {SEQ}, batch {BATCH}; median of {args.steps} steps after {args.warmup} warm-up",
        flush=True)
  fns = {}
  if not args.skip_jax:
    fns["ours"] = jax_step(args)
  if not args.skip_torch:
    fns["theirs"] = torch_step(args)
  medians, cpu = timed_alternating(fns, args.steps, args.warmup)
  for fn in fns.values():
    fn.report()
  ours, theirs = medians.get("ours"), medians.get("theirs")
  if ours is not None:
    print(f"ours (jax, attention={args.attention}, scan={not args.no_scan}, remat={args.remat}): "
          f"{ours * 1e3:8.1f} ms/step  {tokens / ours:8.0f} tokens/s  "
          f"cpu {cpu['ours']:6.2f} s/step")
  if theirs is not None:
    print(f"pytorch (transformers LlamaForCausalLM, sdpa): "
          f"{theirs * 1e3:8.1f} ms/step  {tokens / theirs:8.0f} tokens/s  "
          f"cpu {cpu['theirs']:6.2f} s/step")
  if ours is not None and theirs is not None:
    print(f"ratio ours/pytorch: {ours / theirs:.3f} (wall), {cpu['ours'] / cpu['theirs']:.3f} (cpu)")


if __name__ == "__main__":
  main()
