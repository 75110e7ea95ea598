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

from jpeglm.model import transformer as model_lib
from jpeglm.model import sharding


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


@dataclasses.dataclass(frozen=True)
class AbstractParams:
  """The model's parameters, built from shapes only (nothing is allocated)."""
  graphdef: nnx.GraphDef
  variables: nnx.State  # ShapeDtypeStruct values with their logical axis names (metadata)
  shardings: dict | None  # pure dict of NamedSharding on the mesh (None without a mesh)

  @property
  def abstract(self) -> dict:
    """Pure dict of ShapeDtypeStructs (with shardings on a mesh): what a restore needs."""
    plain = nnx.to_pure_dict(self.variables)
    if self.shardings is None:
      return jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype), plain)
    return jax.tree.map(lambda v, s: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s),
                        plain, self.shardings)


def abstract_params(config: ml_collections.ConfigDict, mesh: Mesh | None = None
                    ) -> AbstractParams:
  """The config's model as shapes, laid out on `mesh` by the logical-axis rules; the mesh's
  platform picks the attention kernel. The one place the abstract model is built."""
  with nnx.use_eager_sharding(False):
    abstract_model = nnx.eval_shape(
        model_factory(config, mesh_platform(mesh) if mesh is not None else ""))
  graphdef, variables = nnx.split(abstract_model)
  shardings = (None if mesh is None else
               nnx.to_pure_dict(sharding.state_shardings(variables, mesh)))
  return AbstractParams(graphdef, variables, shardings)


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
  params = abstract_params(config, mesh)
  param_shardings = params.shardings
  plain = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype), params.abstract)
  abstract_opt = jax.eval_shape(optimizer.init, plain)
  replicated = NamedSharding(mesh, P())
  # Moments are laid out like their parameters; counts and other scalars are replicated.
  opt_shardings = optax.tree_map_params(
      optimizer, lambda _, s: s, abstract_opt, param_shardings,
      transform_non_params=lambda _: replicated)
  shardings = {"step": replicated, "params": param_shardings, "opt_state": opt_shardings}
  abstract = {"step": jax.ShapeDtypeStruct((), jnp.int32), "params": plain,
              "opt_state": abstract_opt}
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract, shardings)
  return StateLayout(params.graphdef, shardings, abstract)
