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
from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from jpeglm.errors import ConfigError
from jpeglm.sharding import constrain

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
ATTENTION_IMPLS = ("einsum", "chunked", "xla", "cudnn", "cudnn_or_xla")
# Query block of the "chunked" attention: blocks above the causal diagonal are skipped.
ATTENTION_CHUNK = 128
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    # Keeps the projections' outputs; recomputes norms, rotary, softmax and activations.
    "save_matmuls": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


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

  @classmethod
  def from_config(cls, model: Mapping) -> "ModelConfig":
    """From the `model` section of a run config (keys not named here are ignored)."""
    return cls(**{f.name: model[f.name] for f in dataclasses.fields(cls) if f.name in model})


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


def attention_einsum(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, segment_ids_BxS, q_offset: int = 0
                     ) -> jax.Array:
  """Reference attention: explicit causal (and segment) mask, softmax in float32.

  Queries are positions q_offset .. q_offset + T - 1 of the keys' sequence (0: the same).
  """
  b, t, n, h = q_BxTxNxH.shape
  s, k_heads = k_BxSxKxH.shape[1], k_BxSxKxH.shape[2]
  q_BxTxKxGxH = q_BxTxNxH.reshape(b, t, k_heads, n // k_heads, h)
  logits_BxKxGxTxS = jnp.einsum("btkgh,bskh->bkgts", q_BxTxKxGxH, k_BxSxKxH,
                                preferred_element_type=jnp.float32) * (h ** -0.5)
  mask_BxTxS = (q_offset + jnp.arange(t)[:, None] >= jnp.arange(s)[None, :])[None]
  if segment_ids_BxS is not None:
    q_segments_BxT = segment_ids_BxS[:, q_offset:q_offset + t]
    mask_BxTxS = mask_BxTxS & (q_segments_BxT[:, :, None] == segment_ids_BxS[:, None, :])
  logits_BxKxGxTxS = jnp.where(mask_BxTxS[:, None, None], logits_BxKxGxTxS,
                               jnp.finfo(jnp.float32).min)
  probs_BxKxGxTxS = jax.nn.softmax(logits_BxKxGxTxS, axis=-1).astype(v_BxSxKxH.dtype)
  out_BxTxKxGxH = jnp.einsum("bkgts,bskh->btkgh", probs_BxKxGxTxS, v_BxSxKxH)
  return out_BxTxKxGxH.reshape(b, t, n, h)


def attention_chunked(q_BxLxNxH, k_BxLxKxH, v_BxLxKxH, segment_ids_BxL,
                      chunk: int = ATTENTION_CHUNK) -> jax.Array:
  """Causal attention by query blocks, each against only the keys at or before it.

  The same arithmetic as `attention_einsum` row by row, but the blocks above the diagonal
  are never computed: about half the work and memory of a full L x L at long context.
  """
  l = q_BxLxNxH.shape[1]
  if l <= chunk or l % chunk:
    return attention_einsum(q_BxLxNxH, k_BxLxKxH, v_BxLxKxH, segment_ids_BxL)
  outs = []
  for start in range(0, l, chunk):
    end = start + chunk
    outs.append(attention_einsum(q_BxLxNxH[:, start:end], k_BxLxKxH[:, :end],
                                 v_BxLxKxH[:, :end],
                                 None if segment_ids_BxL is None else segment_ids_BxL[:, :end],
                                 q_offset=start))
  return jnp.concatenate(outs, axis=1)


def attention_fused(q_BxLxNxH, k_BxLxKxH, v_BxLxKxH, segment_ids_BxL, impl: str) -> jax.Array:
  """`jax.nn.dot_product_attention` (cuDNN flash attention or XLA), causal by `is_causal`.

  With no segment ids (the paper's concatenate-and-chunk packing) no mask is built at all.
  Packed documents need a B x 1 x L x L boolean mask: the public fused API has no segment
  ids, only per-row lengths, which cannot express several documents in one row.
  """
  if impl == "cudnn_or_xla":
    impl = "cudnn" if jax.default_backend() == "gpu" else "xla"
  mask = None
  if segment_ids_BxL is not None:
    mask = (segment_ids_BxL[:, None, :, None] == segment_ids_BxL[:, None, None, :])
  return jax.nn.dot_product_attention(q_BxLxNxH, k_BxLxKxH, v_BxLxKxH, mask=mask,
                                      is_causal=True, implementation=impl)


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

  def attention(self, x_BxLxD, positions_BxL, segment_ids_BxL):
    cfg, dt = self.cfg, DTYPES[self.cfg.dtype]
    with jax.named_scope("qkv"):
      q_BxLxNxH = jnp.einsum("bld,dnh->blnh", x_BxLxD, self.q_DxNxH[...].astype(dt))
      k_BxLxKxH = jnp.einsum("bld,dkh->blkh", x_BxLxD, self.k_DxKxH[...].astype(dt))
      v_BxLxKxH = jnp.einsum("bld,dkh->blkh", x_BxLxD, self.v_DxKxH[...].astype(dt))
      q_BxLxNxH = constrain(q_BxLxNxH, ("act_batch", "act_len", "act_heads", "act_head_dim"))
      k_BxLxKxH = constrain(k_BxLxKxH, ("act_batch", "act_len", "act_kv_heads", "act_head_dim"))
      v_BxLxKxH = constrain(v_BxLxKxH, ("act_batch", "act_len", "act_kv_heads", "act_head_dim"))
    with jax.named_scope("rotary"):
      q_BxLxNxH = rotary(q_BxLxNxH, positions_BxL, cfg.rope_theta)
      k_BxLxKxH = rotary(k_BxLxKxH, positions_BxL, cfg.rope_theta)
    with jax.named_scope("attention"):
      if cfg.attention == "einsum":
        out_BxLxNxH = attention_einsum(q_BxLxNxH, k_BxLxKxH, v_BxLxKxH, segment_ids_BxL)
      elif cfg.attention == "chunked":
        out_BxLxNxH = attention_chunked(q_BxLxNxH, k_BxLxKxH, v_BxLxKxH, segment_ids_BxL)
      else:
        out_BxLxNxH = attention_fused(q_BxLxNxH, k_BxLxKxH, v_BxLxKxH, segment_ids_BxL,
                                      cfg.attention)
      out_BxLxNxH = constrain(out_BxLxNxH, ("act_batch", "act_len", "act_heads", "act_head_dim"))
    with jax.named_scope("out_proj"):
      return jnp.einsum("blnh,nhd->bld", out_BxLxNxH, self.o_NxHxD[...].astype(dt))

  def mlp(self, x_BxLxD):
    dt = DTYPES[self.cfg.dtype]
    gate_BxLxF = jnp.einsum("bld,df->blf", x_BxLxD, self.gate_DxF[...].astype(dt))
    up_BxLxF = jnp.einsum("bld,df->blf", x_BxLxD, self.up_DxF[...].astype(dt))
    hidden_BxLxF = constrain(jax.nn.silu(gate_BxLxF) * up_BxLxF,
                             ("act_batch", "act_len", "act_mlp"))
    return jnp.einsum("blf,fd->bld", hidden_BxLxF, self.down_FxD[...].astype(dt))

  def __call__(self, x_BxLxD, positions_BxL, segment_ids_BxL):
    eps = self.cfg.norm_eps
    with jax.named_scope("attn"):
      x_BxLxD = x_BxLxD + self.attention(rms_norm(x_BxLxD, self.attn_norm[...], eps),
                                         positions_BxL, segment_ids_BxL)
      x_BxLxD = constrain(x_BxLxD, ("act_batch", "act_len", "act_embed"))
    with jax.named_scope("mlp"):
      x_BxLxD = x_BxLxD + self.mlp(rms_norm(x_BxLxD, self.mlp_norm[...], eps))
      return constrain(x_BxLxD, ("act_batch", "act_len", "act_embed"))


class Transformer(nnx.Module):
  """tokens [B, L] -> logits [B, L, V] (float32)."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    # Logical names are metadata only here; jpeglm.sharding turns them into shardings.
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
               segment_ids_BxL: jax.Array | None = None) -> jax.Array:
    cfg, dt = self.cfg, DTYPES[self.cfg.dtype]
    b, l = tokens_BxL.shape
    if positions_BxL is None:
      positions_BxL = jnp.broadcast_to(jnp.arange(l, dtype=jnp.int32), (b, l))
    with jax.named_scope("embed"):
      x_BxLxD = jnp.take(self.embed[...], tokens_BxL, axis=0).astype(dt)
      x_BxLxD = constrain(x_BxLxD, ("act_batch", "act_len", "act_embed"))

    graphdef, stacked = nnx.split(self.blocks)

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

    with jax.named_scope("head"):
      x_BxLxD = rms_norm(x_BxLxD, self.final_norm[...], cfg.norm_eps)
      logits_BxLxV = jnp.einsum("bld,dv->blv", x_BxLxD, self.lm_head[...].astype(dt),
                                preferred_element_type=jnp.float32)
      return constrain(logits_BxLxV, ("act_batch", "act_len", "act_vocab"))


def param_count(state) -> int:
  return sum(x.size for x in jax.tree.leaves(state))


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
