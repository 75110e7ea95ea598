"""Parameter count and per-device memory of a config's model, computed from shapes only.

`train_state.abstract_params` builds the model abstractly (no array is allocated, so the 7b config is
instant on a laptop); the logical-axis rules give each array's sharding on the config's mesh,
and per-device bytes follow by arithmetic, so any device count can be asked about.
"""

from __future__ import annotations

import dataclasses

import jax
import ml_collections
import numpy as np

from jpeglm.fit.chips import GIB
from jpeglm.model import sharding
from jpeglm.model.transformer import ModelConfig
from jpeglm.training.state import abstract_params


@dataclasses.dataclass(frozen=True)
class MemoryReport:
  total_params: int
  embedding_params: int
  head_params: int
  num_devices: int
  mesh: dict[str, int]
  param_dtype: str
  param_bytes: int  # per device
  adam_bytes: int  # per device: AdamW's two moments, in param_dtype (optax's default)

  @property
  def non_embedding_params(self) -> int:
    return self.total_params - self.embedding_params - self.head_params

  def lines(self) -> list[str]:
    gib = lambda b: f"{b / GIB:,.2f} GiB [{b:,} B]"
    mesh = " x ".join(f"{k}={v}" for k, v in self.mesh.items())
    return [
        f"parameters: {self.total_params:,} total",
        f"  embedding: {self.embedding_params:,}",
        f"  output head: {self.head_params:,}",
        f"  non-embedding (layers + norms): {self.non_embedding_params:,}",
        f"mesh: {mesh} ({self.num_devices} devices)",
        f"per device: params {gib(self.param_bytes)} ({self.param_dtype}), "
        f"AdamW moments {gib(self.adam_bytes)}, "
        f"together {gib(self.param_bytes + self.adam_bytes)}",
    ]


def memory_report(config: ml_collections.ConfigDict, num_devices: int | None = None
                  ) -> MemoryReport:
  cfg = ModelConfig.from_config(config.model)  # a bad model config fails here, in one line
  num_devices = jax.device_count() if num_devices is None else int(num_devices)
  shape = sharding.mesh_shape(config.mesh, num_devices)
  axis_sizes = dict(zip(sharding.MESH_AXES, shape))
  state = abstract_params(config).variables
  leaves = jax.tree.leaves(state)
  specs = jax.tree.leaves(sharding.state_specs(state, axis_sizes),
                          is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  arrays = [(x.shape, x.dtype, s) for x, s in zip(leaves, specs)]
  param_bytes = sharding.per_device_bytes(arrays, axis_sizes)
  return MemoryReport(
      total_params=sum(int(np.prod(x.shape)) for x in leaves),
      embedding_params=int(np.prod(state["embed"].shape)),
      head_params=int(np.prod(state["lm_head"].shape)),
      num_devices=num_devices, mesh=axis_sizes, param_dtype=cfg.param_dtype,
      param_bytes=param_bytes, adam_bytes=2 * param_bytes)
