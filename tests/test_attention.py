"""Attention kernels: splash (Pallas interpret mode on CPU) and the context-parallel path
equal the einsum reference, forward and gradients, causal and with packed documents."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jpeglm.model import attention
from jpeglm.model import context_parallel
from jpeglm.model import sharding
from jpeglm.errors import ConfigError
from jpeglm.model.splash import SplashBlocks

B, L, N, H = 2, 512, 4, 32
BLOCKS = SplashBlocks(128, 128, 128, 128)  # the kernel's smallest tiles: more than one block


def inputs(seed=0, kv_heads=N):
  rng = np.random.default_rng(seed)
  q = jnp.asarray(rng.normal(size=(B, L, N, H)), jnp.float32)
  k, v = (jnp.asarray(rng.normal(size=(B, L, kv_heads, H)), jnp.float32) for _ in range(2))
  # Row 0: two documents cut at 200 (not a block edge); row 1: three.
  seg = np.ones((B, L), np.int32)
  seg[0, 200:] = 2
  seg[1, 90:] = 2
  seg[1, 390:] = 3
  return q, k, v, jnp.asarray(seg)


def run(impl, q, k, v, seg):
  """attention in natural order, whatever the mesh's context axis (as the model does it)."""
  shards = context_parallel.context_size()
  q, k, v = (context_parallel.to_balanced(x, shards) for x in (q, k, v))
  seg = None if seg is None else context_parallel.to_balanced(seg, shards)
  out = attention.attend(q, k, v, seg, impl, splash_blocks=BLOCKS, interpret=True)
  return context_parallel.from_balanced(out, shards)


def loss_and_grads(impl, q, k, v, seg):
  def loss(q, k, v):
    return jnp.sum(jnp.sin(run(impl, q, k, v, seg)) * jnp.arange(H))
  return jax.value_and_grad(loss, argnums=(0, 1, 2))(q, k, v)


def assert_close(got, want, tol):
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=tol * np.abs(b).max())


@pytest.mark.parametrize("segments", [False, True], ids=["causal", "segments"])
def test_splash_equals_einsum_forward_and_gradients(segments):
  q, k, v, seg = inputs()
  seg = seg if segments else None
  want = jax.jit(lambda *a: loss_and_grads("einsum", *a))(q, k, v, seg)
  got = jax.jit(lambda *a: loss_and_grads("splash", *a))(q, k, v, seg)
  assert_close(got, want, 1e-5)
  # The check can fail: another document cut changes the result.
  other = np.array(seg if segments else np.ones((B, L), np.int32))
  other[0, 300:] = 7
  moved = jax.jit(lambda *a: loss_and_grads("splash", *a))(q, k, v, jnp.asarray(other))
  assert not np.allclose(moved[0], want[0])


# The hardest case (documents, grouped-query heads, a ragged last block) in `make test`; the
# rest with the slow tests (about 15 s each on 2 cores).
@pytest.mark.parametrize("kv_heads,chunk", [pytest.param(N, 128, marks=pytest.mark.slow),
                                            (2, 96)], ids=["mha", "gqa-ragged"])
@pytest.mark.parametrize("segments", [pytest.param(False, marks=pytest.mark.slow), True],
                         ids=["causal", "segments"])
def test_chunked_equals_einsum_forward_and_gradients(segments, kv_heads, chunk):
  """The blockwise kernel (its own backward pass, from the saved log-sum-exp) against the
  reference, with grouped-query heads and a last block shorter than the others."""
  q, k, v, seg = inputs(2, kv_heads=kv_heads)
  seg = seg if segments else None

  def loss_and_grads_with(fn):
    def loss(q, k, v):
      return jnp.sum(jnp.sin(fn(q, k, v, seg)) * jnp.arange(H))
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(q, k, v)

  want = loss_and_grads_with(attention.attention_einsum)
  got = loss_and_grads_with(lambda *a: attention.attention_chunked(*a, chunk=chunk))
  assert_close(got, want, 1e-5)
  # Under remat the kernel's residuals are saved by name, or its forward pass reruns.
  for policy in (jax.checkpoint_policies.save_only_these_names(attention.RESIDUALS_NAME),
                 jax.checkpoint_policies.nothing_saveable):
    remat = jax.checkpoint(lambda *a: attention.attention_chunked(*a, chunk=chunk),
                           policy=policy)
    assert_close(loss_and_grads_with(remat), want, 1e-5)


LAYOUTS = [dict(context=2), dict(fsdp=2, context=2, tensor=2), dict(data=2, context=4)]


# ("chunked" takes the einsum path once the sequence is sharded; tests/test_model_layouts.py
# runs it through the model.)
@pytest.mark.parametrize("impl", ["einsum", "splash"])
@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda d: "-".join(f"{k}{v}" for k, v in d.items()))
def test_context_parallel_equals_one_device(layout, impl):
  q, k, v, seg = inputs(1, kv_heads=2)  # grouped-query heads too
  want = jax.jit(lambda *a: loss_and_grads("einsum", *a))(q, k, v, seg)
  full = {"data": 1, "fsdp": 1, "context": 1, "tensor": 1, **layout}
  mesh = sharding.make_mesh(full, jax.devices()[:int(np.prod(list(full.values())))])
  with jax.set_mesh(mesh):
    assert context_parallel.context_size() == layout["context"]
    got = jax.jit(lambda *a: loss_and_grads(impl, *a))(q, k, v, seg)
  assert_close(got, want, 1e-5)


def test_balanced_order_gives_every_shard_equal_causal_work():
  order = context_parallel.balanced_order(64, 4)
  assert sorted(order.tolist()) == list(range(64))
  shards = order.reshape(4, 16)
  # Keys visible to a query at position p: p + 1. Equal sums: the causal work is balanced.
  work = (shards + 1).sum(axis=1)
  assert len(set(work.tolist())) == 1, work
  slots = np.arange(64)
  np.testing.assert_array_equal(context_parallel.natural_position(slots, 64, 4), order)
  x = np.arange(2 * 64).reshape(2, 64)
  np.testing.assert_array_equal(
      context_parallel.from_balanced(context_parallel.to_balanced(x, 4), 4), x)
  with pytest.raises(ConfigError, match="multiple of 2 x mesh.context"):
    context_parallel.balanced_order(60, 4)


def test_auto_picks_a_kernel_per_platform():
  assert attention.resolve("auto", "tpu") == "splash"
  assert attention.resolve("auto", "gpu") == "cudnn"
  assert attention.resolve("auto", "cpu") == "chunked"
  assert attention.resolve("cudnn_or_xla", "tpu") == "xla"
  with pytest.raises(ConfigError, match="model.attention='flash'"):
    attention.resolve("flash", "tpu")


def test_splash_blocks_must_tile_the_sequence():
  with pytest.raises(ConfigError, match="attention_block_q=384 does not divide"):
    SplashBlocks(q=384).for_lengths(512, 512)
  assert SplashBlocks().for_lengths(256, 256).block_q == 256  # clipped to the sequence
