"""The decoder run incrementally: a key/value cache per layer, prefill then one token a step.

Works on the trained parameters as saved (the pure dict of `jpeglm.model`, layers stacked)
with the model's own building blocks, so it computes what `Transformer.__call__` computes,
position by position. Prompts of different lengths share a batch by left padding: slot s of
row b holds position s - pad[b], and padded slots are masked out.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jpeglm.model import DTYPES, ModelConfig, rms_norm, rotary


def init_cache(cfg: ModelConfig, batch: int, max_len: int) -> dict:
  shape = (cfg.n_layers, batch, max_len, cfg.n_kv_heads, cfg.head_dim)
  dt = DTYPES[cfg.dtype]
  return {"k": jnp.zeros(shape, dt), "v": jnp.zeros(shape, dt)}


def _attend(q_BxTxNxH, k_old_BxSxKxH, v_old_BxSxKxH, k_new_BxTxKxH, v_new_BxTxKxH,
            old_mask_BxTxS, new_mask_BxTxT):
  """Attention over the cached keys and the T new ones, with one softmax across both.

  Keeping the new keys apart means the cache is only read inside the layer loop and written
  once after it, instead of being copied layer by layer at every step.
  """
  b, t, n, h = q_BxTxNxH.shape
  k_heads = k_old_BxSxKxH.shape[2]
  q_BxTxKxGxH = q_BxTxNxH.reshape(b, t, k_heads, n // k_heads, h) * (h ** -0.5)
  old_BxKxGxTxS = jnp.einsum("btkgh,bskh->bkgts", q_BxTxKxGxH, k_old_BxSxKxH,
                             preferred_element_type=jnp.float32)
  new_BxKxGxTxT = jnp.einsum("btkgh,bukh->bkgtu", q_BxTxKxGxH, k_new_BxTxKxH,
                             preferred_element_type=jnp.float32)
  low = jnp.finfo(jnp.float32).min
  old_BxKxGxTxS = jnp.where(old_mask_BxTxS[:, None, None], old_BxKxGxTxS, low)
  new_BxKxGxTxT = jnp.where(new_mask_BxTxT[:, None, None], new_BxKxGxTxT, low)
  s = old_BxKxGxTxS.shape[-1]
  probs = jax.nn.softmax(jnp.concatenate([old_BxKxGxTxS, new_BxKxGxTxT], axis=-1), axis=-1)
  probs = probs.astype(v_old_BxSxKxH.dtype)
  out_BxTxKxGxH = (jnp.einsum("bkgts,bskh->btkgh", probs[..., :s], v_old_BxSxKxH)
                   + jnp.einsum("bkgtu,bukh->btkgh", probs[..., s:], v_new_BxTxKxH))
  return out_BxTxKxGxH.reshape(b, t, n, h)


def forward(params: dict, cfg: ModelConfig, tokens_BxT: jax.Array, slot: jax.Array,
            pad_B: jax.Array, cache: dict) -> tuple[jax.Array, dict]:
  """Logits [B, T, V] for tokens written at cache slots slot .. slot+T-1, and the new cache."""
  dt = DTYPES[cfg.dtype]
  b, t = tokens_BxT.shape
  s = cache["k"].shape[2]
  slots_T = slot + jnp.arange(t)
  positions_BxT = jnp.maximum(slots_T[None, :] - pad_B[:, None], 0)
  # Cached keys: the slots before `slot`, minus a row's left padding. New keys: causal.
  key_slots_S = jnp.arange(s)
  old_mask_BxTxS = jnp.broadcast_to(
      (key_slots_S < slot)[None, None, :] & (key_slots_S[None, None, :] >= pad_B[:, None, None]),
      (b, t, s))
  new_mask_BxTxT = ((slots_T[None, :, None] >= slots_T[None, None, :])
                    & (slots_T[None, None, :] >= pad_B[:, None, None]))
  x_BxTxD = jnp.take(params["embed"], tokens_BxT, axis=0).astype(dt)

  def layer(x_BxTxD, inputs):
    p, k_cache_BxSxKxH, v_cache_BxSxKxH = inputs
    h_BxTxD = rms_norm(x_BxTxD, p["attn_norm"], cfg.norm_eps)
    q_BxTxNxH = jnp.einsum("btd,dnh->btnh", h_BxTxD, p["q_DxNxH"].astype(dt))
    k_BxTxKxH = jnp.einsum("btd,dkh->btkh", h_BxTxD, p["k_DxKxH"].astype(dt))
    v_BxTxKxH = jnp.einsum("btd,dkh->btkh", h_BxTxD, p["v_DxKxH"].astype(dt))
    q_BxTxNxH = rotary(q_BxTxNxH, positions_BxT, cfg.rope_theta)
    k_BxTxKxH = rotary(k_BxTxKxH, positions_BxT, cfg.rope_theta)
    out_BxTxNxH = _attend(q_BxTxNxH, k_cache_BxSxKxH, v_cache_BxSxKxH, k_BxTxKxH, v_BxTxKxH,
                          old_mask_BxTxS, new_mask_BxTxT)
    x_BxTxD = x_BxTxD + jnp.einsum("btnh,nhd->btd", out_BxTxNxH, p["o_NxHxD"].astype(dt))
    h_BxTxD = rms_norm(x_BxTxD, p["mlp_norm"], cfg.norm_eps)
    gate_BxTxF = jnp.einsum("btd,df->btf", h_BxTxD, p["gate_DxF"].astype(dt))
    up_BxTxF = jnp.einsum("btd,df->btf", h_BxTxD, p["up_DxF"].astype(dt))
    x_BxTxD = x_BxTxD + jnp.einsum("btf,fd->btd", jax.nn.silu(gate_BxTxF) * up_BxTxF,
                                   p["down_FxD"].astype(dt))
    return x_BxTxD, (k_BxTxKxH, v_BxTxKxH)

  x_BxTxD, (k_new, v_new) = jax.lax.scan(layer, x_BxTxD,
                                         (params["blocks"], cache["k"], cache["v"]))
  # One in-place write of every layer's new keys and values ([layers, B, T, K, H]).
  cache = {"k": jax.lax.dynamic_update_slice_in_dim(cache["k"], k_new.astype(cache["k"].dtype),
                                                    slot, 2),
           "v": jax.lax.dynamic_update_slice_in_dim(cache["v"], v_new.astype(cache["v"].dtype),
                                                    slot, 2)}
  x_BxTxD = rms_norm(x_BxTxD, params["final_norm"], cfg.norm_eps)
  logits_BxTxV = jnp.einsum("btd,dv->btv", x_BxTxD, params["lm_head"].astype(dt),
                            preferred_element_type=jnp.float32)
  return logits_BxTxV, cache
