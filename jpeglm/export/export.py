"""`jpeglm export`: a run's checkpoint -> a Hugging Face `LlamaForCausalLM` folder.

Streaming, so that exporting a 7B run never holds two copies of the weights:
  1. the shard of every HF tensor is planned from the config's shapes alone;
  2. parameters are restored from Orbax one leaf at a time (`CheckpointReader.read`);
  3. each leaf is cut into its per-layer HF tensors (reshape + transpose, copied), the leaf
     is dropped, and the tensors go to the current shard's buffer;
  4. a shard is written with safetensors as soon as the next tensor belongs to the next one.
Peak memory is about one leaf (largest for 7B float32: one stacked MLP matrix, 5.8 GB) plus
one shard (`max_shard_bytes`, 4 GB by default), against 27 GB of weights.
"""

from __future__ import annotations

import json
import os

import ml_collections

from jpeglm.training.checkpointing import decode_file
from jpeglm.errors import JpeglmError
from jpeglm.export import hf_layout, tokenizer_files
from jpeglm.export.checkpoint_reader import CheckpointReader
from jpeglm.export.shards import DEFAULT_SHARD_BYTES, ShardWriter, plan_shards
from jpeglm.model.transformer import ModelConfig
from jpeglm.tokenizer import BYTE_OFFSET, ByteTokenizer

BYTES_PER = {"float32": 4, "bfloat16": 2}


def export_workdir(workdir: str, out_dir: str, step: int | None = None,
                   dtype: str = "float32", max_shard_bytes: int = DEFAULT_SHARD_BYTES,
                   config: ml_collections.ConfigDict | None = None) -> CheckpointReader:
  """Writes the HF folder for `workdir`'s checkpoint `step` (default: latest).

  `config` (default: the checkpoint's own) supplies the sampling defaults; the model shape
  always comes from the checkpoint's config.
  """
  if dtype not in BYTES_PER:
    raise JpeglmError(f"--dtype {dtype!r}: choose one of {sorted(BYTES_PER)}")
  reader = CheckpointReader.open(workdir, step)
  run_config = ml_collections.ConfigDict(reader.meta["config"])
  config = config or run_config
  cfg = ModelConfig.from_config(run_config.model)
  reader.check(cfg)
  if os.path.isdir(out_dir) and os.listdir(out_dir):
    raise JpeglmError(f"{out_dir} is not empty: export into a new folder")
  os.makedirs(out_dir, exist_ok=True)

  tokenizer_path = os.path.join(out_dir, "tokenizer.model")
  decode_file(reader.meta["tokenizer"], tokenizer_path)  # the tokenizer the run trained with
  tokenizer = ByteTokenizer.load(tokenizer_path)
  if tokenizer.vocab_size != cfg.vocab_size:
    raise JpeglmError(f"checkpoint tokenizer has {tokenizer.vocab_size} tokens, the model "
                      f"{cfg.vocab_size}")

  _write_weights(reader, cfg, out_dir, dtype, max_shard_bytes)
  _write_json(out_dir, "config.json",
              hf_layout.llama_config(cfg, tokenizer.bos_id, tokenizer.eos_id, dtype))
  _write_json(out_dir, "generation_config.json", _generation_config(config.sample, tokenizer))
  tokenizer_files.write_tokenizer(out_dir, tokenizer, cfg.max_len)
  tokenizer_files.write_readme(out_dir, tokenizer, run_config.codec.name)
  _write_json(out_dir, "jpeglm.json", {
      "codec": run_config.codec.to_dict(), "byte_offset": BYTE_OFFSET,
      "bos_id": tokenizer.bos_id, "eos_id": tokenizer.eos_id, "step": reader.step,
      "run_config": run_config.to_dict()})
  return reader


def _write_weights(reader: CheckpointReader, cfg: ModelConfig, out_dir: str, dtype: str,
                   max_shard_bytes: int) -> None:
  sizes = []
  for entry in hf_layout.ENTRIES:
    n = 1
    for s in hf_layout.hf_shape(entry, cfg):
      n *= s
    sizes += [(entry.hf_name(i), n * BYTES_PER[dtype]) for i in hf_layout.layers_of(entry, cfg)]
  writer = ShardWriter(out_dir, plan_shards(sizes, max_shard_bytes), dtype)
  for entry in hf_layout.ENTRIES:
    leaf = reader.read(entry)  # the only full-size array alive at a time
    for i in hf_layout.layers_of(entry, cfg):
      writer.add(entry.hf_name(i), hf_layout.to_hf(entry, leaf if i is None else leaf[i]))
    del leaf
  writer.close()


def _generation_config(sample: ml_collections.ConfigDict, tokenizer: ByteTokenizer) -> dict:
  temperature = float(sample.temperature)
  out = {"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id,
         "do_sample": temperature > 0}
  if temperature > 0:  # transformers rejects sampling knobs on a greedy config
    out.update(temperature=temperature, top_k=int(sample.top_k), top_p=float(sample.top_p))
  return out


def _write_json(out_dir: str, name: str, value: dict) -> None:
  with open(os.path.join(out_dir, name), "w") as f:
    json.dump(value, f, indent=2)
    f.write("\n")
