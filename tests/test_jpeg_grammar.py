"""JpegGrammar: the automaton behind syntax-safe sampling accepts exactly the streams that
decode completely."""

import numpy as np
import pytest

from data_pipeline.media_files import builtin_photos
from jpeglm.codecs import CodecError, JpegCodec, open_image
from jpeglm.codecs import jpeg_huffman, jpeg_stream
from jpeglm.codecs.jpeg_grammar import JpegGrammar
from jpeglm.tokenizer import ByteTokenizer


@pytest.fixture(scope="module")
def small():
  codec = JpegCodec(size=64)
  return codec, JpegGrammar(codec)


def test_accepts_every_real_photo():
  codec = JpegCodec()
  grammar = JpegGrammar(codec)
  for path in builtin_photos():
    state = grammar.advance(grammar.start(), codec.encode(open_image(path)))
    assert grammar.is_complete(state), path


def test_rejects_damage_where_it_happens():
  codec = JpegCodec()
  grammar = JpegGrammar(codec)
  stream = codec.encode(open_image(builtin_photos()[0]))
  header = codec.header(stream)
  rst = jpeg_stream.scan_layout(stream, header.scan_start).restart_offsets
  start, end = rst[39] + 2, rst[40]
  damaged = stream[:start] + b"\xfe" * (end - start) + stream[end:]
  assert grammar.advance(grammar.start(), damaged[:start]) is not None
  assert grammar.advance(grammar.start(), damaged[:end]) is None
  assert grammar.advance(grammar.start(), stream[:rst[5]] + b"\xff\xd3") is None  # wrong RSTn
  assert grammar.advance(grammar.start(), b"\xff\xd8\xff\xdb") is None  # not our header
  done = grammar.advance(grammar.start(), stream)
  assert grammar.advance(done, b"\x00") is None  # nothing after EOI


def test_eoi_only_after_last_mcu(small):
  codec, grammar = small
  stream = codec.encode(open_image(builtin_photos()[2]))
  rst = jpeg_stream.scan_layout(stream, codec.header(stream).scan_start).restart_offsets
  assert grammar.advance(grammar.start(), stream[:rst[3]] + b"\xff\xd9") is None
  assert grammar.is_complete(grammar.advance(grammar.start(), stream))


def test_random_byte_walks_always_decode(small):
  codec, grammar = small
  rng = np.random.default_rng(0)
  for _ in range(3):
    state, out = grammar.start(), bytearray()
    while not grammar.is_complete(state):
      choices = [b for b in range(256) if grammar.advance(state, bytes([b])) is not None]
      assert choices, "the grammar must never reach a dead end"
      byte = int(rng.choice(choices))
      out.append(byte)
      state = grammar.advance(state, bytes([byte]))
    decoded = codec.decode(bytes(out))
    assert decoded.complete, decoded.reason


def test_random_token_walks_always_decode(small, tmp_path):
  codec, grammar = small
  streams = [codec.encode(open_image(p)) for p in builtin_photos()]
  tokenizer = ByteTokenizer.train(streams, 320, tmp_path / "t.model")
  pieces = [tokenizer.piece_bytes(i) for i in range(tokenizer.vocab_size)]
  rng = np.random.default_rng(1)
  state, ids = grammar.start(), []
  while not grammar.is_complete(state):
    mask = grammar.allowed(state, pieces)
    assert mask.any() and not mask[[tokenizer.bos_id, tokenizer.eos_id, tokenizer.unk_id]].any()
    token = int(rng.choice(np.flatnonzero(mask)))
    ids.append(token)
    state = grammar.advance(state, pieces[token])
  assert codec.decode(tokenizer.decode(ids)).complete


def test_needs_restart_markers():
  with pytest.raises(CodecError, match="restart"):
    JpegGrammar(JpegCodec(size=64, restart_every_mcu=False))


def test_canonical_codes_are_the_standard_luminance_dc_codes():
  """T.81 Table K.3: DC luminance sizes 0..11 and their codes."""
  codec = JpegCodec()
  (dc_luma,) = [t for t in codec.huffman_tables if (t.table_class, t.table_id) == (0, 0)]
  codes = {symbol: format(code, f"0{length}b")
           for length, code, symbol in jpeg_huffman.canonical_codes(dc_luma)}
  assert codes == {0: "00", 1: "010", 2: "011", 3: "100", 4: "101", 5: "110", 6: "1110",
                   7: "11110", 8: "111110", 9: "1111110", 10: "11111110", 11: "111111110"}


def test_ac_rules_eob_zrl_and_overruns():
  next_k = jpeg_huffman.NEXT_K
  assert next_k[1][0x00] == next_k[63][0x00] == 64  # EOB ends the block anywhere
  assert next_k[48][0xF0] == 64 and next_k[49][0xF0] == -1  # ZRL: 16 zeros must fit
  assert next_k[1][0x31] == 5 and next_k[60][0x31] == 64 and next_k[61][0x31] == -1
  assert jpeg_huffman.LAST_K[0xF0] == 48 and jpeg_huffman.LAST_K[0xA5] == 53


def test_memoised_masks_equal_masks_worked_out_afresh(tmp_path):
  """Masks are shared between states MCUs apart: check them at every token boundary of a
  real 256x256 stream (256 MCUs, every RSTn many times, the last MCUs)."""
  codec = JpegCodec()
  grammar = JpegGrammar(codec)
  streams = [codec.encode(open_image(p)) for p in builtin_photos()]
  tokenizer = ByteTokenizer.train(streams, 320, tmp_path / "t.model")
  pieces = [tokenizer.piece_bytes(i) for i in range(tokenizer.vocab_size)]
  state, shared = grammar.start(), 0
  for token in tokenizer.encode(streams[3]):
    seen = len(grammar._masks)
    mask = grammar.allowed(state, pieces)
    shared += len(grammar._masks) == seen
    fresh = [bool(p) and grammar.advance(state, p) is not None for p in pieces]
    assert mask.tolist() == fresh, state
    state = grammar.advance(state, pieces[token])
  assert grammar.is_complete(state)
  assert shared > 100  # masks did come from the memo


def test_gray_streams_real_digits_and_random_walks(tmp_path):
  """One component (codec.color="gray"): real digits are accepted, and token walks the
  grammar allows always decode completely."""
  from data_pipeline.digits import load_digits

  codec = JpegCodec(size=28, color="gray")
  grammar = JpegGrammar(codec)
  assert grammar.num_mcus == 16
  streams = [codec.encode(d) for d in load_digits()[0][::25]]
  for stream in streams:
    assert grammar.is_complete(grammar.advance(grammar.start(), stream))
  tokenizer = ByteTokenizer.train(streams, 320, tmp_path / "t.model")
  pieces = [tokenizer.piece_bytes(i) for i in range(tokenizer.vocab_size)]
  rng = np.random.default_rng(2)
  for _ in range(5):
    state, ids = grammar.start(), []
    while not grammar.is_complete(state):
      token = int(rng.choice(np.flatnonzero(grammar.allowed(state, pieces))))
      ids.append(token)
      state = grammar.advance(state, pieces[token])
    decoded = codec.decode(tokenizer.decode(ids))
    assert decoded.complete and decoded.image.mode == "L", decoded.reason
