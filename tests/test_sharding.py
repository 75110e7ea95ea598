"""Meshes and logical-axis rules; loss and gradients on every mesh layout equal one device."""

import dataclasses
import json
import os
import socket
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from configs.jpeglm import get_config
from jpeglm.model import sharding
from jpeglm.errors import ConfigError
from jpeglm.training.losses import cross_entropy
from jpeglm.model.transformer import ModelConfig, Transformer, make_apply_fn

LAYOUTS = [(8, 1, 1), (1, 8, 1), (1, 1, 8), (2, 2, 2), (4, 2, 1), (1, 2, 4)]
B, L = 8, 32


def mesh_cfg(data, fsdp, tensor, context=1):
  return {"data": data, "fsdp": fsdp, "context": context, "tensor": tensor}


def test_mesh_shape_resolves_the_rest_and_refuses_bad_sizes():
  assert sharding.mesh_shape(mesh_cfg(1, -1, 1), 8) == (1, 8, 1, 1)
  assert sharding.mesh_shape(mesh_cfg(2, -1, 2), 8) == (2, 2, 1, 2)
  assert sharding.mesh_shape(mesh_cfg(1, 2, 2, -1), 8) == (1, 2, 2, 2)
  assert sharding.mesh_shape(get_config("size=tiny").mesh, 1) == (1, 1, 1, 1)
  # Configs written before the context axis existed have none.
  assert sharding.mesh_shape({"data": 1, "fsdp": -1, "tensor": 2}, 8) == (1, 4, 1, 2)
  with pytest.raises(ConfigError, match="do not divide"):
    sharding.mesh_shape(mesh_cfg(1, -1, 3), 8)
  with pytest.raises(ConfigError, match="needs 4 devices"):
    sharding.mesh_shape(mesh_cfg(2, 2, 1), 8)
  with pytest.raises(ConfigError, match="at most one"):
    sharding.mesh_shape(mesh_cfg(-1, -1, 1), 8)
  mesh = sharding.make_mesh(mesh_cfg(2, -1, 2))
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "context": 1, "tensor": 2}


def test_logical_rules():
  sizes = {"data": 2, "fsdp": 2, "tensor": 2}
  assert sharding.logical_to_spec(("embed", "q_heads", "head_dim"), (64, 4, 16), sizes) == \
      P("fsdp", "tensor", None)
  assert sharding.logical_to_spec(("act_batch", "act_len", "act_embed"), (8, 3, 64), sizes) == \
      P(("data", "fsdp"), None, None)
  # Not divisible: replicated over that axis instead of failing.
  assert sharding.logical_to_spec(("act_batch", "act_len"), (2, 3), sizes) == P("data", None)
  assert sharding.logical_to_spec(("embed", "kv_heads"), (64, 1), sizes) == P("fsdp", None)
  # Two logical axes on one mesh axis within one array are refused.
  with pytest.raises(ValueError, match="used by both"):
    sharding.logical_to_spec(("q_heads", "mlp"), (4, 4), sizes)
  with pytest.raises(ValueError, match="no rule"):
    sharding.logical_to_spec(("nope",), (4,), sizes)


def cfg():
  # 8 heads so that a tensor axis of 8 splits heads; d_ff 176 and vocab 320 divide by 8.
  return dataclasses.replace(ModelConfig.from_config(get_config("size=tiny").model),
                             n_heads=8, n_kv_heads=8)


def batch():
  toks = np.asarray(jax.random.randint(jax.random.key(1), (B, L + 1), 0, 320, jnp.int32))
  seg = np.where(np.arange(L) < 20, 1, 2)[None].repeat(B, 0).astype(np.int32)
  seg[1, -4:] = 0
  pos = np.where(seg == 2, np.arange(L) - 20, np.arange(L)).astype(np.int32)
  return {"inputs": toks[:, :-1], "targets": toks[:, 1:], "segment_ids": seg, "positions": pos,
          "weights": (seg > 0).astype(np.float32)}


def loss_and_grads(graphdef, params, batch):
  apply = make_apply_fn(graphdef)

  def loss_fn(params):
    return cross_entropy(apply(params, batch), batch["targets"], batch["weights"])[0]

  return jax.value_and_grad(loss_fn)(params)


@pytest.fixture(scope="module")
def reference():
  model = Transformer(cfg(), nnx.Rngs(0))
  graphdef, params = nnx.split(model)
  loss, grads = jax.jit(loss_and_grads, static_argnums=0)(graphdef, params, batch())
  return graphdef, params, loss, grads


def assert_close(a, b):
  """Relative to each array's scale: |a - b| <= 1e-5 * max|b| elementwise (+1e-5 rtol)."""
  a, b = np.asarray(a), np.asarray(b)
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max())


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda s: "x".join(map(str, s)))
def test_loss_and_grads_equal_single_device(layout, reference):
  graphdef, params, ref_loss, ref_grads = reference
  mesh = sharding.make_mesh(mesh_cfg(*layout))
  shardings = sharding.state_shardings(params, mesh)
  sharded = jax.device_put(params, shardings)
  data = sharding.shard_batch(batch(), mesh)
  with jax.set_mesh(mesh):
    step = jax.jit(loss_and_grads, static_argnums=0, out_shardings=(None, shardings))
    loss, grads = step(graphdef, sharded, data)
  data_axes = layout[0] * layout[1]
  batch_axes = tuple(a for a, n in zip(("data", "fsdp"), layout) if n > 1)
  assert data["inputs"].sharding.spec == P(
      batch_axes if len(batch_axes) > 1 else batch_axes[0] if batch_axes else None, None)
  assert len(data["inputs"].addressable_shards) == 8
  assert data["inputs"].addressable_shards[0].data.shape[0] == B // data_axes
  assert_close(loss, ref_loss)
  jax.tree.map(assert_close, grads, ref_grads)


def init_sharded(create, mesh):
  """A module built directly sharded, as jpeglm.training.state.init_state builds the train state:
  abstract shapes -> shardings by the logical-axis rules -> init under jit."""
  with nnx.use_eager_sharding(False):
    graphdef, abstract_state = nnx.split(nnx.eval_shape(create))
    shardings = sharding.state_shardings(abstract_state, mesh)
    with jax.set_mesh(mesh):
      state = jax.jit(lambda: nnx.split(create())[1], out_shardings=shardings)()
  return graphdef, state


def test_init_sharded_lays_out_params_and_matches_unsharded_init(reference):
  _, params, _, _ = reference
  mesh = sharding.make_mesh(mesh_cfg(2, 2, 2))
  _, state = init_sharded(lambda: Transformer(cfg(), nnx.Rngs(0)), mesh)
  q = state["blocks"]["q_DxNxH"][...]
  assert q.sharding.spec == P(None, "fsdp", "tensor", None)
  assert q.addressable_shards[0].data.shape == (2, 32, 4, 8)
  assert state["embed"][...].sharding.spec == P("tensor", "fsdp")
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6),
               state, params)


def test_global_batch_from_local_single_process():
  mesh = sharding.make_mesh(mesh_cfg(2, 4, 1))
  local = batch()
  got = sharding.global_batch_from_local(local, mesh)
  assert got["inputs"].shape == (B, L)
  assert got["inputs"].sharding.spec == P(("data", "fsdp"), None)
  np.testing.assert_array_equal(np.asarray(got["targets"]), local["targets"])


WORKER = textwrap.dedent("""
    import json, os, sys
    import jax
    jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2,
                               process_id=int(sys.argv[2]))
    import numpy as np
    from flax import nnx
    sys.path.insert(0, "tests")
    import test_sharding as t
    from jpeglm.model import sharding
    assert jax.device_count() == 8 and jax.local_device_count() == 4
    mesh = sharding.make_mesh(t.mesh_cfg(2, 2, 2))
    graphdef, params = t.init_sharded(lambda: t.Transformer(t.cfg(), nnx.Rngs(0)), mesh)
    rows = slice(jax.process_index() * t.B // 2, (jax.process_index() + 1) * t.B // 2)
    local = {k: v[rows] for k, v in t.batch().items()}
    data = sharding.global_batch_from_local(local, mesh)
    with jax.set_mesh(mesh):
      loss, grads = jax.jit(t.loss_and_grads, static_argnums=0)(graphdef, params, data)
    norm = jax.jit(lambda g: sum(jax.numpy.sum(x ** 2) for x in jax.tree.leaves(g)))(grads)
    print(json.dumps({"loss": float(loss), "grad_sq": float(norm)}))
""")


@pytest.mark.slow
def test_two_processes_equal_single_device(reference):
  """Two processes (4 fake devices each) form one (2, 2, 2) mesh: the multi-host path."""
  graphdef, params, ref_loss, ref_grads = reference
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  procs = [subprocess.Popen([sys.executable, "-c", WORKER, f"127.0.0.1:{port}", str(i)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
           for i in range(2)]
  outs = [p.communicate(timeout=240) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
  ref_sq = sum(float(np.sum(np.asarray(g) ** 2)) for g in jax.tree.leaves(ref_grads))
  for r in results:
    np.testing.assert_allclose(r["loss"], float(ref_loss), rtol=1e-5)
    np.testing.assert_allclose(r["grad_sq"], ref_sq, rtol=1e-5)


def test_a_batch_that_cannot_split_over_the_data_axes_is_refused():
  sharding.check_batch_layout(64, 2, {"data": 2, "fsdp": 16, "tensor": 2})
  with pytest.raises(ConfigError, match="a micro-batch of 32 rows .* data x fsdp = 64 devices"):
    sharding.check_batch_layout(64, 2, {"data": 1, "fsdp": 64})
  with pytest.raises(ConfigError, match="not a multiple of train.grad_accum=3"):
    sharding.check_batch_layout(64, 3, {"fsdp": 1})


def test_multislice_mesh_puts_slices_outermost_on_data_and_matches_one_device(reference):
  graphdef, params, ref_loss, ref_grads = reference
  config = {"dcn_data": 2, "data": 1, "fsdp": -1, "context": 1, "tensor": 2}
  assert sharding.mesh_shape(config, 8) == (2, 2, 1, 2)
  mesh = sharding.make_mesh(config)
  # One process of fake devices: devices 0-3 stand in for slice 0, 4-7 for slice 1.
  ids = np.vectorize(lambda d: d.id)(mesh.devices)
  assert set(ids[0].ravel()) == {0, 1, 2, 3} and set(ids[1].ravel()) == {4, 5, 6, 7}
  shardings = sharding.state_shardings(params, mesh)
  with jax.set_mesh(mesh):
    loss, grads = jax.jit(loss_and_grads, static_argnums=0, out_shardings=(None, shardings))(
        graphdef, jax.device_put(params, shardings), sharding.shard_batch(batch(), mesh))
  assert_close(loss, ref_loss)
  jax.tree.map(assert_close, grads, ref_grads)
  with pytest.raises(ConfigError, match="mesh.dcn_data=3 does not divide the 8 devices"):
    sharding.mesh_shape({**config, "dcn_data": 3}, 8)
