"""What the syntax-safe sampler asks of a codec's grammar (JPEG, H.264): a byte automaton.

A subclass gives `start()`, `step(state, byte)` (the state after one byte, or None when the
byte cannot continue a stream that decodes), `allowed(state, pieces)` (a mask over the
tokenizer's pieces) and `DONE`, the mode of a finished stream: states are tuples whose
first field is the mode.
"""

from __future__ import annotations


class ByteGrammar:
  DONE: object  # set by each subclass

  def is_complete(self, state) -> bool:
    """Whether the stream may end here."""
    return state is not None and state[0] == self.DONE

  def advance(self, state, data: bytes):
    """The state after `data`, or None if `data` cannot continue a valid stream."""
    for byte in data:
      if state is None:
        return None
      state = self.step(state, byte)
    return state
