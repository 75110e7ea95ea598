"""`jpeglm plan`: the search space, and a printed layout that `jpeglm train` runs as is."""

import json
import os
import re

import pytest

from jpeglm.cli import main
from jpeglm.config_io import load_config
from jpeglm.model import sharding
from jpeglm.fit import step_cost
from jpeglm.fit.compile_check import analytic_report, parse_topology
from jpeglm.fit.plan import (Candidate, Result, _needs_more_memory, candidates, compile_order,
                         rank_key)
from tests.train_helpers import CONFIG, run_train, tiny_overrides, train_tiny_tokenizer


def test_every_candidate_uses_all_devices_and_splits_its_micro_batches():
  config = load_config("configs/jpeglm.py:size=7b,codec=jpeg")
  found = candidates(config, 32)
  assert found and len(set(found)) == len(found)
  for c in found:
    assert c.data * c.fsdp * c.context * c.tensor == 32
    assert (64 // c.grad_accum) % (c.data * c.fsdp) == 0
    assert 32 % c.tensor == 0 and 12288 % (2 * c.context * 128) == 0
  assert {c.remat for c in found} >= {"full", "save_attention", "none"}
  assert {c.context for c in found} == {1, 2, 4} and {c.tensor for c in found} == {1, 2, 4, 8}
  two = candidates(config, 16, num_slices=2)
  assert all(c.dcn_data == 2 and "--config.mesh.dcn_data=2" in c.flags() for c in two)


def test_a_failed_layout_rules_out_its_hungrier_relatives_only():
  failed = Candidate(1, 16, 1, 1, "save_attention", 4)
  assert _needs_more_memory(Candidate(1, 16, 1, 1, "none", 2), failed)
  assert _needs_more_memory(Candidate(1, 16, 1, 1, "save_attention", 4), failed)
  assert not _needs_more_memory(Candidate(1, 16, 1, 1, "full", 4), failed)  # more remat
  assert not _needs_more_memory(Candidate(1, 16, 1, 1, "none", 8), failed)  # more micro-batches
  assert not _needs_more_memory(Candidate(1, 8, 1, 2, "none", 1), failed)  # another mesh


def test_equal_arithmetic_compiles_the_fewest_micro_batches_first():
  # The 7B on v5p-128 at 64 rows: many layouts tie on arithmetic; 16-micro-batch ones read
  # the weights 16 times and were HBM-bound (launch/README.md).
  config = load_config("configs/jpeglm.py:size=7b,codec=jpeg")
  spec = parse_topology("v5p-128")
  layouts = candidates(config, spec.devices)
  order = compile_order(config, layouts, spec.devices, "tpu", spec.hbm_bytes)
  assert 0 < len(order) < len(layouts)  # the memory estimate dropped some

  def seconds(c):
    cfg = c.apply(config)
    mesh = dict(zip(sharding.MESH_AXES, sharding.mesh_shape(cfg.mesh, spec.devices)))
    return step_cost.executed_flops(cfg, mesh, "tpu")

  def over(c):
    return analytic_report(c.apply(config), None, spec.devices, "plan").peak_bytes > \
        spec.hbm_bytes

  keys = [(seconds(c), over(c), c.grad_accum) for c in order]
  assert keys == sorted(keys)
  tied = [c for c, k in zip(order, keys) if k[:2] == keys[0][:2]]
  assert len({c.grad_accum for c in tied}) > 1  # the tie the order has to break
  assert order[0].grad_accum == min(c.grad_accum for c in tied) < max(c.grad_accum
                                                                        for c in tied)


def test_equal_estimates_rank_the_least_exposed_collectives_first():
  def result(step, ici, fsdp):
    return Result(Candidate(1, fsdp, 1, 1, "none", 1), True, 0, step, step, 0.1, ici, 0.0, 0.9,
                  1.0)

  chatty, quiet, slow = result(1.0, 0.5, 8), result(1.0, 0.1, 16), result(1.2, 0.0, 4)
  no_estimate = Result(Candidate(1, 2, 1, 1, "none", 1), True, 0, None, None, None, None, None,
                       None, None)
  ranked = sorted([no_estimate, slow, chatty, quiet], key=rank_key)
  assert ranked == [quiet, chatty, slow, no_estimate]


def test_plan_prints_a_layout_that_train_runs_as_printed(tmp_path, capsys):
  tokenizer = train_tiny_tokenizer(tmp_path / "tokenizer.model")
  sizes = ["--config.data.seq_len=128", "--config.model.max_len=128"]
  code = main(["plan", "--config", CONFIG, "--topology", "local", "--max-compiles", "2",
               "--top", "1", "--jobs", "1", "--cache", str(tmp_path / "cache.json"), *sizes])
  out = capsys.readouterr().out
  assert code == 0, out
  best = re.search(r"^best: (.*)$", out, re.M).group(1).split()
  assert best[0].startswith("--config.mesh.data=") and any("model.remat=" in f for f in best)
  assert len(json.load(open(tmp_path / "cache.json"))) >= 1  # compiled results are kept
  workdir = str(tmp_path / "run")
  # The tiny run's own settings, then the plan's flags exactly as printed.
  run_train(workdir, tiny_overrides(tokenizer, steps=2) + best)
  config = json.load(open(os.path.join(workdir, "config.json")))
  for flag in best:
    key, value = flag[len("--config."):].split("=")
    section, name = key.split(".")
    assert str(config[section][name]) == value


@pytest.mark.slow
def test_plan_7b_jpeg_on_v5p_32_finds_a_layout_that_fits(tmp_path, capsys):
  pytest.importorskip("libtpu", reason="needs libtpu: pip install 'jpeglm[tpu]'")
  code = main(["plan", "--config", "configs/jpeglm.py:size=7b,codec=jpeg", "--topology",
               "v5p-32", "--top", "1", "--max-compiles", "6", "--jobs", "1",
               "--cache", str(tmp_path / "cache.json")])
  out = capsys.readouterr().out
  assert code == 0, out
  assert re.search(r"^1 \| .* \| yes \|", out, re.M), out
