"""`jpeglm sample`: a workdir's latest checkpoint -> samples on disk.

Writes, per sample, the JPEG file (videos: the H.264 stream, an MP4, a GIF and a frame
strip), a grid PNG (prompt | sample | original), and one line of `samples.jsonl`: tokens
generated, whether the bytes decode completely (videos: frames decoded, decoder errors), time.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import ml_collections

from jpeglm.model import transformer as model_lib
from jpeglm.training import run_setup
from jpeglm.model import sharding
from jpeglm.training.checkpointing import Checkpointer
from jpeglm.codecs import AvcCodec, JpegCodec, make_codec
from jpeglm.codecs.h264_grammar import AvcGrammar
from jpeglm.codecs.jpeg_grammar import JpegGrammar
from jpeglm.errors import ConfigError
from jpeglm.runtime import files
from jpeglm.sampling import media, video_files
from jpeglm.sampling.generate import Generation, Generator, SamplingSettings
from jpeglm.sampling.continuous import generate_all
from jpeglm.tokenizer import ByteTokenizer
from jpeglm.training.state import abstract_params


@dataclasses.dataclass
class LoadedRun:
  config: ml_collections.ConfigDict
  params: dict
  tokenizer: ByteTokenizer
  step: int
  mesh: jax.sharding.Mesh  # the parameters' layout; the sampler runs the model on it


def load_run(workdir: str, config: ml_collections.ConfigDict, step: int | None = None) -> LoadedRun:
  """Parameters (only) of a checkpoint, laid out on this machine's devices, and the tokenizer."""
  mesh = sharding.make_mesh({"data": 1, "fsdp": -1, "tensor": 1})
  restored = Checkpointer(files.join(workdir, run_setup.CHECKPOINT_DIR)).restore_params(
      abstract_params(config, mesh).abstract, step)
  tokenizer = ByteTokenizer.load(files.local_copy(files.join(workdir, run_setup.TOKENIZER_FILE)))
  return LoadedRun(config, restored.state, tokenizer, restored.step, mesh)


def build_generator(params, config: ml_collections.ConfigDict, tokenizer: ByteTokenizer, codec,
                    syntax_safe: bool, mesh=None, host_draws: bool = True) -> Generator:
  """A sampler over `params` with the config's sampling settings; syntax-safe or free
  (`host_draws`: `Generator`'s)."""
  s = config.sample
  grammar = pieces = None
  if syntax_safe:
    if isinstance(codec, AvcCodec):
      grammar = AvcGrammar(codec)
    elif isinstance(codec, JpegCodec):
      grammar = JpegGrammar(codec)
    else:
      raise ConfigError(f"sample.syntax_safe has no grammar for {type(codec).__name__}")
    pieces = [tokenizer.piece_bytes(i) for i in range(tokenizer.vocab_size)]
  return Generator(params, model_lib.ModelConfig.from_config(config.model), tokenizer.eos_id,
                   config.model.max_len,
                   SamplingSettings(float(s.temperature), int(s.top_k), float(s.top_p)),
                   grammar=grammar, pieces=pieces, banned=(tokenizer.unk_id, tokenizer.bos_id),
                   mesh=mesh, host_draws=host_draws)


def make_generator(run: LoadedRun, codec) -> Generator:
  return build_generator(run.params, run.config, run.tokenizer, codec,
                         bool(run.config.sample.syntax_safe), run.mesh)


def _record(i: int, g: Generation, complete: bool, reason: str, extra: dict) -> dict:
  return {"index": i, "prompt_tokens": len(g.prompt), "tokens_generated": len(g.tokens),
          "ended_with_eos": g.ended_with_eos, "complete": complete, "reason": reason,
          "seconds": round(g.seconds, 3), **extra}


def sample_images(run: LoadedRun, codec: JpegCodec, out: str, prompts: list[str], ratio: float,
                  num_samples: int, seed: int, batch_size: int) -> list[dict]:
  generator = make_generator(run, codec)
  jobs = []  # (prompt tokens, source image or None, prompt path or None)
  if prompts:
    for path in prompts:
      tokens, _, source = media.image_prompt(codec, run.tokenizer, path, ratio)
      jobs += [(tokens, source, path)] * num_samples
  else:
    jobs = [([run.tokenizer.bos_id], None, None)] * num_samples
  records, rows = [], []
  generations = generate_all(generator, [j[0] for j in jobs], seed, batch_size,
                             bool(run.config.sample.continuous))
  for i, (g, (_, source, path)) in enumerate(zip(generations, jobs)):
    picture = media.to_picture(codec, run.tokenizer, g.prompt, g.tokens)
    image, complete, reason = picture.image, picture.valid, picture.reason
    if image is not None:
      with open(os.path.join(out, f"sample_{i:03d}.jpg"), "wb") as f:
        f.write(codec.standalone(codec.repair(picture.data)))
    shown = [image] if source is None else [
        media.to_picture(codec, run.tokenizer, g.prompt, []).image, image, source]
    rows.append(media.side_by_side(shown, codec.size))
    records.append(_record(i, g, complete, reason,
                           {"prompt": path, "ratio": ratio if path else None}))
  if rows:
    media.stack_rows(rows).save(os.path.join(out, "grid.png"))
  return records


def sample_videos(run: LoadedRun, codec: AvcCodec, out: str, prompts: list[str], frames: int,
                  num_samples: int, seed: int, batch_size: int) -> list[dict]:
  """Per sample the .h264, .mp4, .gif and frame strip (jpeglm.sampling.video_files); grid.png
  holds a row per sample: its frames, or for prompts prompt | continued | true frames."""
  generator = make_generator(run, codec)
  jobs = []  # (prompt tokens, prompt path or None, (prompt frames, true frames) or None)
  for path in prompts:
    tokens, stream = media.video_prompt(codec, run.tokenizer, path, frames)
    jobs += [(tokens, path, video_files.prompt_and_truth(codec, stream, frames))] * num_samples
  if not prompts:
    jobs = [([run.tokenizer.bos_id], None, None)] * num_samples
  records, rows = [], []
  generations = generate_all(generator, [j[0] for j in jobs], seed, batch_size,
                             bool(run.config.sample.continuous))
  for i, (g, (_, path, shown)) in enumerate(zip(generations, jobs)):
    data, only_bytes = video_files.sample_stream(codec, run.tokenizer, g,
                                                 generator.grammar is not None)
    decoded = video_files.decode_sample(codec, data)
    complete, reason = video_files.verdict(decoded, only_bytes, len(shown[0]) if shown else 0)
    written = video_files.write_sample(out, i, codec, data, decoded)
    if shown is None:
      rows.append(media.frame_strip(decoded.frames or [], video_files.STRIP_HEIGHT))
    else:
      prompt_frames, truth = shown
      rows.append(video_files.continuation_row(
          prompt_frames, (decoded.frames or [])[len(prompt_frames):], truth))
    records.append(_record(i, g, complete, reason,
                           {"prompt": path, "prompt_frames": frames if path else None,
                            "valid": complete, **written}))
  if rows:
    media.stack_rows(rows).save(os.path.join(out, "grid.png"))
  return records


def sample_from_workdir(workdir: str, config: ml_collections.ConfigDict, out: str,
                        prompts: list[str] = (), ratio: float = 0.5, frames: int = 10,
                        num_samples: int = 4, seed: int | None = None, step: int | None = None,
                        batch_size: int = 8) -> list[dict]:
  run = load_run(workdir, config, step)
  codec = make_codec(config.codec)
  os.makedirs(out, exist_ok=True)
  seed = config.seed if seed is None else seed
  if isinstance(codec, AvcCodec):
    records = sample_videos(run, codec, out, list(prompts), frames, num_samples, seed, batch_size)
  else:
    records = sample_images(run, codec, out, list(prompts), ratio, num_samples, seed, batch_size)
  with open(os.path.join(out, "samples.jsonl"), "w") as f:
    for r in records:
      f.write(json.dumps({"step": run.step, "syntax_safe": bool(config.sample.syntax_safe), **r})
              + "\n")
  return records
