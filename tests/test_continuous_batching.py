"""Continuous batching gives each prompt the tokens it gets sampled alone with the same seed
(free and syntax-safe, prompts of different lengths, more prompts than slots), and its slots
are refilled: fewer decode steps than fixed batches of the same size."""

import jax.numpy as jnp
import numpy as np
import pytest

from data_pipeline.media_files import builtin_photos
from jpeglm.codecs import JpegCodec, open_image
from jpeglm.codecs.jpeg_grammar import JpegGrammar
from jpeglm.errors import JpeglmError
from jpeglm.model.kv_cache import KVCache, write_rows
from jpeglm.sampling.continuous import ContinuousBatcher
from jpeglm.sampling.generate import Generator, SamplingSettings
from jpeglm.tokenizer import ByteTokenizer
from tests.test_sampling import tiny_model

CODEC = JpegCodec(size=64)
EOS = 2


def fixed_schedule_steps(lengths: list[int], batch: int) -> int:
  """Decode steps of fixed batches in order: each runs as long as its longest row."""
  return sum(max(lengths[i:i + batch]) for i in range(0, len(lengths), batch))


@pytest.fixture(scope="module")
def free_sampler():
  cfg, _, params = tiny_model(max_len=96)
  return Generator(params, cfg, eos_id=EOS, max_len=96, settings=SamplingSettings(1.0, 0, 1.0),
                   banned=(0, 1))


def test_free_sampling_equals_each_prompt_alone_and_refills_slots(free_sampler):
  rng = np.random.default_rng(0)
  # Lengths 1..81: each prompt's room (max_len - its length) differs, and a few end at EOS.
  prompts = [[1, *rng.integers(3, 320, n).tolist()] for n in (0, 5, 30, 60, 12, 80, 3)]
  batcher = ContinuousBatcher(free_sampler, slots=3)
  together = batcher.generate(prompts, seed=7)
  alone = [free_sampler.generate([p], seed=7, indices=[i])[0] for i, p in enumerate(prompts)]
  assert [g.tokens for g in together] == [g.tokens for g in alone]
  assert [g.prompt for g in together] == prompts
  lengths = [len(g.tokens) for g in alone]
  assert len(set(lengths)) > 3 and any(g.ended_with_eos for g in alone)
  assert batcher.decode_steps < fixed_schedule_steps(lengths, 3)
  assert batcher.decode_steps >= max(lengths)

  # Fixed batches draw with the same per-prompt keys: the same tokens, up to their shorter
  # room (a fixed batch stops every row where its longest prompt's context ends).
  fixed = free_sampler.generate(prompts, seed=7)
  assert all(g.tokens == a.tokens[:len(g.tokens)] and g.tokens for g, a in zip(fixed, alone))

  # The host checking in every 5 steps, and per-prompt limits, change nothing else.
  batcher.sync_every = 5
  limits = [4, 50, 10, 1, 30, 9, 0]
  capped = batcher.generate(prompts, seed=7, max_new_tokens=limits)
  assert [g.tokens for g in capped] == [a.tokens[:n] for a, n in zip(alone, limits)]
  # Another seed, other tokens.
  assert batcher.generate(prompts[:2], seed=8)[0].tokens != alone[0].tokens


def test_prompt_index_not_slot_decides_the_sample(free_sampler):
  """The same prompt under different indices: different samples; reordered: the same."""
  prompts = [[1, 5, 6]] * 3
  batcher = ContinuousBatcher(free_sampler, slots=2)
  out = batcher.generate(prompts, seed=1, max_new_tokens=20)
  assert out[0].tokens != out[1].tokens
  reordered = batcher.generate(prompts, seed=1, max_new_tokens=20, indices=[2, 0, 1])
  assert reordered[1].tokens == out[0].tokens and reordered[0].tokens == out[2].tokens


def test_too_long_a_prompt_is_refused(free_sampler):
  with pytest.raises(JpeglmError, match="no room"):
    ContinuousBatcher(free_sampler, slots=2).generate([[1] * 96])


@pytest.mark.slow  # ~20 s; test_lazy_masks covers syntax-safe slots in the quick suite
def test_syntax_safe_equals_each_prompt_alone(tokenizer_path):
  tokenizer = ByteTokenizer.load(tokenizer_path)
  cfg, _, params = tiny_model(max_len=1024)
  pieces = [tokenizer.piece_bytes(i) for i in range(tokenizer.vocab_size)]
  safe = Generator(params, cfg, tokenizer.eos_id, 1024, SamplingSettings(1.0, 0, 1.0),
                   grammar=JpegGrammar(CODEC), pieces=pieces,
                   banned=(tokenizer.unk_id, tokenizer.bos_id))
  streams = [CODEC.encode(open_image(p)) for p in builtin_photos()[:4]]
  prompts = [[tokenizer.bos_id, *tokenizer.encode(CODEC.prefix(s, r))]
             for s, r in zip(streams, (0.25, 0.5, 0.75, 0.5))]
  batcher = ContinuousBatcher(safe, slots=2)
  together = batcher.generate(prompts, seed=3)
  alone = [safe.generate([p], seed=3, indices=[i])[0] for i, p in enumerate(prompts)]
  assert [g.tokens for g in together] == [g.tokens for g in alone]
  for g, p in zip(together, prompts):  # every row ended at the image's end
    assert g.ended_with_eos and CODEC.decode(tokenizer.decode([*p[1:], *g.tokens])).complete
  lengths = [len(g.tokens) for g in alone]
  assert batcher.decode_steps < fixed_schedule_steps(lengths, 2)


def test_cache_rows_fill_at_their_own_lengths():
  cache = KVCache.init(1, 2, 8, 1, 1, jnp.float32, starts_B=jnp.array([0, 2]))
  cache = KVCache(cache.k, cache.v, cache.starts_B, jnp.array([3, 5], jnp.int32))
  assert cache.positions(2).tolist() == [[3, 4], [3, 4]]
  new = jnp.ones((1, 2, 2, 1, 1))
  written = cache.write(new, 2 * new)
  assert written.length.tolist() == [5, 7]
  assert np.flatnonzero(written.k[0, 0, 0, :, 0]).tolist() == [3, 4]
  assert np.flatnonzero(written.v[0, 1, 0, :, 0]).tolist() == [5, 6]
  # The loop of slice updates (what every backend runs) and the single scatter write the same.
  rng = np.random.default_rng(0)
  cache_k = jnp.asarray(rng.normal(size=(2, 3, 2, 16, 4)), jnp.float32)
  new_k = jnp.asarray(rng.normal(size=(2, 3, 2, 3, 4)), jnp.float32)
  at = jnp.array([0, 7, 13])
  np.testing.assert_array_equal(write_rows(cache_k, new_k, at, row_loop=True),
                                write_rows(cache_k, new_k, at, row_loop=False))
