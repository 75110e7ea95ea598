"""The codec layer's one error type."""

from jpeglm.errors import JpeglmError


class CodecError(JpeglmError, ValueError):
  """Input that is not a usable stream or image at all; the message is one line with the reason."""
