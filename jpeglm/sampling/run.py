"""`jpeglm sample`: a workdir's latest checkpoint -> samples on disk.

Writes, per sample, the JPEG (or H.264 + GIF) file, a grid PNG (prompt | sample | original),
and one line of `samples.jsonl`: tokens generated, whether the bytes decode completely, time.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import ml_collections
from PIL import Image

from jpeglm.model import transformer as model_lib
from jpeglm.training import run_setup
from jpeglm.model import sharding
from jpeglm.training.checkpointing import Checkpointer
from jpeglm.codecs import AvcCodec, JpegCodec, make_codec
from jpeglm.codecs.jpeg_grammar import JpegGrammar
from jpeglm.errors import ConfigError
from jpeglm.runtime import files
from jpeglm.sampling import media
from jpeglm.sampling.generate import Generation, Generator, SamplingSettings
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
                    syntax_safe: bool, mesh=None) -> Generator:
  """A sampler over `params` with the config's sampling settings; syntax-safe or free."""
  s = config.sample
  grammar = pieces = None
  if syntax_safe:
    if not isinstance(codec, JpegCodec):
      raise ConfigError("sample.syntax_safe is implemented for JPEG streams only")
    grammar = JpegGrammar(codec)
    pieces = [tokenizer.piece_bytes(i) for i in range(tokenizer.vocab_size)]
  return Generator(params, model_lib.ModelConfig.from_config(config.model), tokenizer.eos_id,
                   config.model.max_len,
                   SamplingSettings(float(s.temperature), int(s.top_k), float(s.top_p)),
                   grammar=grammar, pieces=pieces, banned=(tokenizer.unk_id, tokenizer.bos_id),
                   mesh=mesh)


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
  for start in range(0, len(jobs), batch_size):
    chunk = jobs[start:start + batch_size]
    generations = generator.generate([j[0] for j in chunk], seed=seed + start)
    for k, (g, (_, source, path)) in enumerate(zip(generations, chunk)):
      i = start + k
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
  generator = make_generator(run, codec)
  jobs = ([(media.video_prompt(codec, run.tokenizer, p, frames)[0], p) for p in prompts
           for _ in range(num_samples)] if prompts
          else [([run.tokenizer.bos_id], None)] * num_samples)
  records, strips = [], []
  for start in range(0, len(jobs), batch_size):
    chunk = jobs[start:start + batch_size]
    for k, (g, (_, path)) in enumerate(zip(generator.generate([j[0] for j in chunk],
                                                              seed=seed + start), chunk)):
      i = start + k
      data, only_bytes = media.sampled_bytes(run.tokenizer, g.prompt, g.tokens)
      with open(os.path.join(out, f"sample_{i:03d}.h264"), "wb") as f:
        f.write(data)
      decoded, complete, reason = media.decode_video(codec, data)
      if not only_bytes:
        complete, reason = False, media.NOT_BYTES
      if decoded:
        pictures = [Image.fromarray(f) for f in decoded]
        pictures[0].save(os.path.join(out, f"sample_{i:03d}.gif"), save_all=True,
                         append_images=pictures[1:], duration=int(1000 / codec.fps), loop=0)
      strips.append(media.frame_strip(decoded))
      records.append(_record(i, g, complete, reason, {"prompt": path, "prompt_frames": frames}))
  if strips:
    media.stack_rows(strips).save(os.path.join(out, "grid.png"))
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
