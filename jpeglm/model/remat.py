"""Rematerialisation policies: what the backward pass keeps and what it recomputes.

The model names its main activations (`jax.ad_checkpoint.checkpoint_name`); a policy keeps
some of them. From most memory to least recompute:

  none            keep everything (no remat)
  save_matmuls    keep every matmul output, recompute norms, rotary, softmax, activations
  minimal         keep the projections' outputs by name: q, k, v, attention out, MLP in/out
  save_attention  keep q, k, v and the attention output with the kernel's residuals, so
                  the backward pass never reruns attention (long context: the costly part)
  save_qkv_proj   keep only q, k, v
  offload_attention  as save_attention, but moved to host memory (TPU; pinned host)
  full            keep only each layer's input, recompute the layer

MaxText's `save_qkv_proj`, `minimal` and `minimal_with_context` are the models for these.
"""

from __future__ import annotations

import jax

QKV = ("query_proj", "key_proj", "value_proj")
ATTENTION = QKV + ("attention_out", "attention_residuals")
MINIMAL = QKV + ("attention_out", "out_proj", "mlp_gate", "mlp_up", "mlp_out")

_save = jax.checkpoint_policies.save_only_these_names
POLICIES = {
    "none": None,
    "save_matmuls": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "minimal": _save(*MINIMAL),
    "save_attention": _save(*ATTENTION),
    "save_qkv_proj": _save(*QKV),
    "offload_attention": jax.checkpoint_policies.save_and_offload_only_these_names(
        names_which_can_be_saved=[], names_which_can_be_offloaded=list(ATTENTION),
        offload_src="device", offload_dst="pinned_host"),
    "full": jax.checkpoint_policies.nothing_saveable,
}
