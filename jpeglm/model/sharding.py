"""Device mesh, logical-axis rules, and sharded state and batches.

The mesh has four axes: `data` (pure data parallelism), `fsdp` (data parallelism with
parameters and optimizer state sharded), `context` (each row's sequence split across
devices; see jpeglm.model.context_parallel) and `tensor` (Megatron-style: heads, MLP hidden
units and the vocabulary split across devices). Sizes come from `config.mesh`; -1 means
"the rest of the devices"; a config without `mesh.context` has none (1).

Every parameter and main activation carries logical axis names; `RULES` is the one table
that maps them to mesh axes. A dimension that a mesh axis does not divide is replicated
over that axis instead (e.g. 4 heads on 8 tensor devices), so every layout runs on every
shape; within one array a mesh axis is used at most once.

The mesh uses Auto axes (GSPMD). A silent wrong result was seen with Auto axes on (2, 2, 2)
for an unconstrained residual stream (jax 0.10, CPU, fake devices), so the model pins its residual
stream and main activations with `constrain`, and tests/test_sharding.py compares loss and
gradients on every supported layout with a single-device run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from jpeglm.errors import ConfigError

# Innermost last: tensor and context exchange the most data, so they get the nearest chips.
MESH_AXES = ("data", "fsdp", "context", "tensor")

# Logical axis name -> mesh axes, for parameters (first block) and activations (second).
RULES: dict[str, tuple[str, ...]] = {
    # Parameters.
    "layers": (),
    "vocab": ("tensor",),
    "embed": ("fsdp",),
    "q_heads": ("tensor",),
    "kv_heads": ("tensor",),
    "head_dim": (),
    "mlp": ("tensor",),
    "norm": (),
    # Activations.
    "act_batch": ("data", "fsdp"),
    "act_len": ("context",),
    "act_embed": (),
    "act_heads": ("tensor",),
    "act_kv_heads": ("tensor",),
    "act_head_dim": (),
    "act_mlp": ("tensor",),
    "act_vocab": ("tensor",),
}


def dcn_data(mesh_config: ml_collections.ConfigDict | Mapping[str, int]) -> int:
  """Slices joined over the data-centre network (`mesh.dcn_data`, default 1)."""
  slices = int(mesh_config.get("dcn_data", 1))
  if slices < 1:
    raise ConfigError(f"mesh.dcn_data={slices}: the number of slices must be positive")
  return slices


def mesh_shape(mesh_config: ml_collections.ConfigDict | Mapping[str, int],
               num_devices: int) -> tuple[int, ...]:
  """Resolves (data, fsdp, context, tensor) sizes; one of them may be -1 (the rest).

  With `mesh.dcn_data` = S slices, the sizes describe one slice (num_devices / S devices)
  and `data` comes back multiplied by S: data parallelism across slices is the outer part
  of the `data` axis, so the rules table and batch layout need nothing new.
  """
  slices = dcn_data(mesh_config)
  if num_devices % slices:
    raise ConfigError(f"mesh.dcn_data={slices} does not divide the {num_devices} devices")
  num_devices //= slices
  sizes = [int(mesh_config.get(a, 1)) for a in MESH_AXES]
  rest = [i for i, s in enumerate(sizes) if s == -1]
  if len(rest) > 1:
    raise ConfigError(f"mesh {dict(zip(MESH_AXES, sizes))}: at most one axis may be -1")
  if any(s == 0 or s < -1 for s in sizes):
    raise ConfigError(f"mesh {dict(zip(MESH_AXES, sizes))}: sizes must be positive or -1")
  known = math.prod(s for s in sizes if s != -1)
  if rest:
    if num_devices % known:
      raise ConfigError(f"mesh {dict(zip(MESH_AXES, sizes))}: the fixed axes ({known} devices) "
                        f"do not divide the {num_devices} devices")
    sizes[rest[0]] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ConfigError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, "
                      f"but there are {num_devices}" + (" per slice" if slices > 1 else ""))
  sizes[0] *= slices
  return tuple(sizes)


def make_mesh(mesh_config: ml_collections.ConfigDict | Mapping[str, int],
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A (data, fsdp, context, tensor) mesh over `devices` (default: every process's)."""
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(mesh_config, len(devices))
  auto = (AxisType.Auto,) * len(MESH_AXES)
  slices = dcn_data(mesh_config)
  if slices > 1:
    return Mesh(_hybrid_devices(devices, shape, slices), MESH_AXES, axis_types=auto)
  if len(devices) == len(jax.devices()):
    return jax.make_mesh(shape, MESH_AXES, axis_types=auto, devices=devices)
  return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=auto)


def _hybrid_devices(devices: Sequence[jax.Device], shape: Sequence[int], slices: int
                    ) -> np.ndarray:
  """Devices for a mesh whose `data` axis runs over `slices` slices (DCN) outermost, with
  every other axis inside one slice (ICI).

  TPU devices name their slice (`slice_index`); elsewhere processes stand in for slices
  when there are as many, and on one process consecutive groups of devices do (tests).
  """
  from jax.experimental import mesh_utils

  per_slice = (shape[0] // slices, *shape[1:])
  dcn_shape = (slices,) + (1,) * (len(shape) - 1)
  slice_ids = {getattr(d, "slice_index", None) for d in devices}
  if None not in slice_ids and len(slice_ids) == slices:
    return mesh_utils.create_hybrid_device_mesh(per_slice, dcn_shape, devices)
  if len({d.process_index for d in devices}) == slices:
    return mesh_utils.create_hybrid_device_mesh(per_slice, dcn_shape, devices,
                                                process_is_granule=True)
  if jax.process_count() > 1 or slice_ids - {None, 0}:
    raise ConfigError(f"mesh.dcn_data={slices}: the devices come from "
                      f"{len(slice_ids - {None}) or jax.process_count()} slices or processes")
  groups = np.asarray(devices, dtype=object).reshape(slices, -1)
  return np.concatenate([g.reshape(per_slice) for g in groups], axis=0)


def check_batch_layout(global_batch: int, grad_accum: int, axis_sizes: Mapping[str, int]) -> None:
  """Refuses a batch whose micro-batches cannot be split over the data axes.

  `logical_to_spec` replicates a dimension an axis does not divide: for parameters that is
  a safe fallback, for the batch it means every device runs every row (a silent N-fold
  waste, and out of memory at 7B scale).
  """
  if grad_accum < 1 or global_batch % grad_accum:
    raise ConfigError(f"train.global_batch={global_batch} is not a multiple of "
                      f"train.grad_accum={grad_accum}")
  rows, ways = global_batch // grad_accum, axis_sizes.get("data", 1) * axis_sizes.get("fsdp", 1)
  if rows % ways:
    raise ConfigError(
        f"a micro-batch of {rows} rows (train.global_batch={global_batch} / "
        f"train.grad_accum={grad_accum}) does not split over data x fsdp = {ways} devices: "
        "lower grad_accum, raise global_batch, or move devices to mesh.context or mesh.tensor")


def logical_to_spec(names: Sequence[str | None], shape: Sequence[int],
                    axis_sizes: Mapping[str, int]) -> P:
  """PartitionSpec for an array of `shape` whose dimensions have logical `names`.

  `axis_sizes` maps mesh axis names to sizes (a Mesh's `.shape`). A mesh axis that does not
  divide its dimension (what is left of it) is skipped: that dimension is replicated over it.
  """
  if len(names) != len(shape):
    raise ValueError(f"logical names {tuple(names)} do not match shape {tuple(shape)}")
  used: dict[str, str] = {}
  spec = []
  for name, dim in zip(names, shape):
    if name is None:
      spec.append(None)
      continue
    if name not in RULES:
      raise ValueError(f"logical axis {name!r} has no rule in jpeglm.model.sharding.RULES")
    chosen, product = [], 1
    for axis in RULES[name]:
      if axis in used:
        raise ValueError(f"mesh axis {axis!r} used by both {used[axis]!r} and {name!r} "
                         f"in one array {tuple(names)}")
      size = axis_sizes.get(axis, 1)
      if size > 1 and dim % (product * size) == 0:
        chosen.append(axis)
        product *= size
        used[axis] = name
    spec.append(None if not chosen else chosen[0] if len(chosen) == 1 else tuple(chosen))
  return P(*spec)


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """Pins an activation's sharding by logical names when a mesh is set (`jax.set_mesh`)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    return x
  return jax.lax.with_sharding_constraint(x, logical_to_spec(names, x.shape, dict(mesh.shape)))


def state_specs(abstract_state, axis_sizes: Mapping[str, int]) -> object:
  """PartitionSpec per variable of an (abstract) nnx State, from its logical names."""
  def spec(v):
    value = v.get_value() if hasattr(v, "get_value") else v.value
    got = v.get_metadata().get("out_sharding")
    got = tuple(got) if got is not None else (None,) * len(value.shape)
    return logical_to_spec(got, value.shape, axis_sizes)
  return jax.tree.map(spec, abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def state_shardings(abstract_state, mesh: Mesh) -> object:
  """NamedSharding per variable, same tree structure as `abstract_state`."""
  specs = state_specs(abstract_state, dict(mesh.shape))
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                      is_leaf=lambda x: isinstance(x, P))


def batch_sharding(mesh: Mesh, ndim: int = 2, shape: Sequence[int] | None = None) -> NamedSharding:
  """Batch-major arrays: the batch dimension over (data, fsdp), the rest replicated."""
  names = ("act_batch",) + (None,) * (ndim - 1)
  if shape is None:
    return NamedSharding(mesh, P(RULES["act_batch"], *([None] * (ndim - 1))))
  return NamedSharding(mesh, logical_to_spec(names, shape, dict(mesh.shape)))


def shard_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Places a global batch (the same numpy arrays on every process) on the mesh."""
  return {k: jax.device_put(v, batch_sharding(mesh, np.ndim(v), np.shape(v)))
          for k, v in batch.items()}


def global_batch_from_local(local_batch: Mapping[str, np.ndarray], mesh: Mesh
                            ) -> dict[str, jax.Array]:
  """Assembles global arrays from each process's rows (process i holds its slice of rows).

  The global batch has `jax.process_count()` times the local rows; with one process this is
  `shard_batch`.
  """
  out = {}
  for k, v in local_batch.items():
    v = np.asarray(v)
    global_shape = (v.shape[0] * jax.process_count(),) + v.shape[1:]
    sharding = batch_sharding(mesh, v.ndim, global_shape)
    out[k] = jax.make_array_from_process_local_data(sharding, v, global_shape)
  return out


def per_device_bytes(shapes_dtypes: Sequence[tuple[Sequence[int], jnp.dtype, P]],
                     axis_sizes: Mapping[str, int]) -> int:
  """Bytes one device holds for arrays of (shape, dtype, spec) on a mesh of `axis_sizes`."""
  total = 0
  for shape, dtype, spec in shapes_dtypes:
    local = list(shape)
    for i, entry in enumerate(tuple(spec) + (None,) * (len(shape) - len(spec))):
      axes = () if entry is None else (entry,) if isinstance(entry, str) else entry
      local[i] = -(-local[i] // math.prod(axis_sizes[a] for a in axes))
    total += math.prod(local) * np.dtype(dtype).itemsize
  return total
