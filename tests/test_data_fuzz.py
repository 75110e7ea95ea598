"""Mutated JPEG, PNG, GIF, WebP and MP4 files through `jpeglm prepare` and the trainer's
iterator: no exception escapes, nothing hangs, and the skip counts add up.

The slow test draws a few hundred seeded mutations (set JPEGLM_FUZZ_SEED to draw others; a
failure names the seed and the file); the quick one runs a fixed handful in-process.
"""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from data_pipeline import prepare
from jpeglm.codecs import AvcCodec, JpegCodec, open_image
from jpeglm.tokenizer import ByteTokenizer
from tests import fuzz_pipeline, media_mutations
from tests.train_helpers import CONFIG, REPO

SEED = int(os.environ.get("JPEGLM_FUZZ_SEED", "17"))
MUTANTS = {"image": 1500, "video": 400}
PER_FILE_SECONDS = 10.0  # the slowest good file takes well under 0.1 s here
RUN_SECONDS = 150  # each subprocess; a hang fails the test instead of stalling the suite


def _seeds(kind: str) -> dict[str, bytes]:
  return media_mutations.image_seeds() if kind == "image" else media_mutations.video_seeds()


def _write(folder, files: dict[str, bytes]) -> None:
  folder.mkdir(parents=True, exist_ok=True)
  for name, data in files.items():
    (folder / name).write_bytes(data)


def _tokenizer(kind: str, folder) -> str:
  """A 320-token BPE trained on the seeds' own codec streams."""
  if kind == "image":
    codec = JpegCodec(size=64)
    streams = [codec.encode(open_image(str(folder / f"seed-{n}"))) for n in sorted(_seeds(kind))]
  else:
    codec = AvcCodec(width=64, height=36)
    streams = [codec.encode(str(folder / f"seed-{n}")) for n in sorted(_seeds(kind))]
  return ByteTokenizer.train(streams, 320, folder.parent / "tokenizer.model").path


def _fuzz_folder(tmp_path, kind: str, mutants: dict[str, bytes]):
  folder = tmp_path / kind
  _write(folder, {f"seed-{name}": data for name, data in _seeds(kind).items()})
  tokenizer = _tokenizer(kind, folder)  # before the mutants: trained on real files only
  _write(folder, mutants)
  return folder, tokenizer


def _check_counts(outcomes: list[dict], counts: dict, where: str) -> list[bool]:
  """The iterator skipped exactly the inputs the encoding stage refused, pass after pass."""
  bad = [o["error"] is not None for o in outcomes]
  assert 0 < sum(bad) < len(bad), where
  for o in outcomes:
    if o["error"] is not None:
      assert os.path.basename(o["name"]) in o["error"], (where, o)  # each reason names its file
      assert "\n" not in o["error"], (where, o)
  seen, skipped = counts["seen"], counts["skipped"]
  assert seen > len(outcomes), (where, counts)
  assert skipped == sum(bad[i % len(bad)] for i in range(seen)), (where, counts)
  return bad


# ---- quick: a fixed handful, in this process -------------------------------------------------

def _fixed_image_mutants(seeds: dict[str, bytes]) -> dict[str, bytes]:
  rng = np.random.default_rng(0)
  jpg, png, gif, webp = (seeds[n] for n in ("photo.jpg", "photo.png", "photo.gif", "photo.webp"))
  sof = next(s for s, _, m in media_mutations.jpeg_segments(jpg) if m == 0xC0)
  dqt = next(c for c in media_mutations.jpeg_segments(jpg) if c[2] == 0xDB)
  huge_jpg = bytearray(jpg)
  huge_jpg[sof + 5:sof + 9] = b"\xff\xff\xff\xff"  # 65535 x 65535
  ihdr = media_mutations.png_chunks(png)[0]
  huge_png = bytearray(png)
  huge_png[ihdr[0] + 8:ihdr[0] + 16] = (10**9).to_bytes(4, "big") * 2
  media_mutations._fix_png_crc(huge_png, ihdr[0], ihdr[1])
  idat = next(c for c in media_mutations.png_chunks(png) if c[2] == b"IDAT")
  flipped = np.frombuffer(gif, np.uint8).copy()
  flipped[rng.integers(13, len(gif), 8)] ^= 0x10
  return {
      "huge.jpg": bytes(huge_jpg),
      "dup_dqt.jpg": jpg[:dqt[1]] + jpg[dqt[0]:dqt[1]] * 3 + jpg[dqt[1]:],
      "cut.jpg": jpg[:len(jpg) // 2],
      "huge.png": bytes(huge_png),
      "dup_idat.png": png[:idat[1]] + png[idat[0]:idat[1]] + png[idat[1]:],
      "cut.png": png[:len(png) // 3],
      "flipped.gif": flipped.tobytes(),
      "huge_screen.gif": gif[:6] + b"\xff\xff\xff\xff" + gif[10:],
      "cut.webp": webp[:len(webp) // 2],
      "riff_size.webp": webp[:4] + b"\xff\xff\xff\x7f" + webp[8:],
      "inserted.webp": webp[:30] + rng.bytes(40) + webp[30:],
  }


def test_fixed_image_mutations_skip_and_count(tmp_path):
  folder, tokenizer_path = _fuzz_folder(tmp_path, "image",
                                        _fixed_image_mutants(media_mutations.image_seeds()))
  tokenizer = ByteTokenizer.load(tokenizer_path)
  config = fuzz_pipeline.folder_config(str(folder), "jpeg", tokenizer_path)
  outcomes = fuzz_pipeline.file_outcomes(config, tokenizer)
  counts = fuzz_pipeline.iterator_counts(config, tokenizer, len(outcomes))
  bad = _check_counts(outcomes, counts, "fixed")
  refused = {os.path.basename(o["name"]) for o in outcomes if o["error"]}
  assert {"huge.jpg", "huge.png", "huge_screen.gif", "cut.png"} <= refused
  assert not any(n.startswith("seed-") for n in refused)  # the real files all come through
  summary, = prepare.prepare(config, str(tmp_path / "prepared"), progress=False)
  assert (summary.files, summary.skipped) == (len(outcomes), sum(bad))
  assert summary.documents + summary.skipped == summary.files


# ---- slow: a few hundred seeded mutations, in subprocesses with time limits ------------------

def _run(argv: list[str], where: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  try:
    result = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, env=env,
                            timeout=RUN_SECONDS)
  except subprocess.TimeoutExpired:
    pytest.fail(f"{where}: no answer within {RUN_SECONDS} s (a hang?)")
  assert result.returncode == 0 and "Traceback" not in result.stderr, (
      f"{where}: exit {result.returncode}\n{result.stderr[-3000:]}")
  return result


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["image", "video"])
def test_fuzzed_media_through_prepare_and_the_train_iterator(tmp_path, kind):
  where = f"JPEGLM_FUZZ_SEED={SEED}, {kind}"
  mutants = media_mutations.mutants(_seeds(kind), MUTANTS[kind], SEED)
  folder, tokenizer_path = _fuzz_folder(tmp_path, kind, mutants)
  codec = "jpeg" if kind == "image" else "avc"

  # The trainer's iterator (one Grain worker process), and each file's own outcome.
  result = _run([sys.executable, "-m", "tests.fuzz_pipeline", str(folder), codec, tokenizer_path,
                 "1"], where)
  report = json.loads(result.stdout.strip().splitlines()[-1])
  outcomes = report["files"]
  assert len(outcomes) == len(mutants) + len(_seeds(kind))
  slowest = max(outcomes, key=lambda o: o["seconds"])
  assert slowest["seconds"] < PER_FILE_SECONDS, (where, slowest)
  bad = _check_counts(outcomes, report["iterator"], where)
  assert not any(os.path.basename(o["name"]).startswith("seed-") and o["error"]
                 for o in outcomes), where

  # `jpeglm prepare` over the same folder, with a worker process: the same files skipped.
  out = tmp_path / "prepared"
  result = _run([sys.executable, "-m", "jpeglm", "prepare", "--config", f"{CONFIG},codec={codec}",
                 "--out", str(out), "--workers", "1",
                 *fuzz_pipeline.folder_overrides(str(folder), codec, tokenizer_path)], where)
  line = re.search(r"^train: (\d+) items -> (\d+) documents, .*; (\d+) skipped$", result.stdout,
                   re.M)
  assert line, (where, result.stdout[-2000:])
  files, documents, skipped = map(int, line.groups())
  assert (files, documents, skipped) == (len(outcomes), len(bad) - sum(bad), sum(bad)), where
  with open(out / "meta.json") as f:
    split = json.load(f)["splits"]["train"]
  assert (split["files"], split["documents"], split["skipped"]) == (files, documents, skipped)
