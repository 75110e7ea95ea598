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
import jax.numpy as jnp
import numpy as np

from jpeglm.sampling.next_token import NEG_INF

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
  scaled_BxV = jnp.where(base_allowed_V, logits_BxV.astype(jnp.float32), NEG_INF)
  if temperature > 0:
    scaled_BxV = scaled_BxV / temperature
  return jax.lax.top_k(scaled_BxV, m)


class LazyMasks:
  """Rows of the syntax-safe mask over the candidates only, full masks where needed."""

  def __init__(self, pieces: Sequence[bytes], eos_id: int, needed: int,
               base_allowed_V: np.ndarray):
    self.pieces = list(pieces)
    self.needed = needed
    self.usable = np.asarray(base_allowed_V, bool) & np.array([bool(p) for p in self.pieces])
    self.only_eos = np.zeros(len(self.pieces), bool)
    self.only_eos[eos_id] = True
    self.lazy_rows = 0  # rows masked over candidates only
    self.full_rows = 0  # rows that needed the full mask

  def masks(self, grammar, states: Sequence, done: Sequence[bool], values_BxM: np.ndarray,
            ids_BxM: np.ndarray) -> np.ndarray:
    """The [B, V] mask of every row (`states` of `grammar`; None for an empty slot): EOS
    alone for a row done, complete or empty."""
    allowed_BxV = np.zeros((len(states), len(self.pieces)), bool)
    for b, (state, d) in enumerate(zip(states, done)):
      if d or state is None or grammar.is_complete(state):
        allowed_BxV[b] = self.only_eos
      else:
        self.fill_row(allowed_BxV[b], grammar, state, values_BxM[b], ids_BxM[b])
    return allowed_BxV

  def fill_row(self, out_V: np.ndarray, grammar, state, values_M: np.ndarray,
               ids_M: np.ndarray) -> None:
    """Sets `out_V` (all False) to the row's mask."""
    pieces, usable, needed = self.pieces, self.usable, self.needed
    after = {b"": state}  # the state after each prefix of a checked piece (None: invalid)

    def advanced(piece: bytes):
      nxt = after.get(piece, after)
      if nxt is after:
        before = advanced(piece[:-1])
        nxt = after[piece] = None if before is None else grammar.advance(before, piece[-1:])
      return nxt

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
