"""The memory floor of a decode step, and what the paper's evaluation costs at a given speed.

A decode step does little arithmetic per byte: every weight is read once per step (whatever
the batch), and every row reads its own keys and values. Its floor is therefore

  bytes per step = weights (the matmuls' parameters, in model.param_dtype)
                 + KV cache read (2 x layers x kv heads x head_dim x filled slots, model.dtype)
  seconds per step >= bytes per step / HBM bandwidth,

and a sampler's share of the bound is that floor over its measured step time. Embedding
rows, norms, logits and the new keys and values written are left out (under 0.1% at the 1b
shape). The cache counts the slots each row has filled (the ideal); our decode step reads
every row up to the longest one, which the same calculator shows with that length.

The paper's protocol (docs: paper.md, "Evaluation"): 5,000 ImageNet images, prefix ratios
0.25 / 0.5 / 0.75, 3 seeds: 45,000 completions of images of about 5,100 tokens. A
completion at ratio r generates the image's remaining (1 - r) share, on average, and decodes
with a context from r to all of the image's tokens. (Counting all 5,100 tokens for every
completion, as issue 28's 225M tokens do, doubles the total.)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from jpeglm.fit.flops import matmul_params

BYTES = {"float32": 4, "bfloat16": 2}
PAPER_NUM_IMAGES = 5_000
PAPER_RATIOS = (0.25, 0.5, 0.75)
PAPER_SEEDS = 3
TOKENS_PER_IMAGE = 5_100  # mean of 256x256 q25 streams of the built-in photos, BOS/EOS included


def weight_bytes(model) -> int:
  """Bytes of weights a decode step reads: `model` is a ModelConfig or config.model."""
  return matmul_params(model) * BYTES[model.param_dtype]


def kv_bytes_per_slot(model) -> int:
  """Bytes of keys and values one filled cache slot holds, over all layers."""
  head_dim = model.d_model // model.n_heads
  return 2 * model.n_layers * model.n_kv_heads * head_dim * BYTES[model.dtype]


@dataclasses.dataclass(frozen=True)
class StepFloor:
  weight_bytes: int
  kv_bytes: int
  seconds: float  # the floor: all bytes at the chip's bandwidth

  @property
  def bytes(self) -> int:
    return self.weight_bytes + self.kv_bytes


def step_floor(model, lengths: Sequence[int], bandwidth: float) -> StepFloor:
  """The floor of one decode step of rows whose caches hold `lengths` slots."""
  weights, kv = weight_bytes(model), kv_bytes_per_slot(model) * int(sum(lengths))
  return StepFloor(weights, kv, (weights + kv) / bandwidth)


def tokens_per_second_bound(model, batch: int, context: float, bandwidth: float) -> float:
  """Tokens/s at the floor: `batch` rows, each with `context` filled slots (a mean)."""
  per_step = (weight_bytes(model) + kv_bytes_per_slot(model) * batch * context) / bandwidth
  return batch / per_step


def bandwidth_share(model, batch: int, context: float, tokens_per_s: float,
                    bandwidth: float) -> float:
  """Measured tokens/s as a share of the floor's (= floor step time / measured step time)."""
  return tokens_per_s / tokens_per_second_bound(model, batch, context, bandwidth)


def cache_bytes(model, batch: int, slots: int) -> int:
  """Memory of a KV cache of `batch` rows of `slots` slots each."""
  return kv_bytes_per_slot(model) * batch * slots


@dataclasses.dataclass(frozen=True)
class Protocol:
  """The prefix-completion protocol's size: the paper's by default."""
  num_images: int = PAPER_NUM_IMAGES
  ratios: tuple[float, ...] = PAPER_RATIOS
  seeds: int = PAPER_SEEDS
  tokens_per_image: int = TOKENS_PER_IMAGE

  def generated_tokens(self) -> float:
    """Tokens sampled in all: each completion generates the (1 - r) rest of its image."""
    return self.num_images * self.seeds * sum((1 - r) * self.tokens_per_image
                                              for r in self.ratios)

  def hours(self, tokens_per_s: float) -> float:
    """Hours of sampling at `tokens_per_s` (prefill and decoding of the images left out)."""
    return self.generated_tokens() / tokens_per_s / 3600

  def mean_context(self) -> float:
    """Filled cache slots of a decode step, averaged over the protocol's tokens: a ratio-r
    completion decodes from r x T to T tokens (mean (1 + r) T / 2), weighted by its tokens."""
    t = self.tokens_per_image
    weights = [(1 - r) for r in self.ratios]
    return sum(w * (1 + r) * t / 2 for w, r in zip(weights, self.ratios)) / sum(weights)

  def floor_hours(self, model, batch: int, bandwidth: float) -> float:
    """Hours at the memory floor with `batch` rows decoding at the mean context."""
    return self.hours(tokens_per_second_bound(model, batch, self.mean_context(), bandwidth))


def protocol_estimate(model, tokens_per_s: float, batch: int, tokens_per_image: float,
                      bandwidth: float | None) -> dict:
  """The paper's protocol at a measured sampling speed: its tokens and hours, and, where the
  chip's bandwidth is known, the share of the floor reached and the hours at the floor."""
  protocol = Protocol(tokens_per_image=max(1, round(tokens_per_image)))
  out = {"num_images": protocol.num_images, "ratios": list(protocol.ratios),
         "seeds": protocol.seeds, "tokens_per_image": protocol.tokens_per_image,
         "generated_tokens": protocol.generated_tokens(), "tokens_per_second": tokens_per_s,
         "hours": protocol.hours(tokens_per_s), "bound_share": None, "floor_hours": None}
  if bandwidth:
    out["bound_share"] = bandwidth_share(model, batch, protocol.mean_context(), tokens_per_s,
                                         bandwidth)
    out["floor_hours"] = protocol.floor_hours(model, batch, bandwidth)
  return out
