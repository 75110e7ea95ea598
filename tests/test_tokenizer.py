"""ByteTokenizer: lossless byte BPE over real codec streams (the paper's Braille mapping)."""

import os

import numpy as np
import pytest

from data_pipeline.media_files import builtin_photos, builtin_videos
from jpeglm.codecs import AvcCodec, JpegCodec, open_image
from jpeglm.errors import JpeglmError
from jpeglm.tokenizer import BYTE_OFFSET, ByteTokenizer, bytes_to_text, text_to_bytes


@pytest.fixture(scope="module")
def jpeg_streams():
  codec = JpegCodec()
  return [codec.encode(open_image(p)) for p in builtin_photos()]


@pytest.fixture(scope="module")
def tokenizer(jpeg_streams, tmp_path_factory):
  path = tmp_path_factory.mktemp("tok") / "jpeg.model"
  return ByteTokenizer.train(jpeg_streams, 320, path)


def test_byte_mapping_is_the_papers():
  data = bytes(range(256))
  text = bytes_to_text(data)
  assert text == "".join(chr(b + 10240) for b in data) and BYTE_OFFSET == 10240
  assert text_to_bytes(text) == data


def test_vocab_and_specials(tokenizer):
  assert tokenizer.vocab_size == 320
  assert (tokenizer.unk_id, tokenizer.bos_id, tokenizer.eos_id) == (0, 1, 2)
  singles = [i for i in range(320) if len(tokenizer.piece_bytes(i)) == 1]
  assert len(singles) == 256  # every byte value has its own piece
  assert {tokenizer.piece_bytes(i) for i in singles} == {bytes([b]) for b in range(256)}


def test_round_trip_every_photo(tokenizer, jpeg_streams):
  for stream in jpeg_streams:
    ids = tokenizer.encode(stream)
    assert tokenizer.decode(ids) == stream
    assert all(i > 2 for i in ids)  # no unk, bos or eos inside
  mean_tokens = np.mean([len(tokenizer.encode(s)) for s in jpeg_streams])
  mean_bytes = np.mean([len(s) for s in jpeg_streams])
  assert mean_tokens < mean_bytes  # the merges compress


def test_bytes_never_seen_in_training_round_trip(tmp_path):
  tok = ByteTokenizer.train([b"\x00\x01\x02" * 500, b"abcabc" * 300], 300, tmp_path / "t.model")
  data = os.urandom(20_000) + bytes(range(256))
  ids = tok.encode(data)
  assert tok.unk_id not in ids
  assert tok.decode(ids) == data


def test_document_has_bos_and_eos(tokenizer, jpeg_streams):
  doc = tokenizer.encode_document(jpeg_streams[0])
  assert doc[0] == tokenizer.bos_id and doc[-1] == tokenizer.eos_id
  assert tokenizer.bos_id not in doc[1:-1] and tokenizer.eos_id not in doc[1:-1]
  assert tokenizer.decode(doc) == jpeg_streams[0]


def test_load_matches_trained(tokenizer, jpeg_streams):
  again = ByteTokenizer.load(tokenizer.path)
  assert again.encode(jpeg_streams[3]) == tokenizer.encode(jpeg_streams[3])


def test_empty_input(tokenizer):
  assert tokenizer.encode(b"") == [] and tokenizer.decode([]) == b""


def test_avc_tokenizer_round_trips_videos(tmp_path):
  codec = AvcCodec(width=128, height=72)
  streams = [codec.encode(v) for v in builtin_videos()]
  tok = ByteTokenizer.train(streams, 1024, tmp_path / "avc.model")
  assert tok.vocab_size == 1024
  for s in streams:
    assert tok.decode(tok.encode(s)) == s


def test_errors_are_clear(tmp_path, tokenizer):
  with pytest.raises(JpeglmError, match="at least 259"):
    ByteTokenizer.train([b"abc"], 100, tmp_path / "x.model")
  with pytest.raises(JpeglmError, match="no training data"):
    ByteTokenizer.train([b""], 320, tmp_path / "x.model")
  with pytest.raises(JpeglmError, match="not found"):
    ByteTokenizer.load(tmp_path / "missing.model")
  junk = tmp_path / "junk.model"
  junk.write_bytes(b"not a model")
  with pytest.raises(JpeglmError, match="not a SentencePiece model"):
    ByteTokenizer.load(junk)
  with pytest.raises(JpeglmError, match="token id 0"):
    tokenizer.decode([5, 0, 7])
  with pytest.raises(JpeglmError, match="token id 999"):
    tokenizer.decode([999])
