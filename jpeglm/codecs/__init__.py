"""Media <-> codec byte streams: JPEG for images (JPEG-LM), H.264 Annex-B for videos (AVC-LM)."""

from jpeglm.codecs.decoded import Decoded
from jpeglm.codecs.errors import CodecError
from jpeglm.codecs.image_input import image_from_bytes, open_image, to_rgb
from jpeglm.codecs.jpeg import JpegCodec

__all__ = ["AvcCodec", "CodecError", "Decoded", "JpegCodec", "image_from_bytes", "make_codec",
           "open_image", "to_rgb"]


def __getattr__(name):
  # PyAV is imported only when a video codec is asked for.
  if name == "AvcCodec":
    from jpeglm.codecs.avc import AvcCodec
    return AvcCodec
  raise AttributeError(name)


def make_codec(codec_config):
  """The codec described by a config's `codec` section (`name` plus constructor arguments)."""
  settings = dict(codec_config)
  name = settings.pop("name", "jpeg")
  if name == "jpeg":
    return JpegCodec(**settings)
  if name == "avc":
    from jpeglm.codecs.avc import AvcCodec
    return AvcCodec(**settings)
  raise CodecError(f"codec.name={name!r}: choose jpeg or avc")
