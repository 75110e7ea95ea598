"""Batched generation with a KV cache: prefill the prompts, then one token per step.

The model is `jpeglm.model.transformer.Transformer` itself, run with a `jpeglm.model.kv_cache.KVCache`: the
prompt's prefill uses the model's attention kernel, each decode step attends only to the
filled part of the cache. Two loops:
  - free sampling runs entirely on the device (`lax.while_loop`, stops when every row has
    emitted EOS or the context is full);
  - syntax-safe sampling returns to the host after each token, where the codec's grammar
    (`JpegGrammar`, `AvcGrammar`) works out which tokens keep each row's stream decodable.
    Without top-p the host makes the draw itself from each row's candidates, which the
    model's step returns (`jpeglm.sampling.host_draws`): one device call per token, and
    usually a grammar check or two per row. With top-p and top-k it asks only about each
    row's highest-logit candidates (`jpeglm.sampling.lazy_masks`); otherwise it works out
    the full mask over the vocabulary, the next one while the device runs the model. All
    three give the same tokens.

Prompts are left-padded to a common length, rounded up (`prefill_length`) so that prompts
of nearby lengths share one compiled prefill and the prefill tiles the attention kernel.
Each prompt draws its tokens with its own keys (`jpeglm.sampling.keys`), so its sample does
not depend on its batch-mates: `jpeglm.sampling.continuous` gives it the same tokens.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jpeglm.model.kv_cache import CHUNK, KVCache
from jpeglm.errors import JpeglmError
from jpeglm.model.transformer import ModelConfig
from jpeglm.sampling import inference_model
from jpeglm.sampling.host_draws import (HostDraws, draw_candidates, draw_list_sizes,
                                        host_draws_apply, unpack)
from jpeglm.sampling.keys import prompt_keys, token_keys
from jpeglm.sampling.lazy_masks import LazyMasks, candidate_count, top_candidates, valid_needed
from jpeglm.sampling.next_token import choose_rows

# Prompts are left-padded to a multiple of this (or of the splash blocks, when longer).
PREFILL_MULTIPLE = 128


def _splash_block(cfg: ModelConfig) -> int:
  return max(cfg.attention_block_q, cfg.attention_block_kv, cfg.attention_block_q_bwd,
             cfg.attention_block_kv_bwd)


def prefill_length(longest: int, cfg: ModelConfig) -> int:
  """Slots a batch's prompts are padded to: a multiple of PREFILL_MULTIPLE, and beyond one
  splash block a multiple of the block (splash tiles the prompt by it)."""
  multiple = PREFILL_MULTIPLE
  if cfg.attention_kernel == "splash" and longest > _splash_block(cfg):
    multiple = _splash_block(cfg)
  return -(-longest // multiple) * multiple


def max_prefill_padding(cfg: ModelConfig) -> int:
  """Most slots `prefill_length` may add: the cache holds max_len plus this."""
  return max(PREFILL_MULTIPLE, _splash_block(cfg)) - 1


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
               banned: Sequence[int] = (), mesh: jax.sharding.Mesh | None = None,
               lazy_masks: bool = True, candidates: int | None = None,
               host_draws: bool = True):
    """`banned`: ids never generated (unk and bos: neither stands for bytes). `mesh`: the
    mesh the parameters are laid out on; the model's sharding rules then apply.
    `lazy_masks`: syntax-safe draws from each row's candidates where the settings allow:
    made on the host without top-p (`host_draws`; `candidates`: the length of its lists,
    default `host_draws.draw_list_sizes`), else masks over the top `candidates` tokens
    (default `lazy_masks.candidate_count`); False: full masks always. `host_draws` False:
    masks over the candidates even without top-p (benchmarks compare the two). All give the
    same tokens."""
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
    self.mesh = mesh
    self.cache_size = max_len + max_prefill_padding(cfg)
    self._prefill = jax.jit(self._prefill_impl, static_argnames=("size",))
    self._choose = jax.jit(self._choose_impl)
    self._forward = jax.jit(self._forward_impl, donate_argnames=("cache",))
    self._run = jax.jit(self._run_impl, donate_argnames=("cache", "buffer"))
    self._only_eos = np.arange(cfg.vocab_size) == eos_id  # a finished row's mask
    self.batchers: dict = {}  # slots -> its continuous.ContinuousBatcher (`generate_all`)
    needed = valid_needed(settings.temperature, settings.top_k, cfg.vocab_size)
    self.draws = self.lazy = None
    if grammar is not None and lazy_masks:
      usable = base & np.array([bool(p) for p in self.pieces])  # specials stand for no bytes
      if host_draws and host_draws_apply(settings.temperature, settings.top_p):
        # The host makes each draw from the row's candidates (fixed batches and continuous
        # batching alike). Greedy is the walk without top-k: its first valid logit.
        k = None if settings.temperature <= 0 else needed
        self.draws = HostDraws(self.pieces, k, usable)
        self._draw_scores, self._draw_m = draw_list_sizes(k, cfg.vocab_size, candidates)
        self._draw = jax.jit(self._draw_impl)
        self._forward_draw = jax.jit(self._forward_draw_impl, donate_argnames=("cache",))
      elif needed is not None:  # top-p with top-k: masks over each row's top candidates
        self.lazy = LazyMasks(self.pieces, needed, usable)
        self._candidates = candidates or candidate_count(needed, cfg.vocab_size)
        self._top = jax.jit(self._top_impl)
        self._forward_top = jax.jit(self._forward_top_impl, donate_argnames=("cache",))

  def _mesh(self):
    return jax.set_mesh(self.mesh) if self.mesh is not None else contextlib.nullcontext()

  # ---- device side --------------------------------------------------------------------------

  def _prefill_impl(self, params, tokens_BxP, starts_B, size: int):
    cache = inference_model.init_cache(self.cfg, tokens_BxP.shape[0], size, starts_B)
    logits_BxPxV, cache = inference_model.model(params, self.cfg)(tokens_BxP, cache=cache, prefill=True)
    return logits_BxPxV[:, -1], cache

  def _choose_impl(self, logits_BxV, done_B, keys_B, steps_B, allowed_BxV):
    """Each row's next token, drawn with its prompt's key (`keys_B`) folded with the token's
    number (`steps_B`, one for all rows or one per row); EOS for rows that are done."""
    s = self.settings
    base_BxV = jnp.broadcast_to(self._base_allowed_V, logits_BxV.shape)
    allowed_BxV = base_BxV if allowed_BxV is None else allowed_BxV & base_BxV
    token_B = choose_rows(token_keys(keys_B, steps_B), logits_BxV, s.temperature, s.top_k,
                          s.top_p, allowed_BxV)
    return jnp.where(done_B, self.eos_id, token_B)

  def _forward_impl(self, params, cache: KVCache, token_B):
    """The token at the cache's next slot -> logits for the slot after it."""
    logits_Bx1xV, cache = inference_model.model(params, self.cfg)(token_B[:, None], cache=cache)
    return logits_Bx1xV[:, 0], cache

  def _top_impl(self, logits_BxV):
    """Each row's candidates for a lazy mask: (scaled logits [B, M], ids [B, M])."""
    return top_candidates(logits_BxV, self._base_allowed_V, self.settings.temperature,
                          self._candidates)

  def _forward_top_impl(self, params, cache: KVCache, token_B):
    logits_BxV, cache = self._forward_impl(params, cache, token_B)
    return logits_BxV, cache, self._top_impl(logits_BxV)

  def _draw_impl(self, logits_BxV, keys_B, step):
    """Each row's candidates for a host draw of token number `step` (`host_draws`)."""
    return draw_candidates(logits_BxV, self._base_allowed_V, keys_B, step,
                           self.settings.temperature, self._draw_scores, self._draw_m)

  def _forward_draw_impl(self, params, cache: KVCache, token_B, keys_B, step):
    logits_BxV, cache = self._forward_impl(params, cache, token_B)
    return logits_BxV, cache, self._draw_impl(logits_BxV, keys_B, step)

  def _run_impl(self, params, cache, logits_BxV, keys_B, buffer, stop):
    def cond(carry):
      cache, _, done_B, _, _ = carry
      return (cache.length < stop) & ~jnp.all(done_B)

    def body(carry):
      cache, logits_BxV, done_B, step, buffer = carry
      token_B = self._choose_impl(logits_BxV, done_B, keys_B, step, None)
      buffer = jax.lax.dynamic_update_slice_in_dim(buffer, token_B[:, None], cache.length, 1)
      logits_BxV, cache = self._forward_impl(params, cache, token_B)
      return cache, logits_BxV, done_B | (token_B == self.eos_id), step + 1, buffer

    done_B = jnp.zeros(cache.starts_B.shape, bool)
    cache, _, _, _, buffer = jax.lax.while_loop(
        cond, body, (cache, logits_BxV, done_B, jnp.int32(0), buffer))
    return buffer, cache  # the cache too, so that its donated buffers are reused in place

  # ---- host side ----------------------------------------------------------------------------

  def _layout(self, prompts: Sequence[Sequence[int]], max_new_tokens: int | None):
    """(tokens [B, P] left-padded, starts [B], tokens to generate, cache slots)."""
    longest = max(len(p) for p in prompts)
    if longest >= self.max_len:
      raise JpeglmError(f"a prompt of {longest} tokens leaves no room in the {self.max_len}-token "
                        "context (model.max_len)")
    new = self.max_len - longest
    if max_new_tokens is not None:
      new = min(new, max_new_tokens)
    width = prefill_length(longest, self.cfg)
    starts_B = np.array([width - len(p) for p in prompts], np.int32)
    tokens_BxP = np.zeros((len(prompts), width), np.int32)
    for b, p in enumerate(prompts):
      tokens_BxP[b, starts_B[b]:] = p
    # Room for this call's tokens only (in whole chunks: few distinct compiled shapes): the
    # cache of a 12,288 context is GBs per row that a short run never touches.
    size = min(self.cache_size, -(-(width + new) // CHUNK) * CHUNK)
    return tokens_BxP, starts_B, new, size

  def compile(self, batch: int, prompt_length: int, max_new_tokens: int | None = None) -> float:
    """Compiles every program `generate` runs for prompts of this batch and (longest)
    length, by running them on no tokens; returns the seconds it took. Later timings of
    `generate` then measure sampling alone."""
    started = time.perf_counter()
    tokens_BxP, starts_B, _, size = self._layout([[0] * prompt_length] * batch, max_new_tokens)
    keys_B = prompt_keys(0, range(batch))
    with self._mesh():
      logits_BxV, cache = self._prefill(self.params, jnp.asarray(tokens_BxP),
                                        jnp.asarray(starts_B), size=size)
      if self.grammar is None:
        buffer = jnp.full((batch, cache.size), self.eos_id, jnp.int32)
        out = self._run(self.params, cache, logits_BxV, keys_B, buffer, jnp.int32(0))  # 0 steps
      else:
        token_B = self._choose(logits_BxV, jnp.zeros((batch,), bool), keys_B, jnp.int32(0),
                               jnp.ones(logits_BxV.shape, bool))
        if self.draws is not None:
          out = (self._draw(logits_BxV, keys_B, jnp.int32(0)),
                 self._forward_draw(self.params, cache, token_B, keys_B, jnp.int32(1)))
        elif self.lazy is None:
          out = self._forward(self.params, cache, token_B)
        else:
          out = self._top(logits_BxV), self._forward_top(self.params, cache, token_B)
    jax.block_until_ready(out)
    return time.perf_counter() - started

  def generate(self, prompts: Sequence[Sequence[int]], seed: int = 0,
               max_new_tokens: int | None = None,
               indices: Sequence[int] | None = None) -> list[Generation]:
    """One continuation per prompt (prompts may differ in length). Prompt b draws with the
    key of (`seed`, `indices[b]`) (default: b): the same prompt, seed and index give the
    same tokens in any batch."""
    started = time.perf_counter()
    tokens_BxP, starts_B, new, size = self._layout(prompts, max_new_tokens)
    width = tokens_BxP.shape[1]
    keys_B = prompt_keys(seed, range(len(prompts)) if indices is None else indices)
    with self._mesh():
      logits_BxV, cache = self._prefill(self.params, jnp.asarray(tokens_BxP),
                                        jnp.asarray(starts_B), size=size)
      if self.grammar is None:
        buffer = jnp.full((len(prompts), cache.size), self.eos_id, jnp.int32)
        buffer, cache = self._run(self.params, cache, logits_BxV, keys_B, buffer,
                                  jnp.int32(width + new))
        generated = np.asarray(buffer)[:, width:int(cache.length)]
      else:
        generated = self._generate_safe(prompts, cache, logits_BxV, keys_B, new)
    seconds = time.perf_counter() - started
    out = []
    for b, p in enumerate(prompts):
      row = [int(t) for t in generated[b]]
      ended = self.eos_id in row
      out.append(Generation(list(p), row[:row.index(self.eos_id) + 1] if ended else row,
                            ended, seconds))
    return out

  def _masks(self, states, done, top) -> np.ndarray:
    """[B, V] allowed tokens of rows in grammar `states` (None: an empty slot): over the
    step's candidates `top` with lazy masks, else the grammar's full masks; EOS alone for a
    row done, complete or empty."""
    if self.lazy is not None:
      values_BxM, ids_BxM = (np.asarray(x) for x in top)
    allowed_BxV = np.zeros((len(states), self.cfg.vocab_size), bool)
    for b, (state, d) in enumerate(zip(states, done)):
      if d or state is None or self.grammar.is_complete(state):
        allowed_BxV[b] = self._only_eos
      elif self.lazy is not None:
        self.lazy.fill_row(allowed_BxV[b], self.grammar, state, values_BxM[b], ids_BxM[b])
      else:
        allowed_BxV[b] = self.grammar.allowed(state, self.pieces)
    return allowed_BxV

  def _generate_safe(self, prompts, cache, logits_BxV, keys_B, new):
    grammar, pieces = self.grammar, self.pieces
    states = [grammar.advance(grammar.start(), b"".join(pieces[t] for t in p)) for p in prompts]
    if any(s is None for s in states):
      raise ValueError("a prompt is not a valid beginning of this codec's stream")
    if self.draws is not None:
      return self._generate_drawn(states, cache, logits_BxV, keys_B, new)
    done = np.zeros(len(prompts), bool)
    rows = []
    lazy = self.lazy
    top = self._top(logits_BxV) if lazy is not None else None
    for step in range(new):
      allowed = self._masks(states, done, top)  # lazy: waits for the step's candidates
      token_B = self._choose(logits_BxV, jnp.asarray(done), keys_B, jnp.int32(step),
                             jnp.asarray(allowed))
      # Dispatched before the host reads the token: the grammar advances (and, without lazy
      # masks, the next mask is worked out) while the device runs the model.
      if lazy is not None:
        logits_BxV, cache, top = self._forward_top(self.params, cache, token_B)
      else:
        logits_BxV, cache = self._forward(self.params, cache, token_B)
      token_B = np.asarray(token_B)
      rows.append(token_B)
      for b, t in enumerate(token_B):
        if not done[b] and t != self.eos_id:
          states[b] = grammar.advance(states[b], pieces[t])
      done |= token_B == self.eos_id
      if done.all():
        break
    return np.stack(rows, axis=1) if rows else np.zeros((len(prompts), 0), np.int32)

  def _generate_drawn(self, states, cache, logits_BxV, keys_B, new):
    """`_generate_safe` with host draws: one device call per token, the model's step and the
    next draw's candidates."""
    done = np.zeros(len(states), bool)
    rows = []
    # numpy arguments: jit takes them on its fast path (jnp.asarray is a dispatch of its own)
    cands = self._draw(logits_BxV, keys_B, np.int32(0))
    for step in range(new):
      token_B = self._drawn_tokens(states, done, cands, logits_BxV, keys_B, np.int32(step))
      logits_BxV, cache, cands = self._forward_draw(self.params, cache, token_B, keys_B,
                                                    np.int32(step + 1))
      rows.append(token_B)
      done |= token_B == self.eos_id
      if done.all():
        break
    return np.stack(rows, axis=1) if rows else np.zeros((len(states), 0), np.int32)

  def _drawn_tokens(self, states: list, done: np.ndarray, cands, logits_BxV, keys_B,
                    steps_B) -> np.ndarray:
    """Tokens [B] of one syntax-safe step drawn on the host from `cands` (`_draw`'s), and
    `states` advanced by them in place (None: an empty slot, done). Rows the candidates
    cannot settle draw on the device with their full mask (the others' tokens one-hot), with
    keys (`keys_B`, `steps_B`). Done, complete and empty rows: EOS."""
    grammar, pieces, eos = self.grammar, self.pieces, self.eos_id
    cands = unpack(*(np.asarray(x) for x in cands), self._draw_m)  # waits for the device
    token_B = np.full(len(states), eos, np.int32)
    unsettled = []
    for b, state in enumerate(states):
      if done[b] or state is None or grammar.is_complete(state):
        continue  # EOS, the only token left
      picked = self.draws.pick(grammar, state, cands, b)
      if picked is None:
        unsettled.append(b)
      else:
        token_B[b], states[b] = picked
    if unsettled:
      allowed_BxV = np.arange(len(pieces))[None, :] == token_B[:, None]
      for b in unsettled:
        allowed_BxV[b] = grammar.allowed(states[b], pieces)
      token_B = np.asarray(self._choose(logits_BxV, done, keys_B, steps_B, allowed_BxV))
      for b in unsettled:
        if token_B[b] != eos:
          states[b] = grammar.advance(states[b], pieces[token_B[b]])
    return token_B
