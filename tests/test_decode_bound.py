"""The decode-step memory floor and the protocol's hours against numbers worked by hand."""

import pytest

from configs.jpeglm import get_config
from jpeglm.fit import chips, decode_bound
from jpeglm.model.transformer import ModelConfig


def tiny_shape() -> ModelConfig:
  """A model small enough to count by hand, in bfloat16."""
  return ModelConfig(vocab_size=10, d_model=4, n_layers=2, n_heads=2, n_kv_heads=1, d_ff=8,
                     max_len=16, param_dtype="bfloat16", dtype="bfloat16")


def test_bytes_per_step_by_hand():
  m = tiny_shape()
  # Per layer: q, k, v, o = 4 x 2 x (2 x 2 + 2 x 1) = 48, MLP 3 x 4 x 8 = 96; two layers
  # 288, the head 4 x 10 = 40: 328 parameters, 656 bytes in bfloat16.
  assert decode_bound.weight_bytes(m) == 656
  # k and v x 2 layers x 1 kv head x head_dim 2 x 2 bytes.
  assert decode_bound.kv_bytes_per_slot(m) == 16
  floor = decode_bound.step_floor(m, [3, 5], bandwidth=100.0)
  assert (floor.weight_bytes, floor.kv_bytes, floor.bytes) == (656, 128, 784)
  assert floor.seconds == pytest.approx(7.84)
  # 2 rows of 4 slots: the same 784 bytes, 2 tokens a step.
  assert decode_bound.tokens_per_second_bound(m, 2, 4, 100.0) == pytest.approx(2 / 7.84)
  assert decode_bound.bandwidth_share(m, 2, 4, 0.1, 100.0) == pytest.approx(0.1 * 7.84 / 2)
  assert decode_bound.cache_bytes(m, batch=3, slots=10) == 480


def test_the_1b_floor_is_the_issues_0_7_ms_on_an_h100():
  model = get_config("size=1b").model
  assert decode_bound.matmul_params(model) == 1_131_020_288
  model.param_dtype = "bfloat16"
  floor = decode_bound.step_floor(model, [0], chips.hbm_bandwidth("h100"))
  assert floor.seconds == pytest.approx(2 * 1_131_020_288 / 3.35e12)  # 0.675 ms


def test_protocol_tokens_and_hours():
  small = decode_bound.Protocol(num_images=10, ratios=(0.5,), seeds=2, tokens_per_image=100)
  assert small.generated_tokens() == 1_000  # 20 completions of the lower 50 tokens
  assert small.hours(1_000 / 3600) == pytest.approx(1.0)
  assert small.mean_context() == pytest.approx(75)  # from 50 to 100 slots
  paper = decode_bound.Protocol()
  # 5,000 images x 3 seeds x 5,100 tokens x (0.75 + 0.5 + 0.25) of them generated.
  assert paper.generated_tokens() == pytest.approx(114_750_000)
  assert paper.hours(1_300) == pytest.approx(114_750_000 / 1_300 / 3600)  # 24.5 h
  # Contexts 1.25, 1.5, 1.75 x 2,550, weighted by the tokens each ratio generates.
  assert paper.mean_context() == pytest.approx((0.75 * 3187.5 + 0.5 * 3825 + 0.25 * 4462.5) / 1.5)
  m = tiny_shape()
  assert paper.floor_hours(m, 2, 100.0) == pytest.approx(
      paper.hours(decode_bound.tokens_per_second_bound(m, 2, paper.mean_context(), 100.0)))


def test_chip_bandwidths():
  assert chips.hbm_bandwidth("NVIDIA H100 80GB HBM3") == 3.35e12
  assert chips.hbm_bandwidth("NVIDIA H100 PCIe") == 2.0e12
  assert chips.hbm_bandwidth("h200") == chips.hbm_bandwidth("NVIDIA H200") == 4.8e12
  assert chips.hbm_bandwidth("v5p") == chips.hbm_bandwidth("TPU v5") == 2765e9
  assert chips.hbm_bandwidth("TPU v5 lite") == 819e9
  assert chips.hbm_bandwidth("cpu") is None


def test_protocol_estimate_at_a_measured_speed():
  m = tiny_shape()
  at = decode_bound.protocol_estimate(m, tokens_per_s=1_000.0, batch=2, tokens_per_image=100,
                                      bandwidth=100.0)
  paper = decode_bound.Protocol(tokens_per_image=100)
  assert at["generated_tokens"] == pytest.approx(5_000 * 3 * 150)  # 1.5 images' worth each
  assert at["hours"] == pytest.approx(2_250_000 / 1_000 / 3600)
  assert at["bound_share"] == pytest.approx(
      1_000 / decode_bound.tokens_per_second_bound(m, 2, paper.mean_context(), 100.0))
  assert at["floor_hours"] == pytest.approx(paper.floor_hours(m, 2, 100.0))
  unknown = decode_bound.protocol_estimate(m, 1_000.0, 2, 100, bandwidth=None)
  assert unknown["bound_share"] is None and unknown["hours"] == at["hours"]
