"""Lazy syntax-safe masks (jpeglm.sampling.lazy_masks): a grammar's mask is exactly the pieces
`advance` accepts and never leaves a state with no way on, and sampling over each row's top
candidates gives the tokens full masks give, for JPEG and H.264, in fixed and continuous
batches, with and without falling back to full masks."""

import numpy as np
import pytest

from data_pipeline.media_files import builtin_photos, builtin_videos
from jpeglm.codecs import AvcCodec, JpegCodec, open_image
from jpeglm.codecs.h264_grammar import AvcGrammar
from jpeglm.codecs.jpeg_grammar import JpegGrammar
from jpeglm.sampling.generate import Generator, SamplingSettings
from jpeglm.sampling.lazy_masks import valid_needed
from jpeglm.tokenizer import ByteTokenizer
from tests.sampler_checks import assert_continuous_equals_alone, assert_same_tokens
from tests.test_sampling import tiny_model

JPEG = JpegCodec(size=64)
AVC = AvcCodec(width=32, height=32, seconds=1)  # 4 macroblocks, 3 frames
MAX_LEN = 1024


@pytest.fixture(scope="module")
def jpeg_case(tokenizer_path):
  """(grammar, tokenizer, pieces, prompts): photos cut at different points."""
  tokenizer = ByteTokenizer.load(tokenizer_path)
  streams = [JPEG.encode(open_image(p)) for p in builtin_photos()[:2]]
  prompts = [[tokenizer.bos_id, *tokenizer.encode(JPEG.prefix(s, r))]
             for s, r in zip(streams, (0.3, 0.6))]
  return JpegGrammar(JPEG), tokenizer, tokenizer_pieces(tokenizer), prompts


@pytest.fixture(scope="module")
def avc_case(tmp_path_factory):
  """(grammar, tokenizer, pieces, prompts): clips' parameter sets and first frame."""
  streams = [AVC.encode(v) for v in builtin_videos()]
  path = str(tmp_path_factory.mktemp("avc_tok") / "tokenizer.model")
  tokenizer = ByteTokenizer.train(streams, 320, path)
  prompts = [[tokenizer.bos_id, *tokenizer.encode(AVC.prefix(s, 1))] for s in streams[:2]]
  return AvcGrammar(AVC), tokenizer, tokenizer_pieces(tokenizer), prompts


def tokenizer_pieces(tokenizer) -> list[bytes]:
  return [tokenizer.piece_bytes(i) for i in range(tokenizer.vocab_size)]


@pytest.mark.parametrize("case", ["jpeg_case", "avc_case"])
def test_masks_are_the_pieces_advance_accepts_and_never_dead_end(case, request):
  grammar, tokenizer, pieces, prompts = request.getfixturevalue(case)
  rng = np.random.default_rng(0)
  checked = 0
  for prompt in prompts:
    state = grammar.advance(grammar.start(), b"".join(pieces[t] for t in prompt))
    for _ in range(120):  # a random walk over valid tokens
      if grammar.is_complete(state):
        break
      allowed = grammar.allowed(state, pieces)
      accepted = [bool(p) and grammar.advance(state, p) is not None for p in pieces]
      assert allowed.tolist() == accepted
      assert allowed.any()  # no dead end
      valid = np.flatnonzero(allowed)
      for t in rng.choice(valid, min(4, len(valid)), replace=False):  # and none one step on
        after = grammar.advance(state, pieces[t])
        assert grammar.is_complete(after) or grammar.allowed(after, pieces).any()
      state = grammar.advance(state, pieces[rng.choice(valid)])
      checked += 1
  assert checked > 100


def generators(case, settings: SamplingSettings, candidates=None):
  """(lazy, full) samplers of one tiny model with `case`'s grammar."""
  grammar, tokenizer, pieces, _ = case
  cfg, _, params = tiny_model(max_len=MAX_LEN)
  made = [Generator(params, cfg, tokenizer.eos_id, MAX_LEN, settings, grammar=grammar,
                    pieces=pieces, banned=(tokenizer.unk_id, tokenizer.bos_id),
                    lazy_masks=lazy, candidates=candidates) for lazy in (True, False)]
  assert made[0].lazy is not None and made[1].lazy is None
  return made


# (temperature, top-k, top-p), candidates M (None: the default; a few more than the top-k: a
# row falls back to the full mask when over 2 candidates are invalid). Lazy masks serve top-p
# only: without it the host draws (tests/test_host_draws.py).
# Two settings in the quick suite (the lazy path, and a forced fallback); the rest with
# `make test-slow` (~10 s each on 2 cores).
SETTINGS = [((1.0, 8, 0.9), None), ((1.0, 8, 0.9), 10),
            pytest.param((1.5, 20, 0.95), None, marks=pytest.mark.slow)]


@pytest.mark.parametrize("case", ["jpeg_case", "avc_case"])
@pytest.mark.parametrize("settings,candidates", SETTINGS)
def test_lazy_masks_sample_the_tokens_full_masks_sample(case, settings, candidates, request):
  case = request.getfixturevalue(case)
  lazy, full = generators(case, SamplingSettings(*settings), candidates)
  assert_same_tokens(lazy, full, case[3], new=48)
  assert lazy.lazy.lazy_rows > 0
  if candidates is not None:
    assert lazy.lazy.full_rows > 0


@pytest.mark.parametrize("case", ["jpeg_case", pytest.param("avc_case", marks=pytest.mark.slow)])
def test_continuous_batching_with_lazy_masks_equals_each_prompt_alone(case, request):
  case = request.getfixturevalue(case)
  lazy, full = generators(case, SamplingSettings(1.0, 8, 0.9))
  assert_continuous_equals_alone(lazy, full, case[3])
  assert lazy.lazy.lazy_rows > 0


def test_lazy_masks_only_where_the_draw_needs_few_tokens():
  assert valid_needed(0.0, 0, 320) == 1  # greedy: the best valid token
  assert valid_needed(1.0, 50, 320) == 50
  assert valid_needed(1.0, 0, 320) is None  # top-p alone needs every allowed token
  assert valid_needed(1.0, 320, 320) is None  # top-k of the whole vocabulary: none
