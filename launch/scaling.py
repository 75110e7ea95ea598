"""Data-parallel scaling: the same short run at several device counts, timed and compared.
With --predict, predicted scaling on TPU slices from ahead-of-time compiles instead
(launch/scaling_predict.py: `--predict --topology v5p --chips 16,...,1024`).

  python launch/scaling.py --config configs/jpeglm.py:size=small --devices 1,2,4,8 \
      [--global-batch 16] [--per-device-batch 2] [--steps 10] [--mode weak|strong|both] \
      [--platform cpu|gpu|native] [--out DIR] [-- --config.k=v ...]

Each point is one `jpeglm train` subprocess on N devices, the mesh all data parallel
(data=1, fsdp=N, tensor=1), a fixed data order (data.num_shards=1) and no evaluation:
  - strong scaling: the global batch fixed (--global-batch, default the config's);
  - weak scaling: --per-device-batch rows per device, the global batch growing with N.
Recorded in DIR/scaling.csv: step time (median over steps after the first, which compiles),
tokens/s per device, scaling efficiency (tokens/s per device relative to the smallest N of
the same mode) and final loss; DIR/scaling.png plots them. Strong-scaling runs see the same
batches, so their losses must agree across N (--rtol): the exit status is 1 when they do not.

--platform cpu (default) gives each subprocess N fake CPU devices: the harness and the
equal-loss check are real, the timings say nothing. `gpu` exposes the first N GPUs
(CUDA_VISIBLE_DEVICES); `native` leaves the devices alone (the mesh must then match them).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
from collections.abc import Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIELDS = ("mode", "devices", "global_batch", "steps", "step_time_s", "tokens_per_s",
          "tokens_per_s_per_device", "efficiency", "final_loss", "max_loss_rel_diff")


def run_point(args, overrides: Sequence[str], devices: int, global_batch: int, workdir: str
              ) -> dict:
  env = dict(os.environ)
  if args.platform == "cpu":
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} " \
                       f"--xla_force_host_platform_device_count={devices}".strip()
    env["JAX_PLATFORMS"] = "cpu"
  elif args.platform == "gpu":
    env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, range(devices)))
  shutil.rmtree(workdir, ignore_errors=True)  # a fresh run, never a resume
  # The harness's own settings come last: they win over the same keys in `overrides`.
  argv = [sys.executable, "-m", "jpeglm", "train", "--config", args.config, "--workdir", workdir,
          *overrides, "--config.mesh.data=1", "--config.mesh.fsdp=-1", "--config.mesh.tensor=1",
          f"--config.train.global_batch={global_batch}", f"--config.train.steps={args.steps}",
          "--config.train.log_every=1", f"--config.train.checkpoint_every={args.steps}",
          "--config.train.eval_every=0", "--config.data.num_shards=1"]
  print(f"# {devices} device(s), global batch {global_batch}", flush=True)
  result = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=REPO)
  if result.returncode:
    raise SystemExit(f"scaling: the run on {devices} device(s) failed ({result.returncode}):\n"
                     f"{result.stderr[-3000:]}")
  rows = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      row = json.loads(line)
      if "loss" in row:
        rows[row["step"]] = row
  steps = sorted(rows)
  timed = [rows[s] for s in steps[1:]] or [rows[steps[-1]]]  # step 1 includes compilation
  tokens_per_s = statistics.median(r["tokens_per_second"] for r in timed)
  return {"devices": devices, "global_batch": global_batch, "steps": len(steps),
          "step_time_s": statistics.median(1.0 / r["steps_per_second"] for r in timed),
          "tokens_per_s": tokens_per_s, "tokens_per_s_per_device": tokens_per_s / devices,
          "final_loss": rows[steps[-1]]["loss"], "losses": [rows[s]["loss"] for s in steps]}


def add_efficiency(points: list[dict]) -> None:
  base = points[0]["tokens_per_s_per_device"]
  for p in points:
    p["efficiency"] = p["tokens_per_s_per_device"] / base


def loss_agreement(points: list[dict]) -> float:
  """Largest relative difference of any step's loss from the smallest device count's."""
  ref = points[0]["losses"]
  worst = 0.0
  for p in points:
    if len(p["losses"]) != len(ref):
      return float("inf")
    worst = max([worst] + [abs(a - b) / max(abs(b), 1e-12) for a, b in zip(p["losses"], ref)])
    p["max_loss_rel_diff"] = max(abs(a - b) / max(abs(b), 1e-12)
                                 for a, b in zip(p["losses"], ref))
  return worst


def plot(results: dict[str, list[dict]], path: str, title: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, (ax_t, ax_e) = plt.subplots(1, 2, figsize=(10, 4))
  for mode, points in results.items():
    n = [p["devices"] for p in points]
    ax_t.plot(n, [p["tokens_per_s_per_device"] for p in points], "o-", label=f"{mode} scaling")
    ax_e.plot(n, [p["efficiency"] for p in points], "o-", label=f"{mode} scaling")
  ax_e.axhline(1.0, color="grey", lw=0.8, ls="--")
  for ax, label in ((ax_t, "tokens/s per device"), (ax_e, "scaling efficiency")):
    ax.set_xscale("log", base=2)
    ax.set_xlabel("devices (data parallel)")
    ax.set_ylabel(label)
    ax.legend()
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  from jpeglm.config_io import split_overrides

  overrides, rest = split_overrides([a for a in argv if a != "--"])
  if "--predict" in rest:
    sys.path.insert(0, REPO)
    from launch import scaling_predict
    return scaling_predict.main(rest, overrides)
  parser = argparse.ArgumentParser(prog="launch/scaling.py", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", required=True)
  parser.add_argument("--devices", default="1,2,4,8", help="comma-separated device counts")
  parser.add_argument("--global-batch", type=int, default=None,
                      help="strong scaling batch (default: the config's train.global_batch)")
  parser.add_argument("--per-device-batch", type=int, default=None,
                      help="weak scaling rows per device (default: strong batch / max devices)")
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--mode", choices=("weak", "strong", "both"), default="both")
  parser.add_argument("--platform", choices=("cpu", "gpu", "native"), default="cpu")
  parser.add_argument("--out", default="scaling_out")
  parser.add_argument("--rtol", type=float, default=1e-5,
                      help="strong scaling: allowed relative loss difference across N")
  args = parser.parse_args(rest)
  counts = sorted({int(x) for x in args.devices.split(",") if x.strip()})
  if not counts or counts[0] < 1 or args.steps < 1:
    parser.error("--devices needs positive counts and --steps >= 1")

  sys.path.insert(0, REPO)
  from jpeglm.config_io import load_config

  config = load_config(args.config, overrides)
  strong_batch = args.global_batch or config.train.global_batch
  per_device = args.per_device_batch or max(1, strong_batch // counts[-1])
  modes = ("strong", "weak") if args.mode == "both" else (args.mode,)
  os.makedirs(args.out, exist_ok=True)
  results: dict[str, list[dict]] = {}
  for mode in modes:
    points = []
    for n in counts:
      batch = strong_batch if mode == "strong" else per_device * n
      points.append(run_point(args, overrides, n, batch,
                              os.path.join(args.out, "runs", f"{mode}-{n}")))
    add_efficiency(points)
    results[mode] = points

  ok = True
  if "strong" in results:
    worst = loss_agreement(results["strong"])
    ok = worst <= args.rtol
    print(f"strong scaling: losses agree across {counts} device(s) to {worst:.2e} "
          f"(rtol {args.rtol:g}): {'OK' if ok else 'MISMATCH'}")
  csv_path = os.path.join(args.out, "scaling.csv")
  with open(csv_path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
    writer.writeheader()
    for mode, points in results.items():
      for p in points:
        writer.writerow({"mode": mode, "max_loss_rel_diff": "", **p})
  png_path = os.path.join(args.out, "scaling.png")
  plot(results, png_path, f"{args.config} {' '.join(overrides)} ({args.platform}, "
                          f"{args.steps} steps)")
  for mode, points in results.items():
    for p in points:
      print(f"{mode:6s} {p['devices']:4d} dev  batch {p['global_batch']:4d}  "
            f"step {p['step_time_s']:.3f} s  {p['tokens_per_s_per_device']:,.0f} tok/s/dev  "
            f"eff {p['efficiency']:.2f}  loss {p['final_loss']:.6f}")
  print(f"wrote {csv_path} and {png_path}")
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
