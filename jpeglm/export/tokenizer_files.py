"""The tokenizer files of an exported folder, and the note on how bytes become characters.

`AutoTokenizer.from_pretrained(HF_DIR, use_fast=False)` loads our SentencePiece model as a
`LlamaTokenizer` (transformers 5 builds its fast form from tokenizer.model; 4.x the slow
one). `add_prefix_space=False` and `legacy=False` keep it from prepending "▁" (the dummy
prefix would shift every id); tests check the ids equal ours on real JPEGs.
"""

from __future__ import annotations

import json
import os
import shutil

from jpeglm.tokenizer import BYTE_OFFSET, ByteTokenizer

README = """\
# JPEG-LM checkpoint exported by jpeglm

A Llama-architecture causal LM over codec bytes (Han et al., 2024). Load it with plain
transformers (no custom code):

    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(HF_DIR)
    tokenizer = AutoTokenizer.from_pretrained(HF_DIR, use_fast=False)

## Bytes <-> text
Each byte b of the {codec} stream is the character chr(b + {offset}) (U+2800 + b, the
Unicode Braille block); the SentencePiece BPE runs over those characters.

    text = "".join(chr(b + {offset}) for b in jpeg_bytes)
    ids = tokenizer(text).input_ids        # [BOS={bos}] + byte-pair ids (no EOS)
    data = bytes(ord(c) - {offset} for c in tokenizer.decode(ids, skip_special_tokens=True))

Training documents were BOS + tokens + EOS (EOS={eos}, UNK={unk}): a generation that emits
EOS has finished the file. `tokenizer(text)` adds BOS only (add_bos_token=true,
add_eos_token=false): the right prompt for completing a partial image.

## Files
- config.json, model*.safetensors, generation_config.json: the model and its sampling defaults
- tokenizer.model, tokenizer_config.json: the byte BPE
- jpeglm.json: the codec settings (`codec`) that turn the bytes back into images, the
  byte offset, and the training run's full config (`run_config`)
"""


def write_tokenizer(out_dir: str, tokenizer: ByteTokenizer, model_max_length: int) -> None:
  target = os.path.join(out_dir, "tokenizer.model")
  if not os.path.exists(target) or not os.path.samefile(tokenizer.path, target):
    shutil.copyfile(tokenizer.path, target)
  piece = tokenizer._sp.id_to_piece  # noqa: SLF001 - names of the special pieces
  config = {
      "tokenizer_class": "LlamaTokenizer",
      "add_bos_token": True, "add_eos_token": False,
      # No "▁" dummy prefix, no legacy space handling: they would alter the byte characters.
      "add_prefix_space": False, "legacy": False,
      "bos_token": piece(tokenizer.bos_id), "eos_token": piece(tokenizer.eos_id),
      "unk_token": piece(tokenizer.unk_id), "pad_token": None,
      "clean_up_tokenization_spaces": False, "model_max_length": model_max_length,
      "byte_offset": BYTE_OFFSET,
  }
  with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
    json.dump(config, f, indent=2)


def write_readme(out_dir: str, tokenizer: ByteTokenizer, codec: str) -> None:
  with open(os.path.join(out_dir, "README.md"), "w") as f:
    f.write(README.format(codec=codec.upper(), offset=BYTE_OFFSET, bos=tokenizer.bos_id,
                          eos=tokenizer.eos_id, unk=tokenizer.unk_id))
