"""JpegCodec on the real built-in photos: the paper's stream, splicing, prefixes, damage."""

import io
import os
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from data_pipeline.media_files import builtin_photos
from jpeglm.codecs import CodecError, JpegCodec, open_image, to_rgb
from jpeglm.codecs import jpeg_stream

PHOTOS = builtin_photos()


@pytest.fixture(scope="module")
def codec():
  return JpegCodec()


@pytest.fixture(scope="module")
def astronaut():
  return open_image(next(p for p in PHOTOS if p.endswith("astronaut.png")))


def _pixels(image):
  return np.asarray(image.convert("RGB"), dtype=np.int16)


def _ordinary_encode(codec, image):
  out = io.BytesIO()
  codec.fit(image).save(out, "JPEG", quality=25, subsampling="4:2:0", restart_marker_blocks=1)
  return out.getvalue()


def test_photos_are_real_and_many():
  assert len(PHOTOS) >= 15
  assert all(os.path.getsize(p) > 1000 for p in PHOTOS)


@pytest.mark.parametrize("path", PHOTOS, ids=os.path.basename)
def test_spliced_stream_decodes_like_ordinary_encode(codec, path):
  image = open_image(path)
  stream = codec.encode(image)
  decoded = codec.decode(stream)
  assert decoded.complete, decoded.reason
  assert decoded.image.size == (256, 256)
  assert decoded.valid_rows == 256
  reference = Image.open(io.BytesIO(_ordinary_encode(codec, image)))
  assert np.array_equal(_pixels(decoded.image), _pixels(reference))


def test_header_and_restart_markers_as_in_paper(codec, astronaut):
  stream = codec.encode(astronaut)
  header = codec.header(stream)
  assert header.scan_start == 59  # SOI, APP0, SOF0, DRI, SOS: ~59 bytes
  assert (header.width, header.height, header.sof_marker) == (256, 256, 0xC0)
  assert header.restart_interval == 1 and not header.has_quant_tables and not header.huffman_tables
  markers, i = [], 2
  while i < header.scan_start:
    markers.append(stream[i + 1])
    i += 2 + int.from_bytes(stream[i + 2:i + 4], "big")
  assert markers == [0xE0, 0xC0, 0xDD, 0xDA]
  layout = jpeg_stream.scan_layout(stream, header.scan_start)
  assert len(layout.restart_offsets) == 255 and layout.markers_in_order
  assert [stream[o + 1] for o in layout.restart_offsets[:9]] == [*range(0xD0, 0xD8), 0xD0]
  assert layout.end_marker == 0xD9 and layout.end + 2 == len(stream)


def test_headers_identical_across_images(codec):
  headers = {codec.encode(open_image(p))[:59] for p in PHOTOS[:6]}
  assert len(headers) == 1


def test_encoding_is_deterministic_and_accepts_arrays(codec, astronaut):
  array = np.asarray(astronaut.convert("RGB"))
  assert codec.encode(array) == codec.encode(astronaut) == codec.encode(astronaut.copy())


@pytest.mark.parametrize("ratio,rows,rst7", [(0.25, 64, 8), (0.375, 96, 12), (0.5, 128, 16),
                                             (0.75, 192, 24)])
def test_prefix_keeps_paper_rows(codec, astronaut, ratio, rows, rst7):
  stream = codec.encode(astronaut)
  cut = codec.prefix(stream, ratio)
  assert stream.startswith(cut) and cut.endswith(b"\xff\xd7")
  assert cut.count(b"\xff\xd7") == rst7 == int(32 * ratio)
  assert codec.prefix_rows(ratio) == rows
  full, part = _pixels(codec.decode(stream).image), codec.decode(cut)
  assert not part.complete and part.valid_rows == rows
  pixels = _pixels(part.image)
  # The last kept row shares chroma with the next MCU row (fancy upsampling), so compare above it.
  assert np.array_equal(pixels[:rows - 1], full[:rows - 1])
  assert (pixels[rows + 16:] == 128).all()


@pytest.mark.parametrize("size", [64, 128])
def test_prefix_works_for_other_sizes(astronaut, size):
  codec = JpegCodec(size=size)
  stream = codec.encode(astronaut)
  for ratio in (0.25, 0.5, 0.75):
    rows = codec.prefix_rows(ratio)
    assert rows == int(size * ratio)
    assert codec.decode(codec.prefix(stream, ratio)).valid_rows == rows
  assert codec.prefix(stream, 0.0) == stream[:codec.header(stream).scan_start]
  assert codec.decode(codec.prefix(stream, 1.0)).valid_rows == size


def test_prefix_needs_restart_markers(astronaut):
  codec = JpegCodec(restart_every_mcu=False)
  with pytest.raises(CodecError, match="restart"):
    codec.prefix(codec.encode(astronaut), 0.5)
  with pytest.raises(CodecError, match="ratio"):
    JpegCodec().prefix(JpegCodec().encode(astronaut), 1.5)


def test_unstripped_stream_decodes_without_splicing(astronaut):
  codec = JpegCodec(strip_tables=False)
  stream = codec.encode(astronaut)
  assert codec.header(stream).has_quant_tables
  decoded = codec.decode(stream)
  assert decoded.complete
  stripped = JpegCodec()
  assert np.array_equal(_pixels(decoded.image), _pixels(stripped.decode(stripped.encode(astronaut)).image))


# ---- odd inputs ----------------------------------------------------------------------------

def _odd_modes(photo: Image.Image) -> dict[str, tuple[Image.Image, Image.Image]]:
  """(odd-mode image, the RGB image it must encode like)."""
  rgb = photo.convert("RGB")
  gray = rgb.convert("L")
  cmyk = rgb.convert("CMYK")
  sixteen = Image.fromarray(np.asarray(gray, dtype=np.uint16) * 257)
  palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
  palette.info["transparency"] = 0
  rgba = rgb.copy()
  rgba.putalpha(Image.linear_gradient("L").resize(rgb.size))
  white = Image.new("RGBA", rgb.size, (255, 255, 255, 255))
  return {
      "L": (gray, gray.convert("RGB")),
      "CMYK": (cmyk, cmyk.convert("RGB")),
      "I;16": (sixteen, gray.convert("RGB")),
      "P+transparency": (palette, Image.alpha_composite(white, palette.convert("RGBA")).convert("RGB")),
      "RGBA": (rgba, Image.alpha_composite(white, rgba).convert("RGB")),
      "1": (gray.convert("1"), gray.convert("1").convert("RGB")),
  }


@pytest.mark.parametrize("mode", ["L", "CMYK", "I;16", "P+transparency", "RGBA", "1"])
def test_odd_modes_encode_like_their_rgb(codec, mode):
  photo = open_image(next(p for p in PHOTOS if p.endswith("chelsea.png")))
  odd, expected = _odd_modes(photo)[mode]
  assert odd.mode == mode.split("+")[0]
  stream = codec.encode(odd)
  assert stream == codec.encode(expected)
  assert codec.decode(stream).complete


def test_palette_transparency_becomes_white():
  rgb = Image.new("RGB", (32, 32), (10, 200, 30))
  palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
  palette.putpixel((0, 0), 1)
  palette.info["transparency"] = 1
  assert to_rgb(palette).getpixel((0, 0)) == (255, 255, 255)
  assert to_rgb(palette).getpixel((5, 5)) == (10, 200, 30)


def test_exif_orientation_is_applied(codec, tmp_path):
  photo = open_image(next(p for p in PHOTOS if p.endswith("rocket.jpg"))).convert("RGB")
  assert photo.width != photo.height
  exif = Image.Exif()
  exif[0x0112] = 6  # "rotate 90 CW to display"
  path = tmp_path / "rotated.jpg"
  photo.save(path, exif=exif.tobytes(), quality=95)
  opened = open_image(path)
  # A fresh image (no EXIF left to apply) holding the pixels rotated by hand.
  upright = Image.fromarray(np.asarray(Image.open(path).convert("RGB").transpose(
      Image.Transpose.ROTATE_270)))
  assert to_rgb(opened).size == (photo.height, photo.width)
  assert codec.encode(opened) == codec.encode(upright)


def test_bad_arrays_are_refused(codec):
  with pytest.raises(CodecError, match="dtype"):
    codec.encode(np.zeros((8, 8, 3), np.float32))
  with pytest.raises(CodecError, match="channels"):
    codec.encode(np.zeros((8, 8, 5), np.uint8))
  with pytest.raises(CodecError, match="empty"):
    codec.encode(np.zeros((0, 8, 3), np.uint8))


# ---- corrupt, truncated, empty, non-media ---------------------------------------------------

def test_empty_input_raises(codec):
  with pytest.raises(CodecError, match="SOI"):
    codec.decode(b"")


def test_non_jpeg_raises(codec):
  with open(next(p for p in PHOTOS if p.endswith(".png")), "rb") as f:
    png = f.read()
  with pytest.raises(CodecError, match="SOI"):
    codec.decode(png)


def test_cut_inside_header_raises(codec, astronaut):
  stream = codec.encode(astronaut)
  for n in (2, 10, 30, 58):
    with pytest.raises(CodecError, match="header"):
      codec.decode(stream[:n])


def test_truncated_scan_gives_rows_not_exception(codec, astronaut):
  stream = codec.encode(astronaut)
  decoded = codec.decode(stream[:len(stream) // 2])
  assert not decoded.complete and "truncated" in decoded.reason
  assert decoded.image.size == (256, 256)
  assert 0 < decoded.valid_rows < 256
  full = _pixels(codec.decode(stream).image)
  assert np.array_equal(_pixels(decoded.image)[:decoded.valid_rows - 1], full[:decoded.valid_rows - 1])


def test_damaged_huffman_data_is_detected(codec, astronaut):
  stream = bytearray(codec.encode(astronaut))
  header = codec.header(bytes(stream))
  layout = jpeg_stream.scan_layout(bytes(stream), header.scan_start)
  # Fill the scan data of MCU 40 (row 2) with 1-bits: no Huffman code is all ones.
  start, end = layout.restart_offsets[39] + 2, layout.restart_offsets[40]
  stream = bytes(stream[:start]) + b"\xfe" * (end - start) + bytes(stream[end:])
  decoded = codec.decode(stream)
  assert not decoded.complete and "decode cleanly" in decoded.reason
  assert decoded.valid_rows == 32  # MCU 40 lies in MCU row 2 (16 MCUs a row)


def test_garbage_after_eoi_and_bad_marker(codec, astronaut):
  stream = codec.encode(astronaut)
  assert not codec.decode(stream + b"junk").complete
  header = codec.header(stream)
  mid = jpeg_stream.scan_layout(stream, header.scan_start).restart_offsets[100]
  broken = stream[:mid] + b"\xff\xc4" + stream[mid + 2:]
  decoded = codec.decode(broken)
  assert not decoded.complete and "unexpected marker" in decoded.reason


def test_decompression_bomb_header_refused_without_allocating(codec, astronaut):
  stream = bytearray(codec.encode(astronaut))
  sof = stream.index(b"\xff\xc0")
  stream[sof + 5:sof + 9] = (60000).to_bytes(2, "big") * 2  # 60000 x 60000
  tracemalloc.start()
  with pytest.raises(CodecError, match="exceeds"):
    codec.decode(bytes(stream))
  peak = tracemalloc.get_traced_memory()[1]
  tracemalloc.stop()
  assert peak < 5_000_000


def test_open_image_refuses_empty_truncated_and_bombs(tmp_path, astronaut):
  empty = tmp_path / "empty.png"
  empty.write_bytes(b"")
  with pytest.raises(CodecError, match="empty"):
    open_image(empty)
  text = tmp_path / "notes.jpg"
  text.write_text("not an image")
  with pytest.raises(CodecError, match="not an image"):
    open_image(text)
  good = tmp_path / "good.png"
  astronaut.save(good)
  cut = tmp_path / "cut.png"
  cut.write_bytes(good.read_bytes()[:20_000])
  with pytest.raises(CodecError, match="unreadable"):
    open_image(cut)
  with pytest.raises(CodecError, match="exceeds"):
    open_image(good, max_pixels=1000)


def test_codec_settings_are_validated():
  with pytest.raises(CodecError, match="subsampling"):
    JpegCodec(subsampling="4:1:1")
  with pytest.raises(CodecError, match="quality"):
    JpegCodec(quality=0)


# ---- grayscale (codec.color="gray") ---------------------------------------------------------

def test_gray_round_trips_lossless_and_matches_pillow(astronaut, tmp_path):
  """One-component streams of real digits and photos: image -> bytes -> tokens -> bytes is
  exact, and the pixels equal Pillow's decode of the same stream with its tables and of an
  ordinary Pillow encode of the grayscale image."""
  from data_pipeline.digits import load_digits
  from jpeglm.tokenizer import ByteTokenizer

  digits = load_digits()[0][::250]
  small, big = JpegCodec(size=28, color="gray"), JpegCodec(size=256, color="gray")
  cases = [(small, Image.fromarray(d)) for d in digits] + [
      (big, astronaut), (big, open_image(PHOTOS[3]))]
  streams = [codec.encode(image) for codec, image in cases]
  tokenizer = ByteTokenizer.train(streams, 300, tmp_path / "gray.model")
  for (codec, image), stream in zip(cases, streams):
    header = codec.header(stream)
    assert len(header.components) == 1 and header.mcu_size == (8, 8)
    assert header.restart_interval == 1 and not header.has_quant_tables
    assert len(jpeg_stream.scan_layout(stream, header.scan_start).restart_offsets) == (
        header.num_mcus - 1)
    assert tokenizer.decode(tokenizer.encode_document(stream)) == stream
    decoded = codec.decode(stream)
    assert decoded.complete and decoded.image.mode == "L", decoded.reason
    full = Image.open(io.BytesIO(codec.standalone(stream)))
    assert full.mode == "L"
    assert np.array_equal(np.asarray(decoded.image), np.asarray(full))
    ordinary = io.BytesIO()
    codec.fit(image).save(ordinary, "JPEG", quality=25, restart_marker_blocks=1)
    assert np.array_equal(np.asarray(decoded.image), np.asarray(Image.open(ordinary)))
  assert 150 < np.mean([len(s) for s in streams[:-2]]) < 260  # a 28x28 digit: ~220 bytes


def test_gray_prefix_cuts_at_8_pixel_rows(astronaut):
  codec = JpegCodec(size=64, color="gray")
  stream = codec.encode(astronaut)
  assert codec.prefix_rows(0.5) == 32
  cut = codec.prefix(stream, 0.5)
  assert cut.count(b"\xff\xd7") == 4  # 8 MCUs a row, 4 rows: 32 markers, every RST7 the 8th
  part = codec.decode(cut)
  assert part.valid_rows == 32
  full = np.asarray(codec.decode(stream).image)
  assert np.array_equal(np.asarray(part.image)[:32], full[:32])
  with pytest.raises(CodecError, match="color"):
    JpegCodec(color="cmyk")
