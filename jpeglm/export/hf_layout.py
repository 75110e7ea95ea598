"""Our parameter tree <-> Hugging Face `LlamaForCausalLM` names, shapes and config keys.

One table (`ENTRIES`) names every weight once: its leaf in our pure-dict params, its HF
name, and how one layer's array is laid out on each side. Our rotary embedding already uses
HF's split-halves layout, so every conversion is a reshape and a transpose, never a
permutation of heads:

  ours                              HF (PyTorch Linear: [out, in])
  embed            [V, D]           model.embed_tokens.weight        [V, D]
  blocks/q_DxNxH   [L, D, N, H]     model.layers.i.self_attn.q_proj  [N*H, D]
  blocks/k_DxKxH   [L, D, K, H]     ... k_proj                       [K*H, D]
  blocks/v_DxKxH   [L, D, K, H]     ... v_proj                       [K*H, D]
  blocks/o_NxHxD   [L, N, H, D]     ... o_proj                       [D, N*H]
  blocks/gate_DxF, up_DxF [L, D, F] ... mlp.gate_proj, up_proj       [F, D]
  blocks/down_FxD  [L, F, D]        ... mlp.down_proj                [D, F]
  blocks/attn_norm, mlp_norm [L, D] ... input_layernorm, post_attention_layernorm [D]
  final_norm       [D]              model.norm.weight                [D]
  lm_head          [D, V]           lm_head.weight                   [V, D]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping

import numpy as np

from jpeglm.errors import JpeglmError
from jpeglm.model.transformer import ModelConfig

LAYER_PREFIX = "model.layers.{i}."


@dataclasses.dataclass(frozen=True)
class Entry:
  path: tuple[str, ...]  # leaf in our params dict
  hf: str  # HF tensor name; "{i}" is the layer index when `stacked`
  layout: str  # "same" | "transpose" | "heads_in" ([D,n,H] <-> [n*H,D]) | "heads_out"

  @property
  def stacked(self) -> bool:
    return self.path[0] == "blocks"

  def hf_name(self, layer: int | None = None) -> str:
    return self.hf.format(i=layer) if self.stacked else self.hf


def _layer(path: str, hf: str, layout: str) -> Entry:
  return Entry(("blocks", path), LAYER_PREFIX + hf, layout)


# The order export writes tensors in: one leaf at a time, so each leaf is read once.
ENTRIES = (
    Entry(("embed",), "model.embed_tokens.weight", "same"),
    _layer("attn_norm", "input_layernorm.weight", "same"),
    _layer("q_DxNxH", "self_attn.q_proj.weight", "heads_in"),
    _layer("k_DxKxH", "self_attn.k_proj.weight", "heads_in"),
    _layer("v_DxKxH", "self_attn.v_proj.weight", "heads_in"),
    _layer("o_NxHxD", "self_attn.o_proj.weight", "heads_out"),
    _layer("mlp_norm", "post_attention_layernorm.weight", "same"),
    _layer("gate_DxF", "mlp.gate_proj.weight", "transpose"),
    _layer("up_DxF", "mlp.up_proj.weight", "transpose"),
    _layer("down_FxD", "mlp.down_proj.weight", "transpose"),
    Entry(("final_norm",), "model.norm.weight", "same"),
    Entry(("lm_head",), "lm_head.weight", "transpose"),
)


def our_shape(entry: Entry, cfg: ModelConfig) -> tuple[int, ...]:
  """One layer's shape on our side (the leaf is [n_layers, *this] when stacked)."""
  d, n, k, h, f, v = (cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_ff,
                      cfg.vocab_size)
  return {"embed": (v, d), "attn_norm": (d,), "mlp_norm": (d,), "final_norm": (d,),
          "q_DxNxH": (d, n, h), "k_DxKxH": (d, k, h), "v_DxKxH": (d, k, h),
          "o_NxHxD": (n, h, d), "gate_DxF": (d, f), "up_DxF": (d, f), "down_FxD": (f, d),
          "lm_head": (d, v)}[entry.path[-1]]


def leaf_shape(entry: Entry, cfg: ModelConfig) -> tuple[int, ...]:
  shape = our_shape(entry, cfg)
  return (cfg.n_layers, *shape) if entry.stacked else shape


def hf_shape(entry: Entry, cfg: ModelConfig) -> tuple[int, ...]:
  s = our_shape(entry, cfg)
  if entry.layout == "same":
    return s
  if entry.layout == "transpose":
    return s[::-1]
  if entry.layout == "heads_in":
    return (s[1] * s[2], s[0])
  return (s[2], s[0] * s[1])  # heads_out


def to_hf(entry: Entry, x: np.ndarray) -> np.ndarray:
  """One layer's array, ours -> HF, as a fresh contiguous copy (never a view of the leaf,
  so the leaf can be freed while its converted tensors wait in a shard)."""
  if entry.layout == "transpose":
    x = x.T
  elif entry.layout == "heads_in":
    x = x.reshape(x.shape[0], -1).T
  elif entry.layout == "heads_out":
    x = x.reshape(-1, x.shape[-1]).T
  return np.array(x, order="C", copy=True)


def from_hf(entry: Entry, t: np.ndarray, cfg: ModelConfig) -> np.ndarray:
  """One HF tensor -> our layer layout (the inverse of `to_hf`)."""
  want = hf_shape(entry, cfg)
  if tuple(t.shape) != want:
    raise JpeglmError(f"tensor {entry.hf} has shape {tuple(t.shape)}, the config needs {want}")
  if entry.layout == "same":
    return t
  return t.T.reshape(our_shape(entry, cfg))


def layers_of(entry: Entry, cfg: ModelConfig) -> list[int | None]:
  return list(range(cfg.n_layers)) if entry.stacked else [None]


def get_leaf(params: Mapping, entry: Entry):
  node = params
  for key in entry.path:
    node = node[key]
  return node


def hf_tensors(params: Mapping, cfg: ModelConfig) -> Iterator[tuple[str, np.ndarray]]:
  """(HF name, array) for every weight of an in-memory params tree."""
  for entry in ENTRIES:
    leaf = np.asarray(get_leaf(params, entry))
    for i in layers_of(entry, cfg):
      yield entry.hf_name(i), to_hf(entry, leaf if i is None else leaf[i])


def hf_state_dict(params: Mapping, cfg: ModelConfig) -> dict[str, np.ndarray]:
  """All weights in HF names and layouts (float arrays; wrap with torch.from_numpy)."""
  return dict(hf_tensors(params, cfg))


# ---- config.json ----------------------------------------------------------------------------

def llama_config(cfg: ModelConfig, bos_id: int, eos_id: int, dtype: str) -> dict:
  """config.json of an HF `LlamaForCausalLM` with our dimensions (no custom code)."""
  return {
      "architectures": ["LlamaForCausalLM"], "model_type": "llama",
      "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model,
      "intermediate_size": cfg.d_ff, "num_hidden_layers": cfg.n_layers,
      "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.n_kv_heads,
      "head_dim": cfg.head_dim, "max_position_embeddings": cfg.max_len,
      "rms_norm_eps": cfg.norm_eps, "hidden_act": "silu", "initializer_range": cfg.init_std,
      # Both spellings: transformers 5 reads rope_parameters, 4.x reads rope_theta.
      "rope_theta": cfg.rope_theta,
      "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
      "rope_scaling": None, "attention_bias": False, "mlp_bias": False,
      "attention_dropout": 0.0, "tie_word_embeddings": False, "use_cache": True,
      "bos_token_id": bos_id, "eos_token_id": eos_id, "pad_token_id": None,
      "torch_dtype": dtype, "dtype": dtype,
  }


def model_keys_from_llama(hf: Mapping, where: str) -> dict:
  """Our `config.model` keys from an HF config.json; one-line errors for what we cannot run."""
  arch = list(hf.get("architectures") or [])
  if hf.get("model_type") != "llama" or (arch and "LlamaForCausalLM" not in arch):
    raise JpeglmError(f"{where} holds a {'/'.join(arch) or hf.get('model_type')} model "
                      f"(model_type {hf.get('model_type')!r}), not a LlamaForCausalLM")
  for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
              "num_attention_heads"):
    if key not in hf:
      raise JpeglmError(f"{where}: config.json has no {key}")
  rope = hf.get("rope_parameters") or {}
  scaling = hf.get("rope_scaling") or {}
  rope_type = rope.get("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
  if rope_type != "default":
    raise JpeglmError(f"{where}: rope scaling {rope_type!r} is not supported (plain rotary only)")
  if hf.get("hidden_act", "silu") != "silu":
    raise JpeglmError(f"{where}: hidden_act {hf['hidden_act']!r} is not supported (silu only)")
  if hf.get("attention_bias") or hf.get("mlp_bias"):
    raise JpeglmError(f"{where}: attention/MLP biases are not supported")
  heads = hf["num_attention_heads"]
  head_dim = hf.get("head_dim") or hf["hidden_size"] // heads
  if head_dim * heads != hf["hidden_size"]:
    raise JpeglmError(f"{where}: head_dim {head_dim} x {heads} heads != hidden_size "
                      f"{hf['hidden_size']} (not supported)")
  return {"vocab_size": hf["vocab_size"], "d_model": hf["hidden_size"],
          "n_layers": hf["num_hidden_layers"], "n_heads": heads,
          "n_kv_heads": hf.get("num_key_value_heads") or heads,
          "d_ff": hf["intermediate_size"],
          "max_len": hf.get("max_position_embeddings", 4096),
          "rope_theta": float(rope.get("rope_theta", hf.get("rope_theta", 10_000.0))),
          "norm_eps": float(hf.get("rms_norm_eps", 1e-6))}
