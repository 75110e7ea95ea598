"""Batched generation with a KV cache: prefill the prompts, then one token per step.

Two loops over one jitted step:
  - free sampling runs entirely on the device (`lax.while_loop`, stops when every row has
    emitted EOS or the context is full);
  - syntax-safe sampling returns to the host after each token, where `JpegGrammar` works
    out which tokens keep each row's stream decodable and hands that mask to the next step.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jpeglm.errors import JpeglmError
from jpeglm.model import ModelConfig
from jpeglm.sampling import kv_cache
from jpeglm.sampling.next_token import choose


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
  temperature: float = 1.0
  top_k: int = 50
  top_p: float = 1.0


@dataclasses.dataclass
class Generation:
  prompt: list[int]
  tokens: list[int]  # generated ids, EOS included when it came
  ended_with_eos: bool
  seconds: float


class Generator:
  """Samples continuations of token prompts from one set of parameters."""

  def __init__(self, params: dict, cfg: ModelConfig, eos_id: int, max_len: int,
               settings: SamplingSettings, grammar=None, pieces: Sequence[bytes] | None = None,
               banned: Sequence[int] = ()):
    """`banned`: ids never generated (unk and bos: neither stands for bytes)."""
    self.params = params
    base = np.ones(cfg.vocab_size, bool)
    base[list(banned)] = False
    self._base_allowed_V = jnp.asarray(base)
    self.cfg = cfg
    self.eos_id = eos_id
    self.max_len = max_len
    self.settings = settings
    self.grammar = grammar
    self.pieces = list(pieces) if pieces is not None else None
    if grammar is not None and pieces is None:
      raise ValueError("syntax-safe sampling needs the tokenizer's pieces")
    self._prefill = jax.jit(functools.partial(kv_cache.forward, cfg=cfg))
    self._step = jax.jit(self._step_impl, donate_argnames=("cache",))
    self._run = jax.jit(self._run_impl, donate_argnames=("buffer",))

  # ---- device side --------------------------------------------------------------------------

  def _step_impl(self, params, cache, logits_BxV, slot, pad_B, done_B, key, allowed_BxV):
    """Chooses the token for `slot`, then runs it through the model for slot + 1."""
    s = self.settings
    allowed_BxV = (self._base_allowed_V[None, :] if allowed_BxV is None
                   else allowed_BxV & self._base_allowed_V[None, :])
    token_B = choose(key, logits_BxV, s.temperature, s.top_k, s.top_p, allowed_BxV)
    token_B = jnp.where(done_B, self.eos_id, token_B)
    logits_Bx1xV, cache = kv_cache.forward(params, self.cfg, token_B[:, None], slot, pad_B, cache)
    return token_B, logits_Bx1xV[:, 0], cache

  def _run_impl(self, params, cache, logits_BxV, start, pad_B, key, buffer, stop):
    def cond(carry):
      slot, _, _, done_B, _, _ = carry
      return (slot < stop) & ~jnp.all(done_B)

    def body(carry):
      slot, cache, logits_BxV, done_B, key, buffer = carry
      key, sub = jax.random.split(key)
      token_B, logits_BxV, cache = self._step_impl(params, cache, logits_BxV, slot, pad_B,
                                                   done_B, sub, None)
      buffer = jax.lax.dynamic_update_slice_in_dim(buffer, token_B[:, None], slot, 1)
      return slot + 1, cache, logits_BxV, done_B | (token_B == self.eos_id), key, buffer

    done_B = jnp.zeros(pad_B.shape, bool)
    slot, _, _, _, _, buffer = jax.lax.while_loop(
        cond, body, (start, cache, logits_BxV, done_B, key, buffer))
    return buffer, slot

  # ---- host side ----------------------------------------------------------------------------

  def generate(self, prompts: Sequence[Sequence[int]], seed: int = 0,
               max_new_tokens: int | None = None) -> list[Generation]:
    """One continuation per prompt (prompts may differ in length)."""
    started = time.perf_counter()
    batch = len(prompts)
    longest = max(len(p) for p in prompts)
    if longest >= self.max_len:
      raise JpeglmError(f"a prompt of {longest} tokens leaves no room in the {self.max_len}-token "
                        "context (model.max_len)")
    stop = self.max_len if max_new_tokens is None else min(self.max_len, longest + max_new_tokens)
    pad_B = np.array([longest - len(p) for p in prompts], np.int32)
    tokens_BxP = np.zeros((batch, longest), np.int32)
    for b, p in enumerate(prompts):
      tokens_BxP[b, pad_B[b]:] = p
    cache = kv_cache.init_cache(self.cfg, batch, self.max_len)
    logits_BxPxV, cache = self._prefill(self.params, tokens_BxT=jnp.asarray(tokens_BxP),
                                        slot=jnp.int32(0), pad_B=jnp.asarray(pad_B), cache=cache)
    logits_BxV = logits_BxPxV[:, -1]
    key = jax.random.key(seed)
    if self.grammar is None:
      buffer = jnp.full((batch, self.max_len), self.eos_id, jnp.int32)
      buffer, end = self._run(self.params, cache, logits_BxV, jnp.int32(longest),
                              jnp.asarray(pad_B), key, buffer, jnp.int32(stop))
      generated = np.asarray(buffer)[:, longest:int(end)]
    else:
      generated = self._generate_safe(prompts, cache, logits_BxV, longest, pad_B, key, stop)
    seconds = time.perf_counter() - started
    out = []
    for b, p in enumerate(prompts):
      row = [int(t) for t in generated[b]]
      ended = self.eos_id in row
      out.append(Generation(list(p), row[:row.index(self.eos_id) + 1] if ended else row,
                            ended, seconds))
    return out

  def _generate_safe(self, prompts, cache, logits_BxV, longest, pad_B, key, stop):
    grammar, pieces = self.grammar, self.pieces
    states = [grammar.advance(grammar.start(), b"".join(pieces[t] for t in p)) for p in prompts]
    if any(s is None for s in states):
      raise ValueError("a prompt is not a valid beginning of this codec's stream")
    vocab = len(pieces)
    only_eos = np.zeros(vocab, bool)
    only_eos[self.eos_id] = True
    done = np.zeros(len(prompts), bool)
    rows = []
    pad = jnp.asarray(pad_B)
    for slot in range(longest, stop):
      allowed = np.stack([only_eos if d or grammar.is_complete(s) else grammar.allowed(s, pieces)
                          for s, d in zip(states, done)])
      key, sub = jax.random.split(key)
      token_B, logits_BxV, cache = self._step(self.params, cache, logits_BxV, jnp.int32(slot),
                                              pad, jnp.asarray(done), sub, jnp.asarray(allowed))
      token_B = np.asarray(token_B)
      rows.append(token_B)
      for b, t in enumerate(token_B):
        if not done[b] and t != self.eos_id:
          states[b] = grammar.advance(states[b], pieces[t])
      done |= token_B == self.eos_id
      if done.all():
        break
    return np.stack(rows, axis=1) if rows else np.zeros((len(prompts), 0), np.int32)
