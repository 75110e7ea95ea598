"""One source item -> one training document: decode, RGB, crop, codec, tokenize, BOS..EOS.

Runs inside Grain worker processes, so the encoder pickles as plain settings and builds its
codec and tokenizer lazily in each process. A bad item never raises here: it becomes an
`{"error": reason}` record that `bad_inputs.SkipBadInputs` counts and drops. With
`max_seconds_per_file` > 0 the decode + encode runs in a helper process with that deadline
(data_pipeline.bounded_encode): a slower file is abandoned and skipped the same way.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from typing import Any

import numpy as np
import sentencepiece as spm
from PIL import Image

from data_pipeline import augment, bounded_encode, sources
from jpeglm.codecs import CodecError, image_from_bytes, make_codec, open_image, to_rgb
from jpeglm.tokenizer import ByteTokenizer


class DocumentEncoder:
  """`(source_index, item, stream_index) -> {"tokens", "source"} | {"error", "source"}`."""

  def __init__(self, codec_settings: dict, tokenizer_model: bytes | None, item_kind: str,
               augment: str, seed: int, tfds_feature: str = "image", token_dtype: str = "",
               max_seconds_per_file: float = 0):
    self.codec_settings = dict(codec_settings)
    self.tokenizer_model = tokenizer_model
    self.item_kind = item_kind
    self.augment = augment
    self.seed = seed
    self.tfds_feature = tfds_feature
    self.token_dtype = token_dtype
    self.max_seconds_per_file = float(max_seconds_per_file or 0)
    self._codec = None
    self._tokenizer = None

  def __getstate__(self) -> dict:
    # Built objects (SentencePiece, codecs) stay behind; each worker rebuilds its own.
    state = {**self.__dict__, "_codec": None, "_tokenizer": None}
    state.pop("_settings_pickle", None)
    return state

  @property
  def codec(self):
    if self._codec is None:
      self._codec = make_codec(self.codec_settings)
    return self._codec

  @property
  def tokenizer(self) -> ByteTokenizer | None:
    if self._tokenizer is None and self.tokenizer_model is not None:
      self._tokenizer = ByteTokenizer(spm.SentencePieceProcessor(model_proto=self.tokenizer_model))
    return self._tokenizer

  @property
  def is_video(self) -> bool:
    return self.codec_settings.get("name") == "avc"

  # ---- media -> codec bytes -------------------------------------------------------------

  def _image_bytes(self, image: Image.Image, rng: np.random.Generator | None) -> bytes:
    if rng is not None and self.augment == "affine":
      image = augment.random_affine(image, rng)
    elif rng is not None:
      image = augment.random_square_crop(to_rgb(image), rng)
    return self.codec.encode(image)

  def _video_bytes(self, path: str, rng: np.random.Generator | None) -> bytes:
    if rng is None:
      return self.codec.encode(path)
    frames = augment.random_zoom_frames(self.codec.frames_of(path), rng)
    return self.codec.encode_frames(frames)

  def _video_bytes_from_memory(self, data: bytes, name: str) -> bytes:
    if not data:
      raise CodecError(f"{name}: empty video bytes")
    # PyAV probes containers best from a real file; the temp file lives only for this call.
    with tempfile.NamedTemporaryFile(suffix=".video") as f:
      f.write(data)
      f.flush()
      return self.codec.encode(f.name)

  def codec_bytes(self, item: Any, name: str, rng: np.random.Generator | None) -> bytes:
    """The codec stream of a FILE or TFDS_RECORD item (raises CodecError for bad input)."""
    if self.item_kind == sources.STREAM:  # {"name", "data"} read from a tar or parquet shard
      if self.is_video:
        return self._video_bytes_from_memory(item["data"], name)
      return self._image_bytes(image_from_bytes(item["data"], self.codec.max_pixels, name,
                                                self.codec_settings.get("size")), rng)
    if self.item_kind == sources.FILE:
      if self.is_video:
        if os.path.getsize(item) == 0:
          raise CodecError(f"{item}: empty file")
        return self._video_bytes(item, rng)
      min_side = self.codec_settings.get("size")
      return self._image_bytes(open_image(item, self.codec.max_pixels, min_side), rng)
    value = item[self.tfds_feature]
    if self.is_video:
      return self._video_bytes_from_memory(bytes(value), name)
    if _is_pixels(value):
      return self._image_bytes(Image.fromarray(value), rng)  # HxW: grayscale (builtin:digits)
    return self._image_bytes(image_from_bytes(bytes(value), self.codec.max_pixels, name), rng)

  # ---- the whole item -------------------------------------------------------------------

  def codec_bytes_at(self, item: Any, name: str, stream_index: int) -> bytes:
    rng = augment.item_rng(self.seed, stream_index) if self.augment else None
    return self.codec_bytes(item, name, rng)

  def _bounded_codec_bytes(self, item: Any, name: str, stream_index: int) -> bytes:
    if not hasattr(self, "_settings_pickle"):  # the helper needs no tokenizer and no deadline
      helper_encoder = DocumentEncoder.__new__(DocumentEncoder)
      helper_encoder.__dict__.update({**self.__getstate__(), "tokenizer_model": None,
                                      "max_seconds_per_file": 0})
      self._settings_pickle = pickle.dumps(helper_encoder)
    status, value = bounded_encode.helper_for(self._settings_pickle).run(
        (item, name, stream_index), self.max_seconds_per_file)
    if status == "timeout":
      raise CodecError(f"{name}: not decoded and encoded within data.max_seconds_per_file="
                       f"{self.max_seconds_per_file:g}; abandoned")
    if status == "error":
      raise CodecError(value)
    return value

  def item_name(self, source_index: int, item: Any) -> str:
    if self.item_kind == sources.STREAM:
      return item["name"]
    if self.item_kind == sources.FILE:
      return item
    path = item.get("path") if isinstance(item, dict) else None  # media_folder datasets keep it
    if isinstance(path, bytes):
      path = path.decode("utf-8", "replace")
    return path or f"record {source_index}"

  def __call__(self, source_index: int, item: Any, stream_index: int) -> dict:
    name = self.item_name(source_index, item)
    if self.item_kind == sources.TOKENS:
      return {"tokens": self._stored_tokens(item), "source": name}
    if self.item_kind == sources.STREAM and "error" in item:  # the shard could not be read
      return {"error": item["error"], "source": name}
    try:
      if self.max_seconds_per_file > 0 and not self._pixels_in_memory(item):
        data = self._bounded_codec_bytes(item, name, stream_index)
      else:
        data = self.codec_bytes_at(item, name, stream_index)
    except bounded_encode.HelperUnavailable:
      raise  # the machine's fault, not this file's: never counted as a skipped input
    except Exception as e:  # noqa: BLE001 - any failure on one file must only skip that file
      reason = str(e).splitlines()[0] if str(e) else type(e).__name__
      return {"error": reason if name in reason else f"{name}: {reason}", "source": name}
    if self.tokenizer is None:
      return {"codec_bytes": data, "source": name}
    return {"tokens": np.asarray(self.tokenizer.encode_document(data), np.int32), "source": name}

  def _pixels_in_memory(self, item: Any) -> bool:
    """An item that is decoded pixels already (builtin:digits): no decoder to hang, so the
    deadline's helper process would only add its round trip to a ~0.2 ms encode."""
    return (self.item_kind == sources.TFDS_RECORD and not self.is_video
            and isinstance(item, dict) and _is_pixels(item.get(self.tfds_feature))
            and item[self.tfds_feature].size <= self.codec.max_pixels * 3)

  def _stored_tokens(self, record: bytes) -> np.ndarray:
    return np.frombuffer(record, dtype=self.token_dtype).astype(np.int32)


def _is_pixels(value: Any) -> bool:
  """A record's image feature that holds decoded pixels (HxW or HxWxC uint8), not a file."""
  return isinstance(value, np.ndarray) and value.dtype == np.uint8 and value.ndim in (2, 3)
