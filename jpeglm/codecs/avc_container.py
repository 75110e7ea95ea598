"""Raw H.264 Annex-B streams into MP4 files that any player opens, with no re-encode.

The model writes bare Annex-B bytes, which browsers and most players refuse. Remuxing
copies each coded frame as it is: FFmpeg's raw-H.264 demuxer cuts the stream into access
units (and reads SPS/PPS into the codec parameters), and the MP4 muxer stores them with
timestamps at the codec's frame rate. The pictures are the raw stream's, bit for bit.
"""

from __future__ import annotations

import fractions
import io

import av
import numpy as np

from jpeglm.codecs.errors import CodecError


def to_mp4(data: bytes, fps: int) -> bytes:
  """The Annex-B stream `data` as an MP4 file at `fps` frames per second (stream copy)."""
  time_base = fractions.Fraction(1, int(fps))
  out = io.BytesIO()
  try:
    with av.open(io.BytesIO(bytes(data)), format="h264") as source:
      if not source.streams.video:
        raise CodecError("no H.264 video found in the stream")
      raw = source.streams.video[0]
      with av.open(out, "w", format="mp4") as target:
        stream = target.add_stream_from_template(raw)
        stream.time_base = time_base
        frame = 0
        for packet in source.demux(raw):
          if packet.size == 0:  # the demuxer's end-of-stream marker
            continue
          # No B-frames in these streams: decode order is display order.
          packet.stream = stream
          packet.time_base = time_base
          packet.pts = packet.dts = frame
          packet.duration = 1
          target.mux(packet)
          frame += 1
        if not frame:
          raise CodecError("no coded frames to put in an MP4")
  except av.error.FFmpegError as e:
    raise CodecError(f"could not remux the stream into MP4 ({str(e).splitlines()[0]})") from None
  return out.getvalue()


def mp4_frames(mp4: bytes) -> list[np.ndarray]:
  """The RGB frames an MP4's first video stream decodes to (to check a remux); for a damaged
  stream, those before the decoder gives up (as `AvcCodec.decode`)."""
  frames = []
  with av.open(io.BytesIO(mp4)) as container:
    stream = container.streams.video[0]
    stream.codec_context.thread_count = 1
    try:
      for frame in container.decode(stream):
        frames.append(frame.to_ndarray(format="rgb24"))
    except av.error.FFmpegError:
      pass
  return frames
