"""Syntax-safe draws made on the host: the token that the device's masked draw would pick,
found by asking the grammar about as few tokens as the draw allows.

`next_token.choose` samples with the Gumbel-max trick (`jax.random.categorical`): the token is
the argmax of the filtered logits plus Gumbel noise drawn from the token's key. Under a
grammar's mask with top-k, the filter keeps S, the valid tokens whose scaled logit reaches the
k-th highest valid one (ties included). So the device returns for each row (`draw_candidates`)
its highest scores (scaled logit + that same noise) with, for each, its rank (how many
tokens have a strictly higher scaled logit), and the M highest scaled logits with their
scores. The host (`HostDraws.pick`) walks the scores in descending order:
  - an invalid token is passed over;
  - a valid token of rank below k is in S whatever else is valid: it is the draw;
  - a valid token of higher rank may be out of S (as may every token when no score is
    valid): then S itself is worked out over the scaled-logit list (checking tokens in
    descending order until k are valid, and the ties of the k-th), and the draw is S's
    highest score.
With no top-k every valid token is in S, so the first valid score is the draw (a longer score
list, no scaled-logit list); greedy is that walk without noise: the first valid logit. A peaked
model's draw is usually its first or second score: one or two grammar checks instead of the
k valid tokens a mask over the candidates needs (`lazy_masks`). The walk gives up (None: the
caller then masks with the full mask) where the lists cannot settle the draw: S reaching past
the scaled-logit list, no valid score without top-k, or a tie of scores at the list's edge.
The token is the device's, bit for bit: tests compare it with full masks. Top-p needs every
token of S's probability, so it keeps `lazy_masks`.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jpeglm.sampling.keys import token_keys
from jpeglm.sampling.lazy_masks import MIN_CANDIDATES
from jpeglm.sampling.next_token import scaled_logits
from jpeglm.sampling.prefix_states import PrefixStates


def host_draws_apply(temperature: float, top_p: float) -> bool:
  """Whether the host can make the draw: any temperature and top-k, no top-p."""
  return temperature <= 0 or top_p >= 1


SCORE_CANDIDATES = 32  # with top-k: a peaked model's draw is among its first few scores
ONLY_SCORES = 128  # without top-k the scores alone settle a draw: the first valid one


def draw_list_sizes(needed: int | None, vocab: int,
                    candidates: int | None = None) -> tuple[int, int]:
  """(scores, m): the lengths of the score list and of the scaled-logit list, room for k
  valid tokens among invalid ones (`candidates`: m, or the scores without top-k). Without
  top-k the scaled-logit list is not read: length 1."""
  if needed is None:
    return min(vocab, candidates or ONLY_SCORES), 1
  # At least k: a rank below k is then a true one (the k highest logits are all listed).
  m = min(vocab, max(candidates or max(4 * needed, 2 * MIN_CANDIDATES), needed))
  return min(SCORE_CANDIDATES, m), m


def draw_candidates(logits_BxV: jax.Array, base_allowed_V: jax.Array, keys_B: jax.Array,
                    steps_B: jax.Array, temperature: float, scores: int,
                    m: int) -> tuple[jax.Array, jax.Array]:
  """Each row's candidates, as `choose_rows` would score them with keys (`keys_B`, `steps_B`),
  packed in two arrays (one transfer each; `unpack` names them): the `scores` highest scores
  (scaled logit + noise), their ids and ranks (tokens with a strictly higher scaled logit; m:
  m or more), and the m highest scaled logits with their ids and scores."""
  scaled_BxV = scaled_logits(logits_BxV, base_allowed_V, temperature)
  if temperature > 0:
    vocab = scaled_BxV.shape[-1]
    # The noise `jax.random.categorical` adds for a [1, V] row (`next_token.choose`).
    noise_BxV = jax.vmap(lambda key: jax.random.gumbel(key, (1, vocab), jnp.float32)[0])(
        token_keys(keys_B, steps_B))
    score_BxV = noise_BxV + scaled_BxV
  else:
    score_BxV = scaled_BxV
  score_values_BxS, score_ids_BxS = jax.lax.top_k(score_BxV, scores)
  logit_values_BxM, logit_ids_BxM = jax.lax.top_k(scaled_BxV, m)
  scaled_at_BxS = jnp.take_along_axis(scaled_BxV, score_ids_BxS, axis=-1)
  # A full compare, not a search in the list: below its last value every one of the m is
  # higher (rank m), and XLA:CPU sorts the vocabulary where a top_k is read at [:, -1:].
  rank_BxS = jnp.sum(logit_values_BxM[:, None, :] > scaled_at_BxS[:, :, None], axis=-1)
  logit_scores_BxM = jnp.take_along_axis(score_BxV, logit_ids_BxM, axis=-1)
  ints = jnp.concatenate([score_ids_BxS, rank_BxS.astype(jnp.int32), logit_ids_BxM], axis=-1)
  floats = jnp.concatenate([score_values_BxS, logit_values_BxM, logit_scores_BxM], axis=-1)
  return ints, floats


def unpack(ints_BxN: np.ndarray, floats_BxN: np.ndarray, m: int) -> dict:
  """`draw_candidates`' two arrays, on the host, as named views."""
  s = (ints_BxN.shape[1] - m) // 2  # the score list's length
  return dict(score_ids=ints_BxN[:, :s], rank=ints_BxN[:, s:2 * s],
              logit_ids=ints_BxN[:, 2 * s:], score_values=floats_BxN[:, :s],
              logit_values=floats_BxN[:, s:s + m], logit_scores=floats_BxN[:, s + m:])


class HostDraws:
  """Rows' syntax-safe draws from `draw_candidates`, made on the host where the candidates
  settle them."""

  def __init__(self, pieces: Sequence[bytes], needed: int | None, usable_V: np.ndarray):
    """`needed`: k of top-k, None without top-k or greedy. `usable_V`: the tokens that may be
    drawn at all (not banned, standing for bytes)."""
    self.pieces = list(pieces)
    self.needed = needed
    self.usable = np.asarray(usable_V, bool).tolist()
    self.host_rows = 0  # draws made here
    self.full_rows = 0  # draws left to the full mask

  def pick(self, grammar, state, cands: dict, b: int):
    """(token, the state after it) of row `b` of host-side `cands`, or None where the
    candidates cannot settle the draw."""
    row = PrefixStates(grammar, state)
    pieces, usable, k = self.pieces, self.usable, self.needed
    ids = cands["score_ids"][b].tolist()
    ranks = cands["rank"][b].tolist()
    for j, t in enumerate(ids):
      if not usable[t]:
        continue
      after = row.after(pieces[t])
      if after is None:
        continue
      if k is None or ranks[j] < k:
        return self._settled(t, after, cands["score_values"][b], j)
      return self._from_logits(row, cands, b)
    if k is not None:  # no valid score: S may still lie in the scaled-logit list
      return self._from_logits(row, cands, b)
    self.full_rows += 1
    return None

  def _settled(self, t: int, after, values_M: np.ndarray, j: int):
    """The draw is `t`, the j-th score, unless the next score ties with it (the device's
    argmax takes the lowest id) or is not in the list."""
    if j + 1 >= len(values_M) or values_M[j + 1] == values_M[j]:
      self.full_rows += 1
      return None
    self.host_rows += 1
    return t, after

  def _from_logits(self, row: PrefixStates, cands: dict, b: int):
    """S worked out over the scaled-logit list; the draw is its highest score."""
    pieces, usable, k = self.pieces, self.usable, self.needed
    values = cands["logit_values"][b].tolist()
    ids = cands["logit_ids"][b].tolist()
    scores = cands["logit_scores"][b].tolist()
    found, kth, best = 0, None, None
    for value, t, score in zip(values, ids, scores):
      if kth is not None and value < kth:
        break
      if not usable[t]:
        continue
      after = row.after(pieces[t])
      if after is None:
        continue
      found += 1
      if kth is None and found == k:
        kth = value
      if best is None or score > best[0] or (score == best[0] and t < best[1]):
        best = (score, t, after)
    else:  # the list ran out: S may reach past it
      self.full_rows += 1
      return None
    self.host_rows += 1
    return best[1], best[2]
