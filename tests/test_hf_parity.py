"""Logits equal transformers' LlamaForCausalLM (PyTorch, CPU, float32) with the same weights."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs.jpeglm import get_config
from jpeglm.export import hf_layout
from jpeglm.model.transformer import ModelConfig, Transformer

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.export


def hf_state_dict(model: Transformer) -> dict:
  """Our parameters in Hugging Face Llama names and layouts (the export's own mapping)."""
  params = nnx.to_pure_dict(nnx.split(model)[1])
  return {name: torch.from_numpy(np.asarray(x, np.float32))
          for name, x in hf_layout.hf_state_dict(params, model.cfg).items()}


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_logits_match_transformers_llama(kv_heads):
  cfg = dataclasses.replace(ModelConfig.from_config(get_config("size=tiny").model),
                            n_kv_heads=kv_heads, attention="xla")
  model = Transformer(cfg, nnx.Rngs(0))
  # Norm scales away from 1 so that a misplaced norm weight shows.
  for norm in (model.blocks.attn_norm, model.blocks.mlp_norm, model.final_norm):
    norm[...] = 1 + 0.1 * jax.random.normal(jax.random.key(5), norm[...].shape)
  hf_config = transformers.LlamaConfig(
      vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.d_ff,
      num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
      num_key_value_heads=cfg.n_kv_heads, max_position_embeddings=cfg.max_len,
      rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta, tie_word_embeddings=False,
      attention_bias=False, mlp_bias=False, hidden_act="silu", attn_implementation="eager")
  hf = transformers.LlamaForCausalLM(hf_config).eval()
  missing, unexpected = hf.load_state_dict(hf_state_dict(model), strict=False)
  assert not unexpected and all("rotary" in k for k in missing), (missing, unexpected)

  tokens = jax.random.randint(jax.random.key(1), (2, 48), 0, cfg.vocab_size, jnp.int32)
  ours = np.asarray(jax.jit(lambda t: model(t))(tokens))
  with torch.no_grad():
    theirs = hf(torch.from_numpy(np.asarray(tokens, np.int64))).logits.numpy()
  assert np.abs(theirs).max() > 0.1  # not a trivially small comparison
  np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)
