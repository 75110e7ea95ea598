"""A syntax-safe sampling grammar that adds up the host seconds spent in it (benchmarks)."""

from __future__ import annotations

import time


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
