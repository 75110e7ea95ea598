"""Training parity with a trusted trainer: the same steps in jpeglm and in PyTorch +
transformers' `LlamaForCausalLM`, from the same weights on the same token batches.

Ours runs the trainer's own step (`jpeglm.training.step.build`: clipping, AdamW with the
decay mask, warm-up then cosine to 10%). Theirs is `torch.optim.AdamW` over two parameter
groups (decay on matrices, none on embeddings and norm scales), `clip_grad_norm_` and a
`LambdaLR` with the same schedule written out as a formula, so a drift in any of these parts
shows up as a drift in the loss curve. Both in float32 on the CPU.

The token batches are real: the JPEG streams of held-out MNIST digits (`builtin:digits`),
one token per byte value, concatenated and chunked as `data.packing=concat` does.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np



def parity_config(steps: int = 100, seq_len: int = 64, batch: int = 8
                  ) -> ml_collections.ConfigDict:
  """A small float32 model whose every optimizer part is active: warm-up, cosine decay,
  clipping that bites in the first steps, weight decay."""
  from configs.jpeglm import get_config

  c = get_config("size=tiny")
  c.model.vocab_size = 256  # one token per byte
  c.model.max_len = seq_len
  c.model.attention = "xla"
  c.model.param_dtype = c.model.dtype = "float32"
  c.model.remat = "none"
  c.data.seq_len = seq_len
  c.data.packing = "concat"
  c.train.steps = steps
  c.train.global_batch = batch
  c.train.grad_accum = 1
  c.train.lr = 1e-3
  c.train.warmup_steps = max(1, steps // 10)
  c.train.weight_decay = 0.1
  c.train.clip = 0.5
  c.train.z_loss = 0.0
  return c


def digit_token_batches(steps: int, batch: int, seq_len: int, quality: int = 25) -> np.ndarray:
  """[steps, batch, seq_len + 1] byte tokens of real digits' JPEG streams, concatenated."""
  from data_pipeline.digits import load_digits
  from PIL import Image

  from jpeglm.codecs import JpegCodec

  images, _ = load_digits()
  codec = JpegCodec(size=images.shape[1], quality=quality, color="gray")
  need = steps * batch * (seq_len + 1)
  stream: list[int] = []
  for image in images[::-7]:  # every 7th from the end: all ten classes early
    stream.extend(codec.encode(Image.fromarray(image)))
    if len(stream) >= need:
      break
  tokens = np.asarray(stream[:need], np.int32)
  return tokens.reshape(steps, batch, seq_len + 1)


def _batch(tokens_BxL1: np.ndarray) -> dict:
  inputs, targets = tokens_BxL1[:, :-1], tokens_BxL1[:, 1:]
  rows, length = inputs.shape
  return {"inputs": inputs, "targets": targets,
          "segment_ids": np.ones((rows, length), np.int32),
          "positions": np.broadcast_to(np.arange(length, dtype=np.int32), (rows, length)).copy(),
          "weights": np.ones((rows, length), np.float32),
          "target_tokens": np.full(rows, length, np.int32),
          "target_bytes": np.full(rows, length, np.int32),
          "stop": np.zeros(rows, np.int32)}


def jax_losses(config: ml_collections.ConfigDict, tokens: np.ndarray) -> tuple[list[float], dict]:
  """(per-step losses, the initial parameters) of the trainer's own step."""
  from jpeglm.model import sharding
  from jpeglm.training import step as train_step
  from jpeglm.training.state import init_state

  mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "context": 1, "tensor": 1},
                            jax.devices()[:1])
  built = train_step.build(config, mesh)
  state, _ = init_state(config, mesh, built.optimizer)
  initial = jax.tree.map(lambda x: np.asarray(x, np.float32), state["params"])
  losses = []
  with jax.set_mesh(mesh):
    for tokens_BxL1 in tokens:
      state, metrics = built.step(state, {k: jnp.asarray(v) for k, v in _batch(tokens_BxL1).items()})
      losses.append(float(metrics["loss"]))
  return losses, initial


def schedule_factor(step: int, train: ml_collections.ConfigDict) -> float:
  """The learning rate of update `step` (0-based) over the peak: linear warm-up from 0, then
  cosine to 10% of the peak at train.steps (Llama-2's schedule, written out)."""
  from jpeglm.training.optimizer import FINAL_LR_FRACTION

  steps = int(train.steps)
  warmup = min(int(train.warmup_steps), max(steps - 1, 0))
  if step < warmup:
    return step / warmup
  decay = max(steps, warmup + 1) - warmup
  progress = min(step - warmup, decay) / decay
  return FINAL_LR_FRACTION + (1 - FINAL_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * progress))


def torch_losses(config: ml_collections.ConfigDict, params: dict, tokens: np.ndarray
                 ) -> list[float]:
  """Per-step losses of transformers' LlamaForCausalLM trained by torch.optim.AdamW."""
  import torch
  import transformers

  from jpeglm.export import hf_layout
  from jpeglm.model.transformer import ModelConfig

  cfg = ModelConfig.from_config(config.model)
  hf_config = transformers.LlamaConfig(**hf_layout.llama_config(cfg, 0, 1, "float32"))
  hf_config._attn_implementation = "eager"
  torch.manual_seed(0)
  model = transformers.LlamaForCausalLM(hf_config).float().train()
  state = {k: torch.from_numpy(np.ascontiguousarray(v, np.float32))
           for k, v in hf_layout.hf_state_dict(params, cfg).items()}
  missing, unexpected = model.load_state_dict(state, strict=False)
  if unexpected or any("rotary" not in k for k in missing):
    raise ValueError(f"state dict mismatch: missing {missing}, unexpected {unexpected}")

  train = config.train
  decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
  no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
  optimizer = torch.optim.AdamW(
      [{"params": decay, "weight_decay": float(train.weight_decay)},
       {"params": no_decay, "weight_decay": 0.0}],
      lr=float(train.lr), betas=(0.9, 0.95), eps=1e-8)
  scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: schedule_factor(s, train))
  losses = []
  for tokens_BxL1 in tokens:
    inputs = torch.from_numpy(tokens_BxL1[:, :-1].astype(np.int64))
    targets = torch.from_numpy(tokens_BxL1[:, 1:].astype(np.int64))
    logits = model(inputs).logits
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                             targets.reshape(-1))
    optimizer.zero_grad()
    loss.backward()
    if train.clip and train.clip > 0:
      torch.nn.utils.clip_grad_norm_(model.parameters(), float(train.clip))
    optimizer.step()
    scheduler.step()
    losses.append(float(loss.detach()))
  return losses


def run(steps: int = 100, seq_len: int = 64, batch: int = 8) -> tuple[list[float], list[float]]:
  """(jpeglm's losses, PyTorch's losses) over `steps` shared batches."""
  config = parity_config(steps, seq_len, batch)
  tokens = digit_token_batches(steps, batch, seq_len)
  ours, params = jax_losses(config, tokens)
  return ours, torch_losses(config, params, tokens)
