"""The paper's video protocol on a trained AVC-LM run: prompt with 10 frames, generate 5.

Each evaluation clip is encoded with the run's codec (the paper: 15 frames, 3 fps x 5 s)
and cut after its first `prompt_frames` frames (`AvcCodec.prefix`: parameter sets and whole
frames). The model continues every cut twice, sampling freely and syntax-safe (the H.264
grammar), per seed, with the run's other `sample.*` settings, until EOS or the end of its
context. Scores per way of sampling:
  - valid-decode rate: the share of samples that are only byte tokens, whose whole stream
    decodes with no missing slices and no FFmpeg error line, and that add frames to the
    prompt (`video_files.verdict`);
  - PSNR and SSIM (jpeglm.evaluation.video_quality) of the frames after the prompt against
    the true frames (the clip after the codec round trip, what the model was trained on); a
    missing frame counts as grey. Beside them, the baseline that repeats the last prompt
    frame.
Bits per byte of the model on the whole clips (teacher-forced), and split by stream part
(jpeglm.evaluation.avc_stream_parts), are reported once.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence

import ml_collections
import numpy as np

from jpeglm.codecs import AvcCodec, make_codec
from jpeglm.errors import ConfigError, JpeglmError
from jpeglm.evaluation import avc_stream_parts
from jpeglm.evaluation.bits_per_byte import bits_per_byte, token_bits
from jpeglm.evaluation.protocol import pick_files
from jpeglm.evaluation.video_quality import baseline_scores, continuation_scores
from jpeglm.sampling import media, video_files
from jpeglm.sampling.continuous import generate_all
from jpeglm.sampling.run import build_generator, load_run

PROMPT_FRAMES = 10  # the paper: prompt with 10 frames, generate 5
MODES = {"free": False, "syntax_safe": True}
GRID_ROWS = 8
NOTE = ("{n} clips: PSNR/SSIM of a few clips are noisy; the baseline repeats the last prompt "
        "frame, which a model must beat to have learned motion")

# Seeds are spread out as they were when batches were keyed by seed + offset; prompts now
# draw with per-prompt keys (jpeglm.sampling.keys), and the stride keeps earlier runs' samples.
SEED_STRIDE = 1_000_003


def pick_videos(source: str, num_videos: int, seed: int) -> list[str]:
  """`num_videos` video files of `source`, a random choice fixed by `seed`, in listing order."""
  return pick_files(source, "video", num_videos, seed)


def _continue_clips(generator, tokenizer, codec: AvcCodec, streams: Sequence[bytes],
                    truths: Sequence[list[np.ndarray]], prompt_frames: int, seed: int,
                    batch_size: int, continuous: bool) -> list[dict]:
  """One sample per clip: validity, decoder errors, scores, and the decoded frames."""
  prompts = [[tokenizer.bos_id, *tokenizer.encode(codec.prefix(s, prompt_frames))]
             for s in streams]
  began = time.perf_counter()
  generations = generate_all(generator, prompts, seed * SEED_STRIDE, batch_size, continuous)
  seconds = (time.perf_counter() - began) / max(len(generations), 1)
  out = []
  for g, truth in zip(generations, truths):
    data, only_bytes = video_files.sample_stream(codec, tokenizer, g,
                                                 generator.grammar is not None)
    decoded = video_files.decode_sample(codec, data)
    valid, reason = video_files.verdict(decoded, only_bytes, prompt_frames)
    out.append({"valid": valid, "reason": reason,
                "frames_decoded": len(decoded.frames or []),
                "decoder_errors": len(decoded.errors), "ended_with_eos": g.ended_with_eos,
                "tokens_generated": len(g.tokens), "seconds": seconds,
                "frames": decoded.frames or [],
                **continuation_scores(decoded.frames or [], truth, prompt_frames)})
  return out


def _summary(samples: list[dict]) -> dict:
  mean = lambda key: float(np.mean([s[key] for s in samples]))
  tokens = sum(s["tokens_generated"] for s in samples)
  return {"valid_decode_rate": mean("valid"), "psnr": mean("psnr"), "ssim": mean("ssim"),
          "frames_continued": mean("frames_continued"),
          # no EOS: the stream ran into the end of the context (model.max_len)
          "out_of_context_rate": 1.0 - mean("ended_with_eos"),
          "decoder_errors": mean("decoder_errors"), "tokens_generated": tokens,
          "tokens_per_second": tokens / max(sum(s["seconds"] for s in samples), 1e-9)}


def _save_grid(path: str, truths, samples: list[dict], prompt_frames: int) -> None:
  rows = [video_files.continuation_row(truth[:prompt_frames], s["frames"][prompt_frames:],
                                       truth[prompt_frames:])
          for truth, s in zip(truths[:GRID_ROWS], samples[:GRID_ROWS])]
  media.stack_rows(rows).save(path)


def evaluate_videos(workdir: str, config: ml_collections.ConfigDict, videos_source: str,
                    num_videos: int, seeds: Sequence[int] = (0,), out: str | None = None,
                    step: int | None = None, batch_size: int = 8,
                    prompt_frames: int = PROMPT_FRAMES) -> dict:
  """Runs the protocol and writes `eval.json` and a grid PNG per way of sampling to `out`
  (default WORKDIR/eval). Returns what it wrote."""
  codec = make_codec(config.codec)
  if not isinstance(codec, AvcCodec):
    raise ConfigError("the video protocol needs an AVC run (codec.name=avc)")
  if not 0 < prompt_frames < codec.num_frames:
    raise JpeglmError(f"--frames {prompt_frames}: the codec's clips have {codec.num_frames} "
                      "frames; keep at least one to continue")
  out = out or os.path.join(workdir, "eval")
  os.makedirs(out, exist_ok=True)
  began = time.perf_counter()
  run = load_run(workdir, config, step)
  paths = pick_videos(videos_source, num_videos, int(config.seed))
  streams = [codec.encode(p) for p in paths]
  truths = [codec.decode(s).frames for s in streams]
  short = [os.path.basename(p) for p, t in zip(paths, truths) if len(t) <= prompt_frames]
  if short:
    raise JpeglmError(f"{', '.join(short)}: {prompt_frames} frames or fewer at the codec's "
                      "fps, nothing left to continue")

  repeated = [baseline_scores(t, prompt_frames) for t in truths]
  modes = {}
  for mode, syntax_safe in MODES.items():
    generator = build_generator(run.params, config, run.tokenizer, codec, syntax_safe,
                                run.mesh)
    per_seed, listed = [], []
    for seed in seeds:
      samples = _continue_clips(generator, run.tokenizer, codec, streams, truths, prompt_frames,
                                seed, batch_size, bool(config.sample.continuous))
      per_seed.append({"seed": seed, **_summary(samples)})
      listed += [{"video": os.path.basename(p), "seed": seed,
                  **{k: v for k, v in s.items() if k not in ("frames", "seconds")}}
                 for p, s in zip(paths, samples)]
      if seed == seeds[0]:
        _save_grid(os.path.join(out, f"grid_{mode}.png"), truths, samples, prompt_frames)
    modes[mode] = {key: float(np.mean([s[key] for s in per_seed]))
                   for key in per_seed[0] if key != "seed"}
    modes[mode]["per_seed"] = per_seed
    modes[mode]["samples"] = listed

  bits = token_bits(config, run.params, run.tokenizer, streams)
  report = {
      "workdir": workdir, "step": run.step, "codec": "avc", "videos": videos_source,
      "num_videos": num_videos, "video_files": paths, "seeds": list(seeds),
      "prompt_frames": prompt_frames,
      "true_frames_continued": float(np.mean([len(t) - prompt_frames for t in truths])),
      "codec_settings": {"width": codec.width, "height": codec.height, "fps": codec.fps,
                         "seconds": codec.seconds, "qp": codec.qp},
      "sample": dict(config.sample),
      "bits_per_byte": bits_per_byte(config, run.params, streams, run.tokenizer, bits=bits),
      "bits_by_part": avc_stream_parts.bits_by_part(run.tokenizer, streams, bits),
      "baseline_repeat_last_frame": {
          "psnr": float(np.mean([r["psnr"] for r in repeated])),
          "ssim": float(np.mean([r["ssim"] for r in repeated]))},
      "modes": modes, "note": NOTE.format(n=num_videos),
      "seconds": round(time.perf_counter() - began, 1)}
  with open(os.path.join(out, "eval.json"), "w") as f:
    json.dump(report, f, indent=2)
  return report
