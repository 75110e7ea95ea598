"""Checks shared by the syntax-safe samplers' tests (host draws, lazy masks): a sampler gives
the tokens that full masks give, in fixed batches and in continuous batching."""

from jpeglm.sampling.continuous import ContinuousBatcher


def assert_same_tokens(sampler, full, prompts, new: int, seed: int = 5) -> None:
  a = sampler.generate(prompts, seed=seed, max_new_tokens=new)
  b = full.generate(prompts, seed=seed, max_new_tokens=new)
  assert [g.tokens for g in a] == [g.tokens for g in b]
  assert sum(len(g.tokens) for g in a) > 40


def assert_continuous_equals_alone(sampler, full, prompts) -> None:
  """Each prompt twice through 2 slots, rows of different lengths, against each prompt alone
  through full masks."""
  prompts = prompts * 2
  limits = [30, 12, 20, 25]
  together = ContinuousBatcher(sampler, slots=2).generate(prompts, seed=2, max_new_tokens=limits)
  alone = [full.generate([p], seed=2, max_new_tokens=n, indices=[i])[0]
           for i, (p, n) in enumerate(zip(prompts, limits))]
  assert [g.tokens for g in together] == [g.tokens for g in alone]
