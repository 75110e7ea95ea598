"""On a GPU: cuDNN flash attention (what `model.attention=auto` picks there) equals the float32
reference, alone and through the model, and `jpeglm train` runs with it.

These need a CUDA GPU and skip elsewhere (CI has none); `benchmarks/gpu_checks.sh` runs them
with the GPU benchmarks. They ran on an H100 (see the README's GPU section).
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jpeglm.model import attention

pytestmark = pytest.mark.skipif(not any(d.platform == "gpu" for d in jax.devices()),
                                reason="needs a CUDA GPU (jax.devices() has none)")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
B, L, N, H = 2, 1024, 8, 64


def inputs(kv_heads, seed=0):
  rng = np.random.default_rng(seed)
  q = jnp.asarray(rng.normal(size=(B, L, N, H)), jnp.bfloat16)
  k, v = (jnp.asarray(rng.normal(size=(B, L, kv_heads, H)), jnp.bfloat16) for _ in range(2))
  seg = np.ones((B, L), np.int32)
  seg[0, 300:] = 2  # row 0: two documents; row 1: three, cut off block edges
  seg[1, 77:] = 2
  seg[1, 700:] = 3
  return q, k, v, jnp.asarray(seg)


def loss_and_grads(impl, q, k, v, seg):
  weights = jnp.arange(H, dtype=jnp.float32) / H

  def loss(q, k, v):
    out = attention.attend(q, k, v, seg, impl)
    return jnp.sum(jnp.sin(out.astype(jnp.float32)) * weights)

  return jax.value_and_grad(loss, argnums=(0, 1, 2))(q, k, v)


@pytest.mark.parametrize("kv_heads", [N, 2], ids=["mha", "gqa"])
@pytest.mark.parametrize("segments", [False, True], ids=["causal", "segments"])
def test_cudnn_attention_equals_float32_reference(segments, kv_heads):
  q, k, v, seg = inputs(kv_heads)
  seg = seg if segments else None
  fn = jax.jit(lambda *a: loss_and_grads("cudnn", *a))
  hlo = fn.lower(q, k, v, seg).compile().as_text()
  assert "cudnn" in hlo.lower(), "jax.nn.dot_product_attention did not compile to cuDNN"
  got = fn(q, k, v, seg)
  # The reference: the same bf16 inputs, attention computed in float32.
  want = jax.jit(lambda *a: loss_and_grads("einsum", *(x.astype(jnp.float32) for x in a[:3]),
                                           a[3]))(q, k, v, seg)
  for name, a, b in zip(("loss", "dq", "dk", "dv"), jax.tree.leaves(got), jax.tree.leaves(want)):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    err = np.abs(a - b).max() / np.abs(b).max()
    assert err < 2e-2, f"{name}: max error {err:.2e} of the reference's largest value"
  if segments:  # the mask is honoured: other document cuts change the result
    other = np.asarray(seg).copy()
    other[0, 500:] = 9
    moved = fn(q, k, v, jnp.asarray(other))
    assert abs(float(moved[0]) - float(got[0])) > 1e-3


def test_model_with_cudnn_equals_chunked_in_bfloat16():
  import dataclasses

  from flax import nnx

  from configs.jpeglm import get_config
  from jpeglm.training.losses import cross_entropy
  from jpeglm.model.transformer import ModelConfig, Transformer

  base = ModelConfig.from_config(get_config("size=tiny").model)
  cfg = dataclasses.replace(base, d_model=256, n_heads=4, n_kv_heads=2, d_ff=704, n_layers=2,
                            dtype="bfloat16", max_len=L)
  tokens = jax.random.randint(jax.random.key(0), (B, L + 1), 0, cfg.vocab_size, jnp.int32)

  def loss_and_grads(kernel):
    model = Transformer(dataclasses.replace(cfg, attention=kernel), nnx.Rngs(0))
    graphdef, state = nnx.split(model)

    def loss_fn(state):
      return cross_entropy(nnx.merge(graphdef, state)(tokens[:, :-1]), tokens[:, 1:])[0]

    return jax.jit(jax.value_and_grad(loss_fn))(state)

  (loss_c, grads_c), (loss_r, grads_r) = loss_and_grads("cudnn"), loss_and_grads("chunked")
  assert abs(float(loss_c) - float(loss_r)) < 1e-2 * abs(float(loss_r))
  for a, b in zip(jax.tree.leaves(grads_c), jax.tree.leaves(grads_r)):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    assert np.abs(a - b).max() <= 5e-2 * np.abs(b).max() + 1e-6


def test_train_runs_on_the_gpu_with_auto_attention(tmp_path, tokenizer_path):
  workdir = tmp_path / "run"
  cmd = [sys.executable, "-m", "jpeglm", "train", "--config", "configs/jpeglm.py:size=tiny",
         "--workdir", str(workdir), f"--config.tokenizer.path={tokenizer_path}",
         "--config.model.attention=auto", "--config.model.dtype=bfloat16",
         "--config.train.steps=6", "--config.train.log_every=1",
         "--config.train.eval_every=0", "--config.train.checkpoint_every=6"]
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # no fake CPU devices
  done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "cudnn" in done.stdout + done.stderr
  rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  losses = [r["loss"] for r in rows if "loss" in r]
  assert len(losses) == 6 and all(np.isfinite(losses))
  assert losses[-1] < losses[0]
