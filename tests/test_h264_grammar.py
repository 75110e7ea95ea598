"""AvcGrammar: the automaton behind H.264 syntax-safe sampling accepts every stream the codec
makes, byte for byte, rejects damage no earlier than where it is, and every stream it lets
through to the end decodes with no FFmpeg error."""

import numpy as np
import pytest
from PIL import Image

from configs.jpeglm import get_config
from data_pipeline.media_files import builtin_videos
from jpeglm.codecs import AvcCodec, CodecError
from jpeglm.codecs import h264_bitstream as h264
from jpeglm.codecs import h264_codes as hc
from jpeglm.codecs import h264_macroblock as mb
from jpeglm.codecs import h264_residual as residual
from jpeglm.codecs import h264_slice_header as sh
from jpeglm.codecs.h264_bitstream import BitReader, rbsp
from jpeglm.codecs.h264_grammar import SLICE, AvcGrammar
from jpeglm.codecs.h264_syntax import TRAIL_STOP
from jpeglm.tokenizer import ByteTokenizer

VIDEOS = builtin_videos()
SMALL = AvcCodec(width=32, height=32, seconds=1)  # 4 macroblocks, 3 frames


def states_along(grammar, data: bytes) -> list:
  """The state before each byte and after the last (None from the first rejected byte)."""
  states = [grammar.start()]
  for byte in data:
    states.append(None if states[-1] is None else grammar.advance(states[-1], bytes([byte])))
  return states


def rejected_at(grammar, state, data: bytes, offset: int = 0):
  """Index of the byte that `grammar` refuses, continuing `state` with data[offset:]."""
  for i in range(offset, len(data)):
    state = grammar.advance(state, data[i:i + 1])
    if state is None:
      return i
  return None


def assert_accepted_exactly(grammar, data: bytes):
  states = states_along(grammar, data)
  assert states[-1] is not None, f"rejected at byte {states.index(None) - 1} of {len(data)}"
  assert grammar.is_complete(states[-1])
  assert not any(grammar.is_complete(s) for s in states[:-1])


def assert_clean_decode(codec, data: bytes):
  decoded = codec.decode(data)
  assert decoded.complete and not decoded.errors, decoded.reason
  assert len(decoded.frames) == codec.num_frames


@pytest.fixture(scope="module")
def small_streams():
  """Real clips at 32x32 and other settings of the small codec: qp, shifts, crops."""
  out = []
  for qp in (20, 37, 45):
    codec = AvcCodec(width=32, height=32, seconds=1, qp=qp)
    for path in VIDEOS:
      out.append(codec.encode(path))
  return out


def test_accepts_the_builtin_clips_at_paper_settings():
  codec = AvcCodec()
  grammar = AvcGrammar(codec)
  for path in VIDEOS:
    data = codec.encode(path)
    frames = len(codec.describe(data)["frames"])
    if frames == codec.num_frames:
      assert_accepted_exactly(grammar, data)
    else:  # carphone_pristine is under 5 s: a grammar for its length takes it whole
      short = AvcCodec(seconds=frames / codec.fps)
      assert_accepted_exactly(AvcGrammar(short), data)


def _shifted(frames, dx, dy):
  return [Image.fromarray(np.roll(np.asarray(f), (dy, dx), axis=(0, 1))) for f in frames]


@pytest.mark.parametrize("settings", [dict(qp=24), dict(qp=45), dict(width=64, height=48),
                                      dict(width=48, height=32, fps=6, seconds=1)])
def test_accepts_reencoded_clips(settings):
  codec = AvcCodec(**{"width": 96, "height": 64, "seconds": 2, **settings})
  grammar = AvcGrammar(codec)
  for path in VIDEOS[:2]:
    frames = codec.frames_of(path)
    for variant in (frames, _shifted(frames, 5, 3), [f.crop((8, 4, codec.width, codec.height))
                                                     for f in frames]):
      variant = [codec.letterbox(f) for f in variant]
      assert_accepted_exactly(grammar, codec.encode_frames(variant))


def test_accepts_the_sei_when_kept():
  codec = AvcCodec(width=32, height=32, seconds=1, keep_sei=True)
  assert_accepted_exactly(AvcGrammar(codec), codec.encode(VIDEOS[1]))


def test_refuses_settings_it_does_not_model():
  with pytest.raises(CodecError, match="one macroblock per slice"):
    AvcGrammar(AvcCodec(width=32, height=32, seconds=1, slice_max_mbs=2))


# ---- damage -----------------------------------------------------------------------------

def _escape(payload: bytes) -> bytes:
  """Emulation prevention (7.4.1): 00 00 0x (x <= 3) -> 00 00 03 0x."""
  out, zeros = bytearray(), 0
  for b in payload:
    if zeros == 2 and b <= 3:
      out.append(3)
      zeros = 0
    out.append(b)
    zeros = zeros + 1 if b == 0 else 0
  return bytes(out)


def _with_other_frame_num(data: bytes, nal: h264.Nal, log2_max_frame_num: int) -> bytes:
  body = bytearray(rbsp(data[nal.payload_start + 1:nal.end]))
  r = BitReader(bytes(body))
  r.ue(), r.ue(), r.ue()  # first_mb_in_slice, slice_type, pic_parameter_set_id
  bit = r.pos + log2_max_frame_num - 1  # the lowest bit of frame_num
  body[bit // 8] ^= 0x80 >> (bit % 8)
  return data[:nal.payload_start + 1] + _escape(bytes(body)) + data[nal.end:]


def test_rejects_wrong_frame_num_in_its_header():
  codec = SMALL
  grammar = AvcGrammar(codec)
  data = codec.encode(VIDEOS[0])
  nals = [n for n in h264.split_nals(data) if n.kind(data) in (h264.NAL_SLICE, h264.NAL_IDR)]
  for nal in (nals[4], nals[5], nals[-1]):  # first and second slice of frame 1, the last one
    bad = _with_other_frame_num(data, nal, grammar.ps.log2_max_frame_num)
    at = rejected_at(grammar, grammar.advance(grammar.start(), bad[:nal.payload_start]), bad,
                     nal.payload_start)
    assert at is not None and nal.payload_start < at <= nal.payload_start + 4


def test_rejects_a_missing_emulation_prevention_byte():
  codec = AvcCodec(width=64, height=48, seconds=1, qp=20)
  grammar = AvcGrammar(codec)
  data = codec.encode(VIDEOS[1])
  spots = [i + 2 for i in range(len(data) - 3) if data[i:i + 3] == b"\x00\x00\x03"]
  assert spots, "no emulation prevention byte in the clip"
  states = states_along(grammar, data)
  for i in spots[:20]:
    bad = data[:i] + data[i + 1:]
    assert rejected_at(grammar, states[i], bad, i) == i  # 00 00 then 00..03 unescaped
  # 00 00 03 followed by a byte above 03 is no emulation prevention either
  i = spots[0]
  assert grammar.advance(states[i + 1], b"\x04") is None


def _mutants(data: bytes, rng) -> list[tuple[int, bytes, str]]:
  """(first changed byte, mutant, kind)."""
  out = []
  for _ in range(60):
    i = int(rng.integers(len(data)))
    flipped = data[i] ^ (1 << int(rng.integers(8)))
    out.append((i, data[:i] + bytes([flipped]) + data[i + 1:], "flip"))
  for _ in range(15):
    i = int(rng.integers(len(data)))
    extra = bytes([int(rng.integers(256))])
    if data[i:i + 1] != extra:
      out.append((i, data[:i] + extra + data[i:], "insert"))
    out.append((i, data[:i] + data[i + 1:], "delete"))
    out.append((i, data[:i], "truncate"))
  return out


def test_mutants_rejected_no_earlier_than_the_damage(small_streams):
  codec = AvcCodec(width=32, height=32, seconds=1, qp=37)
  grammar = AvcGrammar(codec)
  rng = np.random.default_rng(0)
  data = small_streams[3]
  states = states_along(grammar, data)
  accepted = 0
  for i, bad, kind in _mutants(data, rng):
    first = next((k for k in range(min(len(bad), len(data))) if bad[k] != data[k]),
                 min(len(bad), len(data)))
    assert states[first] is not None  # the unchanged prefix is a real stream's
    at = rejected_at(grammar, states[first], bad, first)
    if at is None:
      end = grammar.advance(states[first], bad[first:])
      if kind == "truncate":
        assert not grammar.is_complete(end)
      elif grammar.is_complete(end):
        accepted += 1
        assert_clean_decode(codec, bad)
    else:
      assert at >= first
  assert accepted > 0  # some flips only change free bits (signs, level suffixes)


def test_nothing_follows_the_last_macroblock():
  grammar = AvcGrammar(SMALL)
  done = grammar.advance(grammar.start(), SMALL.encode(VIDEOS[0]))
  assert grammar.is_complete(done)
  assert grammar.advance(done, b"\x00") is None


# ---- walks ------------------------------------------------------------------------------

def _byte_walk(grammar, rng) -> bytes:
  state, out = grammar.start(), bytearray()
  while not grammar.is_complete(state):
    choices = [b for b in range(256) if grammar.advance(state, bytes([b])) is not None]
    assert choices, "the grammar must never reach a dead end"
    out.append(int(rng.choice(choices)))
    state = grammar.advance(state, out[-1:])
  return bytes(out)


def test_random_byte_walks_decode_cleanly():
  grammar = AvcGrammar(SMALL)
  rng = np.random.default_rng(0)
  for _ in range(3):
    assert_clean_decode(SMALL, _byte_walk(grammar, rng))


@pytest.mark.slow
def test_many_random_byte_walks_decode_cleanly():
  for codec in (SMALL, AvcCodec(width=48, height=32, fps=4, seconds=1, qp=10)):
    grammar = AvcGrammar(codec)
    rng = np.random.default_rng(1)
    for _ in range(25):
      assert_clean_decode(codec, _byte_walk(grammar, rng))


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory, small_streams):
  return ByteTokenizer.train(small_streams, 320, tmp_path_factory.mktemp("tok") / "avc.model")


def test_memoised_masks_equal_masks_worked_out_afresh(tokenizer, small_streams):
  """Inside slices masks are shared between macroblocks: check them at every token boundary
  of real streams (the ends of slices and frames included)."""
  grammar = AvcGrammar(SMALL)
  pieces = [tokenizer.piece_bytes(i) for i in range(tokenizer.vocab_size)]
  for data in small_streams[3:5]:
    state = grammar.start()
    for token in tokenizer.encode(data):
      mask = grammar.allowed(state, pieces)
      fresh = [bool(p) and grammar.advance(state, p) is not None for p in pieces]
      assert mask.tolist() == fresh
      state = grammar.advance(state, pieces[token])
    assert grammar.is_complete(state)


def _reference_step(syntax, position, byte: int):
  """One byte read bit by bit on whole states (the residual block's ctx inside the state) with
  none of SliceSyntax's memos: (whole state or "stop"/"end", node, header values)."""
  ctx, (s, node) = position
  if ctx is not None:
    s = (s[0], ctx) + s[2:]
  if s[0] == TRAIL_STOP:
    s = "stop"
  info = None
  for shift in range(7, -1, -1):
    bit = (byte >> shift) & 1
    if s in ("stop", "zero"):  # rbsp_stop_one_bit, then rbsp_alignment_zero_bits
      if bit != (s == "stop"):
        return None
      s = "zero"
      continue
    nxt = syntax.codes.child(node, bit)
    if nxt == hc.DEAD:
      return None
    if nxt > 0:
      node = nxt
      continue
    machine = syntax.header if s[0] < mb.MB_SKIP_RUN else syntax.macroblock
    s = machine.after(s, syntax.codes.leaf_value(nxt))
    if s[0] == sh.DATA_START:
      info, s = s[1], s[2]
    assert s is not mb.PCM  # not in these streams
    if s is residual.MB_DONE:
      s, node = "stop", 0
      continue
    node = (syntax.header if s[0] < mb.MB_SKIP_RUN else syntax.macroblock).code(s)
  return ("end" if s == "zero" else s), node, info


def _whole(result):
  (ctx, (s, node)), info, ended = result
  if ended:
    return "end", 0, info
  if s[0] == TRAIL_STOP:
    return "stop", 0, info
  return ((s[0], ctx) + s[2:] if ctx is not None else s), node, info


def test_memoised_byte_steps_equal_bits_read_afresh(small_streams):
  """SliceSyntax memoises byte steps per position without the residual block's context and
  goes on from a memo per (context, TotalCoeff) where a block ends: after other clips have
  filled its memos, every byte from positions of a real stream and of a byte walk must read as
  the bits do, state by state."""
  grammar = AvcGrammar(SMALL)
  for data in small_streams[3:6:2]:  # QP 37 as SMALL
    assert_accepted_exactly(grammar, data)
  walk = _byte_walk(grammar, np.random.default_rng(3))
  positions = [s[2] for data in (small_streams[4], walk) for s in states_along(grammar, data)
               if s is not None and s[0] == SLICE]
  assert len(positions) > 300 and sum(ctx is not None for ctx, _ in positions) > 100
  for position in positions[::3]:
    for byte in range(256):
      got = grammar.syntax.step(position, byte)
      assert (got and _whole(got)) == _reference_step(grammar.syntax, position, byte)


def test_random_token_walks_decode_cleanly(tokenizer):
  grammar = AvcGrammar(SMALL)
  pieces = [tokenizer.piece_bytes(i) for i in range(tokenizer.vocab_size)]
  specials = [tokenizer.bos_id, tokenizer.eos_id, tokenizer.unk_id]
  rng = np.random.default_rng(2)
  for _ in range(3):
    state, ids = grammar.start(), []
    while not grammar.is_complete(state):
      mask = grammar.allowed(state, pieces)
      assert mask.any() and not mask[specials].any()
      ids.append(int(rng.choice(np.flatnonzero(mask))))
      state = grammar.advance(state, pieces[ids[-1]])
    assert_clean_decode(SMALL, tokenizer.decode(ids))


@pytest.mark.slow  # ~20 s: an untrained model's rows run to ~1,000 tokens
def test_syntax_safe_sampling_of_an_untrained_model_decodes(tokenizer):
  from flax import nnx

  from jpeglm.model.transformer import ModelConfig, Transformer
  from jpeglm.sampling.run import build_generator

  config = get_config("size=tiny,codec=avc")
  config.codec.update(width=SMALL.width, height=SMALL.height, seconds=SMALL.seconds)
  config.model.vocab_size = tokenizer.vocab_size
  config.model.max_len = 4096
  config.sample.top_k = 0
  cfg = ModelConfig.from_config(config.model)
  params = nnx.to_pure_dict(nnx.split(Transformer(cfg, nnx.Rngs(0)))[1])
  generator = build_generator(params, config, tokenizer, SMALL, syntax_safe=True)
  assert isinstance(generator.grammar, AvcGrammar)
  for g in generator.generate([[tokenizer.bos_id]] * 2, seed=0):
    assert g.ended_with_eos
    assert_clean_decode(SMALL, tokenizer.decode(g.tokens))
