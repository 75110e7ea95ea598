"""Every command answers a damaged file with one line naming it (exit 2), no traceback:
a workdir's config.json, a Hugging Face folder's config.json, index, jpeglm.json and
safetensors, and a prepared dataset's meta.json."""

import json
import os
import shutil

import numpy as np
import pytest

from data_pipeline import sources
from jpeglm.cli import main
from jpeglm.errors import JpeglmError
from tests.train_helpers import CONFIG, train_tiny_tokenizer

LLAMA = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 320,
         "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256}


def _one_error_line(capsys, code) -> str:
  err = capsys.readouterr().err.strip()
  assert code == 2 and len(err.splitlines()) == 1 and err.startswith("jpeglm: error:"), err
  return err


@pytest.fixture
def damaged_workdir(tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "config.json").write_text('{"model": {"d_model": 64,')  # cut off mid-write
  return workdir


@pytest.mark.parametrize("command", [
    # export reads the workdir's config only to apply overrides (else the checkpoint's)
    ["sample"], ["export", "--out", "OUT", "--config.sample.top_k=1"], ["eval", "--images", "IMAGES", "--num-images", "1"],
    ["train", "--config", CONFIG]])
def test_damaged_workdir_config(damaged_workdir, tmp_path, capsys, command):
  command = [str(tmp_path / a) if a in ("OUT", "IMAGES") else a for a in command]
  err = _one_error_line(capsys, main([command[0], "--workdir", str(damaged_workdir),
                                      *command[1:]]))
  assert f"{damaged_workdir / 'config.json'} is damaged: not JSON" in err


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
  """Everything `jpeglm import` reads before the weights: a Llama config and a tokenizer."""
  folder = tmp_path_factory.mktemp("hf")
  (folder / "config.json").write_text(json.dumps(LLAMA))
  train_tiny_tokenizer(folder / "tokenizer.model")
  return folder


def _copy(folder, tmp_path):
  copy = tmp_path / "hf"
  copy.mkdir()
  for name in os.listdir(folder):
    (copy / name).write_bytes((folder / name).read_bytes())
  return copy


def _import(folder, tmp_path):
  return main(["import", "--hf", str(folder), "--workdir", str(tmp_path / "work")])


def test_import_of_a_config_that_is_not_json(hf_folder, tmp_path, capsys):
  folder = _copy(hf_folder, tmp_path)
  (folder / "config.json").write_bytes(b"\x89PNG\r\n\x1a\n not a config")
  err = _one_error_line(capsys, _import(folder, tmp_path))
  assert f"{folder / 'config.json'} is damaged" in err


def test_import_of_a_truncated_safetensors_file(hf_folder, tmp_path, capsys):
  from safetensors.numpy import save_file
  folder = _copy(hf_folder, tmp_path)
  save_file({"model.embed_tokens.weight": np.ones((320, 64), np.float32)},
            str(folder / "model.safetensors"))
  data = (folder / "model.safetensors").read_bytes()
  (folder / "model.safetensors").write_bytes(data[:len(data) // 2])  # an interrupted download
  err = _one_error_line(capsys, _import(folder, tmp_path))
  assert f"{folder / 'model.safetensors'} is not a readable safetensors file" in err
  (folder / "model.safetensors").write_bytes(data[:4])  # too short for the header length
  err = _one_error_line(capsys, _import(folder, tmp_path))
  assert f"{folder / 'model.safetensors'} is not a readable safetensors file" in err
  assert not os.path.exists(tmp_path / "work" / "checkpoints")


def test_import_of_a_damaged_index_or_export_config(hf_folder, tmp_path, capsys):
  folder = _copy(hf_folder, tmp_path)
  (folder / "model.safetensors.index.json").write_text('{"metadata": {}}')
  err = _one_error_line(capsys, _import(folder, tmp_path))
  assert f"{folder / 'model.safetensors.index.json'} is damaged: it has no weight_map" in err
  (folder / "jpeglm.json").write_text("[]")
  err = _one_error_line(capsys, _import(folder, tmp_path))
  assert f"{folder / 'jpeglm.json'} is damaged: holds a JSON list" in err


def test_prepared_dataset_with_a_damaged_meta(tmp_path):
  (tmp_path / "train-00000.arrayrecord").write_bytes(b"")
  (tmp_path / "meta.json").write_text('{"token_dtype": "uint16"')
  with pytest.raises(JpeglmError, match=f"{tmp_path / 'meta.json'} is damaged: not JSON"):
    sources.open_source(f"arrayrecord:{tmp_path}/train-*.arrayrecord", "image")
  (tmp_path / "meta.json").write_text('{"token_dtype": "uint16"}')
  with pytest.raises(JpeglmError, match="is damaged: it has no tokenizer_sha256"):
    sources.open_source(f"arrayrecord:{tmp_path}/train-*.arrayrecord", "image")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, hf_folder):
  from jpeglm.config_io import load_config
  from jpeglm.train import train_and_evaluate
  from tests.train_helpers import tiny_overrides

  workdir = tmp_path_factory.mktemp("trained") / "run"
  train_and_evaluate(load_config(CONFIG, tiny_overrides(
      str(hf_folder / "tokenizer.model"), steps=2, **{"train.checkpoint_every": 1})),
      str(workdir))
  return workdir


@pytest.mark.parametrize("command", [["sample", "--num-samples", "1"], ["export", "--out", "OUT"]])
def test_damaged_latest_checkpoint_for_sample_and_export(trained, tmp_path, capsys, command):
  workdir = tmp_path / "run"
  shutil.copytree(trained, workdir)
  shutil.rmtree(workdir / "checkpoints" / "2" / "state")
  (workdir / "checkpoints" / "2" / "state").mkdir()  # emptied, as by a disk that lost it
  command = [str(tmp_path / a) if a == "OUT" else a for a in command]
  err = _one_error_line(capsys, main([command[0], "--workdir", str(workdir), *command[1:]]))
  assert f"checkpoint 2 in {workdir / 'checkpoints'} is damaged" in err
  assert "pick another with --step" in err


@pytest.mark.parametrize("text,match", [
    ("def get_config(:\n", "SyntaxError"),
    ("def get_config(arg=None):\n  return undefined_name\n", "NameError"),
    ('{"model": {"d_model": 64,', "SyntaxError"),  # a JSON file given as the config
])
def test_config_file_that_does_not_load(tmp_path, capsys, text, match):
  path = tmp_path / "config.py"
  path.write_text(text)
  err = _one_error_line(capsys, main(["info", "--config", str(path)]))
  assert f"{path}: cannot load the config ({match}" in err


def test_config_argument_error_keeps_its_reason(capsys):
  err = _one_error_line(capsys, main(["info", "--config", CONFIG.replace("tiny", "huge")]))
  assert "size='huge': choose one of" in err


@pytest.mark.parametrize("command", [["sample"], ["train", "--config", CONFIG]])
def test_workdir_config_missing_a_section(tmp_path, capsys, command):
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "config.json").write_text('{"model": 3}')  # JSON, but not a run's config
  err = _one_error_line(capsys, main([command[0], "--workdir", str(workdir), *command[1:]]))
  assert f"{workdir / 'config.json'} is damaged: its 'codec' section is missing" in err


def test_a_file_where_a_folder_goes(tmp_path, capsys):
  a_file = tmp_path / "a_file"
  a_file.write_text("x")
  for argv in (["train", "--config", CONFIG, "--workdir", str(a_file)],
               ["prepare", "--config", CONFIG, "--out", str(a_file)]):
    err = _one_error_line(capsys, main(argv))
    assert f"{a_file}: File exists" in err
  folder = tmp_path / "folder"
  folder.mkdir()
  code = main(["tokenizer", "train", "--source", "builtin:photos", "--num-files", "2",
               "--vocab-size", "300", "--out", str(folder)])
  err = capsys.readouterr().err.strip().splitlines()  # after the encoding progress bar
  assert code == 2 and err[-1] == f"jpeglm: error: {folder}: Is a directory", err
  assert "Traceback" not in "\n".join(err)


def test_sample_counts_below_one(tmp_path, capsys):
  for flag in ("--num-samples", "--batch-size"):
    err = _one_error_line(capsys, main(["sample", "--workdir", str(tmp_path), flag, "0"]))
    assert f"{flag} 0: must be >= 1" in err
