"""KV-cache generation: equal to full forward passes (prefill with every attention kernel, on
a mesh with a tensor axis), deterministic when greedy, prompts kept, and syntax-safe sampling
yields decodable JPEGs even from an untrained model."""

import contextlib
import dataclasses
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from configs.jpeglm import get_config
from data_pipeline.media_files import builtin_photos
from jpeglm.codecs import JpegCodec, open_image
from jpeglm.model import sharding
from jpeglm.codecs.jpeg_grammar import JpegGrammar
from jpeglm.model.kv_cache import CHUNK
from jpeglm.errors import ConfigError
from jpeglm.config_io import read_config
from jpeglm.model.transformer import ModelConfig, Transformer
from jpeglm.sampling import inference_model
from jpeglm.sampling.generate import Generator, SamplingSettings, prefill_length
from jpeglm.sampling.run import sample_from_workdir
from jpeglm.tokenizer import ByteTokenizer

CODEC = JpegCodec(size=64)


def tiny_model(**changes):
  """(config, jitted full forward tokens -> logits, parameters as the sampler reads them)."""
  cfg = dataclasses.replace(ModelConfig.from_config(get_config("size=tiny").model), **changes)
  graphdef, state = nnx.split(Transformer(cfg, nnx.Rngs(0)))
  forward = jax.jit(lambda tokens: nnx.merge(graphdef, state)(tokens))
  return cfg, forward, nnx.to_pure_dict(state)


cached_forward = jax.jit(inference_model.forward, static_argnames=("cfg",))


@pytest.fixture(scope="module")
def tokenizer(tokenizer_path):
  return ByteTokenizer.load(tokenizer_path)


PREFILL, DECODE = 256, 6  # a prefill the chunked kernel tiles; decode steps read 2 cache chunks


@functools.lru_cache(maxsize=None)
def reference_logits(kv_heads: int):
  """Full forward passes with the reference (einsum) attention: row 0 whole, row 1 without
  its 5 slots of left padding."""
  _, model, params = tiny_model(n_kv_heads=kv_heads, attention="einsum")
  tokens = jax.random.randint(jax.random.key(3), (2, PREFILL + DECODE), 3, 320)
  return tokens, params, model(tokens[:1])[0], model(tokens[1:, 5:])[0]


def decode_token_by_token(cfg, params, tokens, mesh=None):
  """Prefill (the model's kernel) then one token per step; logits [2, PREFILL + DECODE, V]."""
  step = jax.jit(inference_model.forward, static_argnames=("cfg", "prefill"))
  pad = jnp.array([0, 5], jnp.int32)
  with contextlib.nullcontext() if mesh is None else jax.set_mesh(mesh):
    cache = inference_model.init_cache(cfg, 2, PREFILL + DECODE, pad)
    logits, cache = step(params, cfg, tokens[:, :PREFILL], 0, pad, cache, prefill=True)
    out = [logits]
    for i in range(PREFILL, PREFILL + DECODE):
      logits, cache = step(params, cfg, tokens[:, i:i + 1], i, pad, cache)
      out.append(logits)
  assert int(cache.length) == PREFILL + DECODE
  return np.asarray(jnp.concatenate(out, 1))


@pytest.mark.parametrize("attention,kv_heads", [("einsum", 2), ("chunked", 4), ("xla", 2),
                                                ("splash", 2)])
def test_prefill_with_each_kernel_then_decode_equals_full_forward(attention, kv_heads):
  tokens, params, row0, row1 = reference_logits(kv_heads)
  cfg, _, _ = tiny_model(n_kv_heads=kv_heads, attention=attention)
  logits = decode_token_by_token(cfg, params, tokens)
  np.testing.assert_allclose(logits[0], row0, atol=3e-5, rtol=3e-5)
  np.testing.assert_allclose(logits[1, 5:], row1, atol=3e-5, rtol=3e-5)


def test_decoding_on_a_mesh_with_a_tensor_axis_equals_full_forward():
  tokens, params, row0, row1 = reference_logits(2)
  cfg, _, _ = tiny_model(n_kv_heads=2, attention="chunked")
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  with nnx.use_eager_sharding(False):
    abstract = nnx.state(nnx.eval_shape(lambda: Transformer(cfg, nnx.Rngs(0))))
  shardings = nnx.to_pure_dict(sharding.state_shardings(abstract, mesh))
  sharded = jax.device_put(params, shardings)
  assert sharded["blocks"]["q_DxNxH"].sharding.spec[2] == "tensor"  # heads split
  logits = decode_token_by_token(cfg, sharded, tokens, mesh)
  np.testing.assert_allclose(logits[0], row0, atol=3e-5, rtol=3e-5)
  np.testing.assert_allclose(logits[1, 5:], row1, atol=3e-5, rtol=3e-5)
  # The sampler on the mesh picks what it picks on one device.
  settings = SamplingSettings(0.0, 0, 1.0)
  prompts = [[1, 40, 41, 42], [1, 7]]
  on_mesh = Generator(sharded, cfg, 2, 64, settings, mesh=mesh).generate(prompts,
                                                                         max_new_tokens=8)
  alone = Generator(params, cfg, 2, 64, settings).generate(prompts, max_new_tokens=8)
  assert [g.tokens for g in on_mesh] == [g.tokens for g in alone]


def test_decoding_refuses_a_context_axis():
  cfg, _, params = tiny_model()
  mesh = sharding.make_mesh({"data": 1, "fsdp": 4, "context": 2, "tensor": 1})
  with jax.set_mesh(mesh), pytest.raises(ConfigError, match="context"):
    inference_model.forward(params, cfg, jnp.ones((2, 1), jnp.int32), 0, jnp.zeros((2,), jnp.int32),
                     inference_model.init_cache(cfg, 2, 8))


def test_a_decode_step_reads_only_the_filled_chunks():
  """NaN in every cache chunk past the filled length would poison any step that read it."""
  cfg, model, params = tiny_model()
  tokens = jax.random.randint(jax.random.key(4), (1, 12), 3, 320)
  pad = jnp.zeros((1,), jnp.int32)
  cache = inference_model.init_cache(cfg, 1, 3 * CHUNK)
  beyond = jnp.arange(cache.size) >= CHUNK
  cache = dataclasses.replace(cache, k=jnp.where(beyond[:, None], jnp.nan, cache.k),
                              v=jnp.where(beyond[:, None], jnp.nan, cache.v))
  logits, cache = cached_forward(params, cfg, tokens[:, :8], jnp.int32(0), pad, cache)
  steps = [logits]
  for i in range(8, 12):
    logits, cache = cached_forward(params, cfg, tokens[:, i:i + 1], jnp.int32(i), pad, cache)
    steps.append(logits)
  np.testing.assert_allclose(jnp.concatenate(steps, 1), model(tokens), atol=2e-5, rtol=2e-5)


def test_left_padded_prompts_see_only_themselves():
  cfg, model, params = tiny_model()
  tokens = jax.random.randint(jax.random.key(2), (2, 20), 3, 320)
  padded = tokens.at[1, :5].set(0)
  logits, _ = cached_forward(params, cfg, padded, jnp.int32(0), jnp.array([0, 5]),
                               inference_model.init_cache(cfg, 2, 24))
  np.testing.assert_allclose(logits[1, 5:], model(tokens[1:2, 5:])[0], atol=2e-5, rtol=2e-5)


def test_greedy_matches_repeated_full_forward_and_is_deterministic():
  cfg, model, params = tiny_model()
  generator = Generator(params, cfg, eos_id=2, max_len=64, settings=SamplingSettings(0.0, 0, 1.0))
  prompts = [[1, 40, 41, 42], [1, 7]]
  first = generator.generate(prompts, seed=0, max_new_tokens=12)
  again = generator.generate(prompts, seed=123, max_new_tokens=12)
  assert [g.tokens for g in first] == [g.tokens for g in again]
  for g, prompt in zip(first, prompts):
    assert g.prompt == prompt  # the sampler never changes the prompt
    sequence = list(prompt) + [0] * len(g.tokens)  # fixed length: one compiled forward
    for i in range(len(prompt), len(sequence)):
      sequence[i] = int(jnp.argmax(model(jnp.array([sequence]))[0, i - 1]))
    assert sequence[len(prompt):] == g.tokens


def test_sampling_uses_the_seed():
  cfg, _, params = tiny_model()
  generator = Generator(params, cfg, eos_id=2, max_len=64, settings=SamplingSettings(1.0, 0, 1.0))
  a = generator.generate([[1]], seed=0, max_new_tokens=20)[0].tokens
  b = generator.generate([[1]], seed=0, max_new_tokens=20)[0].tokens
  c = generator.generate([[1]], seed=1, max_new_tokens=20)[0].tokens
  assert a == b and a != c


def test_syntax_safe_untrained_model_always_decodes(tokenizer):
  cfg, _, params = tiny_model(max_len=2048)
  pieces = [tokenizer.piece_bytes(i) for i in range(tokenizer.vocab_size)]
  generator = Generator(params, cfg, tokenizer.eos_id, 2048, SamplingSettings(1.0, 0, 1.0),
                        grammar=JpegGrammar(CODEC), pieces=pieces)
  for g in generator.generate([[tokenizer.bos_id]] * 3, seed=0):
    assert g.ended_with_eos
    decoded = CODEC.decode(tokenizer.decode(g.tokens))
    assert decoded.complete, decoded.reason


def test_sample_command_writes_completions(trained_run, tmp_path):
  config = read_config(os.path.join(trained_run, "config.json"))
  config.sample.syntax_safe = True
  photo = builtin_photos()[0]
  out = str(tmp_path / "samples")
  records = sample_from_workdir(trained_run, config, out, [photo], ratio=0.5, num_samples=2,
                                seed=0)
  assert len(records) == 2 and all(r["complete"] for r in records)
  lines = [json.loads(l) for l in open(os.path.join(out, "samples.jsonl"))]
  assert {"tokens_generated", "complete", "seconds"} <= set(lines[0])
  assert os.path.exists(os.path.join(out, "grid.png"))
  # The prompt's rows come back exactly: 32 of 64 rows, compared above the last kept row.
  prompt_rows = np.asarray(CODEC.decode(CODEC.prefix(CODEC.encode(open_image(photo)), 0.5)).image)
  sample = np.asarray(Image.open(os.path.join(out, "sample_000.jpg")).convert("RGB"))
  assert np.array_equal(sample[:31], prompt_rows[:31])
  assert not np.array_equal(sample[40:], prompt_rows[40:])  # the rest was generated


def test_free_sampling_never_emits_unk_or_bos():
  cfg, _, params = tiny_model()
  generator = Generator(params, cfg, eos_id=2, max_len=256, settings=SamplingSettings(3.0, 0, 1.0),
                        banned=(0, 1))
  for g in generator.generate([[1]] * 4, seed=0, max_new_tokens=200):
    assert not {0, 1} & set(g.tokens)


def test_prompts_pad_to_lengths_the_prefill_kernel_tiles():
  cfg, _, _ = tiny_model()
  splash = dataclasses.replace(cfg, attention="splash")
  assert [prefill_length(n, cfg) for n in (1, 128, 129, 600)] == [128, 128, 256, 640]
  # Beyond one 512 block, splash needs whole blocks.
  assert [prefill_length(n, splash) for n in (300, 512, 513)] == [384, 512, 1024]
