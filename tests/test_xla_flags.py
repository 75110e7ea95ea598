"""The command-buffer flag: presets and kinds checked before XLA sees them, and harmless on
a CPU (XLA parses the GPU flag and ignores it)."""

import os
import subprocess
import sys

import pytest

from jpeglm.errors import JpeglmError
from jpeglm.runtime import xla_flags


def test_values_are_checked_before_xla_reads_them():
  assert xla_flags.command_buffer_value("loops") == "+WHILE,+CONDITIONAL"
  assert xla_flags.command_buffer_value("off") == ""
  assert xla_flags.command_buffer_value("fusion,cublas,while") == "FUSION,CUBLAS,WHILE"
  with pytest.raises(JpeglmError, match="unknown kind"):
    xla_flags.command_buffer_value("WHILE,GRAPHS")
  with pytest.raises(JpeglmError, match="sign"):
    xla_flags.command_buffer_value("+WHILE,FUSION")


def test_the_flag_is_harmless_on_cpu():
  """A fresh process (XLA reads its flags once) sets it the way `jpeglm sample` does."""
  code = ("from jpeglm.runtime import xla_flags; import os; "
          "print(xla_flags.use_command_buffer('loops')); "
          "import jax.numpy as jnp; print(float(jnp.arange(4.0).sum()), os.environ['XLA_FLAGS'])")
  env = {**os.environ, "XLA_FLAGS": ""}
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       cwd=os.path.dirname(os.path.dirname(__file__)), timeout=120)
  assert out.returncode == 0, out.stderr
  assert out.stdout.split() == ["--xla_gpu_enable_command_buffer=+WHILE,+CONDITIONAL", "6.0",
                                "--xla_gpu_enable_command_buffer=+WHILE,+CONDITIONAL"]
