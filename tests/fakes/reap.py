"""Runs a command as a child subreaper (Linux), so the detached processes it leaves (the fake
TPU workers' training runs) are reaped here rather than left as zombies, and any still
running `--grace` seconds after the command ends are killed. Exit status: the command's.

  python tests/fakes/reap.py [--grace S] CMD...
"""

import ctypes
import os
import signal
import subprocess
import sys
import time

PR_SET_CHILD_SUBREAPER = 36


def children() -> list[int]:
  me, found = os.getpid(), []
  for entry in os.listdir("/proc"):
    if entry.isdigit():
      try:
        stat = open(f"/proc/{entry}/stat").read()
      except OSError:
        continue
      if int(stat.rsplit(")", 1)[1].split()[1]) == me:
        found.append(int(entry))
  return found


def main() -> int:
  args = sys.argv[1:]
  grace = 5.0
  if args[:1] == ["--grace"]:
    grace, args = float(args[1]), args[2:]
  ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
  child = subprocess.Popen(args).pid
  code = None
  while code is None:  # reap everything, as init does, until the command itself ends
    pid, status = os.wait()
    if pid == child:
      code = os.waitstatus_to_exitcode(status)
  deadline = time.monotonic() + grace
  while True:
    try:
      while os.waitpid(-1, os.WNOHANG)[0]:
        pass
    except ChildProcessError:
      return code
    if time.monotonic() > deadline:
      for pid in children():
        os.kill(pid, signal.SIGKILL)
      deadline = float("inf")
    time.sleep(0.05)


if __name__ == "__main__":
  sys.exit(main())
