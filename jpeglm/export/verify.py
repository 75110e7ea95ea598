"""Checks an exported folder against the checkpoint: both models on the same tokens.

Ours runs in JAX and the export in transformers (PyTorch), both float32 on the CPU. Reports
max |logit difference|, the mean KL(ours || theirs) per position and top-1 agreement.
Verification holds both models in memory (it is a check, not part of the streaming export).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jpeglm.model.transformer import ModelConfig, Transformer, make_apply_fn


@dataclasses.dataclass
class Comparison:
  max_abs_diff: float
  kl: float  # nats per position, mean
  top1_agreement: float
  tokens: tuple[int, int]

  def line(self) -> str:
    b, l = self.tokens
    return (f"verify: max |logit diff| {self.max_abs_diff:.3g}, KL {self.kl:.3g} nats/token, "
            f"top-1 agreement {100 * self.top1_agreement:.2f}% on {b}x{l} tokens")


def float32_model(cfg: ModelConfig) -> ModelConfig:
  return dataclasses.replace(cfg, param_dtype="float32", dtype="float32", attention="xla",
                             remat="none")


def jax_logits_fn(cfg: ModelConfig):
  """`logits(params, tokens_BxL) -> [B, L, V]` float32, jitted."""
  cfg = float32_model(cfg)
  graphdef = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, nnx.Rngs(0))))[0]
  apply = make_apply_fn(graphdef, segment_masking=False)

  @jax.jit
  def logits(params, tokens_BxL):
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
    return apply(params, {"inputs": tokens_BxL})
  return logits


def greedy_jax(logits_fn, params, prompt: list[int], steps: int) -> list[int]:
  """Greedy continuation by repeated full forward passes over one fixed-size buffer
  (causal attention: the padding after the cursor never changes earlier logits)."""
  buffer = np.zeros((1, len(prompt) + steps), np.int32)
  buffer[0, :len(prompt)] = prompt
  for t in range(len(prompt), len(prompt) + steps):
    buffer[0, t] = int(jnp.argmax(logits_fn(params, buffer)[0, t - 1]))
  return [int(x) for x in buffer[0, len(prompt):]]


def load_hf_float32(hf_dir: str):
  import torch
  import transformers
  return transformers.AutoModelForCausalLM.from_pretrained(
      hf_dir, dtype=torch.float32, attn_implementation="eager").eval()


def hf_logits(model, tokens_BxL: np.ndarray) -> np.ndarray:
  import torch
  with torch.no_grad():
    return model(torch.from_numpy(np.asarray(tokens_BxL, np.int64))).logits.float().numpy()


def compare_logits(ours_BxLxV: np.ndarray, theirs_BxLxV: np.ndarray) -> Comparison:
  ours, theirs = np.asarray(ours_BxLxV, np.float64), np.asarray(theirs_BxLxV, np.float64)
  logp = ours - _logsumexp(ours)
  logq = theirs - _logsumexp(theirs)
  kl = float(np.mean(np.sum(np.exp(logp) * (logp - logq), axis=-1)))
  return Comparison(float(np.max(np.abs(ours - theirs))), max(kl, 0.0),
                    float(np.mean(ours.argmax(-1) == theirs.argmax(-1))), ours.shape[:2])


def _logsumexp(x: np.ndarray) -> np.ndarray:
  m = x.max(-1, keepdims=True)
  return m + np.log(np.exp(x - m).sum(-1, keepdims=True))


def verify_export(params: dict, cfg: ModelConfig, hf_dir: str, batch: int = 2,
                  length: int = 128, seed: int = 0, bos_id: int = 1) -> Comparison:
  """Both models on one random batch (BOS first, as in training)."""
  length = min(length, cfg.max_len)
  rng = np.random.default_rng(seed)
  tokens = rng.integers(3, cfg.vocab_size, (batch, length)).astype(np.int32)
  tokens[:, 0] = bos_id
  ours = np.asarray(jax_logits_fn(cfg)(params, tokens))
  theirs = hf_logits(load_hf_float32(hf_dir), tokens)
  return compare_logits(ours, theirs)
