"""Host draws (jpeglm.sampling.host_draws): the token the device's masked draw would pick,
made on the host from each row's candidates. Bit for bit the tokens full masks give, for JPEG
and H.264, greedy, with and without top-k, with and without falling back to full masks."""

import numpy as np
import pytest

from jpeglm.sampling.generate import Generator, SamplingSettings
from jpeglm.sampling.host_draws import HostDraws, draw_list_sizes, host_draws_apply
from jpeglm.sampling.prefix_states import PrefixStates
from tests.sampler_checks import assert_continuous_equals_alone, assert_same_tokens
from tests.test_lazy_masks import MAX_LEN, avc_case, jpeg_case  # noqa: F401 (fixtures)
from tests.test_sampling import tiny_model


def generators(case, settings: SamplingSettings, candidates=None):
  """(host draws, full masks) samplers of one tiny model with `case`'s grammar."""
  grammar, tokenizer, pieces, _ = case
  cfg, _, params = tiny_model(max_len=MAX_LEN)
  made = [Generator(params, cfg, tokenizer.eos_id, MAX_LEN, settings, grammar=grammar,
                    pieces=pieces, banned=(tokenizer.unk_id, tokenizer.bos_id),
                    lazy_masks=drawn, candidates=candidates) for drawn in (True, False)]
  assert made[0].draws is not None and made[1].draws is None
  return made


SLOW = pytest.mark.slow  # ~4 s each on 2 cores: `make test-slow`
# case, (temperature, top-k, top-p), candidates (None: the default; 12 with top-k 8: S often
# reaches past the list, and those rows fall back to the full mask)
SETTINGS = [("jpeg_case", (1.0, 8, 1.0), None), ("avc_case", (1.0, 8, 1.0), None),
            ("avc_case", (1.0, 8, 1.0), 12), ("jpeg_case", (1.3, 0, 1.0), None),
            pytest.param("jpeg_case", (1.0, 8, 1.0), 12, marks=SLOW),
            pytest.param("avc_case", (1.3, 0, 1.0), None, marks=SLOW),
            pytest.param("jpeg_case", (0.0, 0, 1.0), None, marks=SLOW),
            pytest.param("avc_case", (0.0, 0, 1.0), None, marks=SLOW)]


@pytest.mark.parametrize("case,settings,candidates", SETTINGS)
def test_host_draws_sample_the_tokens_full_masks_sample(case, settings, candidates, request):
  case = request.getfixturevalue(case)
  drawn, full = generators(case, SamplingSettings(*settings), candidates)
  assert_same_tokens(drawn, full, case[3], new=40)
  assert drawn.draws.host_rows > 0
  if candidates is not None:
    assert drawn.draws.full_rows > 0


@pytest.mark.parametrize("case", ["jpeg_case", pytest.param("avc_case", marks=pytest.mark.slow)])
def test_continuous_batching_with_host_draws_equals_each_prompt_alone(case, request):
  case = request.getfixturevalue(case)
  drawn, full = generators(case, SamplingSettings(1.0, 8, 1.0))
  assert_continuous_equals_alone(drawn, full, case[3])
  assert drawn.draws.host_rows > 0


def test_the_logit_list_holds_the_top_k_whatever_the_candidates_asked():
  assert draw_list_sizes(50, 1024) == (32, 200)
  assert draw_list_sizes(50, 1024, candidates=10) == (32, 50)  # ranks below k stay true
  assert draw_list_sizes(None, 1024) == (128, 1)  # no top-k: the scores alone


def test_host_draws_only_without_top_p():
  assert host_draws_apply(1.0, 1.0) and host_draws_apply(0.0, 0.5)
  assert not host_draws_apply(1.0, 0.9)  # top-p needs every kept token's probability


def fake_cands(score_ids, scores, ranks, logit_ids, logit_values, logit_scores):
  return {name: np.array([v]) for name, v in dict(
      score_ids=score_ids, score_values=scores, rank=ranks, logit_ids=logit_ids,
      logit_values=logit_values, logit_scores=logit_scores).items()}


class EvenBytes:
  """A toy grammar: any even byte is valid; the state counts bytes."""
  def step(self, state, byte):
    return None if byte % 2 else state + 1


PIECES = [bytes([i]) for i in range(8)]


def test_a_valid_token_of_low_rank_is_the_draw_at_once():
  draws = HostDraws(PIECES, 2, np.ones(8, bool))
  # scores: 1 (invalid), then 4 (valid, rank 1 < k=2): the draw; the logit list is not read
  cands = fake_cands([1, 4, 2, 6], [9.0, 8.0, 7.0, 6.0], [0, 1, 2, 3], [0] * 4, [0.0] * 4,
                     [0.0] * 4)
  assert draws.pick(EvenBytes(), 0, cands, 0) == (4, 1)


def test_a_valid_token_that_may_be_out_of_top_k_settles_over_the_logit_list():
  draws = HostDraws(PIECES, 2, np.ones(8, bool))
  # token 6 scores highest but 3 tokens have higher logits: S = {0, 2} (the 2 best valid
  # logits), and of those token 2 scores higher
  cands = fake_cands([6, 2, 0, 1], [9.0, 8.0, 7.0, 6.0], [3, 1, 0, 2],
                     [0, 1, 2, 6, 3], [5.0, 4.0, 3.0, 2.0, 1.0], [7.0, 6.0, 8.0, 9.0, 0.0])
  assert draws.pick(EvenBytes(), 0, cands, 0) == (2, 1)
  # the list ends before S does (its k-th valid ties the last value): the full mask
  cands = fake_cands([6, 2], [9.0, 8.0], [2, 1], [0, 1, 2], [5.0, 4.0, 3.0],
                     [7.0, 6.0, 8.0])
  assert draws.pick(EvenBytes(), 0, cands, 0) is None
  assert (draws.host_rows, draws.full_rows) == (1, 1)


def test_a_tie_with_the_next_score_goes_to_the_full_mask():
  draws = HostDraws(PIECES, None, np.ones(8, bool))
  cands = fake_cands([4, 2, 6], [9.0, 9.0, 1.0], [0, 0, 0], [0] * 3, [0.0] * 3, [0.0] * 3)
  assert draws.pick(EvenBytes(), 0, cands, 0) is None


def test_prefix_states_step_shared_prefixes_once():
  class Counting(EvenBytes):
    calls = 0
    def step(self, state, byte):
      self.calls += 1
      return super().step(state, byte)
  grammar = Counting()
  row = PrefixStates(grammar, 0)
  assert row.after(b"\x02\x04\x06") == 3
  assert row.after(b"\x02\x04") == 2 and row.after(b"\x02\x05") is None
  assert grammar.calls == 4
