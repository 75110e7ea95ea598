"""`jpeglm eval`: the prefix-completion protocol on a tiny trained run (eval.json, table),
bits per byte equal to a direct forward pass, and the pieces it is built from."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data_pipeline.media_files import builtin_photos
from jpeglm.cli import main
from jpeglm.codecs import make_codec, open_image
from jpeglm.config_io import read_config
from jpeglm.errors import JpeglmError
from jpeglm.evaluation.bits_per_byte import bits_per_byte, sequence_rows
from jpeglm.evaluation.protocol import pick_images
from jpeglm.sampling.media import sampled_bytes, to_picture
from jpeglm.model.transformer import ModelConfig
from jpeglm.sampling import inference_model
from jpeglm.sampling.run import load_run
from jpeglm.tokenizer import ByteTokenizer


def test_sequence_rows_cut_bos_tokens_eos_into_next_token_rows():
  inputs, targets, weights = sequence_rows([[5, 6, 7], [8]], bos=1, eos=2, row_len=3)
  np.testing.assert_array_equal(inputs, [[1, 5, 6], [7, 0, 0], [1, 8, 0]])
  np.testing.assert_array_equal(targets, [[5, 6, 7], [2, 0, 0], [8, 2, 0]])
  np.testing.assert_array_equal(weights, [[1, 1, 1], [1, 0, 0], [1, 1, 0]])


def test_pick_images_is_a_fixed_random_subset():
  everything = builtin_photos()
  chosen = pick_images("builtin:photos", 5, seed=3)
  assert chosen == pick_images("builtin:photos", 5, seed=3)
  assert len(set(chosen)) == 5 and set(chosen) <= set(everything)
  assert chosen != pick_images("builtin:photos", 5, seed=4)
  with pytest.raises(JpeglmError, match="only"):
    pick_images("builtin:photos", len(everything) + 1, seed=0)


@pytest.fixture(scope="module")
def tokenizer(tokenizer_path):
  return ByteTokenizer.load(tokenizer_path)


def test_a_sample_with_a_token_that_is_no_bytes_is_cut_there_and_invalid(tokenizer):
  prompt = [tokenizer.bos_id, *tokenizer.encode(b"\xff\xd8\x01\x02")]
  tail = tokenizer.encode(b"\x03\x04")
  assert sampled_bytes(tokenizer, prompt, [*tail, tokenizer.eos_id]) == (
      b"\xff\xd8\x01\x02\x03\x04", True)
  for stray in (tokenizer.unk_id, tokenizer.bos_id):
    assert sampled_bytes(tokenizer, prompt, [*tail, stray, *tail]) == (
        b"\xff\xd8\x01\x02\x03\x04", False)


def test_to_picture_is_valid_only_for_byte_tokens_that_decode(tokenizer):
  """The one tokens-to-picture path: a real photo's stream is valid; the same stream with a
  stray UNK, or cut short, is not, and says why."""
  codec = make_codec({"name": "jpeg", "size": 64})
  stream = codec.encode(open_image(builtin_photos()[0]))
  prompt, rest = [tokenizer.bos_id], tokenizer.encode(stream)
  whole = to_picture(codec, tokenizer, prompt, rest)
  assert whole.valid and whole.reason == "" and whole.image.size == (64, 64)
  assert whole.data == stream
  stray = to_picture(codec, tokenizer, prompt, [*rest[:5], tokenizer.unk_id, *rest[5:]])
  assert not stray.valid and "UNK" in stray.reason
  short = to_picture(codec, tokenizer, prompt, rest[:len(rest) // 2])
  assert not short.valid and short.reason and short.image is not None


def test_bits_per_byte_equals_a_direct_forward_pass(trained_run):
  config = read_config(os.path.join(trained_run, "config.json"))
  run = load_run(trained_run, config)
  stream = make_codec(config.codec).encode(open_image(builtin_photos()[1]))
  sequence = [run.tokenizer.bos_id, *run.tokenizer.encode(stream), run.tokenizer.eos_id]
  assert len(sequence) - 1 <= config.model.max_len  # one row: no cut to account for
  cfg = ModelConfig.from_config(config.model)
  logits_1xTxV, _ = inference_model.forward(run.params, cfg, jnp.asarray([sequence[:-1]]), jnp.int32(0),
                                     jnp.zeros((1,), jnp.int32),
                                     inference_model.init_cache(cfg, 1, len(sequence) - 1))
  log_probs_TxV = np.asarray(jax.nn.log_softmax(logits_1xTxV[0].astype(jnp.float32)))
  nll = -log_probs_TxV[np.arange(len(sequence) - 1), sequence[1:]].sum()
  expected = nll / math.log(2) / len(stream)
  assert bits_per_byte(config, run.params, [stream], run.tokenizer) == pytest.approx(expected,
                                                                                    rel=1e-4)


@pytest.mark.export
def test_eval_command_writes_results_and_prints_the_table(trained_run, tmp_path, capsys):
  pytest.importorskip("torch")
  out = str(tmp_path / "eval")
  code = main(["eval", "--workdir", trained_run, "--images", "builtin:photos", "--ratios", "0.5",
               "--num-images", "4", "--out", out, "--config.sample.syntax_safe=True"])
  assert code == 0
  report = json.load(open(os.path.join(out, "eval.json")))
  assert report["num_images"] == 4 and len(report["image_files"]) == 4
  assert math.isfinite(report["bits_per_byte"]) and report["bits_per_byte"] > 0
  (result,) = report["results"]
  assert result["ratio"] == 0.5 and result["prompt_rows"] == 32
  assert math.isfinite(result["fid"]) and result["fid"] > 0  # completions are not the originals
  assert result["valid_decode_rate"] == 1.0  # syntax-safe sampling: every sample decodes
  assert result["per_seed"][0]["tokens_generated"] > 0 and result["tokens_per_second"] > 0
  assert "biased upward" in report["note"]
  assert os.path.exists(os.path.join(out, "grid_r0.5.png"))
  printed = capsys.readouterr().out
  assert "ratio | rows | FID" in printed and "valid-decode rate" in printed
  assert f"{result['fid']:.2f}" in printed and "bits per byte" in printed
  parts = report["bits_by_part"]
  assert sum(p["bits"] for p in parts.values()) / sum(p["bytes"] for p in parts.values()) == \
      pytest.approx(report["bits_per_byte"], rel=1e-4)
  assert "bits per image by part: header" in printed and "detailed mcus" in printed
  estimate = report["paper_protocol"]  # the paper's 45,000 completions at this speed
  assert estimate["num_images"] == 5_000 and estimate["bound_share"] is None  # a CPU
  assert estimate["hours"] == pytest.approx(
      estimate["generated_tokens"] / result["tokens_per_second"] / 3600)
  assert f"{estimate['hours']:,.1f} h; no memory-bandwidth bound known" in printed
