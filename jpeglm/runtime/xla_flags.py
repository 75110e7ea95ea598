"""XLA flags chosen on the command line: GPU command buffers (CUDA graphs) over the decode loop.

A decode step at batch 1 is launch-bound on a GPU (issue 28: ~30 small kernels a layer plus
every iteration of the while loop). XLA can record kernels into command buffers and replay
them with one launch; `--xla_gpu_enable_command_buffer` picks which kinds of commands it
records. Values (XLA's DebugOptions::CommandBufferCmdType, as jaxlib 0.10.2 parses them):
FUSION, CUBLAS, CUBLASLT, CUSTOM_CALL, CUDNN, COLLECTIVES, CONDITIONAL, WHILE,
DYNAMIC_SLICE_FUSION. A plain list replaces XLA's default set, "+X,-Y" edits it, and an empty
value turns command buffers off. CPU and TPU builds parse the flag and ignore it, so setting
it is harmless there; an unknown kind aborts the process when the backend starts.

XLA reads XLA_FLAGS once, when JAX starts its first backend: call `use_command_buffer` before
the first computation (importing jax is fine). Any command can do the same through the
environment: `XLA_FLAGS=--xla_gpu_enable_command_buffer=+WHILE,+CONDITIONAL jpeglm eval ...`.
"""

from __future__ import annotations

import os
import sys

from jpeglm.errors import JpeglmError

FLAG = "--xla_gpu_enable_command_buffer"
KINDS = ("FUSION", "CUBLAS", "CUBLASLT", "CUSTOM_CALL", "CUDNN", "COLLECTIVES", "CONDITIONAL",
         "WHILE", "DYNAMIC_SLICE_FUSION")
# Names for the command line: "loops" adds the decode loop itself (while + its conditions) to
# XLA's default kinds, so a whole `lax.while_loop` of decode steps can replay as one graph.
PRESETS = {"off": "", "loops": "+WHILE,+CONDITIONAL"}


def command_buffer_value(choice: str) -> str:
  """The flag's value for a preset name or a comma-separated list of kinds; checked here,
  since a bad value would abort the process later, when JAX starts its backend."""
  value = PRESETS.get(choice, choice)
  items = [item.strip() for item in value.split(",") if item.strip()]
  signed = [item[0] in "+-" for item in items]
  if any(signed) and not all(signed):
    raise JpeglmError(f"--xla-command-buffer {choice!r}: either every kind has a +/- sign "
                      "(edits XLA's default) or none has (replaces it)")
  unknown = [item.lstrip("+-") for item in items if item.lstrip("+-").upper() not in KINDS]
  if unknown:
    raise JpeglmError(f"--xla-command-buffer {choice!r}: unknown kind {unknown[0]!r}; choose "
                      f"from {', '.join(KINDS)}, or a preset: {', '.join(PRESETS)}")
  return ",".join(item.upper() for item in items)


def _backend_started() -> bool:
  bridge = sys.modules.get("jax._src.xla_bridge")
  return bool(getattr(bridge, "_backends", None))


def use_command_buffer(choice: str | None) -> str | None:
  """Adds the command-buffer flag to XLA_FLAGS (None: leaves XLA's default); returns the
  flag as set."""
  if choice is None:
    return None
  if _backend_started():
    raise JpeglmError("--xla-command-buffer must be set before JAX starts its backend")
  flag = f"{FLAG}={command_buffer_value(choice)}"
  os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""), flag]).strip()
  return flag
