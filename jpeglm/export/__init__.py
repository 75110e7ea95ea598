"""PyTorch interop: export a run to a Hugging Face Llama folder, import one back.

  hf_layout          names, shapes and config keys on both sides (one table)
  checkpoint_reader  a run's checkpoint, one parameter leaf at a time
  shards             sharded safetensors, written tensor by tensor
  tokenizer_files    the tokenizer config and the byte-offset note
  export             `jpeglm export` (streaming)
  importer           `jpeglm import`
  verify             both models on one batch: max |diff|, KL, top-1
"""
