"""The project's user-facing error type: the CLI prints these as one line, no traceback."""


class JpeglmError(Exception):
  """Bad input from a user (a file, a value, a config); the message names it."""


class ConfigError(JpeglmError, ValueError):
  """A config file, argument or override that cannot be used."""
