"""Datasets in the shapes they ship in, run as a user would.

The README's "Datasets as they ship" commands, read from the README itself, each on real
photos written in that shape: `prepare`, then `train` with 2 data shards x 2 Grain workers,
killed with a real SIGKILL, run again, and the losses equal an uninterrupted run's. And 200
tar shards read by a 2-process JAX runtime with 2 workers a process: every worker reads, and
no item is read twice."""

from __future__ import annotations

import io
import os
import re
import shlex
import signal
import subprocess
import sys
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from data_pipeline.media_files import builtin_photos
from tests.train_helpers import REPO, env_with_devices, free_port, losses, tiny_overrides

pytestmark = pytest.mark.slow  # four CLI runs per shape, ~2 minutes each on 2 cores

STEPS = 6
# 2 data shards x 2 Grain workers: four readers, more than some shapes have files.
READERS = {"data.num_workers": 2, "data.num_shards": 2, "data.shuffle_buffer": 8,
           "train.checkpoint_every": 2, "data.max_bad_fraction": 0.3}


def shape_commands() -> dict[str, list[str]]:
  """Shape name (its comment line) -> its [prepare, train] commands, from the README."""
  with open(os.path.join(REPO, "README.md")) as f:
    section = f.read().split("## Datasets as they ship", 1)[1].split("\n## ", 1)[0]
  block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
  shapes, name = {}, None
  for chunk in re.split(r"\n(?=jpeglm |# )", block.strip()):
    if chunk.startswith("# "):
      name = chunk[2:].strip()
      shapes[name] = []
    else:
      shapes[name].append(" ".join(line.strip() for line in chunk.split("\\\n")))
  return shapes


def photo_jpegs(count: int, side: int = 96) -> list[bytes]:
  """`count` distinct real photos: the built-in ones, then their crops."""
  out = []
  photos = [Image.open(p).convert("RGB") for p in builtin_photos()]
  for i in range(count):
    image = photos[i % len(photos)]
    shift = (i // len(photos)) % 40 * min(image.size) // 100
    image = image.crop((shift, shift, image.width - shift, image.height - shift))
    image.thumbnail((side, side))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    out.append(buffer.getvalue())
  return out


def write_parquet(path, jpegs: list[bytes], first: int = 0) -> None:
  rows = [{"bytes": b, "path": f"{first + i:05d}.jpg"} for i, b in enumerate(jpegs)]
  pq.write_table(pa.table({"image": rows, "text": [f"photo {i}" for i in range(len(rows))]}),
                 path, row_group_size=4)


def write_tar(path, jpegs: list[bytes], first: int = 0) -> None:
  """img2dataset's layout: KEY.jpg and KEY.json per sample."""
  with tarfile.open(path, "w") as tar:
    for i, data in enumerate(jpegs):
      for name, payload in ((f"{first + i:09d}.jpg", data),
                            (f"{first + i:09d}.json", b'{"status": "success"}')):
        info = tarfile.TarInfo(name)
        info.size, info.mtime = len(payload), 0
        tar.addfile(info, io.BytesIO(payload))


def write_shape(shape: str, root) -> None:
  """The files the README's commands for `shape` read, under `root`."""
  jpegs = photo_jpegs(24)
  if shape.startswith("One parquet file"):
    (root / "hf").mkdir()
    write_parquet(root / "hf" / "train-00000-of-00001.parquet", jpegs)
  elif shape.startswith("Parquet files"):
    (root / "hf3").mkdir()
    for part in range(3):
      write_parquet(root / "hf3" / f"train-{part:05d}-of-00003.parquet",
                    jpegs[part * 6:part * 6 + 6], part * 6)
    write_parquet(root / "hf3" / "validation-00000-of-00001.parquet", jpegs[18:], 18)
  elif shape.startswith("WebDataset"):
    (root / "shards").mkdir()
    for part in range(3):
      write_tar(root / "shards" / f"{part:05d}.tar", jpegs[part * 8:part * 8 + 8], part * 8)
  elif shape.startswith("A folder"):
    (root / "my_photos" / "more").mkdir(parents=True)
    for i, data in enumerate(jpegs):
      (root / "my_photos" / ("more" if i % 2 else "") / f"{i:03d}.jpg").write_bytes(data)
  else:
    raise AssertionError(f"the test has no data for the README's shape {shape!r}")


def run(command: str, cwd, extra: list[str], fault: str = "") -> subprocess.CompletedProcess:
  args = shlex.split(command)
  assert args[0] == "jpeglm"
  return subprocess.run([sys.executable, "-m", "jpeglm", *args[1:], *extra], cwd=cwd,
                        env={**env_with_devices(2), "JPEGLM_FAULT": fault},
                        capture_output=True, text=True, timeout=900)


def test_the_readme_names_every_shape():
  shapes = shape_commands()
  assert len(shapes) == 4
  for commands in shapes.values():
    assert [c.split()[1] for c in commands] == ["prepare", "train"]


@pytest.mark.parametrize("shape", list(shape_commands()))
def test_shape_prepares_trains_and_resumes_after_kill_9(shape, tmp_path, tokenizer_path):
  write_shape(shape, tmp_path)
  os.symlink(os.path.join(REPO, "configs"), tmp_path / "configs")  # run from a checkout
  prepare, train = shape_commands()[shape]
  tokenizer = [f"--config.tokenizer.path={tokenizer_path}"]
  prepared = run(prepare, tmp_path, tokenizer + ["--workers", "2"])
  assert prepared.returncode == 0, f"{prepare}\n{prepared.stderr[-3000:]}"
  counts = dict(re.findall(r"^(train|eval): (\d+) items ->", prepared.stdout, re.M))
  assert set(counts) == {"train", "eval"}, prepared.stdout  # held out by item, from one file up
  if "eval_source" in prepare:
    assert int(counts["eval"]) == 6  # the validation file's rows, all of them
  assert int(counts["train"]) + int(counts["eval"]) == 24

  extra = tiny_overrides(tokenizer_path, steps=STEPS, **READERS)
  straight = run(train, tmp_path, extra)
  assert straight.returncode == 0, f"{train}\n{straight.stderr[-3000:]}"
  assert (f"data: {counts['train']} train items, {counts['eval']} eval items"
          in straight.stdout), straight.stdout
  workdir = tmp_path / re.search(r"--workdir (\S+)", train).group(1)
  want = losses(workdir)
  assert sorted(want) == list(range(1, STEPS + 1))

  killed_dir = f"{workdir}-killed"
  again = train.replace(f"--workdir {os.path.relpath(workdir, tmp_path)}",
                        f"--workdir {killed_dir}")
  # Killed after dispatching step 5: step 4's checkpoint may be in flight, step 2's is whole
  # (one save at a time).
  killed = run(again, tmp_path, extra, fault="sigkill@5")
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
  assert sorted(losses(killed_dir)) == [1, 2, 3, 4]
  resumed = run(again, tmp_path, extra)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert re.search(r"^resuming from step [24] ", resumed.stdout, re.M), resumed.stdout
  assert losses(killed_dir) == want


# ---- 200 shards, 2 processes x 2 workers ----------------------------------------------------

AUDIT_SHARDS, ITEMS_PER_SHARD = 200, 4


def test_200_shards_on_2_processes_x_2_workers_read_each_item_once(tmp_path, tokenizer_path):
  jpegs = photo_jpegs(AUDIT_SHARDS * ITEMS_PER_SHARD, side=40)
  (tmp_path / "shards").mkdir()
  for shard in range(AUDIT_SHARDS):
    write_tar(tmp_path / "shards" / f"{shard:05d}.tar",
              jpegs[shard * ITEMS_PER_SHARD:(shard + 1) * ITEMS_PER_SHARD],
              shard * ITEMS_PER_SHARD)
  reads = tmp_path / "reads"
  reads.mkdir()
  port = free_port()
  command = [sys.executable, "-m", "tests.stream_read_audit", str(tmp_path / "shards"),
             tokenizer_path, str(reads)]
  procs = [subprocess.Popen(command, cwd=REPO, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE,
                            env={**env_with_devices(2), "JPEGLM_COORDINATOR": f"127.0.0.1:{port}",
                                 "JPEGLM_NUM_PROCESSES": "2", "JPEGLM_PROCESS_ID": str(i)})
           for i in range(2)]
  outputs = [p.communicate(timeout=600) for p in procs]
  for p, (out, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
  # One file per reading process: "<data process pid>-<worker pid>.txt".
  logs = {f.name: f.read_text().split() for f in reads.iterdir()}
  parents = {name.split("-")[0] for name in logs}
  assert len(parents) == 2 and len(logs) == 4, sorted(logs)  # every worker read
  assert all(len(names) >= ITEMS_PER_SHARD for names in logs.values())
  everything = [name for names in logs.values() for name in names]
  assert len(everything) == len(set(everything))  # no item read twice
  shards = [{n.rsplit("/", 1)[0] for n in names} for names in logs.values()]
  assert sum(len(s) for s in shards) == len(set().union(*shards))  # each shard, one reader
