"""Published per-chip figures of each TPU generation, for labelled estimates only.

Sources (Cloud TPU system-architecture pages, read 2026-11): peak dense bf16 FLOP/s, HBM
bandwidth, bidirectional ICI bandwidth per chip; DCN per chip where published (v5p: 50
Gbps). v5e lists 2 x 100 Gbps NICs per 8-chip host (25 Gbps per chip); v4's and v6e's DCN
per chip are not published and are taken as v5e's. ICI for v4: 2,400 Gbps per chip.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class ChipSpec:
  flops: float  # dense bf16 FLOP/s
  hbm_bandwidth: float  # bytes/s
  ici_bandwidth: float  # bytes/s, bidirectional, per chip
  dcn_bandwidth: float  # bytes/s per chip, across slices


GB = 1e9
CHIPS = {
    "v4": ChipSpec(275e12, 1228 * GB, 300 * GB, 25e9 / 8),
    "v5p": ChipSpec(459e12, 2765 * GB, 1200 * GB, 50e9 / 8),
    "v5e": ChipSpec(197e12, 819 * GB, 400 * GB, 25e9 / 8),
    "v6e": ChipSpec(918e12, 1638 * GB, 800 * GB, 25e9 / 8),
}
