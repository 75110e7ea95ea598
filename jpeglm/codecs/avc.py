"""AVC-LM's video codec: raw H.264 Annex-B with the paper's libx264 settings, via PyAV.

The first `seconds` of a video at `fps`, letterboxed to `width` x `height`, encoded
single-threaded (threads change the bytes) as baseline profile, constant QP, no B-frames,
one macroblock per slice. SPS/PPS stay in the stream; x264's version SEI (600 bytes of
settings text, the same in every file) is dropped unless `keep_sei`.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Sequence

import av
import av.logging
import numpy as np
from PIL import Image, ImageOps

from jpeglm.codecs import h264_bitstream as h264
from jpeglm.codecs.decoded import Decoded
from jpeglm.codecs.errors import CodecError
from jpeglm.codecs.image_input import DEFAULT_MAX_PIXELS, to_rgb

_VCL = (h264.NAL_SLICE, h264.NAL_IDR)
_BLACK = (0, 0, 0)


@contextlib.contextmanager
def _ffmpeg_errors():
  """Collects FFmpeg's error log lines (decoders report damage there, not by raising)."""
  before = av.logging.get_level()
  av.logging.set_level(av.logging.ERROR)
  try:
    with av.logging.Capture(local=False) as logs:
      yield logs
  finally:
    av.logging.set_level(before)


class AvcCodec:
  """Videos <-> the paper's H.264 byte streams. Settings are fixed per instance."""

  def __init__(self, width: int = 256, height: int = 144, fps: int = 3, seconds: float = 5,
               qp: int = 37, profile: str = "baseline", slice_max_mbs: int = 1, refs: int = 3,
               keep_sei: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS):
    for name, value in (("width", width), ("height", height)):
      if not isinstance(value, int) or value < 16 or value % 2:
        raise CodecError(f"AvcCodec {name}={value!r}: must be an even integer >= 16")
    if fps <= 0 or seconds <= 0:
      raise CodecError(f"AvcCodec fps={fps!r}, seconds={seconds!r}: both must be positive")
    if not 0 <= qp <= 51:
      raise CodecError(f"AvcCodec qp={qp!r}: H.264 QP is 0..51")
    self.width, self.height, self.fps, self.seconds = width, height, fps, seconds
    self.qp, self.profile, self.slice_max_mbs, self.refs = qp, profile, slice_max_mbs, refs
    self.keep_sei = keep_sei
    self.max_pixels = max_pixels

  def __repr__(self) -> str:
    return (f"AvcCodec(width={self.width}, height={self.height}, fps={self.fps}, "
            f"seconds={self.seconds}, qp={self.qp})")

  @property
  def num_frames(self) -> int:
    return int(round(self.fps * self.seconds))

  @property
  def mbs_per_frame(self) -> int:
    return -(-self.width // 16) * -(-self.height // 16)

  def x264_params(self) -> str:
    """The paper's libx264 settings, as x264's own option string."""
    return ":".join([
        f"qp={self.qp}", "bframes=0", f"slice-max-mbs={self.slice_max_mbs}", "trellis=0",
        "me=dia", "subme=0", "psy=0", "mixed-refs=0", "fast-pskip=0", "partitions=none",
        f"ref={self.refs}", "threads=1", "sliced-threads=0", "lookahead-threads=1"])

  # ---- frames in --------------------------------------------------------------------------

  def letterbox(self, frame: Image.Image | np.ndarray) -> Image.Image:
    """Scaled to fit `width` x `height` with the aspect kept, padded with black."""
    return ImageOps.pad(to_rgb(frame), (self.width, self.height), Image.Resampling.BICUBIC,
                        color=_BLACK)

  def _frames_from_file(self, path: str) -> list[Image.Image]:
    try:
      # Damaged metadata bytes are replaced: they must not cost the pictures.
      container = av.open(path, metadata_errors="replace")
    except (av.error.FFmpegError, OSError) as e:
      raise CodecError(f"{path}: not a readable video ({str(e).splitlines()[0]})") from None
    with container:
      if not container.streams.video:
        raise CodecError(f"{path}: has no video stream")
      stream = container.streams.video[0]
      if stream.codec_context is None:  # a codec id FFmpeg does not know (a damaged header)
        raise CodecError(f"{path}: its video stream has no decoder (unknown codec)")
      width, height = stream.codec_context.width, stream.codec_context.height
      if width * height > self.max_pixels:
        raise CodecError(f"{path}: declared size {width}x{height} exceeds the "
                         f"{self.max_pixels}-pixel limit")
      picked: list[Image.Image] = []
      first_time = None
      try:
        for frame in container.decode(stream):
          t = float(frame.time) if frame.time is not None else len(picked) / self.fps
          first_time = t if first_time is None else first_time
          # Each target time k/fps takes the first frame at or after it.
          while len(picked) < self.num_frames and t - first_time >= len(picked) / self.fps - 1e-6:
            picked.append(self.letterbox(frame.to_image()))
          if len(picked) >= self.num_frames:
            break
      except av.error.FFmpegError as e:
        if not picked:
          raise CodecError(f"{path}: undecodable video ({str(e).splitlines()[0]})") from None
    if not picked:
      raise CodecError(f"{path}: no decodable frames")
    return picked

  def frames_of(self, video, source_fps: float | None = None) -> list[Image.Image]:
    """Letterboxed frames at `fps` for the first `seconds` of a file path or frame sequence.

    A sequence is taken to be at `source_fps` (default: already at `fps`).
    """
    if isinstance(video, (str, os.PathLike)):
      return self._frames_from_file(os.fspath(video))
    frames = list(video)
    if not frames:
      raise CodecError("no frames given")
    step = (source_fps or self.fps) / self.fps
    indices = []
    k = 0
    while k < self.num_frames and round(k * step) < len(frames):
      indices.append(int(round(k * step)))
      k += 1
    return [self.letterbox(frames[i]) for i in indices]

  # ---- encoding ---------------------------------------------------------------------------

  def encode(self, video, source_fps: float | None = None) -> bytes:
    """A video file path or a sequence of frames -> raw H.264 Annex-B bytes."""
    return self.encode_frames(self.frames_of(video, source_fps))

  def encode_frames(self, frames: Sequence[Image.Image]) -> bytes:
    """Encodes frames that are already `width` x `height` RGB (see `frames_of`)."""
    out = io.BytesIO()
    container = av.open(out, "w", format="h264")
    stream = container.add_stream(
        "libx264", rate=self.fps,
        options={"profile": self.profile, "qp": str(self.qp), "x264-params": self.x264_params()})
    stream.width, stream.height, stream.pix_fmt = self.width, self.height, "yuv420p"
    stream.codec_context.thread_count = 1
    for i, image in enumerate(frames):
      frame = av.VideoFrame.from_image(image)
      frame.pts = i
      for packet in stream.encode(frame):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)
    container.close()
    data = out.getvalue()
    return data if self.keep_sei else self._without_sei(data)

  @staticmethod
  def _without_sei(data: bytes) -> bytes:
    return b"".join(data[n.start:n.end] for n in h264.split_nals(data)
                    if n.kind(data) != h264.NAL_SEI)

  # ---- structure --------------------------------------------------------------------------

  def describe(self, data: bytes) -> dict:
    """What the stream holds, read from its NAL units: SPS fields and per-frame slices."""
    nals = h264.split_nals(data)
    if not nals:
      raise CodecError("not an H.264 Annex-B stream: no start code found")
    kinds = [n.kind(data) for n in nals]
    if h264.NAL_SPS not in kinds:
      raise CodecError("H.264 stream has no SPS (sequence parameter set): cannot decode")
    if h264.NAL_PPS not in kinds:
      raise CodecError("H.264 stream has no PPS (picture parameter set): cannot decode")
    sps_nal = nals[kinds.index(h264.NAL_SPS)]
    sps = h264.parse_sps(data[sps_nal.payload_start:sps_nal.end])
    if sps.mbs_per_frame * 256 > self.max_pixels:
      raise CodecError(f"declared size {sps.width_mbs * 16}x{sps.height_mbs * 16} exceeds the "
                       f"{self.max_pixels}-pixel limit")
    frames: list[dict] = []
    for n, kind in zip(nals, kinds):
      if kind not in _VCL:
        continue
      try:
        first_mb, slice_type = h264.slice_start(data[n.payload_start:n.end])
      except CodecError:  # cut or damaged inside its header: its frame is not whole, the
        first_mb, slice_type = None, "?"  # frames before it still decode
      if first_mb == 0 or not frames:
        frames.append({"start": n.start, "slices": 0, "types": set(), "mbs_in_order": True,
                       "last_mb": -1, "end": n.end})
      f = frames[-1]
      f["mbs_in_order"] &= first_mb is not None and first_mb > f["last_mb"]
      f["slices"] += 1
      f["types"].add(slice_type)
      f["last_mb"] = f["last_mb"] if first_mb is None else first_mb
      f["end"] = n.end
    return {"profile_idc": sps.profile_idc, "level_idc": sps.level_idc,
            "width": sps.width_mbs * 16, "height": sps.height_mbs * 16,
            "mbs_per_frame": sps.mbs_per_frame, "max_num_ref_frames": sps.max_num_ref_frames,
            "nal_kinds": kinds, "frames": frames}

  # ---- decoding ---------------------------------------------------------------------------

  def decode(self, data: bytes) -> Decoded:
    """Bytes -> Decoded(frames, complete). Truncated or damaged streams give the frames that
    decode; a stream without SPS/PPS or start codes raises CodecError."""
    data = bytes(data)
    info = self.describe(data)
    decoded, errors = [], []
    context = av.CodecContext.create("h264", "r")
    context.thread_count = 1  # keeps decoder log lines on this thread's capture
    with _ffmpeg_errors() as logs:
      try:
        for packet in [*context.parse(data), *context.parse(None)]:
          decoded.extend(context.decode(packet))
        decoded.extend(context.decode(None))
      except av.error.FFmpegError as e:
        errors.append(str(e).splitlines()[0])
    errors.extend(message.strip() for _, _, message in logs)
    frames = [f.to_ndarray(format="rgb24") for f in decoded]
    stream_frames = info["frames"]
    slice_counts = {f["slices"] for f in stream_frames}
    whole = [f["mbs_in_order"] and f["slices"] == max(slice_counts) for f in stream_frames]
    problems = []
    if not stream_frames:
      problems.append("no coded frames")
    if not all(whole):
      problems.append(f"frame {whole.index(False)} is missing slices")
    if len(frames) != len(stream_frames):
      problems.append(f"{len(frames)} of {len(stream_frames)} frames decoded")
    if errors:
      problems.append(f"decoder reported: {errors[0]}")
    valid = whole.index(False) if not all(whole) else len(whole)
    return Decoded(frames=frames, complete=not problems, reason="; ".join(problems),
                   valid_frames=min(valid, len(frames)), errors=tuple(errors))

  # ---- prompts ----------------------------------------------------------------------------

  def whole_frames(self, data: bytes) -> bytes:
    """A stream cut short (a sample that ran out of context) cut back to the end of its last
    whole frame (every slice there, in order). Its final NAL unit is never trusted: the cut
    may have fallen inside it, even where its first fields still parse. Anything after the
    last whole frame (a cut slice, cut parameter sets) goes."""
    data = bytes(data)
    nals = h264.split_nals(data)
    if len(nals) > 1:
      data = data[:nals[-1].start]
    info = self.describe(data)
    frames = info["frames"]
    whole = 0
    for frame in frames:
      if not (frame["mbs_in_order"] and frame["slices"] == info["mbs_per_frame"]):
        break
      whole += 1
    if whole:
      return data[:frames[whole - 1]["end"]]
    return data[:frames[0]["start"]] if frames else data

  def prefix(self, data: bytes, frames: int) -> bytes:
    """The stream up to (not including) frame `frames`: parameter sets and the first k frames."""
    if frames < 0:
      raise CodecError(f"prefix frames={frames}: must be >= 0")
    data = bytes(data)
    info = self.describe(data)
    coded = info["frames"]
    if frames >= len(coded):
      return data
    if frames == 0:
      return data[:coded[0]["start"]]
    return data[:coded[frames - 1]["end"]]
