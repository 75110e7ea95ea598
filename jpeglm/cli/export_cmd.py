"""`jpeglm export` and `jpeglm import`: PyTorch (Hugging Face Llama) interop.

  jpeglm export --workdir DIR [--step N] --out HF_DIR [--dtype bfloat16|float32] [--verify]
  jpeglm import --hf HF_DIR --workdir DIR [--config CFG] [--config.k=v ...]
"""

from __future__ import annotations



def register(subparsers) -> None:
  export = subparsers.add_parser(
      "export", help="write a checkpoint as a Hugging Face LlamaForCausalLM folder",
      description="Streams the checkpoint's parameters leaf by leaf into (sharded) "
                  "safetensors, with config.json, generation_config.json, the tokenizer and "
                  "jpeglm.json (codec settings). Overrides change the sampling defaults.")
  export.add_argument("--workdir", required=True)
  export.add_argument("--out", required=True, help="a new (or empty) folder")
  export.add_argument("--step", type=int, default=None, help="default: the latest checkpoint")
  export.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  export.add_argument("--max-shard-gb", type=float, default=4.0)
  export.add_argument("--verify", action="store_true",
                      help="run both models on one token batch and report the differences")
  export.set_defaults(func=_export, accepts_overrides=True)

  imp = subparsers.add_parser(
      "import", help="turn a Hugging Face Llama folder into a workdir at step 0",
      description="Writes config.json, tokenizer.model and an Orbax checkpoint (fresh "
                  "optimizer state) that `jpeglm train` resumes from and `jpeglm sample` reads.")
  imp.add_argument("--hf", required=True, help="folder with config.json + safetensors")
  imp.add_argument("--workdir", required=True)
  imp.add_argument("--config", default=None,
                   help="run config the folder must match (default: the folder's jpeglm.json, "
                        "else configs/jpeglm.py:size=7b shaped like the folder)")
  imp.set_defaults(func=_import, accepts_overrides=True)


def _export(args, overrides) -> int:
  from jpeglm.config_io import apply_overrides, read_config
  from jpeglm.export.export import export_workdir
  from jpeglm.runtime import files
  from jpeglm.training.run_setup import CONFIG_FILE

  config = None
  if overrides:
    config = apply_overrides(read_config(files.join(args.workdir, CONFIG_FILE)), overrides)
  reader = export_workdir(args.workdir, args.out, args.step, args.dtype,
                          int(args.max_shard_gb * 1024**3), config)
  print(f"exported step {reader.step} of {args.workdir} to {args.out} ({args.dtype})")
  if args.verify:
    import ml_collections
    from jpeglm.export.verify import verify_export
    from jpeglm.model.transformer import ModelConfig
    cfg = ModelConfig.from_config(ml_collections.ConfigDict(reader.meta["config"]).model)
    print(verify_export(reader.read_params(), cfg, args.out).line())
  return 0


def _import(args, overrides) -> int:
  from jpeglm.config_io import load_config
  from jpeglm.export.importer import import_hf

  config = load_config(args.config, overrides) if args.config else None
  config = import_hf(args.hf, args.workdir, config, () if args.config else overrides)
  m = config.model
  print(f"imported {args.hf} into {args.workdir} at step 0: d_model {m.d_model}, "
        f"{m.n_layers} layers, vocab {m.vocab_size}; `jpeglm train --workdir {args.workdir} "
        "--config ...` resumes from it")
  return 0
