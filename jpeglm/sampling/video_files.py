"""A sampled video on disk, as a user watches it: the raw stream, an MP4, a GIF, a frame strip.

Per sample NNN: `sample_NNN.h264` (the bytes as sampled), `sample_NNN.mp4` (the same coded
frames remuxed, no re-encode: jpeglm.codecs.avc_container), `sample_NNN.gif` and
`sample_NNN.png` (every decoded frame side by side). The MP4 and GIF are written whenever
some frames decode, valid or not: a damaged sample is worth seeing too.
A prompted sample's grid row shows the prompt's frames, then the continued frames, then the
true frames that followed the prompt.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageDraw

from jpeglm.codecs import AvcCodec, CodecError, Decoded
from jpeglm.codecs.avc_container import to_mp4
from jpeglm.sampling import media

STRIP_HEIGHT = 72
GROUP_GAP = 12
LABEL_HEIGHT = 14


def decode_sample(codec: AvcCodec, data: bytes) -> Decoded:
  """What decodes of a sample; a stream with no parameter sets gives no frames and a reason."""
  try:
    return codec.decode(data)
  except CodecError as e:
    return Decoded(frames=[], complete=False, reason=str(e))


def sample_stream(codec: AvcCodec, tokenizer, g, syntax_safe: bool) -> tuple[bytes, bool]:
  """(the sample's H.264 bytes, whether every token stood for bytes). A syntax-safe sample
  cut short by the context is cut back to its last whole frame: every byte before the cut
  kept the stream valid, so what it finished decodes."""
  data, only_bytes = media.sampled_bytes(tokenizer, g.prompt, g.tokens)
  if syntax_safe and not g.ended_with_eos and only_bytes:
    data = codec.whole_frames(data)
  return data, only_bytes


def verdict(decoded: Decoded, only_bytes: bool, prompt_frames: int) -> tuple[bool, str]:
  """(valid, why not): every generated token stands for bytes, the whole stream decodes (no
  missing slices, no decoder error line), and it has frames beyond the prompt's. The last
  rule matters: a prompt alone decodes cleanly, and so does one whose last slice the model
  padded with bytes (with one macroblock per slice the decoder stops after it and ignores
  them)."""
  if not only_bytes:
    return False, media.NOT_BYTES
  if not decoded.complete:
    return False, decoded.reason
  if len(decoded.frames or []) <= prompt_frames:
    return False, f"no frame added to the {prompt_frames}-frame prompt"
  return True, ""


def write_sample(out: str, index: int, codec: AvcCodec, data: bytes, decoded: Decoded) -> dict:
  """Writes sample `index`'s files into `out`; returns what samples.jsonl records of them."""
  stem = os.path.join(out, f"sample_{index:03d}")
  with open(stem + ".h264", "wb") as f:
    f.write(data)
  frames = decoded.frames or []
  record = {"frames_decoded": len(frames), "decoder_errors": len(decoded.errors),
            "first_decoder_error": decoded.errors[0] if decoded.errors else "",
            "mp4": None, "gif": None}
  if frames:
    try:
      mp4 = to_mp4(data, codec.fps)
    except CodecError as e:
      record["mp4_error"] = str(e)
    else:
      with open(stem + ".mp4", "wb") as f:
        f.write(mp4)
      record["mp4"] = os.path.basename(stem + ".mp4")
    pictures = [Image.fromarray(f) for f in frames]
    pictures[0].save(stem + ".gif", save_all=True, append_images=pictures[1:],
                     duration=int(1000 / codec.fps), loop=0)
    record["gif"] = os.path.basename(stem + ".gif")
  media.frame_strip(frames, STRIP_HEIGHT).save(stem + ".png")
  return record


def continuation_row(prompt: list[np.ndarray], continued: list[np.ndarray],
                     truth: list[np.ndarray]) -> Image.Image:
  """prompt frames | continued frames | true frames, one strip each, labelled above. Missing
  continued frames are grey tiles, so that rows stay aligned."""
  groups = [("prompt", prompt), ("continued", continued), ("true", truth)]
  missing = len(truth) - len(continued)
  shown = list(continued) + ([np.full_like(truth[0], 128)] * missing if missing > 0 else [])
  strips = [media.frame_strip(frames, STRIP_HEIGHT) for frames in (prompt, shown, truth)]
  width = sum(s.width for s in strips) + GROUP_GAP * (len(strips) - 1)
  canvas = Image.new("RGB", (width, LABEL_HEIGHT + STRIP_HEIGHT), (255, 255, 255))
  draw = ImageDraw.Draw(canvas)
  x = 0
  for (name, frames), strip in zip(groups, strips):
    draw.text((x + 2, 1), f"{name} ({len(frames)} frames)", fill=(0, 0, 0))
    canvas.paste(strip, (x, LABEL_HEIGHT))
    x += strip.width + GROUP_GAP
  return canvas


def prompt_and_truth(codec: AvcCodec, stream: bytes, frames: int
                     ) -> tuple[list[np.ndarray], list[np.ndarray]]:
  """The decoded frames of a prompt cut at `frames`, and the true frames after them."""
  every = codec.decode(stream).frames
  return every[:frames], every[frames:]
