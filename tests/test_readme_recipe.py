"""The README's "Train on your own images" recipe, run as a user would: its commands, read
from the README itself, on a folder of real photos, with overrides that make it small."""

import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

from data_pipeline.media_files import builtin_photos
from tests.train_helpers import REPO, env_with_devices, tiny_overrides

# The recipe ends with `jpeglm export --verify` (torch); four CLI runs, ~55 s: `make test-slow`.
pytestmark = [pytest.mark.export, pytest.mark.slow]

SMALL = {"train.steps": 4, "train.checkpoint_every": 2}


def recipe_commands() -> list[str]:
  with open(os.path.join(REPO, "README.md")) as f:
    text = f.read()
  section = text.split("## Train on your own images", 1)[1].split("\n## ", 1)[0]
  block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
  return [" ".join(line.strip() for line in command.split("\\\n"))
          for command in re.split(r"\n(?=jpeglm )", block.strip())]


def test_readme_recipe_runs_as_written(tmp_path, tokenizer_path):
  photos = tmp_path / "my_photos"
  photos.mkdir()
  for i, path in enumerate(builtin_photos()[:12]):
    shutil.copy(path, photos / f"{i:02d}{os.path.splitext(path)[1]}")
  shutil.copy(builtin_photos()[5], photos / "cat.jpg")
  os.symlink(os.path.join(REPO, "configs"), tmp_path / "configs")  # run from a checkout
  commands = recipe_commands()
  assert [c.split()[1] for c in commands] == ["train", "sample", "sample", "export"]
  for command in commands:
    args = shlex.split(command)
    assert args[0] == "jpeglm"
    args = [sys.executable, "-m", "jpeglm", *args[1:]]
    if args[3] == "train":
      args += tiny_overrides(tokenizer_path, **SMALL)
    result = subprocess.run(args, cwd=tmp_path, env=env_with_devices(1), capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, f"{command}\n{result.stderr[-3000:]}"
  samples = tmp_path / "runs" / "mine" / "samples"
  assert (samples / "grid.png").is_file() and (samples / "samples.jsonl").is_file()
  assert (tmp_path / "runs" / "mine-hf" / "config.json").is_file()
  assert (tmp_path / "runs" / "mine" / "checkpoints").is_dir()
