"""Building the train state directly sharded: model parameters and AdamW state on the mesh.

The state is a plain pytree {"step", "params", "opt_state"} whose params are a nested dict
of arrays (`nnx.to_pure_dict`), the same tree Orbax saves and export reads.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jpeglm import model as model_lib
from jpeglm import sharding


@dataclasses.dataclass
class StateLayout:
  graphdef: nnx.GraphDef
  shardings: dict  # same tree as the state, NamedSharding leaves
  abstract: dict  # same tree, ShapeDtypeStruct leaves (with shardings), for restores


def model_factory(config: ml_collections.ConfigDict, platform: str = ""
                  ) -> Callable[[], model_lib.Transformer]:
  cfg = model_lib.ModelConfig.from_config(config.model, platform)
  return lambda: model_lib.Transformer(cfg, nnx.Rngs(params=config.seed))


def mesh_platform(mesh: Mesh) -> str:
  """Where a mesh's devices are ("tpu", "gpu", "cpu"): picks the attention kernel."""
  return mesh.devices.flat[0].platform


def _param_shardings(config, mesh: Mesh):
  with nnx.use_eager_sharding(False):
    abstract_model = nnx.eval_shape(model_factory(config, mesh_platform(mesh)))
  graphdef, abstract_state = nnx.split(abstract_model)
  shardings = nnx.to_pure_dict(sharding.state_shardings(abstract_state, mesh))
  return graphdef, nnx.to_pure_dict(abstract_state), shardings


def init_state(config: ml_collections.ConfigDict, mesh: Mesh,
               optimizer: optax.GradientTransformation) -> tuple[dict, StateLayout]:
  """A freshly initialised, sharded train state and its layout."""
  layout = state_layout(config, mesh, optimizer)
  create = model_factory(config, mesh_platform(mesh))

  def init():
    params = nnx.to_pure_dict(nnx.split(create())[1])
    return {"step": jnp.zeros((), jnp.int32), "params": params,
            "opt_state": optimizer.init(params)}

  with nnx.use_eager_sharding(False), jax.set_mesh(mesh):
    state = jax.jit(init, out_shardings=layout.shardings)()
  return state, layout


def state_layout(config: ml_collections.ConfigDict, mesh: Mesh,
                 optimizer: optax.GradientTransformation) -> StateLayout:
  """Shapes and shardings of the train state, computed without allocating it."""
  graphdef, abstract_params, param_shardings = _param_shardings(config, mesh)
  abstract_params = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype), abstract_params)
  abstract_opt = jax.eval_shape(optimizer.init, abstract_params)
  replicated = NamedSharding(mesh, P())
  # Moments are laid out like their parameters; counts and other scalars are replicated.
  opt_shardings = optax.tree_map_params(
      optimizer, lambda _, s: s, abstract_opt, param_shardings,
      transform_non_params=lambda _: replicated)
  shardings = {"step": replicated, "params": param_shardings, "opt_state": opt_shardings}
  abstract = {"step": jax.ShapeDtypeStruct((), jnp.int32), "params": abstract_params,
              "opt_state": abstract_opt}
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract, shardings)
  return StateLayout(graphdef, shardings, abstract)
