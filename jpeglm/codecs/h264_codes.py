"""Reading H.264 syntax elements bit by bit, as paths through shared prefix trees.

Every element the grammar reads (exp-Golomb ue/se/te/me, fixed-length u(n), the CAVLC tables,
level_prefix + level_suffix) is a prefix code whose codewords are exactly the *valid* values
there: a value out of range has no path, and a prefix is kept only if some valid codeword lies
below it, so a reader never walks into a dead end. All codes share one node table, grown
lazily (an exp-Golomb code over 65,536 values costs only the nodes that are visited):
`ZERO[node]` / `ONE[node]` give the next node (> 0), a leaf (< 0, see `leaf_value`), DEAD (0),
or None where not expanded yet (`Codes.child` expands it).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable

from jpeglm.codecs.h264_bitstream import se_value

DEAD = 0
_PREFIX = object()


class CodeNums:
  """A set of exp-Golomb codeNums as a union of arithmetic progressions (start, last, step)."""

  def __init__(self, progressions: Iterable[tuple[int, int, int]]):
    self.progressions = tuple((a, b, s) for a, b, s in progressions if a <= b)

  def intersects(self, lo: int, hi: int) -> bool:
    for start, last, step in self.progressions:
      first = start if start >= lo else start + -(-(lo - start) // step) * step
      if first <= min(last, hi):
        return True
    return False


def ue_range(lo: int, hi: int, exclude: int | None = None) -> CodeNums:
  if exclude is None or not lo <= exclude <= hi:
    return CodeNums([(lo, hi, 1)])
  return CodeNums([(lo, exclude - 1, 1), (exclude + 1, hi, 1)])


def ue_values(values: Iterable[int]) -> CodeNums:
  return CodeNums([(v, v, 1) for v in sorted(set(values))])


def se_range(lo: int, hi: int) -> CodeNums:
  """codeNums of se(v) values lo..hi: k = 2v - 1 for v > 0, k = -2v for v <= 0."""
  return CodeNums([(2 * max(lo, 1) - 1, 2 * hi - 1, 2), (-2 * min(hi, 0), -2 * lo, 2)])


class GolombCode:
  """ue(v)-style code (leading zeros, a 1, as many info bits) over `nums`; leaves decode
  through `decode` (identity for ue, `se_value` for se, a table for me)."""

  def __init__(self, nums: CodeNums, decode: Callable[[int], Hashable] = int):
    self.nums, self.decode = nums, decode

  def classify(self, bits: str):
    zeros = bits.find("1")
    if zeros < 0:  # still in the leading zeros: codeNums >= 2^n - 1 remain
      return _PREFIX if len(bits) < 32 and self.nums.intersects((1 << len(bits)) - 1, 1 << 40) \
          else DEAD
    info = bits[zeros + 1:]
    missing = zeros - len(info)
    base = (1 << zeros) - 1 + ((int(info, 2) if info else 0) << missing)
    if not self.nums.intersects(base, base + (1 << missing) - 1):
      return DEAD
    return _PREFIX if missing else ("leaf", self.decode(base))


def se_code(nums: CodeNums) -> GolombCode:
  """se(v) over codeNums `nums` (`se_range`), its leaves decoded to signed values."""
  return GolombCode(nums, se_value)


class WordCode:
  """A finite prefix code given as {codeword: value}."""

  def __init__(self, words: dict[str, Hashable]):
    self.words = dict(words)
    self.prefixes = {w[:n] for w in self.words for n in range(len(w))}

  def classify(self, bits: str):
    if bits in self.words:
      return ("leaf", self.words[bits])
    return _PREFIX if bits in self.prefixes else DEAD


def fixed_words(n: int, values: Iterable[int]) -> WordCode:
  """u(n) restricted to `values`."""
  return WordCode({format(v, f"0{n}b"): v for v in values})


def te_code(top: int):
  """te(v) with range `top` >= 1 (7.4.5.1 ref_idx): one inverted bit when top == 1."""
  values = range(top + 1)
  if top == 1:
    return WordCode({"1" if v == 0 else "0": v for v in values})
  return GolombCode(ue_values(values))


class LevelCode:
  """level_prefix (<= 15, as baseline profile requires) then level_suffix, for one
  suffixLength (9.2.2.1); the leaf is levelCode before the first-coefficient adjustment."""

  def __init__(self, suffix_length: int):
    self.suffix_length = suffix_length

  def classify(self, bits: str):
    prefix = bits.find("1")
    if prefix < 0:
      return _PREFIX if len(bits) < 16 else DEAD
    length = self.suffix_length
    size = 4 if prefix == 14 and length == 0 else prefix - 3 if prefix >= 15 else length
    suffix = bits[prefix + 1:]
    if len(suffix) < size:
      return _PREFIX
    code = (min(15, prefix) << length) + (int(suffix, 2) if suffix else 0)
    if prefix >= 15 and length == 0:
      code += 15
    return ("leaf", code)


class Codes:
  """The shared node table. `root(key, make)` gives the root node of the code `make()` builds,
  once per key; `child(node, bit)` expands a node's child the first time it is needed."""

  def __init__(self):
    self.zero: list = [DEAD]
    self.one: list = [DEAD]
    self._where: list = [None]  # node -> (code, bits so far)
    self._leaves: list = []
    self._leaf_ids: dict = {}
    self._roots: dict = {}

  def root(self, key: Hashable, make: Callable[[], object]) -> int:
    node = self._roots.get(key)
    if node is None:
      node = self._roots[key] = self._new_node(make(), "")
    return node

  def leaf_value(self, node: int):
    return self._leaves[-node - 1]

  def child(self, node: int, bit: int) -> int:
    table = self.one if bit else self.zero
    nxt = table[node]
    if nxt is None:
      code, bits = self._where[node]
      bits += "1" if bit else "0"
      kind = code.classify(bits)
      if kind is DEAD:
        nxt = DEAD
      elif kind is _PREFIX:
        nxt = self._new_node(code, bits)
      else:
        nxt = self._leaf(kind[1])
      table[node] = nxt
    return nxt

  def _new_node(self, code, bits: str) -> int:
    self.zero.append(None)
    self.one.append(None)
    self._where.append((code, bits))
    return len(self.zero) - 1

  def _leaf(self, value) -> int:
    leaf = self._leaf_ids.get(value)
    if leaf is None:
      self._leaves.append(value)
      leaf = self._leaf_ids[value] = -len(self._leaves)
    return leaf
