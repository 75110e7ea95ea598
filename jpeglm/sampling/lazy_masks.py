"""Syntax-safe masks worked out lazily: only over the tokens the sampling filters can keep.

`Generator` uses them with top-p; without it, `host_draws` makes the draw itself with fewer
grammar checks.

With top-k, a draw only looks at the k highest-logit tokens that the grammar allows (top-p
and temperature then act on those alone; greedy looks at the highest one). So the device
returns each row's M highest logits, scaled as `next_token.filter_logits` scales them
(`top_candidates`), and the host asks the grammar about them in descending order,
`grammar.advance(state, piece) is not None`, until it has the k valid ones and every token that
ties with the k-th. The mask then holds just those; `choose` with it gives bit for bit what it
gives with the full mask `grammar.allowed(state, pieces)` (the filtered logits are the same:
k kept tokens, every other one -inf), with the same keys, so samples do not change.

A full mask is still worked out (as before) for a row whose M candidates hold fewer than the
tokens needed, or whose k-th valid token ties with the last candidate (a tie may hide beyond
it), and for every row when the settings use no top-k and are not greedy: top-p alone needs
every allowed token's probability. A row gives up on its candidates as soon as too few are
left to reach k; candidates that share a prefix step the grammar through it once.

The grammars never dead-end (a state `advance` returns always has a valid continuation: the
codecs' bits can always be finished), so "valid" needs only one `advance` per candidate.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np

from jpeglm.sampling.next_token import scaled_logits
from jpeglm.sampling.prefix_states import PrefixStates

MIN_CANDIDATES = 64


def valid_needed(temperature: float, top_k: int, vocab: int) -> int | None:
  """Valid tokens a row's draw looks at: 1 when greedy, top_k with top-k, else None (all)."""
  if temperature <= 0:
    return 1
  if 0 < top_k < vocab:
    return top_k
  return None


def candidate_count(needed: int, vocab: int) -> int:
  """M, the candidates the device returns per row: room for invalid ones among them."""
  return min(vocab, max(2 * needed, MIN_CANDIDATES))


def top_candidates(logits_BxV: jax.Array, base_allowed_V: jax.Array, temperature: float,
                   m: int) -> tuple[jax.Array, jax.Array]:
  """(values [B, M] descending, token ids [B, M]): the M highest logits of each row as
  `filter_logits` sees them (banned tokens at -inf, divided by the temperature)."""
  return jax.lax.top_k(scaled_logits(logits_BxV, base_allowed_V, temperature), m)


class LazyMasks:
  """Rows of the syntax-safe mask over the candidates only, full masks where needed."""

  def __init__(self, pieces: Sequence[bytes], needed: int, usable_V: np.ndarray):
    """`usable_V`: the tokens that may be drawn at all (not banned, standing for bytes)."""
    self.pieces = list(pieces)
    self.needed = needed
    self.usable = np.asarray(usable_V, bool)
    self.lazy_rows = 0  # rows masked over candidates only
    self.full_rows = 0  # rows that needed the full mask

  def fill_row(self, out_V: np.ndarray, grammar, state, values_M: np.ndarray,
               ids_M: np.ndarray) -> None:
    """Sets `out_V` (all False) to the row's mask."""
    pieces, usable, needed = self.pieces, self.usable, self.needed
    advanced = PrefixStates(grammar, state).after  # candidates that share a prefix share it

    found, kth, left = 0, None, len(ids_M)
    for value, t in zip(values_M.tolist(), ids_M.tolist()):
      if kth is not None and value < kth:
        self.lazy_rows += 1
        return
      left -= 1
      if usable[t] and advanced(pieces[t]) is not None:
        out_V[t] = True
        found += 1
        if found == needed:
          kth = value
      elif kth is None and found + left < needed:
        break  # too few valid candidates: the full mask
    else:
      if kth is not None and kth > values_M[-1]:  # nothing beyond the candidates reaches kth
        self.lazy_rows += 1
        return
    self.full_rows += 1
    out_V[:] = grammar.allowed(state, pieces)
