"""What decoding returns: the media that could be recovered, and whether the stream was whole."""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image


@dataclasses.dataclass(frozen=True)
class Decoded:
  """Result of `JpegCodec.decode` (`image`) or `AvcCodec.decode` (`frames`).

  `complete` is True only when the stream is whole and every part of it decodes cleanly
  (for JPEG: every restart interval's Huffman data, markers in order, EOI at the end).
  Damaged or truncated streams still give what decodes, with `complete=False` and a `reason`.
  """

  image: Image.Image | None = None
  complete: bool = False
  frames: list[np.ndarray] | None = None
  reason: str = ""
  # JPEG: pixel rows from the top whose MCUs all decode cleanly. AVC: frames fully present.
  valid_rows: int = 0
  valid_frames: int = 0
  # AVC: the decoder's error lines (FFmpeg reports damage in its log, not by raising).
  errors: tuple[str, ...] = ()
