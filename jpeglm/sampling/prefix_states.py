"""A row's grammar states after the tokens checked at one step, shared prefixes stepped once
(the syntax-safe samplers, `host_draws` and `lazy_masks`, check many tokens from one state)."""

from __future__ import annotations


class PrefixStates:
  """A row's grammar state after each token checked this step, prefixes shared: `after(piece)`
  is the state after `piece`, or None if it breaks the stream."""

  def __init__(self, grammar, state):
    self.step = grammar.step
    self.states = {b"": state}

  def after(self, piece: bytes):
    states = self.states
    nxt = states.get(piece, states)
    if nxt is states:
      before = self.after(piece[:-1])
      nxt = states[piece] = None if before is None else self.step(before, piece[-1])
    return nxt
