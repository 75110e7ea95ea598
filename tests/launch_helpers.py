"""Running the launchers in tests: shell scripts under launch/, with tests/fakes (gcloud,
srun, uv) first on PATH."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

from tests.train_helpers import REPO

LAUNCH = os.path.join(REPO, "launch")
FAKES = os.path.join(REPO, "tests", "fakes")
CONFIG_7B = "configs/jpeglm.py:size=7b"


def launch(script: str, *args: str, env: dict | None = None,
           timeout: float = 120) -> subprocess.CompletedProcess:
  """Runs launch/<script> (under tests/fakes/reap.py, which reaps and ends what it leaves)."""
  full = dict(os.environ, PYTHON=sys.executable, JAX_PLATFORMS="cpu",
              PATH=os.pathsep.join([FAKES, os.path.dirname(sys.executable),
                                    os.environ.get("PATH", "")]))
  full.update(env or {})
  argv = [sys.executable, os.path.join(FAKES, "reap.py"), os.path.join(LAUNCH, script), *args]
  return subprocess.run(argv, capture_output=True, text=True, cwd=REPO, env=full,
                        timeout=timeout)


def commands(stdout: str) -> list[list[str]]:
  """The printed commands, shell-split (comment lines and other output dropped)."""
  return [shlex.split(line) for line in stdout.splitlines()
          if line.startswith(("gcloud ", "git ", "srun ", "env ", "jpeglm "))]


def train_tail(argv: list[str]) -> list[str]:
  return argv[argv.index("train"):]
