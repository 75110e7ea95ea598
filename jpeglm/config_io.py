"""Loading run configs: `configs/x.py:arg` files, workdir config.json, `--config.k=v` overrides.

Parsing is ml_collections' own config_flags (types are checked against the config);
this module only adds clear errors for unknown keys and JSON round trips.

Every config, from a file or a workdir, passes `settle` once on its way in: a key that an
older run's config.json lacks takes its default from configs/jpeglm.py (the one place for
defaults), and the choices that no single module owns are checked in one line each. The
rest of the code then reads keys directly, without fallbacks of its own.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import ml_collections
from absl import flags
from ml_collections import config_flags

from jpeglm.errors import ConfigError
from jpeglm.runtime import files

OVERRIDE_PREFIX = "--config."


def split_overrides(args: Sequence[str]) -> tuple[list[str], list[str]]:
  """Separates `--config.key=value` overrides from other arguments."""
  overrides, rest = [], []
  for a in args:
    (overrides if a.startswith(OVERRIDE_PREFIX) else rest).append(a)
  return overrides, rest


def _check_override_keys(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> None:
  for o in overrides:
    if "=" not in o:
      raise ConfigError(f"override {o!r} needs a value: {o}=VALUE")
    key = o[len(OVERRIDE_PREFIX):].split("=", 1)[0]
    node = config
    for part in key.split("."):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        raise ConfigError(f"unknown config key {key!r} (from {o})")
      node = node[part]


def _parse(define, argv: Sequence[str]) -> ml_collections.ConfigDict:
  """Runs absl flag parsing of `argv` on a fresh FlagValues holding one `config` flag."""
  argv = ["jpeglm", *argv]
  fv = flags.FlagValues()
  try:
    define(fv, argv)  # a config file is imported here: it may fail in any way
    fv(argv)
  except flags.Error as e:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    # "flag --config=F: Error whilst parsing config file:" + a traceback: keep its last line.
    raise ConfigError(lines[0] + (f" {lines[-1]}" if lines[0].endswith(":") else "")) from None
  except ConfigError:
    raise
  except Exception as e:  # noqa: BLE001 - a broken config file: syntax, names, no get_config
    where = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), "the config")
    raise ConfigError(f"{where.split(':', 1)[0]}: cannot load the config "
                      f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
  return fv.config


def _choices() -> dict[tuple[str, str], tuple[str, ...]]:
  """Settings with a fixed set of values, from the modules that own them (the model checks
  its own: ModelConfig)."""
  from data_pipeline import augment, packing
  return {("data", "packing"): packing.PACKINGS,
          ("data", "augment"): ("auto", "none", *augment.KINDS),
          ("train", "on_nonfinite"): ("stop", "skip")}


def _fill_missing(config: ml_collections.ConfigDict, defaults: ml_collections.ConfigDict
                  ) -> None:
  for key, value in defaults.items():
    if key not in config:
      config[key] = value
    elif isinstance(value, ml_collections.ConfigDict) and isinstance(config[key],
                                                                     ml_collections.ConfigDict):
      _fill_missing(config[key], value)


def settle(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` with defaults for the keys it lacks, its fixed choices checked."""
  codec = config.get("codec", {}).get("name", "jpeg")
  with config.unlocked():  # files' configs come locked: new keys are the defaults' only
    _fill_missing(config, default_config(f"codec={codec}" if codec in ("jpeg", "avc") else ""))
  for (section, key), allowed in _choices().items():
    value = config[section][key]
    if value not in allowed:
      raise ConfigError(f"{section}.{key}={value!r}: choose one of {', '.join(allowed)}")
  return config


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """Loads `path.py[:arg]` and applies overrides (`--config.a.b=v`)."""
  path = spec.split(":", 1)[0]
  if not os.path.isfile(path):
    raise ConfigError(f"config file not found: {path}")

  def define(fv, argv):
    config_flags.DEFINE_config_file("config", flag_values=fv, sys_argv=argv)

  try:
    base = _parse(define, [f"--config={spec}"])
    _check_override_keys(base, overrides)
    return settle(_parse(define, [f"--config={spec}", *overrides]))
  except (ValueError, TypeError) as e:
    if isinstance(e, ConfigError):
      raise
    raise ConfigError(f"{spec}: {str(e).splitlines()[0]}") from None


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: Sequence[str]) -> ml_collections.ConfigDict:
  """Returns a copy of `config` with overrides applied (for configs read from a workdir)."""
  _check_override_keys(config, overrides)
  if not overrides:
    return config  # settled when it was loaded or read
  return settle(_parse(
      lambda fv, argv: config_flags.DEFINE_config_dict(
          "config", ml_collections.ConfigDict(config.to_dict()), flag_values=fv, sys_argv=argv),
      overrides))


def default_config(arg: str = "") -> ml_collections.ConfigDict:
  """`configs/jpeglm.py:arg` from the installed `configs` package."""
  from configs import jpeglm as jpeglm_config
  return jpeglm_config.get_config(arg or None)


def save_config(config: ml_collections.ConfigDict, path: str) -> None:
  # Written whole: the other processes of a run read what process 0 writes.
  files.write_bytes(path, (config.to_json(indent=2, sort_keys=True) + "\n").encode())


# Sections every run config has (configs/jpeglm.py); a workdir's config.json without them is
# damaged, not a config to guess from.
RUN_SECTIONS = ("codec", "tokenizer", "data", "model", "train")


def read_config(path: str) -> ml_collections.ConfigDict:
  if not files.exists(path):
    raise ConfigError(f"no config at {path}: is this a jpeglm workdir?")
  value = files.read_json(path)
  for section in RUN_SECTIONS:
    if not isinstance(value.get(section), dict):
      raise ConfigError(f"{path} is damaged: its '{section}' section is "
                        + ("missing" if section not in value else
                           f"a JSON {type(value[section]).__name__}, not an object"))
  return settle(ml_collections.ConfigDict(value))
