"""Per-device FLOPs and HBM bytes of one train step, for compile-check's labelled estimates.

XLA's cost analysis of the real step undercounts three times over: a `scan` body (the
layers, the gradient-accumulation micro-batches) is counted once, not once per iteration;
a Pallas kernel (splash attention) is a custom call it cannot see into; and on TPU it
reports about 2.4 FLOPs per parameter per token for a dense layer's forward + backward
(checked with libtpu 0.0.42.1 on a bare 7B-sized layer; the arithmetic is 6). So:

  - HBM bytes come from the compiled programs: the step compiled with 1 and then 2
    unrolled layers at one micro-batch; the difference is one layer (with its remat
    recompute), the rest is embedding, head, loss and optimizer; layers x per-layer + rest,
    times the micro-batches, is the step (the optimizer is then counted once per
    micro-batch: a small overcount);
  - FLOPs are the larger of the same extrapolation and the arithmetic of the matmuls the
    step runs (`executed_flops`), which includes the remat recompute and the kernel.

Feeds `jpeglm compile-check`'s labelled estimates (step-time floor, MFU ceiling).
"""

from __future__ import annotations

import dataclasses

import ml_collections

from jpeglm.model import transformer as model_lib


@dataclasses.dataclass(frozen=True)
class StepCost:
  flops: float  # per device: the larger of the compiled count and the arithmetic
  bytes_accessed: float  # per device (HBM traffic)
  compiled_flops: float  # per device, XLA's cost analysis extrapolated (for the record)
  collective_bytes: dict[str, float]  # per device, by kind (jpeglm.fit.collectives)


# Forward matmuls each remat policy runs again in the backward pass (besides attention).
_RECOMPUTED = {"none": (), "save_matmuls": (), "minimal": (), "save_attention": ("o", "mlp"),
               "offload_attention": ("o", "mlp"), "save_qkv_proj": ("o", "mlp"),
               "full": ("qkv", "o", "mlp")}


def executed_flops(config: ml_collections.ConfigDict, axis_sizes: dict[str, int],
                   platform: str) -> float:
  """Matmul FLOPs one device runs per step, by formula: forward + backward (3x forward),
  the forward matmuls the remat policy recomputes, and attention as its kernel does it.

  Attention per layer and row, in units of L^2 d FLOPs (one causal half-matmul): forward
  2, flash backward 5 (recomputed scores, dV, dP, dQ, dK), forward again where the policy
  does not keep the attention output; kernels that skip no blocks (xla, einsum) do twice.
  """
  m, train = config.model, config.train
  cfg = model_lib.ModelConfig.from_config(m, platform)
  d, f, layers = m.d_model, m.d_ff, m.n_layers
  kv = d // m.n_heads * m.n_kv_heads
  rows = max(train.global_batch / (axis_sizes.get("data", 1) * axis_sizes.get("fsdp", 1)), 1.0)
  # Tensor splits every layer matmul; context splits the tokens.
  split = axis_sizes.get("tensor", 1) * axis_sizes.get("context", 1)
  tokens = rows * config.data.seq_len / axis_sizes.get("context", 1)
  per_token = {"qkv": 2 * (d * d + 2 * d * kv), "o": 2 * d * d, "mlp": 2 * 3 * d * f}
  layer_fwd = sum(per_token.values())
  again = sum(per_token[k] for k in _RECOMPUTED[cfg.remat])
  head = 2 * d * m.vocab_size
  matmuls = tokens * (layers * (3 * layer_fwd + again) + 3 * head) / axis_sizes.get("tensor", 1)
  keeps_output = cfg.remat in ("none", "save_matmuls", "minimal", "save_attention",
                               "offload_attention")
  units = 2 + 5 + (0 if keeps_output else 2)
  if cfg.attention_kernel in ("xla", "einsum"):
    units *= 2
  attention = rows * layers * units * config.data.seq_len ** 2 * d / split
  return matmuls + attention


def estimate(config: ml_collections.ConfigDict, compile_costs, executed: float) -> StepCost:
  """`compile_costs(config) -> (flops, bytes, {collective: bytes})` compiles a config's
  step for the target;
  `executed` is `executed_flops` for the same config and mesh."""
  ga = int(config.train.grad_accum)
  measured = []
  for layers in (1, 2):
    small = ml_collections.ConfigDict(config.to_dict())
    small.model.n_layers = layers
    small.model.scan_layers = False
    small.train.grad_accum = 1
    small.train.global_batch = config.train.global_batch // ga
    measured.append(compile_costs(small))
  (f1, b1, c1), (f2, b2, c2) = measured
  layers = config.model.n_layers
  whole = lambda one, two: ga * (one + (layers - 1) * (two - one))
  comm = {k: max(whole(c1.get(k, 0.0), c2.get(k, 0.0)), 0.0) for k in set(c1) | set(c2)}
  flops = whole(f1, f2)
  return StepCost(max(flops, executed), whole(b1, b2), flops, comm)
