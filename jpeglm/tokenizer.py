"""Byte-level BPE over codec streams, as in JPEG-LM: SentencePiece on one character per byte.

Each byte b becomes the character chr(b + 0x2800) (the Unicode Braille block), so
SentencePiece's BPE can merge frequent byte sequences. The trainer options below are the
ones that keep every round trip lossless; the default normalisation would break them.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Sequence

import numpy as np
import sentencepiece as spm

from jpeglm.errors import JpeglmError

BYTE_OFFSET = 0x2800  # chr(b + 10240), the paper's mapping
NUM_BYTES = 256
UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
DEFAULT_VOCAB = {"jpeg": 320, "avc": 1024}
# Every byte value once, appended to the training text so no byte is ever <unk>.
_ALL_BYTES = bytes(range(NUM_BYTES))


def bytes_to_text(data: bytes) -> str:
  """Each byte -> one Braille character. Done on UTF-8 code units with numpy: U+2800+b is
  E2, A0 + (b >> 6), 80 + (b & 63)."""
  b = np.frombuffer(data, dtype=np.uint8)
  utf8 = np.empty((b.size, 3), dtype=np.uint8)
  utf8[:, 0] = 0xE2
  utf8[:, 1] = 0xA0 | (b >> 6)
  utf8[:, 2] = 0x80 | (b & 0x3F)
  return utf8.tobytes().decode("utf-8")


def text_to_bytes(text: str) -> bytes:
  utf8 = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
  if utf8.size % 3 or not (utf8[0::3] == 0xE2).all() or not ((utf8[1::3] & 0xFC) == 0xA0).all():
    raise JpeglmError("text holds characters outside the byte alphabet (an <unk> or special?)")
  return (((utf8[1::3] & 0x03) << 6) | (utf8[2::3] & 0x3F)).astype(np.uint8).tobytes()


class ByteTokenizer:
  """A trained byte BPE: `encode(bytes) -> ids`, `decode(ids) -> bytes`, lossless."""

  def __init__(self, processor: spm.SentencePieceProcessor, path: str | None = None):
    self._sp = processor
    self.path = path
    self.vocab_size = processor.get_piece_size()
    self.bos_id = processor.bos_id()
    self.eos_id = processor.eos_id()
    self.unk_id = processor.unk_id()

  @classmethod
  def load(cls, path: str | os.PathLike) -> "ByteTokenizer":
    path = os.fspath(path)
    if not os.path.isfile(path):
      raise JpeglmError(f"tokenizer model not found: {path}")
    processor = spm.SentencePieceProcessor()
    try:
      processor.load(path)
    except (OSError, RuntimeError) as e:
      raise JpeglmError(f"{path}: not a SentencePiece model ({str(e).splitlines()[0]})") from None
    return cls(processor, path)

  @classmethod
  def train(cls, byte_strings: Iterable[bytes], vocab_size: int, path: str | os.PathLike,
            num_threads: int | None = None) -> "ByteTokenizer":
    """Trains the BPE on `byte_strings` (one file each) and writes the model to `path`."""
    minimum = NUM_BYTES + 3
    if vocab_size < minimum:
      raise JpeglmError(f"vocab_size={vocab_size}: must be at least {minimum} "
                        "(256 bytes + unk, bos, eos)")
    texts = [bytes_to_text(b) for b in byte_strings if b]
    if not texts:
      raise JpeglmError("no training data: every byte string was empty")
    texts.append(bytes_to_text(_ALL_BYTES))
    longest = max(len(t) for t in texts)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=model, model_type="bpe",
        vocab_size=vocab_size, character_coverage=1.0, byte_fallback=False,
        normalization_rule_name="identity", add_dummy_prefix=False,
        remove_extra_whitespaces=False, split_by_whitespace=False, split_by_unicode_script=False,
        split_by_number=False, split_digits=False, treat_whitespace_as_suffix=False,
        # Lengths are counted in UTF-8 bytes: 3 per byte of the original file.
        max_sentence_length=3 * longest + 16, input_sentence_size=0,
        unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID, pad_id=-1,
        hard_vocab_limit=True, num_threads=num_threads or os.cpu_count() or 1,
        minloglevel=2)
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
      f.write(model.getvalue())
    return cls.load(path)

  def encode(self, data: bytes) -> list[int]:
    """Token ids of `data`, without BOS/EOS."""
    if not data:
      return []
    return self._sp.encode(bytes_to_text(data))

  def encode_document(self, data: bytes) -> list[int]:
    """BOS + tokens + EOS: how every file enters training (the paper adds both)."""
    return [self.bos_id, *self.encode(data), self.eos_id]

  def decode(self, ids: Sequence[int]) -> bytes:
    """Bytes of the ids; BOS/EOS are dropped, an unknown id is an error."""
    specials = (self.bos_id, self.eos_id)
    ids = [int(i) for i in ids if int(i) not in specials]
    bad = [i for i in ids if not 0 <= i < self.vocab_size or i == self.unk_id]
    if bad:
      raise JpeglmError(f"token id {bad[0]} is not a byte piece of this {self.vocab_size}-token "
                        "vocabulary")
    if not ids:
      return b""
    return text_to_bytes(self._sp.decode(ids))

  def piece_bytes(self, token_id: int) -> bytes:
    """The bytes one token stands for (empty for specials)."""
    if self._sp.is_control(token_id) or self._sp.is_unknown(token_id):
      return b""
    return text_to_bytes(self._sp.id_to_piece(token_id))

  def serialized(self) -> bytes:
    return self._sp.serialized_model_proto()
