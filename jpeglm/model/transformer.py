"""A Llama-2 decoder in Flax NNX: the model JPEG-LM and AVC-LM train from scratch.

Token embedding, pre-norm blocks (RMSNorm, rotary attention with optional grouped-query
heads, RMSNorm, SwiGLU MLP), a final RMSNorm and an untied output head. Weights use
Hugging Face Llama's layouts (rotary embedding in split halves, `rotate_half`), so export is
a reshape and a transpose per matrix, never a permutation.

Layers are always stored stacked (`[n_layers, ...]`, logical axis "layers"), built once by
`nnx.vmap`; `scan_layers` only picks how they run: `jax.lax.scan` (compile time flat in
depth) or a Python loop over the same arrays. Checkpoints are the same either way.

Shapes in names: B batch, L length, D d_model, N query heads, K key/value heads,
G = N // K, H head_dim, F d_ff, V vocabulary.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from jax.ad_checkpoint import checkpoint_name

from jpeglm.model import attention as attention_lib
from jpeglm.model import context_parallel
from jpeglm.model.kv_cache import KVCache, attend_cached
from jpeglm.errors import ConfigError
from jpeglm.model.remat import POLICIES as REMAT_POLICIES
from jpeglm.model.sharding import constrain

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
ATTENTION_IMPLS = attention_lib.ATTENTION_IMPLS


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """What the model needs from `config.model`, checked once."""
  vocab_size: int
  d_model: int
  n_layers: int
  n_heads: int
  n_kv_heads: int
  d_ff: int
  max_len: int
  rope_theta: float = 10_000.0
  norm_eps: float = 1e-5
  param_dtype: str = "float32"
  dtype: str = "float32"
  attention: str = "xla"
  scan_layers: bool = True
  remat: str = "none"
  init_std: float = 0.02  # Llama-2's initializer_range, for every matrix
  # Splash attention tiles (forward q/kv, backward q/kv); clipped to the sequence.
  attention_block_q: int = 512
  attention_block_kv: int = 512
  attention_block_q_bwd: int = 512
  attention_block_kv_bwd: int = 512
  # Where the kernels run ("tpu", "gpu", "cpu"); "" = the default backend when traced.
  # Set from the mesh's devices, so compiling for a TPU on a CPU host picks TPU kernels.
  platform: str = ""

  def __post_init__(self):
    for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "max_len"):
      if int(getattr(self, name)) <= 0:
        raise ConfigError(f"model.{name} must be positive, got {getattr(self, name)}")
    if self.d_model % self.n_heads:
      raise ConfigError(f"model.d_model={self.d_model} is not a multiple of "
                        f"model.n_heads={self.n_heads}")
    if self.head_dim % 2:
      raise ConfigError(f"head_dim={self.head_dim} must be even for rotary embeddings")
    if self.n_heads % self.n_kv_heads:
      raise ConfigError(f"model.n_heads={self.n_heads} is not a multiple of "
                        f"model.n_kv_heads={self.n_kv_heads}")
    for name in ("param_dtype", "dtype"):
      if getattr(self, name) not in DTYPES:
        raise ConfigError(f"model.{name}={getattr(self, name)!r}: choose one of {sorted(DTYPES)}")
    if self.attention not in ATTENTION_IMPLS:
      raise ConfigError(f"model.attention={self.attention!r}: choose one of {ATTENTION_IMPLS}")
    if self.remat not in REMAT_POLICIES:
      raise ConfigError(f"model.remat={self.remat!r}: choose one of {sorted(REMAT_POLICIES)}")

  @property
  def head_dim(self) -> int:
    return self.d_model // self.n_heads

  @property
  def attention_kernel(self) -> str:
    """The kernel `attention` resolves to on this model's platform (e.g. auto -> splash)."""
    return attention_lib.resolve(self.attention, self.platform or jax.default_backend())

  def splash_blocks(self):
    from jpeglm.model.splash import SplashBlocks
    return SplashBlocks(self.attention_block_q, self.attention_block_kv,
                        self.attention_block_q_bwd, self.attention_block_kv_bwd)

  @classmethod
  def from_config(cls, model: Mapping, platform: str = "") -> "ModelConfig":
    """From the `model` section of a run config (keys not named here are ignored).

    `platform` is where the model will run (a mesh's devices); "" = the default backend.
    """
    values = {f.name: model[f.name] for f in dataclasses.fields(cls) if f.name in model}
    return cls(**{**values, "platform": platform or values.get("platform", "")})


def _param(rngs: nnx.Rngs, shape: tuple[int, ...], names: tuple[str, ...], dtype,
           std: float | None) -> nnx.Param:
  """One weight with its logical axes: normal(std) init, or ones when std is None."""
  if std is None:
    value = jnp.ones(shape, dtype)
  else:
    value = std * jax.random.normal(rngs.params(), shape, jnp.float32)
  return nnx.Param(value.astype(dtype), out_sharding=names)


def rms_norm(x_BxLxD: jax.Array, scale_D: jax.Array, eps: float) -> jax.Array:
  """Llama's RMSNorm: normalised in float32, cast back, then scaled."""
  x = x_BxLxD.astype(jnp.float32)
  x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + eps)
  return scale_D.astype(x_BxLxD.dtype) * x.astype(x_BxLxD.dtype)


def rotary(x_BxLxNxH: jax.Array, positions_BxL: jax.Array, theta: float) -> jax.Array:
  """Rotary embedding in Hugging Face's split-halves layout (`rotate_half`)."""
  h = x_BxLxNxH.shape[-1]
  inv_freq_H2 = 1.0 / (theta ** (jnp.arange(0, h, 2, dtype=jnp.float32) / h))
  angles_BxLxH2 = positions_BxL.astype(jnp.float32)[..., None] * inv_freq_H2
  cos_BxLx1xH2 = jnp.cos(angles_BxLxH2)[:, :, None, :]
  sin_BxLx1xH2 = jnp.sin(angles_BxLxH2)[:, :, None, :]
  x = x_BxLxNxH.astype(jnp.float32)
  x1, x2 = x[..., : h // 2], x[..., h // 2:]
  out = jnp.concatenate([x1 * cos_BxLx1xH2 - x2 * sin_BxLx1xH2,
                         x2 * cos_BxLx1xH2 + x1 * sin_BxLx1xH2], axis=-1)
  return out.astype(x_BxLxNxH.dtype)


def project(spec: str, x: jax.Array, w: jax.Array, **kwargs) -> jax.Array:
  """`jnp.einsum(spec, x, w)` for a projection: x's last dims against w's first ones.

  Without a sharded mesh the leading (batch, length) dims are merged first, into one 2-D
  matmul. Its weight gradient then contracts one dim, not two, which XLA:CPU does without
  copying the activations' gradient transposed (a third of the MLP's backward time at
  d 512 on CPU). Under a sharded mesh the einsum stays as written: merging a batch and a
  length dim sharded over different mesh axes would reshard them.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if not (mesh.empty or mesh.size == 1):
    return jnp.einsum(spec, x, w, **kwargs)
  (x_dims, w_dims), out_dims = (t.split(",") for t in spec.split("->"))
  contract = len([c for c in x_dims if c in w_dims and c not in out_dims])
  if x_dims[x.ndim - contract:] != w_dims[:contract]:
    raise ValueError(f"project({spec!r}): x's last dims must be w's first ones")
  lead, width = x.shape[:x.ndim - contract], math.prod(x.shape[x.ndim - contract:])
  y = jnp.dot(x.reshape(-1, width), w.reshape(width, -1), **kwargs)
  return y.reshape(*lead, *w.shape[contract:])


class Block(nnx.Module):
  """One pre-norm transformer layer: x + attn(norm(x)), then x + mlp(norm(x))."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.cfg = cfg
    d, n, k, h, f = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_ff
    pd, std = DTYPES[cfg.param_dtype], cfg.init_std
    self.attn_norm = _param(rngs, (d,), ("norm",), pd, None)
    self.q_DxNxH = _param(rngs, (d, n, h), ("embed", "q_heads", "head_dim"), pd, std)
    self.k_DxKxH = _param(rngs, (d, k, h), ("embed", "kv_heads", "head_dim"), pd, std)
    self.v_DxKxH = _param(rngs, (d, k, h), ("embed", "kv_heads", "head_dim"), pd, std)
    self.o_NxHxD = _param(rngs, (n, h, d), ("q_heads", "head_dim", "embed"), pd, std)
    self.mlp_norm = _param(rngs, (d,), ("norm",), pd, None)
    self.gate_DxF = _param(rngs, (d, f), ("embed", "mlp"), pd, std)
    self.up_DxF = _param(rngs, (d, f), ("embed", "mlp"), pd, std)
    self.down_FxD = _param(rngs, (f, d), ("mlp", "embed"), pd, std)

  def attention(self, x_BxLxD, positions_BxL, segment_ids_BxL, cache=None, layer=None,
                prefill=False):
    """Attention's output [B, L, D]; with `cache`, also the new keys and values [B, L, K, H]."""
    cfg, dt = self.cfg, DTYPES[self.cfg.dtype]
    with jax.named_scope("qkv"):
      q_BxLxNxH = project("bld,dnh->blnh", x_BxLxD, self.q_DxNxH[...].astype(dt))
      k_BxLxKxH = project("bld,dkh->blkh", x_BxLxD, self.k_DxKxH[...].astype(dt))
      v_BxLxKxH = project("bld,dkh->blkh", x_BxLxD, self.v_DxKxH[...].astype(dt))
      q_BxLxNxH = checkpoint_name(constrain(q_BxLxNxH, attention_lib.Q_NAMES), "query_proj")
      kv_names = ("act_batch", "act_len", "act_kv_heads", "act_head_dim")
      k_BxLxKxH = checkpoint_name(constrain(k_BxLxKxH, kv_names), "key_proj")
      v_BxLxKxH = checkpoint_name(constrain(v_BxLxKxH, kv_names), "value_proj")
    with jax.named_scope("rotary"):
      q_BxLxNxH = rotary(q_BxLxNxH, positions_BxL, cfg.rope_theta)
      k_BxLxKxH = rotary(k_BxLxKxH, positions_BxL, cfg.rope_theta)
    with jax.named_scope("attention"):
      if cache is not None and not prefill:
        # A decode step: einsums over the cache's filled part (splash is a training kernel).
        out_BxLxNxH = attend_cached(q_BxLxNxH, k_BxLxKxH, v_BxLxKxH, cache, layer)
      else:
        kernel = cfg.attention_kernel
        out_BxLxNxH = attention_lib.attend(
            q_BxLxNxH, k_BxLxKxH, v_BxLxKxH, segment_ids_BxL, kernel,
            splash_blocks=cfg.splash_blocks() if kernel == "splash" else None,
            interpret=(cfg.platform or jax.default_backend()) != "tpu")
      out_BxLxNxH = constrain(out_BxLxNxH, attention_lib.Q_NAMES)
      out_BxLxNxH = checkpoint_name(out_BxLxNxH, "attention_out")
    with jax.named_scope("out_proj"):
      out_BxLxD = project("blnh,nhd->bld", out_BxLxNxH, self.o_NxHxD[...].astype(dt))
      out_BxLxD = checkpoint_name(out_BxLxD, "out_proj")
    return out_BxLxD if cache is None else (out_BxLxD, (k_BxLxKxH, v_BxLxKxH))

  def mlp(self, x_BxLxD):
    dt = DTYPES[self.cfg.dtype]
    gate_BxLxF = project("bld,df->blf", x_BxLxD, self.gate_DxF[...].astype(dt))
    up_BxLxF = project("bld,df->blf", x_BxLxD, self.up_DxF[...].astype(dt))
    gate_BxLxF = checkpoint_name(gate_BxLxF, "mlp_gate")
    up_BxLxF = checkpoint_name(up_BxLxF, "mlp_up")
    hidden_BxLxF = constrain(jax.nn.silu(gate_BxLxF) * up_BxLxF,
                             ("act_batch", "act_len", "act_mlp"))
    out_BxLxD = project("blf,fd->bld", hidden_BxLxF, self.down_FxD[...].astype(dt))
    return checkpoint_name(out_BxLxD, "mlp_out")

  def __call__(self, x_BxLxD, positions_BxL, segment_ids_BxL, cache: KVCache | None = None,
               layer: jax.Array | None = None, prefill: bool = False):
    """The layer's output [B, L, D]. With a `cache` (decoding; L new tokens at the cache's
    next slots), also this layer's new keys and values, which the caller writes: a decode
    step attends to cache layer `layer`; a `prefill` (empty cache, the whole prompt) runs
    the training kernel, with the padding masked by `segment_ids_BxL`."""
    eps = self.cfg.norm_eps
    with jax.named_scope("attn"):
      out = self.attention(rms_norm(x_BxLxD, self.attn_norm[...], eps), positions_BxL,
                           segment_ids_BxL, cache, layer, prefill)
      out_BxLxD, kv = (out, None) if cache is None else out
      x_BxLxD = constrain(x_BxLxD + out_BxLxD, ("act_batch", "act_len", "act_embed"))
    with jax.named_scope("mlp"):
      x_BxLxD = x_BxLxD + self.mlp(rms_norm(x_BxLxD, self.mlp_norm[...], eps))
      x_BxLxD = constrain(x_BxLxD, ("act_batch", "act_len", "act_embed"))
    return x_BxLxD if cache is None else (x_BxLxD, kv)


class Transformer(nnx.Module):
  """tokens [B, L] -> logits [B, L, V] (float32)."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    # Logical names are metadata only here; jpeglm.model.sharding turns them into shardings.
    with nnx.use_eager_sharding(False):
      self._build(cfg, rngs)

  def _build(self, cfg: ModelConfig, rngs: nnx.Rngs) -> None:
    self.cfg = cfg
    pd, std = DTYPES[cfg.param_dtype], cfg.init_std
    self.embed = _param(rngs, (cfg.vocab_size, cfg.d_model), ("vocab", "embed"), pd, std)

    @nnx.split_rngs(splits=cfg.n_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def make_blocks(rngs: nnx.Rngs) -> Block:
      return Block(cfg, rngs)

    self.blocks = make_blocks(rngs)
    self.final_norm = _param(rngs, (cfg.d_model,), ("norm",), pd, None)
    self.lm_head = _param(rngs, (cfg.d_model, cfg.vocab_size), ("embed", "vocab"), pd, std)

  def __call__(self, tokens_BxL: jax.Array, positions_BxL: jax.Array | None = None,
               segment_ids_BxL: jax.Array | None = None, cache: KVCache | None = None,
               prefill: bool = False):
    """Logits [B, L, V]; with a `cache`, (logits, the cache with these L tokens written).

    Decoding (`cache` given): the tokens go to the cache's next L slots, with positions and
    padding taken from the cache. `prefill=True` is a prompt into an empty cache: attention
    uses the training kernel (`model.attention`). Otherwise the tokens attend to the cache
    (`jpeglm.model.kv_cache.attend_cached`).
    """
    cfg, dt = self.cfg, DTYPES[self.cfg.dtype]
    b, l = tokens_BxL.shape
    if cache is not None:
      if context_parallel.context_size() > 1:
        raise ConfigError("decoding with a KV cache does not support a `context` mesh axis; "
                          "use data/fsdp/tensor")
      positions_BxL = cache.positions(l)
      segment_ids_BxL = cache.segment_ids(l) if prefill else None
    if positions_BxL is None:
      positions_BxL = jnp.broadcast_to(jnp.arange(l, dtype=jnp.int32), (b, l))
    # Context parallelism: rows in the balanced order on entry, logits back on exit.
    shards = context_parallel.context_size()
    tokens_BxL, positions_BxL = (context_parallel.to_balanced(x, shards)
                                 for x in (tokens_BxL, positions_BxL))
    if segment_ids_BxL is not None:
      segment_ids_BxL = context_parallel.to_balanced(segment_ids_BxL, shards)
    with jax.named_scope("embed"):
      # The table gathered over fsdp first (V x D is small: 320 or 1,024 rows), so the
      # lookup lands straight in the activations' layout; else GSPMD replicates it.
      table_VxD = constrain(self.embed[...], ("vocab", None))
      tokens_BxL = constrain(tokens_BxL, ("act_batch", "act_len"))
      x_BxLxD = jnp.take(table_VxD, tokens_BxL, axis=0).astype(dt)
      x_BxLxD = constrain(x_BxLxD, ("act_batch", "act_len", "act_embed"))

    graphdef, stacked = nnx.split(self.blocks)

    if cache is None:
      def layer(x_BxLxD, layer_state):
        return nnx.merge(graphdef, layer_state)(x_BxLxD, positions_BxL, segment_ids_BxL)

      policy = REMAT_POLICIES[cfg.remat]
      if cfg.remat != "none":
        layer = jax.checkpoint(layer, policy=policy, prevent_cse=not cfg.scan_layers)
      if cfg.scan_layers:
        x_BxLxD, _ = jax.lax.scan(lambda x, s: (layer(x, s), None), x_BxLxD, stacked)
      else:
        for i in range(cfg.n_layers):
          x_BxLxD = layer(x_BxLxD, jax.tree.map(lambda a, i=i: a[i], stacked))
    else:
      # The same layers; each reads its part of the cache and hands back its new keys and
      # values, written once for all layers after the loop.
      def layer(x_BxLxD, layer_state, index):
        return nnx.merge(graphdef, layer_state)(x_BxLxD, positions_BxL, segment_ids_BxL,
                                                cache, index, prefill)

      if cfg.scan_layers:
        x_BxLxD, (k_YxBxLxKxH, v_YxBxLxKxH) = jax.lax.scan(
            lambda x, s: layer(x, *s), x_BxLxD,
            (stacked, jnp.arange(cfg.n_layers, dtype=jnp.int32)))
      else:
        kvs = []
        for i in range(cfg.n_layers):
          x_BxLxD, kv = layer(x_BxLxD, jax.tree.map(lambda a, i=i: a[i], stacked), i)
          kvs.append(kv)
        k_YxBxLxKxH, v_YxBxLxKxH = (jnp.stack(x) for x in zip(*kvs))
      cache = cache.write(k_YxBxLxKxH, v_YxBxLxKxH)

    with jax.named_scope("head"):
      x_BxLxD = rms_norm(x_BxLxD, self.final_norm[...], cfg.norm_eps)
      logits_BxLxV = project("bld,dv->blv", x_BxLxD, self.lm_head[...].astype(dt),
                                preferred_element_type=jnp.float32)
      logits_BxLxV = constrain(logits_BxLxV, ("act_batch", "act_len", "act_vocab"))
      logits_BxLxV = context_parallel.from_balanced(logits_BxLxV, shards)
    return logits_BxLxV if cache is None else (logits_BxLxV, cache)


def make_apply_fn(graphdef: nnx.GraphDef, segment_masking: bool = True):
  """`apply(params, batch) -> logits_BxLxV`, a pure function for the train step.

  `batch` holds "inputs" and optionally "positions" and "segment_ids". With
  `segment_masking=False` the segment ids are not used: right for concatenate-and-chunk
  rows (one stream, padding only at the end, which causal attention already keeps from
  touching real tokens), and then the fused attention builds no mask at all.
  """
  def apply(params: nnx.State, batch: Mapping[str, jax.Array]) -> jax.Array:
    model = nnx.merge(graphdef, params)
    segment_ids = batch.get("segment_ids") if segment_masking else None
    return model(batch["inputs"], batch.get("positions"), segment_ids)
  return apply
