"""The one table of accelerator facts: every estimate, compile check and launcher reads it.

TPU figures are the Cloud TPU system-architecture pages' (read 2026-11): peak dense bf16
FLOP/s, HBM per device and its bandwidth, bidirectional ICI bandwidth per chip, DCN per chip
where published (v5p: 50 Gbps; v5e lists 2 x 100 Gbps NICs per 8-chip host, 25 Gbps per chip;
v4's and v6e's are not published and are taken as v5e's). The gcloud runtime (VM image) per
generation is Cloud TPU's "TPU software versions". GPU peaks are the vendors' data sheets
(dense bf16). GKE node labels (`cloud.google.com/gke-tpu-accelerator`,
`cloud.google.com/gke-accelerator`) and machine types are GKE's "Plan TPUs in GKE" and GPU
pages' (read 2026-12); launch/gke.sh reads them. Hosts per slice come from
compile_check.parse_topology.
"""

from __future__ import annotations

import dataclasses

GB = 1e9
GIB = 1024 ** 3


@dataclasses.dataclass(frozen=True)
class TpuGeneration:
  flops: float  # dense bf16 FLOP/s per chip
  hbm_bandwidth: float  # bytes/s per chip
  ici_bandwidth: float  # bytes/s, bidirectional, per chip
  dcn_bandwidth: float  # bytes/s per chip, across slices
  hbm_bytes: int  # per JAX device (one per chip: megacore on v4/v5p)
  jax_prefix: str  # jax.experimental.topologies name: "v5:4x4x2"
  chip_config: str  # "megacore" or "default"
  cores_per_unit: int  # TensorCores per unit of the Cloud name (v5p-8 = 4 chips)
  chips_per_host: int
  grid_dims: int  # 3-D torus (v4, v5p) or 2-D (v5e, v6e)
  runtime_version: str  # gcloud --version / --runtime-version for TPU VMs
  device_kinds: tuple[str, ...]  # jax.Device.device_kind prefixes
  gke_accelerator: str = ""  # GKE node label cloud.google.com/gke-tpu-accelerator


TPUS = {
    "v4": TpuGeneration(275e12, 1228 * GB, 300 * GB, 25e9 / 8, 32 * GIB, "v4", "megacore", 2,
                        4, 3, "tpu-ubuntu2204-base", ("TPU v4",),
                        gke_accelerator="tpu-v4-podslice"),
    "v5p": TpuGeneration(459e12, 2765 * GB, 1200 * GB, 50e9 / 8, 95 * GIB, "v5", "megacore", 2,
                         4, 3, "v2-alpha-tpuv5", ("TPU v5p", "TPU v5"),
                         gke_accelerator="tpu-v5p-slice"),
    "v5e": TpuGeneration(197e12, 819 * GB, 400 * GB, 25e9 / 8, 16 * GIB, "v5e", "default", 1,
                         4, 2, "v2-alpha-tpuv5-lite", ("TPU v5 lite", "TPU v5e"),
                         gke_accelerator="tpu-v5-lite-podslice"),
    "v6e": TpuGeneration(918e12, 1638 * GB, 800 * GB, 25e9 / 8, 32 * GIB, "v6e", "default", 1,
                         4, 2, "v2-alpha-tpuv6e", ("TPU v6 lite", "TPU v6e"),
                         gke_accelerator="tpu-v6e-slice"),
}
# Other spellings of a generation in Cloud names (v5litepod-16).
ALIASES = {"v5litepod": "v5e", "v6": "v6e", "v5": "v5p"}
# Kept under its old name: the estimates read a generation's speeds as CHIPS[gen].
CHIPS = TPUS

GPU_PEAK_FLOPS = {"NVIDIA H100": 989e12, "NVIDIA H200": 989e12, "NVIDIA A100": 312e12}
# HBM bandwidth, bytes/s, from the vendors' data sheets: H100 SXM 3.35 TB/s (PCIe 2 TB/s),
# H200 4.8 TB/s, A100 80GB SXM 2,039 GB/s. Decoding is bound by it (jpeglm.fit.decode_bound).
GPU_HBM_BANDWIDTH = {"NVIDIA H100 PCIe": 2.0e12, "NVIDIA H100": 3.35e12, "NVIDIA H200": 4.8e12,
                     "NVIDIA A100": 2.039e12}
# Short names for the command line (`--chip h100`).
GPU_SHORT_NAMES = {"h100": "NVIDIA H100", "h200": "NVIDIA H200", "a100": "NVIDIA A100"}


@dataclasses.dataclass(frozen=True)
class GpuNode:
  """A GKE GPU node pool's machine: its peak is GPU_PEAK_FLOPS[device_kind]."""
  device_kind: str  # jax.Device.device_kind prefix
  gpus: int  # GPUs per node
  machine_type: str
  gke_accelerator: str  # GKE node label cloud.google.com/gke-accelerator


# `launch/gke.sh --accelerator NAME` for GPU node pools (A3 and A2 Ultra machines).
GPU_NODES = {
    "h100-80gb": GpuNode("NVIDIA H100", 8, "a3-highgpu-8g", "nvidia-h100-80gb"),
    "h100-mega-80gb": GpuNode("NVIDIA H100", 8, "a3-megagpu-8g", "nvidia-h100-mega-80gb"),
    "h200-141gb": GpuNode("NVIDIA H200", 8, "a3-ultragpu-8g", "nvidia-h200-141gb"),
    "a100-80gb": GpuNode("NVIDIA A100", 8, "a2-ultragpu-8g", "nvidia-a100-80gb"),
}


def peak_flops(device_kind: str) -> float | None:
  """Peak dense bf16 FLOP/s of one device from its `device_kind`, or None where unknown
  (CPUs)."""
  peaks = dict(GPU_PEAK_FLOPS)
  for gen in TPUS.values():
    peaks.update({kind: gen.flops for kind in gen.device_kinds})
  return _by_longest_prefix(peaks, device_kind)


def _by_longest_prefix(table: dict[str, float], device_kind: str) -> float | None:
  """The value of the longest key `device_kind` starts with ("TPU v5 lite" before "TPU v5",
  "NVIDIA H100 PCIe" before "NVIDIA H100")."""
  for name in sorted(table, key=len, reverse=True):
    if device_kind.startswith(name):
      return table[name]
  return None


def hbm_bandwidth(chip: str) -> float | None:
  """HBM bytes/s of one device: `chip` is a `device_kind` ("NVIDIA H100 80GB HBM3"), a short
  GPU name ("h100") or a TPU generation ("v5p"); None where unknown (CPUs)."""
  chip = GPU_SHORT_NAMES.get(chip.lower(), chip)
  gen = ALIASES.get(chip, chip)
  if gen in TPUS:
    return TPUS[gen].hbm_bandwidth
  bandwidths = dict(GPU_HBM_BANDWIDTH)
  for tpu in TPUS.values():
    bandwidths.update({kind: tpu.hbm_bandwidth for kind in tpu.device_kinds})
  return _by_longest_prefix(bandwidths, chip)
