"""Bytes moved by the collectives of a compiled program, read from its HLO text.

Each collective's result size stands for its traffic per device (an all-gather's result is
what the device receives; an all-reduce moves about twice its size in a ring). Async pairs
are counted once, at their `-start`.
"""

from __future__ import annotations

import re

import numpy as np

KINDS = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")
_OP = re.compile(r"=\s*(.*?)\s(" + "|".join(KINDS) + r")(-start)?\(")
_SHAPE = re.compile(r"\b(pred|s8|u8|s16|u16|s32|u32|s64|u64|f16|bf16|f32|f64)\[([\d,]*)\]")
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
          "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8}


def collective_bytes(hlo_text: str) -> dict[str, float]:
  """{kind: bytes} summed over the program's collectives (per device)."""
  out = dict.fromkeys(KINDS, 0.0)
  for line in hlo_text.splitlines():
    m = _OP.search(line)
    if not m:
      continue
    result_type, kind = m.group(1), m.group(2)
    shapes = _SHAPE.findall(result_type)
    if m.group(3) and len(shapes) > 1:  # async start: (operand, result, ...): keep the result
      shapes = shapes[1:2]
    out[kind] += sum(_BYTES[t] * float(np.prod([int(d) for d in dims.split(",") if d]))
                     for t, dims in shapes)
  return out


def ici_seconds(by_kind: dict[str, float], bandwidth: float) -> float:
  """Time for the traffic at a chip's ICI bandwidth (an all-reduce moves its size twice)."""
  return sum(b * (2.0 if k == "all-reduce" else 1.0) for k, b in by_kind.items()) / bandwidth
