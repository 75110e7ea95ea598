"""Temperature, top-k, top-p and masks restrict the next-token distribution as defined."""

import jax
import jax.numpy as jnp
import numpy as np

from jpeglm.sampling.next_token import NEG_INF, choose, filter_logits

LOGITS = jnp.log(jnp.array([[0.5, 0.2, 0.15, 0.1, 0.05]]))


def _kept(filtered):
  return set(np.flatnonzero(np.asarray(filtered[0]) > NEG_INF / 2).tolist())


def test_greedy_is_argmax_and_deterministic():
  logits = jax.random.normal(jax.random.key(0), (4, 320))
  a = choose(jax.random.key(1), logits, 0.0, 0, 1.0)
  b = choose(jax.random.key(2), logits, 0.0, 0, 1.0)
  assert np.array_equal(a, jnp.argmax(logits, -1)) and np.array_equal(a, b)


def test_top_k_keeps_k_largest():
  assert _kept(filter_logits(LOGITS, 1.0, 2, 1.0)) == {0, 1}
  assert _kept(filter_logits(LOGITS, 1.0, 0, 1.0)) == {0, 1, 2, 3, 4}


def test_top_p_keeps_smallest_set_reaching_p():
  assert _kept(filter_logits(LOGITS, 1.0, 0, 0.7)) == {0, 1}  # 0.5 + 0.2 reaches 0.7
  assert _kept(filter_logits(LOGITS, 1.0, 0, 0.71)) == {0, 1, 2}
  assert _kept(filter_logits(LOGITS, 1.0, 0, 0.3)) == {0}  # the top token always stays


def test_mask_excludes_tokens():
  allowed = jnp.array([[False, True, False, True, True]])
  assert _kept(filter_logits(LOGITS, 1.0, 0, 1.0, allowed)) == {1, 3, 4}
  draws = jax.vmap(lambda k: choose(k, LOGITS, 1.0, 0, 1.0, allowed))(
      jax.random.split(jax.random.key(0), 500))
  assert set(np.unique(draws).tolist()) <= {1, 3, 4}


def test_temperature_sharpens_and_flattens():
  keys = jax.random.split(jax.random.key(3), 4000)
  def freq(t):
    draws = jax.vmap(lambda k: choose(k, LOGITS, t, 0, 1.0))(keys)
    return np.bincount(np.asarray(draws).ravel(), minlength=5) / draws.size
  cold, warm, hot = freq(0.5), freq(1.0), freq(3.0)
  assert abs(warm[0] - 0.5) < 0.03  # temperature 1 samples the model's distribution
  assert cold[0] > warm[0] > hot[0]
