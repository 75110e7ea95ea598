"""Input side of pretraining: media sources -> codec bytes -> tokens -> packed batches.

Trainer entry points (`data_pipeline.pipeline`):
  make_train_iterator(config, tokenizer, *, process_index=None, process_count=None, split="train")
  make_eval_iterator(config, tokenizer, *, num_batches=None, process_index=None, process_count=None)
Both return a `BatchIterator`: numpy batches of global_batch / process_count rows,
  inputs, targets, segment_ids, positions: int32 [B, L]; weights: float32 [B, L] (0 = padding);
  target_tokens, target_bytes: int32 [B] (bits/byte = sum(nats * weights) / ln2 / sum(target_bytes)),
with JSON `get_state()` / `set_state()` for exact resume and `bad_inputs()` -> (seen, skipped).
Offline: `jpeglm prepare` (data_pipeline.prepare); tfds from a folder: data_pipeline.tfds_folder.
"""
