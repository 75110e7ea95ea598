"""Sharded safetensors in Hugging Face's layout: write tensor by tensor, read by name.

Writing: the shard of every tensor is planned from the shapes alone, before any weight is
read; tensors then arrive one by one and a shard is written (and its buffer dropped) as
soon as the next tensor belongs to the next shard. Memory: one shard's tensors at most.
`safetensors.torch.save_file` writes straight from the tensors' buffers (no second copy).
One shard is `model.safetensors`; more are `model-0000k-of-0000n.safetensors` with
`model.safetensors.index.json` mapping each name to its file, as transformers expects.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable

import numpy as np

from jpeglm.errors import JpeglmError
from jpeglm.runtime import files

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
DEFAULT_SHARD_BYTES = 4 * 1024**3
TORCH_DTYPES = ("float32", "bfloat16")


def plan_shards(tensors: Iterable[tuple[str, int]], max_bytes: int) -> dict[str, int]:
  """name -> shard index, filling shards in order; a tensor larger than max_bytes gets
  a shard of its own."""
  plan, shard, used = {}, 0, 0
  for name, nbytes in tensors:
    if used and used + nbytes > max_bytes:
      shard, used = shard + 1, 0
    plan[name] = shard
    used += nbytes
  return plan


def shard_file(index: int, count: int) -> str:
  return SINGLE if count == 1 else f"model-{index + 1:05d}-of-{count:05d}.safetensors"


class ShardWriter:
  """`add(name, array)` in plan order, then `close()`; arrays are cast to `dtype`."""

  def __init__(self, out_dir: str, plan: dict[str, int], dtype: str):
    import torch  # the export extra
    if dtype not in TORCH_DTYPES:
      raise JpeglmError(f"--dtype {dtype!r}: choose one of {TORCH_DTYPES}")
    self._torch = torch
    self._dtype = getattr(torch, dtype)
    self.out_dir = out_dir
    self.plan = plan
    self.count = max(plan.values()) + 1
    self._shard = 0
    self._buffer: dict = {}
    self._added: set[str] = set()
    self._total = 0

  def add(self, name: str, array: np.ndarray) -> None:
    shard = self.plan[name]
    if shard != self._shard:
      self._flush()
      self._shard = shard
    tensor = self._torch.from_numpy(np.asarray(array, np.float32)).to(self._dtype).contiguous()
    self._total += tensor.numel() * tensor.element_size()
    self._buffer[name] = tensor
    self._added.add(name)

  def _flush(self) -> None:
    from safetensors.torch import save_file
    if self._buffer:
      save_file(self._buffer, os.path.join(self.out_dir, shard_file(self._shard, self.count)),
                metadata={"format": "pt"})
    self._buffer = {}

  def close(self) -> None:
    self._flush()
    for name in os.listdir(self.out_dir):  # readable like the json files (safetensors: 0600)
      if name.endswith(".safetensors"):
        os.chmod(os.path.join(self.out_dir, name), 0o644)
    missing = set(self.plan) - self._added
    if missing:
      raise JpeglmError(f"export wrote no {sorted(missing)[0]}")
    if self.count > 1:
      index = {"metadata": {"total_size": self._total},
               "weight_map": {n: shard_file(s, self.count) for n, s in self.plan.items()}}
      with open(os.path.join(self.out_dir, INDEX), "w") as f:
        json.dump(index, f, indent=2)


class HfWeights:
  """Reads tensors by name from an HF folder (one file or sharded with an index)."""

  def __init__(self, hf_dir: str):
    index_path = os.path.join(hf_dir, INDEX)
    if os.path.exists(index_path):
      weight_map = files.read_json(index_path).get("weight_map")
      if not isinstance(weight_map, dict):
        raise JpeglmError(f"{index_path} is damaged: it has no weight_map")
      shard_files = sorted(set(map(str, weight_map.values())))
    elif os.path.exists(os.path.join(hf_dir, SINGLE)):
      shard_files = [SINGLE]
    else:
      raise JpeglmError(f"{hf_dir} has no {SINGLE} or {INDEX} (only safetensors weights are "
                        "read; convert .bin files with transformers first)")
    self.files = {}  # name -> file, from the files' own headers (an index may be stale)
    for name in shard_files:
      path = os.path.join(hf_dir, name)
      if not os.path.exists(path):
        raise JpeglmError(f"{hf_dir}: {name}, listed in {INDEX}, is missing")
      with _open_safetensors(path) as f:
        self.files.update({key: name for key in f.keys()})
    self.hf_dir = hf_dir

  def names(self) -> set[str]:
    return set(self.files)

  def get(self, name: str) -> np.ndarray:
    """One tensor as float32 numpy (bfloat16 and float16 widen exactly)."""
    if name not in self.files:
      raise JpeglmError(f"{self.hf_dir} has no tensor {name}")
    path = os.path.join(self.hf_dir, self.files[name])
    with _open_safetensors(path) as f:
      try:
        return f.get_tensor(name).float().numpy()
      except Exception as e:  # noqa: BLE001 - safetensors' own error types
        raise JpeglmError(f"{path}: tensor {name} cannot be read: "
                          f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def _open_safetensors(path: str):
  """safe_open with a one-line error naming the file (a truncated download, say)."""
  from safetensors import safe_open
  try:
    return safe_open(path, framework="pt")
  except Exception as e:  # noqa: BLE001 - SafetensorError, OSError, ...
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise JpeglmError(f"{path} is not a readable safetensors file ({reason}): a truncated "
                      "or damaged download?") from None
