"""The one parser of a config file's argument, `configs/x.py:key=value,key=value` (big_vision's
variants): each config file names its keys, their defaults and the values each may take."""

from __future__ import annotations

from collections.abc import Callable, Sequence


def parse_config_arg(arg: str | None, allowed: dict[str, tuple[str, Sequence[str] | Callable]]
                     ) -> dict[str, str]:
  """`allowed`: key -> (default, the values it may take or a check of the value). Unknown keys
  and refused values raise ValueError naming them and what is allowed."""
  values = {key: default for key, (default, _) in allowed.items()}
  for item in filter(None, (arg or "").split(",")):
    key, _, value = item.partition("=")
    if key not in allowed:
      raise ValueError(f"unknown config argument {key!r} in {arg!r}; use "
                       + ", ".join(f"{k}=..." for k in allowed))
    values[key] = value
  for key, (_, choices) in allowed.items():
    if callable(choices):
      if not choices(values[key]):
        raise ValueError(f"{key}={values[key]!r}: {choices.__doc__ or 'not allowed'}")
    elif values[key] not in choices:
      raise ValueError(f"{key}={values[key]!r}: choose one of {', '.join(choices)}")
  return values
