"""Running the launchers' commands: each printed (shell-quoted, one a line) before it runs;
a dry run prints and runs nothing."""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Sequence


class LaunchError(Exception):
  """A launch that cannot go on: one line for the user, exit status 2."""
  exit_code = 2


class WorkersFailed(LaunchError):
  """Training ran but some process failed or was lost: exit status 1."""
  exit_code = 1


class Runner:
  def __init__(self, dry_run: bool):
    self.dry_run = dry_run

  def note(self, text: str) -> None:
    print(f"# {text}", flush=True)

  def show(self, argv: Sequence[str]) -> None:
    print(shlex.join(argv), flush=True)

  def run(self, argv: Sequence[str], check: bool = True) -> int:
    """Runs with the terminal's stdout/stderr; raises LaunchError on failure if `check`."""
    self.show(argv)
    if self.dry_run:
      return 0
    code = subprocess.run(list(argv)).returncode
    if check and code:
      raise LaunchError(f"command failed ({code}): {shlex.join(argv)}")
    return code

  def run_all(self, commands: list[list[str]]) -> None:
    """`run` for several commands at once (one per TPU slice); raises LaunchError naming the
    ones that failed, after all have ended. One command runs as `run` does."""
    if len(commands) == 1:
      self.run(commands[0])
      return
    for argv in commands:
      self.show(argv)
    if self.dry_run:
      return
    procs = [subprocess.Popen(list(argv)) for argv in commands]
    failed = [(argv, code) for argv, p in zip(commands, procs) if (code := p.wait())]
    if failed:
      argv, code = failed[0]
      more = f" (and {len(failed) - 1} more of the {len(commands)})" if len(failed) > 1 else ""
      raise LaunchError(f"command failed ({code}): {shlex.join(argv)}{more}")

  def query(self, argv: Sequence[str], show: bool = True) -> subprocess.CompletedProcess:
    """Runs and captures the output (a describe, a status); the caller handles dry runs.
    `show=False` for polls whose command was printed once already."""
    if show:
      self.show(argv)
    return subprocess.run(list(argv), capture_output=True, text=True)

  def query_all(self, commands: list[list[str]]) -> list[subprocess.CompletedProcess]:
    """`query` for several commands at once (one per TPU worker)."""
    for argv in commands:
      self.show(argv)
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for argv in commands]
    results = []
    for argv, p in zip(commands, procs):
      out, err = p.communicate()
      results.append(subprocess.CompletedProcess(argv, p.returncode, out, err))
    return results
