"""The training iterator on the built-in photos: shapes, determinism, packing, resume, sharding."""

import json

import numpy as np
import pytest

from data_pipeline import pipeline, tokenizer_training
from jpeglm.config_io import load_config
from jpeglm.errors import JpeglmError
from tests.train_helpers import CONFIG



def tiny_config(**data):
  config = load_config(CONFIG)
  config.tokenizer.num_files = 21
  config.train.global_batch = 4
  for key, value in data.items():
    config.data[key] = value
  return config


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  path = tmp_path_factory.mktemp("tok") / "tokenizer.model"
  return tokenizer_training.train_tokenizer_from_source(tiny_config(), str(path))


def take(iterator, n):
  return [next(iterator) for _ in range(n)]


def assert_same_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_batch_shapes_and_dtypes(tokenizer):
  config = tiny_config()
  batch = next(pipeline.make_train_iterator(config, tokenizer, process_index=0, process_count=1))
  B, L = config.train.global_batch, config.data.seq_len
  for key in ("inputs", "targets", "segment_ids", "positions"):
    assert batch[key].shape == (B, L) and batch[key].dtype == np.int32, key
  assert batch["weights"].shape == (B, L) and batch["weights"].dtype == np.float32
  assert batch["target_tokens"].shape == (B,) and batch["target_bytes"].shape == (B,)
  # Concat packing never pads an endless stream: every position is a real target.
  assert (batch["weights"] == 1).all() and (batch["target_tokens"] == L).all()
  assert (batch["positions"] == np.arange(L)).all() and (batch["segment_ids"] == 1).all()
  assert batch["inputs"].max() < tokenizer.vocab_size and batch["inputs"].min() >= 0


def test_same_seed_same_batches_other_seed_other_batches(tokenizer):
  config = tiny_config()
  first = take(pipeline.make_train_iterator(config, tokenizer, process_index=0, process_count=1), 3)
  again = take(pipeline.make_train_iterator(config, tokenizer, process_index=0, process_count=1), 3)
  assert_same_batches(first, again)
  config.seed = 1
  other = take(pipeline.make_train_iterator(config, tokenizer, process_index=0, process_count=1), 3)
  assert not np.array_equal(first[0]["inputs"], other[0]["inputs"])


def test_concat_rows_are_the_documents_shifted_by_one(tokenizer):
  config = tiny_config(shuffle=False)
  batches = take(pipeline.make_train_iterator(config, tokenizer, process_index=0, process_count=1), 3)
  inputs = np.concatenate([row for b in batches for row in b["inputs"]])
  targets = np.concatenate([row for b in batches for row in b["targets"]])
  documents = pipeline.encoded_documents(config, tokenizer, split="train", process_index=0,
                                         process_count=1, shuffle=False, repeat=True,
                                         seed=config.seed).dataset
  expected_inputs, expected_targets, i = [], [], 0
  while sum(map(len, expected_inputs)) < len(inputs):
    tokens = documents[i]["tokens"]
    assert tokens[0] == tokenizer.bos_id and tokens[-1] == tokenizer.eos_id
    assert tokenizer.bos_id not in tokens[1:-1] and tokenizer.eos_id not in tokens[1:-1]
    expected_inputs.append(tokens[:-1])
    expected_targets.append(tokens[1:])
    i += 1
  np.testing.assert_array_equal(inputs, np.concatenate(expected_inputs)[:len(inputs)])
  np.testing.assert_array_equal(targets, np.concatenate(expected_targets)[:len(targets)])
  # BOS only ever as an input (after the previous document's EOS target), EOS only as a target.
  assert tokenizer.eos_id not in inputs and tokenizer.bos_id not in targets
  starts = np.flatnonzero(inputs == tokenizer.bos_id)
  assert len(starts) >= 2 and (targets[starts[1:] - 1] == tokenizer.eos_id).all()


def test_target_bytes_count_the_codec_bytes_of_the_targets(tokenizer):
  batch = next(pipeline.make_train_iterator(tiny_config(), tokenizer, process_index=0,
                                            process_count=1))
  for row in range(batch["targets"].shape[0]):
    decoded = tokenizer.decode(batch["targets"][row])  # BOS/EOS stand for no bytes
    assert batch["target_bytes"][row] == len(decoded)


@pytest.mark.parametrize("seq_len", [512, 128])
def test_document_packing_segments_and_positions(tokenizer, seq_len):
  config = tiny_config(packing="document", seq_len=seq_len)
  batches = take(pipeline.make_train_iterator(config, tokenizer, process_index=0, process_count=1), 3)
  segments = starts = ends = 0
  for batch in batches:
    for inputs, targets, seg, pos, w in zip(batch["inputs"], batch["targets"], batch["segment_ids"],
                                            batch["positions"], batch["weights"]):
      np.testing.assert_array_equal(w, (seg > 0).astype(np.float32))
      assert (pos[seg == 0] == 0).all()
      real = np.flatnonzero(seg)
      assert real.size and real[-1] + 1 == real.size  # real tokens first, padding after
      for s in np.unique(seg[seg > 0]):
        where = np.flatnonzero(seg == s)
        assert (np.diff(where) == 1).all()  # one contiguous run per segment
        np.testing.assert_array_equal(pos[where], np.arange(where.size))
        np.testing.assert_array_equal(inputs[where][1:], targets[where][:-1])  # shifted by one
        # A document longer than seq_len is cut: all pieces but its last fill a whole row.
        if targets[where][-1] != tokenizer.eos_id:
          assert where.size == seq_len
        starts += inputs[where][0] == tokenizer.bos_id
        ends += targets[where][-1] == tokenizer.eos_id
        segments += 1
  assert starts > 0 and ends > 0
  if seq_len == 512:  # most tiny images are < 512 tokens: rows hold several documents
    assert segments > len(batches) * config.train.global_batch


def test_resume_reproduces_the_next_batches(tokenizer):
  config = tiny_config(packing="document")
  iterator = pipeline.make_train_iterator(config, tokenizer, process_index=0, process_count=1)
  take(iterator, 3)
  state = json.loads(json.dumps(iterator.get_state()))
  expected = take(iterator, 3)
  resumed = pipeline.make_train_iterator(config, tokenizer, process_index=0, process_count=1)
  resumed.set_state(state)
  assert_same_batches(take(resumed, 3), expected)


def test_resume_with_worker_processes(tokenizer):
  config = tiny_config(num_workers=2)
  with pipeline.make_train_iterator(config, tokenizer, process_index=0, process_count=1) as it:
    take(it, 3)
    state = json.loads(json.dumps(it.get_state()))
    expected = take(it, 3)
  with pipeline.make_train_iterator(config, tokenizer, process_index=0, process_count=1) as it:
    it.set_state(state)
    assert_same_batches(take(it, 3), expected)
  other = pipeline.make_train_iterator(tiny_config(num_workers=0), tokenizer, process_index=0,
                                       process_count=1)
  with pytest.raises(JpeglmError, match="num_workers=2"):
    other.set_state(state)


def test_two_processes_read_disjoint_shards_covering_the_epoch(tokenizer):
  config = tiny_config()
  seen = []
  for index in (0, 1):
    documents = pipeline.encoded_documents(config, tokenizer, split="train", process_index=index,
                                           process_count=2, shuffle=True, repeat=False,
                                           seed=config.seed)
    seen.append([documents.dataset[i]["source"] for i in range(documents.shard_size)])
  everything = pipeline.encoded_documents(config, tokenizer, split="train", process_index=0,
                                          process_count=1, shuffle=False, repeat=False, seed=0)
  all_sources = [everything.dataset[i]["source"] for i in range(everything.shard_size)]
  assert not set(seen[0]) & set(seen[1])
  assert sorted(seen[0] + seen[1]) == sorted(all_sources) and len(all_sources) == 20
  # Per-process batches are global_batch / process_count rows, and the two differ.
  b0 = next(pipeline.make_train_iterator(config, tokenizer, process_index=0, process_count=2))
  b1 = next(pipeline.make_train_iterator(config, tokenizer, process_index=1, process_count=2))
  assert b0["inputs"].shape == (2, config.data.seq_len)
  assert not np.array_equal(b0["inputs"], b1["inputs"])


def test_global_batch_must_split_over_processes(tokenizer):
  with pytest.raises(JpeglmError, match="global_batch"):
    pipeline.make_train_iterator(tiny_config(), tokenizer, process_index=0, process_count=3)


def test_eval_is_held_out_and_the_same_every_time(tokenizer):
  config = tiny_config()
  first = list(pipeline.make_eval_iterator(config, tokenizer, num_batches=2, process_index=0,
                                           process_count=1))
  again = list(pipeline.make_eval_iterator(config, tokenizer, num_batches=2, process_index=0,
                                           process_count=1))
  assert len(first) == 2
  assert_same_batches(first, again)
  train, held_out = (pipeline.split_source(config, s)[1] for s in ("train", "eval"))
  assert len(held_out) == 1 and not set(train) & set(held_out)


def test_builtin_crops_differ_between_epochs(tokenizer):
  config = tiny_config(shuffle=False)
  documents = pipeline.encoded_documents(config, tokenizer, split="train", process_index=0,
                                         process_count=1, shuffle=False, repeat=True, seed=0)
  epoch = documents.shard_size
  first, second = documents.dataset[0], documents.dataset[epoch]
  assert first["source"] == second["source"]
  assert not np.array_equal(first["tokens"], second["tokens"])
  np.testing.assert_array_equal(first["tokens"], documents.dataset[0]["tokens"])


def test_read_options_default_to_the_cores_and_64_documents_and_refuse_negatives():
  import os

  data = load_config(CONFIG).data
  options = pipeline.read_options(data)
  assert options.num_threads == min(16, len(os.sched_getaffinity(0)))
  assert options.prefetch_buffer_size == 64
  data.read_threads, data.prefetch_documents = 3, 10
  options = pipeline.read_options(data)
  assert (options.num_threads, options.prefetch_buffer_size) == (3, 10)
  data.read_threads = -1
  with pytest.raises(JpeglmError, match="data.read_threads=-1"):
    pipeline.read_options(data)


_KILLED_PARENT = """
import os, signal, grain
from data_pipeline import workers
dataset = workers.with_workers(
    grain.MapDataset.range(1000).map(lambda _: os.getpid()).to_iter_dataset(), 2)
pids = set()
iterator = iter(dataset)
while len(pids) < 2:
  pids.add(next(iterator))
print(*sorted(pids), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_data_workers_end_when_their_trainer_is_killed_with_sigkill():
  """Orphaned Grain workers would keep the killed run's pipes open and its CPUs busy."""
  import os
  import subprocess
  import sys
  import time

  from tests.train_helpers import REPO

  result = subprocess.run([sys.executable, "-c", _KILLED_PARENT], cwd=REPO,
                          capture_output=True, text=True, timeout=120)  # returns: pipes close
  assert result.returncode == -9, result.stderr[-2000:]
  pids = [int(p) for p in result.stdout.split()]
  assert len(pids) == 2

  def alive(pid):
    try:
      os.kill(pid, 0)
    except ProcessLookupError:
      return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie has ended
      return f.read().rsplit(")", 1)[1].split()[0] != "Z"

  deadline = time.time() + 20
  while any(alive(p) for p in pids) and time.time() < deadline:
    time.sleep(0.2)
  assert not any(alive(p) for p in pids)
