"""The trained parameters (the pure dict of `jpeglm.model.transformer`, as saved) run as a decoder.

The model itself does the work: `Transformer.__call__` with a `jpeglm.model.kv_cache.KVCache`
runs the same `Block`s as training, so the cache path can never drift from the model.
This file only turns a pure parameter dict into the module and names the cache's slots.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx

from jpeglm.model.kv_cache import KVCache
from jpeglm.model.transformer import DTYPES, ModelConfig, Transformer


@functools.lru_cache(maxsize=16)
def graphdef(cfg: ModelConfig) -> nnx.GraphDef:
  """The model's structure, built abstractly (no parameter is allocated). Built with no
  mesh in scope: nnx would otherwise read the logical axis names as mesh axes."""
  no_mesh = jax.sharding.AbstractMesh((), ())
  with jax.sharding.use_abstract_mesh(no_mesh), nnx.use_eager_sharding(False):
    return nnx.split(nnx.eval_shape(lambda: Transformer(cfg, nnx.Rngs(0))))[0]


def model(params: dict, cfg: ModelConfig) -> Transformer:
  # The parameters' logical names are metadata here: the arrays carry their own shardings.
  with nnx.use_eager_sharding(False):
    return nnx.merge(graphdef(cfg), params)


def init_cache(cfg: ModelConfig, batch: int, size: int,
               starts_B: jax.Array | None = None) -> KVCache:
  """An empty cache with room for `size` slots (rounded up to whole chunks)."""
  return KVCache.init(cfg.n_layers, batch, size, cfg.n_kv_heads, cfg.head_dim,
                      DTYPES[cfg.dtype], starts_B)


def forward(params: dict, cfg: ModelConfig, tokens_BxT: jax.Array, slot: jax.Array,
            pad_B: jax.Array, cache: KVCache, prefill: bool = False
            ) -> tuple[jax.Array, KVCache]:
  """Logits [B, T, V] for tokens written at cache slots slot .. slot+T-1 (row b's slot s
  holding position s - pad_B[b]), and the cache with them written."""
  cache = dataclasses.replace(cache, starts_B=jnp.asarray(pad_B, jnp.int32),
                              length=jnp.asarray(slot, jnp.int32))
  return model(params, cfg)(tokens_BxT, cache=cache, prefill=prefill)

