"""The Llama-2 decoder: causality, scan/remat/attention equivalences, segments, GQA, counts."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs.jpeglm import get_config
from jpeglm.errors import ConfigError
from jpeglm.training.losses import cross_entropy
from jpeglm.training.state import abstract_params
from jpeglm.model.attention import attention_chunked, attention_einsum
from jpeglm.model.transformer import ModelConfig, Transformer
from jpeglm.model.remat import POLICIES

B, L = 2, 32


def tiny(**changes) -> ModelConfig:
  return dataclasses.replace(ModelConfig.from_config(get_config("size=tiny").model), **changes)


def tokens(seed=0, b=B, l=L, vocab=320):
  return jax.random.randint(jax.random.key(seed), (b, l), 0, vocab, jnp.int32)


def build(cfg, seed=0):
  return Transformer(cfg, nnx.Rngs(seed))


def with_cfg(model, cfg):
  """The same parameters run under another config (layouts do not depend on these fields)."""
  graphdef, state = nnx.split(build(cfg))
  return nnx.merge(graphdef, nnx.state(model))


@jax.jit
def _logits(graphdef, state, toks, positions=None, segment_ids=None):
  return nnx.merge(graphdef, state)(toks, positions, segment_ids)


def logits(model, toks, positions=None, segment_ids=None):
  return _logits(*nnx.split(model), toks, positions, segment_ids)


@pytest.mark.parametrize("attention", ["einsum", "xla"])
def test_causal(attention):
  model = build(tiny(attention=attention))
  a, b = tokens(0), tokens(1)
  mixed = a.at[:, 20:].set(b[:, 20:])
  la, lm = logits(model, a), logits(model, mixed)
  np.testing.assert_allclose(la[:, :20], lm[:, :20], atol=1e-6)
  assert np.abs(la[:, 20:] - lm[:, 20:]).max() > 1e-3  # the future did change something


def test_shapes_and_dtypes():
  model = build(tiny(param_dtype="bfloat16", dtype="bfloat16"))
  assert model.embed[...].dtype == jnp.bfloat16
  assert model.blocks.q_DxNxH[...].shape == (2, 64, 4, 16)  # stacked over layers
  out = logits(model, tokens())
  assert out.shape == (B, L, 320) and out.dtype == jnp.float32
  assert np.isfinite(np.asarray(out)).all()


def test_bfloat16_compute_close_to_float32():
  model = build(tiny())
  f32 = logits(model, tokens())
  bf16 = logits(with_cfg(model, tiny(dtype="bfloat16")), tokens())
  assert np.abs(f32 - bf16).max() < 0.05 * np.abs(f32).max() + 0.05
  assert np.abs(f32 - bf16).max() > 0  # it did compute in another dtype


def test_scan_equals_unrolled():
  model = build(tiny(scan_layers=True))
  unrolled = with_cfg(model, tiny(scan_layers=False))
  np.testing.assert_allclose(logits(model, tokens()), logits(unrolled, tokens()),
                             rtol=1e-5, atol=1e-5)


def _loss_and_grads(model, toks):
  graphdef, state = nnx.split(model)

  def loss_fn(state):
    out = nnx.merge(graphdef, state)(toks[:, :-1])
    return cross_entropy(out, toks[:, 1:])[0]

  return jax.jit(jax.value_and_grad(loss_fn))(state)


@pytest.mark.parametrize("scan", [True, False])
def test_remat_equals_no_remat(scan):
  model = build(tiny(scan_layers=scan))
  toks = tokens(3)
  loss0, grads0 = _loss_and_grads(model, toks)
  # Every policy when scanned (offloading needs a host memory space the CPU backend does
  # not model); unrolled, the two that differ most, to keep the suite short.
  named = sorted(set(POLICIES) - {"none", "offload_attention"})
  for policy in named if scan else ("full", "save_matmuls"):
    loss, grads = _loss_and_grads(with_cfg(model, tiny(scan_layers=scan, remat=policy)), toks)
    np.testing.assert_allclose(loss, loss0, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                 grads, grads0)


def _two_documents(first_len, seed_a, seed_b):
  """One row: document A (segment 1), document B (segment 2), positions restart at B."""
  toks = tokens(seed_a, b=1)
  toks = toks.at[:, first_len:].set(tokens(seed_b, b=1)[:, first_len:])
  seg = jnp.where(jnp.arange(L) < first_len, 1, 2)[None].astype(jnp.int32)
  pos = jnp.where(jnp.arange(L) < first_len, jnp.arange(L), jnp.arange(L) - first_len)
  return toks, pos[None].astype(jnp.int32), seg


@pytest.mark.parametrize("attention", ["einsum", "xla"])
def test_segments_isolate_documents(attention):
  model = build(tiny(attention=attention))
  toks, pos, seg = _two_documents(12, 0, 1)
  other_b = toks.at[:, 12:].set(tokens(7, b=1)[:, 12:])
  other_a = toks.at[:, :12].set(tokens(8, b=1)[:, :12])
  base = logits(model, toks, pos, seg)
  np.testing.assert_allclose(logits(model, other_b, pos, seg)[:, :12], base[:, :12], atol=1e-5)
  np.testing.assert_allclose(logits(model, other_a, pos, seg)[:, 12:], base[:, 12:], atol=1e-5)
  # Document B alone (from position 0) gives the same logits as inside the packed row.
  alone = logits(model, toks[:, 12:])
  np.testing.assert_allclose(base[:, 12:], alone, rtol=1e-5, atol=1e-5)
  # Without segment ids, A's tokens do reach B.
  assert np.abs(logits(model, other_a, pos)[:, 12:] - logits(model, toks, pos)[:, 12:]).max() > 1e-3


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_einsum_equals_fused_xla(kv_heads):
  model = build(tiny(attention="einsum", n_kv_heads=kv_heads))
  fused = with_cfg(model, tiny(attention="xla", n_kv_heads=kv_heads))
  toks, pos, seg = _two_documents(10, 0, 1)
  toks, pos, seg = (jnp.concatenate([x, x[:, ::-1]]) for x in (toks, pos, seg))
  seg = seg.at[1, -5:].set(0)  # trailing padding in the second row
  for args in ((toks,), (toks, pos, seg)):
    np.testing.assert_allclose(logits(model, *args), logits(fused, *args), rtol=1e-5, atol=1e-5)


def test_grouped_query_attention_equals_repeated_heads():
  gqa = build(tiny(n_kv_heads=2))
  assert gqa.blocks.k_DxKxH[...].shape == (2, 64, 2, 16)
  mha = build(tiny())
  state = nnx.state(mha)
  for name in ("k_DxKxH", "v_DxKxH"):
    state["blocks"][name][...] = jnp.repeat(getattr(gqa.blocks, name)[...], 2, axis=2)
  for name in ("q_DxNxH", "o_NxHxD", "gate_DxF", "up_DxF", "down_FxD", "attn_norm", "mlp_norm"):
    state["blocks"][name][...] = getattr(gqa.blocks, name)[...]
  for name in ("embed", "final_norm", "lm_head"):
    state[name][...] = getattr(gqa, name)[...]
  nnx.update(mha, state)
  np.testing.assert_allclose(logits(gqa, tokens()), logits(mha, tokens()), rtol=1e-5, atol=1e-5)


def test_7b_param_count_matches_llama2_formula():
  config = get_config("size=7b,codec=jpeg")
  state = abstract_params(config).variables
  d, layers, f, v = 4096, 32, 11008, 320
  llama2 = 2 * v * d + layers * (4 * d * d + 3 * d * f + 2 * d) + d
  assert sum(x.size for x in jax.tree.leaves(state)) == llama2 == 6_478_893_056
  assert config.model.max_len == 12288
  avc = get_config("size=7b,codec=avc").model
  assert (avc.vocab_size, avc.max_len) == (1024, 32768)


def test_bad_configs_are_refused():
  with pytest.raises(ConfigError, match="n_kv_heads"):
    tiny(n_kv_heads=3)
  with pytest.raises(ConfigError, match="attention"):
    tiny(attention="flash")
  with pytest.raises(ConfigError, match="remat"):
    tiny(remat="some")


def test_cross_entropy_mask_and_z_loss():
  logits_ = jax.random.normal(jax.random.key(0), (2, 5, 7))
  targets = jax.random.randint(jax.random.key(1), (2, 5), 0, 7)
  weights = jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], jnp.float32)
  loss, aux = cross_entropy(logits_, targets, weights, z_loss=1e-2)
  logp = jax.nn.log_softmax(logits_)
  nll = -np.take_along_axis(np.asarray(logp), np.asarray(targets)[..., None], -1)[..., 0]
  expected = (nll * weights).sum() / 8
  z = jax.nn.logsumexp(logits_, -1)
  np.testing.assert_allclose(aux["nll"], expected, rtol=1e-6)
  np.testing.assert_allclose(loss, expected + 1e-2 * (z ** 2 * weights).sum() / 8, rtol=1e-6)
  # Masked positions do not matter.
  changed = logits_.at[0, 3:].set(100.0)
  np.testing.assert_allclose(cross_entropy(changed, targets, weights)[0], expected, rtol=1e-6)


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_chunked_attention_equals_einsum(kv_heads):
  keys = jax.random.split(jax.random.key(0), 3)
  q = jax.random.normal(keys[0], (2, 40, 4, 8))
  k, v = (jax.random.normal(key, (2, 40, kv_heads, 8)) for key in keys[1:])
  seg = jnp.array([[1] * 13 + [2] * 27, [1] * 35 + [0] * 5], jnp.int32)
  chunked = jax.jit(lambda q, k, v, s: attention_chunked(q, k, v, s, chunk=8))
  for s in (None, seg):
    np.testing.assert_allclose(chunked(q, k, v, s), jax.jit(attention_einsum)(q, k, v, s),
                               rtol=1e-5, atol=1e-6)


def test_chunked_model_equals_fused_xla_over_several_chunks():
  model = build(tiny(attention="chunked"))
  fused = with_cfg(model, tiny(attention="xla"))
  toks = tokens(2, b=1, l=384)  # 3 blocks of 128
  np.testing.assert_allclose(logits(model, toks), logits(fused, toks), rtol=1e-5, atol=1e-5)
