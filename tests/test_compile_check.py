"""`jpeglm compile-check`: topology names, the CPU-backend compile, the analytic fallback."""

import pytest

from jpeglm.cli import main
from jpeglm.fit.chips import GIB
from jpeglm.fit.compile_check import check, parse_topology
from jpeglm.config_io import load_config
from jpeglm.errors import ConfigError
from jpeglm.fit.memory_report import memory_report
from tests.train_helpers import CONFIG


def test_cloud_names_map_to_jax_topologies():
  # The names verified to compile with libtpu (shared/docs/verified-facts.md).
  assert (parse_topology("v5p-64").jax_name, parse_topology("v5p-64").chip_config) == \
      ("v5:4x4x2", "megacore")
  assert parse_topology("v4-128").jax_name == "v4:4x4x4"
  assert parse_topology("v5e-256").jax_name == "v5e:16x16"
  assert parse_topology("v5litepod-256") == parse_topology("v5e-256")
  assert parse_topology("v6e-16").jax_name == "v6e:4x4"
  v5p = parse_topology("v5p-32")
  assert (v5p.chips, v5p.devices, v5p.hosts, v5p.hbm_bytes) == (16, 16, 4, 95 * GIB)
  assert (parse_topology("v4-64").devices, parse_topology("v4-64").hosts) == (32, 8)
  assert parse_topology("v5e-8").hosts == 1
  for bad in ("v5p-63", "v7x-8", "tpu", "v4-2"):
    with pytest.raises(ConfigError):
      parse_topology(bad)


def test_tiny_compile_on_local_devices_matches_info(capsys):
  config = load_config(CONFIG, ["--config.data.seq_len=128", "--config.model.max_len=128"])
  report = check(config, "local")
  info = memory_report(config)  # the same 8 fake CPU devices (conftest)
  assert report.method.startswith("compiled") and report.num_devices == 8
  assert report.mesh == info.mesh == {"data": 1, "fsdp": 8, "context": 1, "tensor": 1}
  # Parameters: the layout's shards are exactly `jpeglm info`'s figure. Optimizer state: two
  # moments (= info's AdamW bytes) plus optax's scalar counts (a few bytes each).
  assert report.param_bytes == info.param_bytes
  assert 0 <= report.opt_bytes - info.adam_bytes <= 64
  assert report.temp_bytes > 0
  assert report.peak_bytes >= report.param_bytes + report.opt_bytes + report.temp_bytes
  assert report.fits is None  # no HBM limit on the CPU backend
  code = main(["compile-check", "--config", CONFIG, "--config.data.seq_len=128",
               "--config.model.max_len=128"])
  out = capsys.readouterr().out
  assert code == 0
  assert f"parameters 0.00 GiB [{info.param_bytes:,} B]" in out
  assert "method: compiled ahead of time (cpu)" in out


def test_analytic_fallback_is_labelled_and_uses_memory_report(capsys):
  code = main(["compile-check", "--config", "configs/jpeglm.py:size=7b", "--topology", "v5p-64",
               "--analytic"])
  out = capsys.readouterr().out
  info = memory_report(load_config("configs/jpeglm.py:size=7b"), 32)
  assert "method: analytic estimate (NOT compiled)" in out and "note:" in out
  assert f"parameters {info.param_bytes / GIB:,.2f} GiB [{info.param_bytes:,} B]" in out
  assert "of 95.00 GiB" in out
  assert code in (0, 3)
  # A slice too small for the mesh is refused before anything is built.
  with pytest.raises(ConfigError, match="needs 64 devices, but there are 32"):
    check(load_config("configs/jpeglm.py:size=7b", ["--config.mesh.fsdp=64"]), "v5p-64")


def test_v5e_is_too_small_for_7b_analytically():
  config = load_config("configs/jpeglm.py:size=7b", ["--config.mesh.fsdp=8"])
  report = check(config, "v5e-8", analytic=True)
  assert report.fits is False and report.hbm_bytes == 16 * GIB


def _libtpu_missing() -> str:
  try:
    import libtpu  # noqa: F401  (the `tpu` extra)
  except ImportError:
    return "needs libtpu: pip install 'jpeglm[tpu]' (the TPU compiler; no TPU needed)"
  return ""


@pytest.mark.slow
@pytest.mark.skipif(bool(_libtpu_missing()), reason=_libtpu_missing() or "libtpu present")
def test_7b_jpeg_fits_v5p_16_with_splash():
  config = load_config("configs/jpeglm.py:size=7b,codec=jpeg",
                       ["--config.model.remat=full", "--config.train.grad_accum=2"])
  report = check(config, "v5p-16")
  assert report.method.startswith("compiled ahead of time (tpu)"), report.method
  assert report.attention == "splash"  # model.attention=auto on a TPU
  assert report.fits, report.lines()
  assert report.peak_bytes < 0.8 * report.hbm_bytes
  # The labelled estimates exist and are plausible: below 100% MFU, above 10%.
  assert 0.1 < report.mfu_ceiling < 1.0, report.lines()
  # XLA's attention on the same slice and layout does not fit: splash is what makes it.
  config.model.attention = "xla"
  assert check(config, "v5p-16", estimate=False).fits is False


@pytest.mark.slow
@pytest.mark.skipif(bool(_libtpu_missing()), reason=_libtpu_missing() or "libtpu present")
def test_two_slices_compile_with_data_parallelism_over_dcn(capsys):
  code = main(["compile-check", "--config", CONFIG, "--topology", "v5p-8", "--num-slices", "2"])
  out = capsys.readouterr().out
  assert code == 0, out
  assert "topology 2 x v5p-8: 8 devices, mesh data=2 x fsdp=4" in out
  assert "FITS" in out
