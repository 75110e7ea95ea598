"""Skipping bad media without stopping a run: count, log the first few, fail past a fraction.

A Grain IterDataset stage after encoding. Its counters are part of the iterator state, so
they survive checkpoints and can be read from the main process even when the work happens
in Grain worker processes (`count_bad_inputs`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import grain

from jpeglm.errors import JpeglmError

log = logging.getLogger("jpeglm.data")
LOGGED_PER_PROCESS = 5
# A fraction measured on too few files says little; wait for this many (or the whole source).
MIN_ITEMS_BEFORE_CHECK = 50
SEEN_KEY, BAD_KEY, IN_A_ROW_KEY = "inputs_seen", "inputs_skipped", "inputs_skipped_in_a_row"


class BadInputsError(JpeglmError):
  """Too large a fraction of the source could not be encoded."""


class _SkipBadInputsIterator(grain.DatasetIterator):

  def __init__(self, parent: grain.DatasetIterator, max_bad_fraction: float, min_items: int,
               source_size: int):
    super().__init__(parent)
    self._max_bad_fraction = max_bad_fraction
    self._min_items = min_items
    self._source_size = source_size
    self._seen = 0
    self._bad = 0
    self._bad_in_a_row = 0

  def __next__(self) -> dict:
    while True:
      element = next(self._parent)
      self._seen += 1
      if "error" not in element:
        self._bad_in_a_row = 0
        return element
      self._bad += 1
      self._bad_in_a_row += 1
      if self._bad <= LOGGED_PER_PROCESS:
        log.warning("skipping bad input (%d so far): %s", self._bad, element["error"])
      self._check_fraction(element["error"])

  def _check_fraction(self, last_error: str) -> None:
    # A whole pass without one good input would go round forever (max_bad_fraction=1.0).
    if self._bad_in_a_row >= self._source_size:
      raise BadInputsError(f"none of the {self._source_size} inputs of this process's shard "
                           f"could be encoded; last: {last_error}")
    if self._seen < self._min_items:
      return
    if self._bad > self._max_bad_fraction * self._seen:
      raise BadInputsError(
          f"{self._bad} of {self._seen} inputs could not be encoded, more than "
          f"data.max_bad_fraction={self._max_bad_fraction}; last: {last_error}")

  def get_state(self) -> dict[str, Any]:
    return {"parent": self._parent.get_state(), SEEN_KEY: self._seen, BAD_KEY: self._bad,
            IN_A_ROW_KEY: self._bad_in_a_row}

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(state["parent"])
    self._seen = int(state[SEEN_KEY])
    self._bad = int(state[BAD_KEY])
    self._bad_in_a_row = int(state.get(IN_A_ROW_KEY, 0))  # absent in older checkpoints


class SkipBadInputs(grain.IterDataset):
  """Drops `{"error": ...}` elements; raises BadInputsError past `max_bad_fraction`, or after
  a whole pass over the source (`source_size` inputs) without one good input."""

  def __init__(self, parent: grain.IterDataset, max_bad_fraction: float, source_size: int):
    super().__init__(parent)
    self._max_bad_fraction = max_bad_fraction
    self._source_size = max(1, source_size)
    self._min_items = min(MIN_ITEMS_BEFORE_CHECK, self._source_size)

  def __iter__(self) -> _SkipBadInputsIterator:
    return _SkipBadInputsIterator(self._parent.__iter__(), self._max_bad_fraction,
                                  self._min_items, self._source_size)


def count_bad_inputs(state: Any) -> tuple[int, int]:
  """(inputs seen, inputs skipped) summed over every SkipBadInputs stage inside an iterator
  state, including those of Grain worker processes."""
  seen = bad = 0
  if isinstance(state, Mapping):
    if SEEN_KEY in state:
      seen, bad = int(state[SEEN_KEY]), int(state[BAD_KEY])
    for value in state.values():
      s, b = count_bad_inputs(value)
      seen, bad = seen + s, bad + b
  elif isinstance(state, (list, tuple)):
    for value in state:
      s, b = count_bad_inputs(value)
      seen, bad = seen + s, bad + b
  return seen, bad
