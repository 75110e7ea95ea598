"""The whole model's loss and gradients with splash attention and context parallelism
equal a single device with the einsum reference (tiny model, 8 fake CPU devices)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs.jpeglm import get_config
from jpeglm.model import sharding
from jpeglm.training.losses import cross_entropy
from jpeglm.model.transformer import ModelConfig, Transformer, make_apply_fn

B, L = 4, 256  # splash tiles are 128: two per row, one per shard with context=2


def cfg(attention):
  return dataclasses.replace(ModelConfig.from_config(get_config("size=tiny").model),
                             n_heads=8, n_kv_heads=4, max_len=L, attention=attention,
                             attention_block_q=128, attention_block_kv=128,
                             attention_block_q_bwd=128, attention_block_kv_bwd=128)


def batch():
  toks = np.asarray(jax.random.randint(jax.random.key(2), (B, L + 1), 0, 320, jnp.int32))
  seg = np.where(np.arange(L) < 77, 1, 2)[None].repeat(B, 0).astype(np.int32)
  seg[1, 150:] = 3
  pos = (np.arange(L)[None] - np.where(seg == 1, 0, np.where(seg == 2, 77, 150))).astype(np.int32)
  return {"inputs": toks[:, :-1], "targets": toks[:, 1:], "segment_ids": seg, "positions": pos,
          "weights": np.ones((B, L), np.float32)}


def loss_and_grads(graphdef, params, data):
  apply = make_apply_fn(graphdef)
  return jax.value_and_grad(
      lambda p: cross_entropy(apply(p, data), data["targets"], data["weights"])[0])(params)


@pytest.fixture(scope="module")
def reference():
  graphdef, params = nnx.split(Transformer(cfg("einsum"), nnx.Rngs(0)))
  loss, grads = jax.jit(loss_and_grads, static_argnums=0)(graphdef, params, batch())
  return params, loss, grads


@pytest.mark.parametrize("attention,layout", [
    ("splash", (2, 2, 1, 2)),
    ("splash", (1, 1, 2, 1)),
    ("chunked", (1, 2, 2, 2)),
    ("splash", (1, 2, 2, 2)),
], ids=lambda x: x if isinstance(x, str) else "x".join(map(str, x)))
def test_model_loss_and_grads_equal_single_device(attention, layout, reference):
  params, ref_loss, ref_grads = reference
  graphdef = nnx.split(Transformer(cfg(attention), nnx.Rngs(0)))[0]
  mesh = sharding.make_mesh(dict(zip(sharding.MESH_AXES, layout)),
                            jax.devices()[:int(np.prod(layout))])
  shardings = sharding.state_shardings(params, mesh)
  data = sharding.shard_batch(batch(), mesh)
  with jax.set_mesh(mesh):
    loss, grads = jax.jit(loss_and_grads, static_argnums=0, out_shardings=(None, shardings))(
        graphdef, jax.device_put(params, shardings), data)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(
      np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5 * np.abs(b).max()), grads, ref_grads)
