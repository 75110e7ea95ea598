"""`jpeglm import`: a Hugging Face Llama folder -> a jpeglm workdir at step 0.

The workdir gets config.json, tokenizer.model and an Orbax checkpoint in the trainer's own
format: `state` = {step 0, the params, a fresh optimizer state}, `data` = the data
iterator's starting state, `meta`. `jpeglm train` resumes from it (fine-tuning from the
imported weights) and `jpeglm sample` reads it.

The run config is `--config` when given (the HF folder must then match its model shape,
vocabulary and tokenizer: one-line errors otherwise), else the `run_config` of a folder we
exported, else the paper's `configs/jpeglm.py:size=7b` with the model shape taken from the
HF config.json.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jpeglm.training import checkpointing
from jpeglm.training import optimizer as opt_lib
from jpeglm.training import run_setup
from jpeglm.config_io import apply_overrides, default_config
from jpeglm.errors import JpeglmError
from jpeglm.export import hf_layout
from jpeglm.export.shards import HfWeights
from jpeglm.model.transformer import DTYPES, ModelConfig
from jpeglm.runtime import files
from jpeglm.tokenizer import ByteTokenizer

ROTARY_BUFFERS = ("rotary_emb.inv_freq",)  # saved by old transformers; recomputed here
# Our model keys that fix the weights' shapes, and their names in an HF config.json.
MODEL_KEYS = {"vocab_size": "vocab_size", "d_model": "hidden_size",
              "n_layers": "num_hidden_layers", "n_heads": "num_attention_heads",
              "n_kv_heads": "num_key_value_heads", "d_ff": "intermediate_size"}


def import_hf(hf_dir: str, workdir: str, config: ml_collections.ConfigDict | None = None,
              overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """Writes the workdir; returns the run config it saved. `overrides` (`--config.k=v`)
  apply to the derived config when `config` is None."""
  hf_config = _read_json(hf_dir, "config.json")
  model_keys = hf_layout.model_keys_from_llama(hf_config, hf_dir)
  config = _run_config(hf_dir, model_keys, config, overrides)
  cfg = ModelConfig.from_config(config.model)
  tokenizer_path = _tokenizer_path(hf_dir, config, cfg)
  if os.path.isdir(os.path.join(workdir, run_setup.CHECKPOINT_DIR)):
    raise JpeglmError(f"{workdir} already holds checkpoints: import into a new --workdir")

  params = read_params(HfWeights(hf_dir), cfg, hf_config.get("tie_word_embeddings", False))
  os.makedirs(workdir, exist_ok=True)
  shutil.copyfile(tokenizer_path, os.path.join(workdir, run_setup.TOKENIZER_FILE))
  config.tokenizer.path = ""  # the workdir's copy is the run's tokenizer from now on
  run_setup.write_config(config, workdir)
  tokenizer = ByteTokenizer.load(os.path.join(workdir, run_setup.TOKENIZER_FILE))

  optimizer = opt_lib.make_optimizer(config.train)
  state = {"step": jnp.zeros((), jnp.int32), "params": params,
           "opt_state": jax.jit(optimizer.init)(params)}
  checkpointer = checkpointing.Checkpointer(
      os.path.join(workdir, run_setup.CHECKPOINT_DIR), asynchronous=False)
  try:
    # No data state: a run resumed from an imported checkpoint reads its data from the start.
    checkpointer.save(0, state, None, {
        "config": config.to_dict(),
        "tokenizer": checkpointing.encode_file(tokenizer.path), "step": 0})
  finally:
    checkpointer.close()
  return config


def read_params(weights: HfWeights, cfg: ModelConfig, tied: bool = False) -> dict:
  """Our params tree from HF tensors, in `cfg.param_dtype`; every tensor must be used."""
  expected = {entry.hf_name(i) for entry in hf_layout.ENTRIES
              for i in hf_layout.layers_of(entry, cfg)}
  if tied:
    expected.discard("lm_head.weight")
  have = {n for n in weights.names() if not n.endswith(ROTARY_BUFFERS)}
  if expected - have:
    raise JpeglmError(f"{weights.hf_dir}: tensor {sorted(expected - have)[0]} is missing "
                      f"({len(expected - have)} of {len(expected)} missing)")
  if have - expected - {"lm_head.weight"}:
    raise JpeglmError(f"{weights.hf_dir}: unexpected tensor {sorted(have - expected)[0]} "
                      "(not a plain Llama layout)")
  dtype = DTYPES[cfg.param_dtype]
  params: dict = {}
  for entry in hf_layout.ENTRIES:
    name = "model.embed_tokens.weight" if tied and entry.path == ("lm_head",) else None
    leaf = np.empty(hf_layout.leaf_shape(entry, cfg), np.float32)
    for i in hf_layout.layers_of(entry, cfg):
      # A tied head is the embedding, laid out as lm_head.weight would be ([V, D]).
      layer = hf_layout.from_hf(entry, weights.get(name or entry.hf_name(i)), cfg)
      if i is None:
        leaf[...] = layer
      else:
        leaf[i] = layer
    node = params
    for key in entry.path[:-1]:
      node = node.setdefault(key, {})
    node[entry.path[-1]] = jnp.asarray(leaf, dtype)
  return params


def _run_config(hf_dir: str, model_keys: dict, given: ml_collections.ConfigDict | None,
                overrides: Sequence[str]) -> ml_collections.ConfigDict:
  if given is None:
    exported = os.path.join(hf_dir, "jpeglm.json")
    if os.path.exists(exported):
      run_config = _read_json(hf_dir, "jpeglm.json").get("run_config")
      if not isinstance(run_config, dict):
        raise JpeglmError(f"{exported} is damaged: it has no run_config")
      given = ml_collections.ConfigDict(run_config)
    else:
      given = default_config("size=7b")
    given.model.update(model_keys)
    given.tokenizer.vocab_size = model_keys["vocab_size"]
  config = apply_overrides(ml_collections.ConfigDict(given.to_dict()), overrides)
  for key, hf_key in MODEL_KEYS.items():
    if config.model[key] != model_keys[key]:
      raise JpeglmError(f"{hf_dir}/config.json has {hf_key}={model_keys[key]}, the config "
                        f"has model.{key}={config.model[key]}")
  return config


def _tokenizer_path(hf_dir: str, config: ml_collections.ConfigDict, cfg: ModelConfig) -> str:
  path = os.path.join(hf_dir, "tokenizer.model")
  if not os.path.exists(path):
    path = config.tokenizer.path
    if not path:
      raise JpeglmError(f"{hf_dir} has no tokenizer.model: pass "
                        "--config.tokenizer.path=PATH (a SentencePiece byte BPE)")
  tokenizer = ByteTokenizer.load(path)
  if tokenizer.vocab_size != cfg.vocab_size:
    raise JpeglmError(f"tokenizer {path} has {tokenizer.vocab_size} tokens, the model's "
                      f"vocab_size is {cfg.vocab_size}")
  return path



def _read_json(folder: str, name: str) -> dict:
  path = os.path.join(folder, name)
  if not os.path.isfile(path):
    raise JpeglmError(f"{folder} has no {name}: not a Hugging Face model folder")
  return files.read_json(path)
