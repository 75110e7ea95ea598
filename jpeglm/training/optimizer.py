"""AdamW as Llama-2 trained it: b1 0.9, b2 0.95, weight decay 0.1 on matrices only, linear
warmup then cosine decay to 10% of the peak, global-norm clipping (the paper gives only the
peak LR, 3e-4; the rest follows Llama-2, and every number is a config value)."""

from __future__ import annotations

import jax
import ml_collections
import optax

# Cosine decay ends at this fraction of the peak learning rate (Llama-2: 10%).
FINAL_LR_FRACTION = 0.1


def learning_rate_schedule(train: ml_collections.ConfigDict) -> optax.Schedule:
  warmup = min(int(train.warmup_steps), max(int(train.steps) - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=float(train.lr), warmup_steps=warmup,
      decay_steps=max(int(train.steps), warmup + 1), end_value=float(train.lr) * FINAL_LR_FRACTION)


def decay_mask(params) -> object:
  """True for parameters that get weight decay: matrices, but not embeddings or norm scales.

  Decided by path name and rank, so it holds for scanned (stacked) layers too.
  """
  def wants_decay(path, leaf) -> bool:
    names = "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path).lower()
    if "embed" in names or "norm" in names:
      return False
    return getattr(leaf, "ndim", 0) >= 2

  return jax.tree_util.tree_map_with_path(wants_decay, params)


def make_optimizer(train: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Clipping, then AdamW with the schedule; also reports the learning rate per step."""
  schedule = learning_rate_schedule(train)
  parts = []
  if train.clip and train.clip > 0:
    parts.append(optax.clip_by_global_norm(float(train.clip)))
  parts.append(optax.adamw(learning_rate=schedule, b1=0.9, b2=0.95, eps=1e-8,
                           weight_decay=float(train.weight_decay), mask=decay_mask))
  return optax.chain(*parts)
