"""`jpeglm tokenizer train|inspect` end to end, in process and as `python -m jpeglm`."""

import os
import re
import shutil
import subprocess
import sys

import pytest

from data_pipeline.media_files import builtin_photos
from jpeglm.cli import main
from jpeglm.tokenizer import ByteTokenizer
from tests.train_helpers import REPO



def test_train_on_builtin_photos_then_inspect(tmp_path, capsys):
  out = tmp_path / "jpeg.model"
  assert main(["tokenizer", "train", "--codec", "jpeg", "--source", "builtin:photos",
               "--num-files", "40", "--vocab-size", "320", "--out", str(out), "--workers", "1"]) == 0
  printed = capsys.readouterr().out
  assert "vocab 320" in printed and "40 files (0 skipped)" in printed
  assert ByteTokenizer.load(out).vocab_size == 320
  photo = builtin_photos()[0]
  assert main(["tokenizer", "inspect", str(out), photo]) == 0
  printed = capsys.readouterr().out
  assert "special ids unk=0 bos=1 eos=2" in printed
  assert os.path.basename(photo)[:30] in printed and "total" in printed


def test_train_on_folder_skips_bad_files(tmp_path, capsys):
  folder = tmp_path / "photos"
  folder.mkdir()
  for p in builtin_photos()[:4]:
    shutil.copy(p, folder)
  (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
  (folder / "empty.png").write_bytes(b"")
  out = tmp_path / "t.model"
  assert main(["tokenizer", "train", "--source", str(folder), "--num-files", "100",
               "--out", str(out), "--workers", "1"]) == 0
  printed = capsys.readouterr().out
  # The pipeline holds 5% of a folder out for evaluation (here 1 file); the rest is read.
  assert re.search(r"vocab 320, [34] files \(2 skipped\)", printed), printed
  assert "broken.jpg" in printed and "empty.png" in printed


def test_train_with_config_codec_settings(tmp_path, capsys):
  out = tmp_path / "small.model"
  assert main(["tokenizer", "train", "--config", os.path.join(REPO, "configs/jpeglm.py:size=tiny"),
               "--config.codec.quality=50", "--num-files", "21", "--out", str(out),
               "--workers", "1"]) == 0
  assert "21 files" in capsys.readouterr().out


def test_errors_are_one_line(tmp_path, capsys):
  assert main(["tokenizer", "inspect", str(tmp_path / "nope.model")]) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("jpeglm: error:") and "nope.model" in err and "\n" not in err
  assert main(["tokenizer", "train", "--source", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
  assert "no image files" in capsys.readouterr().err
  assert main(["tokenizer", "train", "--config", os.path.join(REPO, "configs/jpeglm.py"),
               "--config.codec.nope=1", "--out", str(tmp_path / "x")]) == 2
  assert "unknown config key 'codec.nope'" in capsys.readouterr().err


def test_python_dash_m_entry_point(tmp_path):
  result = subprocess.run([sys.executable, "-m", "jpeglm", "tokenizer", "--help"],
                          capture_output=True, text=True, check=True)
  assert "train" in result.stdout and "inspect" in result.stdout
  jpeglm_bin = shutil.which("jpeglm", path=os.path.dirname(sys.executable))
  if jpeglm_bin is None:
    pytest.fail("the `jpeglm` console script is not installed next to the interpreter")
  assert subprocess.run([jpeglm_bin, "--help"], capture_output=True).returncode == 0
