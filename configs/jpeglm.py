"""JPEG-LM / AVC-LM pretraining configs (Han et al., 2024).

Variants by argument, `size=tiny|small|1b|7b` and `codec=jpeg|avc`:

  jpeglm train --config configs/jpeglm.py:size=7b,codec=jpeg --workdir gs://bucket/run
  jpeglm train --config configs/jpeglm.py:size=tiny --workdir /tmp/tiny --config.train.steps=50

`7b` is the paper's model: Llama-2 7B dimensions, vocabulary 320 and 12,288 context for
JPEG, 1024 and 32,768 for H.264. `tiny` runs in seconds on a CPU (tests, demo) on 64x64
images; `small` is the CPU benchmark shape (d 512, 8 layers).
"""

import ml_collections

from configs.config_args import parse_config_arg

# (d_model, n_layers, n_heads, n_kv_heads, d_ff)
MODEL_SIZES = {
    "tiny": (64, 2, 4, 4, 176),
    "small": (512, 8, 8, 8, 1408),
    "1b": (2048, 22, 16, 16, 5632),
    "7b": (4096, 32, 32, 32, 11008),
}
# Context and image side per size: the paper's settings at 1b/7b, shrunk for CPU runs.
JPEG_SHAPES = {"tiny": (1024, 64), "small": (1024, 128), "1b": (12288, 256), "7b": (12288, 256)}
AVC_SHAPES = {"tiny": (1024, (64, 36)), "small": (4096, (128, 72)),
              "1b": (32768, (256, 144)), "7b": (32768, (256, 144))}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_config_arg(arg, {"size": ("tiny", tuple(MODEL_SIZES)),
                               "codec": ("jpeg", ("jpeg", "avc"))})
  size, codec_name = args["size"], args["codec"]
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.codec = ml_collections.ConfigDict()
  c.codec.name = codec_name
  if codec_name == "jpeg":
    seq_len, side = JPEG_SHAPES[size]
    c.codec.size = side
    c.codec.quality = 25
    c.codec.subsampling = "4:2:0"
    c.codec.restart_every_mcu = True
    c.codec.strip_tables = True
    c.codec.color = "rgb"  # or "gray": one component (digits, documents, scans)
    vocab = 320
  else:
    seq_len, (width, height) = AVC_SHAPES[size]
    c.codec.width = width
    c.codec.height = height
    c.codec.fps = 3
    c.codec.seconds = 5
    c.codec.qp = 37
    vocab = 1024

  c.tokenizer = ml_collections.ConfigDict()
  c.tokenizer.path = ""  # empty: trained from data.source into the workdir on first run
  c.tokenizer.vocab_size = vocab
  c.tokenizer.num_files = 10_000 if size in ("1b", "7b") else 200

  c.data = ml_collections.ConfigDict()
  c.data.source = "builtin:photos" if codec_name == "jpeg" else "builtin:videos"
  c.data.eval_source = ""  # empty: a held-out slice of data.source
  c.data.tfds_data_dir = ""
  c.data.seq_len = seq_len
  c.data.packing = "concat"  # the paper's concatenate-and-chunk; "document" adds segment ids
  c.data.num_workers = 0 if size == "tiny" else 2
  # Threads encoding documents ahead of packing in each data process (0: one per core, at
  # most 16) and how many documents they run ahead (0: 64).
  c.data.read_threads = 0
  c.data.prefetch_documents = 0
  c.data.shuffle = True
  # auto: built-in media get random crops; "affine": shifted/turned/scaled training digits
  c.data.augment = "auto"
  c.data.max_bad_fraction = 0.1
  # Data shards the global batch is read as (0: one per process). Fix it to keep the data
  # order when the number of hosts changes (see data_pipeline/host_batches.py).
  c.data.num_shards = 0
  c.data.eval_fraction = 0.05  # held out of data.source when eval_source is empty
  c.data.eval_batches = 4  # batches per evaluation, the same ones every time
  c.data.tfds_feature = ""  # the tfds feature holding the media; empty: "image" / "video"
  # A file not decoded + encoded within this many seconds is abandoned, skipped and counted
  # (a helper process per data worker; 0: no deadline, no helper). Video clips take longer.
  c.data.max_seconds_per_file = 10.0 if codec_name == "jpeg" else 60.0
  c.data.shuffle_buffer = 512  # wds: / parquet: items mixed across shards (data_pipeline.streaming)
  c.data.cache_dir = ""  # local copies of remote arrayrecord: shards (empty: the temp folder)

  d_model, n_layers, n_heads, n_kv_heads, d_ff = MODEL_SIZES[size]
  c.model = ml_collections.ConfigDict()
  c.model.vocab_size = vocab
  c.model.d_model = d_model
  c.model.n_layers = n_layers
  c.model.n_heads = n_heads
  c.model.n_kv_heads = n_kv_heads
  c.model.d_ff = d_ff
  c.model.max_len = seq_len
  c.model.rope_theta = 10_000.0
  c.model.norm_eps = 1e-5
  c.model.param_dtype = "float32"
  c.model.dtype = "float32" if size in ("tiny", "small") else "bfloat16"
  # "chunked": causal blocks above the diagonal skipped, fastest on CPU (benchmarks/);
  # "auto": splash on TPU, cuDNN flash attention on GPU, chunked on CPU.
  c.model.attention = {"tiny": "chunked", "small": "chunked"}.get(size, "auto")
  # Splash tiles (TPU): multiples of 128; clipped to the sequence (per context shard).
  c.model.attention_block_q = 512
  c.model.attention_block_kv = 512
  c.model.attention_block_q_bwd = 512
  c.model.attention_block_kv_bwd = 512
  c.model.scan_layers = True
  # jpeglm.model.remat: none, save_matmuls, minimal, save_attention, save_qkv_proj,
  # offload_attention, full. "save_attention" keeps q/k/v and attention's output, so the
  # backward pass never reruns attention, the costly part at 12,288+ tokens; 7b uses "full",
  # which fits the slices in launch/README.md's table (v5p-16, v4-64, ...).
  c.model.remat = {"tiny": "none", "small": "none", "1b": "save_attention"}.get(size, "full")

  c.mesh = ml_collections.ConfigDict()
  c.mesh.dcn_data = 1  # > 1: slices joined over the data-centre network, data parallel
  c.mesh.data = 1
  c.mesh.fsdp = -1
  c.mesh.context = 1  # > 1: each row's sequence split over this many devices
  c.mesh.tensor = 1

  c.train = ml_collections.ConfigDict()
  c.train.steps = {"tiny": 200, "small": 2000, "1b": 100_000, "7b": 300_000}[size]
  c.train.global_batch = {"tiny": 8, "small": 8, "1b": 256, "7b": 64}[size]
  c.train.grad_accum = 1
  c.train.lr = 3e-4
  c.train.warmup_steps = {"tiny": 20, "small": 100, "1b": 2000, "7b": 2000}[size]
  c.train.weight_decay = 0.1
  c.train.clip = 1.0
  c.train.z_loss = 0.0
  c.train.on_nonfinite = "stop"  # or "skip": drop that step's update and go on
  c.train.time_budget_minutes = 0.0  # > 0: save and stop after this long (rerun resumes)
  c.train.log_every = 10 if size in ("tiny", "small") else 50
  c.train.eval_every = 100 if size in ("tiny", "small") else 2000
  c.train.checkpoint_every = 100 if size in ("tiny", "small") else 1000
  c.train.keep_checkpoints = 3
  # > 0: every this many steps, syntax-safe samples and completions of held-out images go to
  # TensorBoard and WORKDIR/samples/step_N/ (jpeglm.training.samples)
  c.train.sample_every = 0

  c.sample = ml_collections.ConfigDict()
  c.sample.temperature = 1.0
  c.sample.top_k = 50
  c.sample.top_p = 1.0
  c.sample.syntax_safe = False
  # True: `sample` / `eval` run their prompts through --batch-size slots, a slot taking the next
  # prompt as soon as its row ends (jpeglm.sampling.continuous); False: fixed batches, each
  # waiting for its longest row. A prompt gets the same tokens either way.
  c.sample.continuous = True
  return c
