"""Host seconds of syntax-safe sampling (benchmarks): `host_timer(generator)` adds them up in
its `.seconds`.

With host draws (`Generator.draws`) it times each step's host part, `Generator._drawn_tokens`
from the moment the step's candidates are on the host (the draws, the grammar checks, any
full-mask fallback); wrapping the grammar instead would add a Python call to each of its
many small checks. Otherwise it times the grammar's own calls (masks, advancing).
"""

from __future__ import annotations

import time

import jax


class TimedGrammar:

  def __init__(self, grammar):
    self.grammar, self.seconds = grammar, 0.0

  def __getattr__(self, name):
    method = getattr(self.grammar, name)

    def timed(*args):
      started = time.perf_counter()
      try:
        return method(*args)
      finally:
        self.seconds += time.perf_counter() - started
    return timed


class TimedHostSteps:

  def __init__(self, generator):
    self.seconds = 0.0
    inner = generator._drawn_tokens

    def timed(states, done, cands, *rest):
      jax.block_until_ready(cands)  # the device's part is not the host's
      started = time.perf_counter()
      try:
        return inner(states, done, cands, *rest)
      finally:
        self.seconds += time.perf_counter() - started
    generator._drawn_tokens = timed


def host_timer(generator):
  """A timer of `generator`'s host work, installed on it."""
  if generator.draws is not None:
    return TimedHostSteps(generator)
  generator.grammar = TimedGrammar(generator.grammar)
  return generator.grammar
