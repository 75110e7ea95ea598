"""A byte n-gram model of codec streams: the baseline that says how much a trained LM knows
beyond local statistics.

Interpolated Witten-Bell smoothing (each order backs off to the one below in proportion to
how many different bytes followed its context), down to a uniform 1/256. A stream starts from
a context of zero bytes; its bits are the model's surprise at each byte in turn, which
`stream_parts.byte_bits_by_part` shares out over the JPEG parts just as it does a
transformer's.
"""

from __future__ import annotations

import collections
import math

import numpy as np

BYTE_VALUES = 256


class ByteNgram:
  """Counts of every context of up to `order - 1` bytes and the bytes that followed."""

  def __init__(self, streams: list[bytes], order: int = 4):
    if order < 1:
      raise ValueError(f"n-gram order={order}: must be >= 1")
    self.order = order
    self.counts: dict[bytes, collections.Counter] = collections.defaultdict(collections.Counter)
    for stream in streams:
      for i, byte in enumerate(stream):
        for n in range(order):  # contexts of 0 .. order-1 preceding bytes
          if n > i:
            break
          self.counts[bytes(stream[i - n:i])][byte] += 1

  def probability(self, context: bytes, byte: int) -> float:
    p = 1.0 / BYTE_VALUES
    for n in range(0, min(self.order - 1, len(context)) + 1):
      seen = self.counts.get(context[len(context) - n:] if n else b"")
      if not seen:
        break  # a longer context unseen: longer ones are unseen too
      total, kinds = sum(seen.values()), len(seen)
      p = (seen[byte] + kinds * p) / (total + kinds)
    return p

  def bits(self, stream: bytes) -> np.ndarray:
    """The model's bits for each byte of `stream`."""
    return np.array([-math.log2(self.probability(bytes(stream[max(0, i - self.order + 1):i]), b))
                     for i, b in enumerate(stream)], np.float64)
