"""Continuous batching: a fixed number of slots decode together; a slot whose row ends takes
the next prompt while the others go on.

Fixed batches (`Generator.generate`) wait for their longest row, and sampled images end at
different lengths (EOS, the end of the context, or, syntax-safe, the end of the image). Here
each slot of the KV cache holds one prompt with its own filled length (`KVCache.length` per
row; the [Y, B, K, S, H] layout is unchanged). A new prompt is prefilled alone (the same
program and padding as a batch of one) and its keys and values are copied into its slot;
then decoding resumes for every slot.

Free sampling stays on the device: one `lax.while_loop` runs decode steps until a slot ends
(or `sync_every` steps), and only then does the host read which slots ended and refill them.
Syntax-safe sampling needs the host's grammar for every token, so the same scheduler runs one
step per call: without top-p the host draws each slot's token from its candidates
(`Generator.draws`, `jpeglm.sampling.host_draws`); with top-p, lazy masks over each slot's top
candidates (`Generator.lazy`), the grammar advanced while the device runs the model.

Each prompt draws with its own keys (`jpeglm.sampling.keys`), so its tokens do not depend
on its slot or its slot-mates: they equal those of `Generator.generate` on that prompt alone
(same seed and index), which tests/test_continuous_batching.py checks.

Shapes in names: S slots, V vocabulary, N most tokens generated per prompt, P prompt slots.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jpeglm.errors import JpeglmError
from jpeglm.model.kv_cache import CHUNK, KVCache
from jpeglm.sampling import inference_model
from jpeglm.sampling.generate import Generation, Generator, prefill_length
from jpeglm.sampling.keys import prompt_keys

# Decode steps per device call when no slot ends sooner: the host checks in this often.
SYNC_EVERY = 256


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Slots:
  """The device side of every slot, donated from call to call."""
  cache: KVCache  # per-row lengths
  logits_SxV: jax.Array  # float32: each slot's logits for its next token
  keys_S: jax.Array  # each slot's prompt key
  steps_S: jax.Array  # int32: tokens generated so far
  limits_S: jax.Array  # int32: most tokens the slot's prompt may generate
  live_S: jax.Array  # bool: holds a prompt that has not ended (free sampling)
  buffer_SxN: jax.Array  # int32: the tokens generated (free sampling)


@dataclasses.dataclass
class _Job:
  """The host side of one occupied slot."""
  index: int  # the prompt's place in the request
  limit: int
  started: float
  tokens: list[int] = dataclasses.field(default_factory=list)  # syntax-safe only
  state: object = None  # the grammar's state (syntax-safe only)


class ContinuousBatcher:
  """`generate` like `Generator.generate`, any number of prompts through `slots` rows."""

  def __init__(self, generator: Generator, slots: int, sync_every: int = SYNC_EVERY):
    if slots < 1:
      raise JpeglmError(f"continuous batching needs at least one slot, not {slots}")
    self.generator = generator
    self.slots = slots
    self.sync_every = sync_every
    self.decode_steps = 0  # decode steps (of all slots at once) of the last `generate`
    self._empty = jax.jit(self._empty_impl, static_argnames=("size", "most_new"))
    self._admit = jax.jit(self._admit_impl, donate_argnames=("slots",))
    self._decode = jax.jit(self._decode_impl, donate_argnames=("slots",))
    self._advance = jax.jit(self._advance_impl, donate_argnames=("slots",))
    self._choose = generator._choose

  # ---- device side --------------------------------------------------------------------------

  def _empty_impl(self, size: int, most_new: int) -> Slots:
    g, s = self.generator, self.slots
    cache = inference_model.init_cache(g.cfg, s, size)
    cache = dataclasses.replace(cache, length=jnp.zeros((s,), jnp.int32))
    zeros_S = jnp.zeros((s,), jnp.int32)
    return Slots(cache, jnp.zeros((s, g.cfg.vocab_size), jnp.float32), prompt_keys(0, range(s)),
                 zeros_S, zeros_S, jnp.zeros((s,), bool),
                 jnp.full((s, most_new), g.eos_id, jnp.int32))

  def _admit_impl(self, params, slots: Slots, tokens_1xP, start, slot, key, limit) -> Slots:
    """The prompt (left-padded as a batch of one is) prefilled into slot `slot`."""
    width = tokens_1xP.shape[1]
    logits_1xV, alone = self.generator._prefill_impl(params, tokens_1xP, start[None], size=width)
    cache = slots.cache
    at = (0, slot, 0, 0, 0)
    cache = dataclasses.replace(
        cache,
        k=jax.lax.dynamic_update_slice(cache.k, alone.k, at),  # the prefill's `width` slots
        v=jax.lax.dynamic_update_slice(cache.v, alone.v, at),
        starts_B=cache.starts_B.at[slot].set(start), length=cache.length.at[slot].set(width))
    return Slots(cache, slots.logits_SxV.at[slot].set(logits_1xV[0]),
                 slots.keys_S.at[slot].set(key),
                 slots.steps_S.at[slot].set(0), slots.limits_S.at[slot].set(limit),
                 slots.live_S.at[slot].set(limit > 0), slots.buffer_SxN)

  def _advance_impl(self, params, slots: Slots, token_S, live_S) -> Slots:
    """Every slot's token through the model; slots not live keep their length and step."""
    before_S = slots.cache.length
    # Idle slots run a real id (EOS may be -1, as in benchmarks): a NaN written to the cache
    # would survive masking (0 x NaN) when the slot is reused.
    token_S = jnp.where(live_S, token_S, 0)
    logits_SxV, cache = self.generator._forward_impl(params, slots.cache, token_S)
    cache = dataclasses.replace(cache, length=jnp.where(live_S, cache.length, before_S))
    return dataclasses.replace(slots, cache=cache, logits_SxV=logits_SxV,
                               steps_S=slots.steps_S + live_S.astype(jnp.int32))

  def _decode_impl(self, params, slots: Slots, max_steps, stop_at_end):
    """Free sampling: up to `max_steps` steps, fewer when a slot ends and `stop_at_end`
    (prompts wait for its slot). Returns the slots and the steps run."""
    g = self.generator
    columns_N = jnp.arange(slots.buffer_SxN.shape[1])

    def cond(carry):
      slots, step, ended = carry
      return (step < max_steps) & jnp.any(slots.live_S) & ~(stop_at_end & ended)

    def body(carry):
      slots, step, ended = carry
      live_S = slots.live_S
      token_S = g._choose_impl(slots.logits_SxV, ~live_S, slots.keys_S, slots.steps_S, None)
      # A select over the whole buffer, not a scatter: XLA:CPU copied the loop's state for
      # the scatter (2x slower steps); on a GPU this is one small fused kernel.
      at_SxN = live_S[:, None] & (columns_N[None, :] == slots.steps_S[:, None])
      buffer_SxN = jnp.where(at_SxN, token_S[:, None], slots.buffer_SxN)
      slots = self._advance_impl(params, slots, token_S, live_S)
      ended_S = live_S & ((token_S == g.eos_id) | (slots.steps_S >= slots.limits_S))
      slots = dataclasses.replace(slots, live_S=live_S & ~ended_S, buffer_SxN=buffer_SxN)
      return slots, step + 1, ended | jnp.any(ended_S)

    slots, steps, _ = jax.lax.while_loop(cond, body, (slots, jnp.int32(0), jnp.bool_(False)))
    return slots, steps

  # ---- host side ----------------------------------------------------------------------------

  def _plan(self, prompts, max_new_tokens):
    """(per-prompt token limits, cache slots per row, most tokens of any prompt)."""
    g = self.generator
    if not prompts:
      return [], CHUNK, 0
    longest = max(len(p) for p in prompts)
    if longest >= g.max_len:
      raise JpeglmError(f"a prompt of {longest} tokens leaves no room in the {g.max_len}-token "
                        "context (model.max_len)")
    if max_new_tokens is None or isinstance(max_new_tokens, int):
      max_new_tokens = [max_new_tokens] * len(prompts)
    limits = [g.max_len - len(p) if m is None else min(g.max_len - len(p), m)
              for p, m in zip(prompts, max_new_tokens)]
    reach = max(prefill_length(len(p), g.cfg) + n for p, n in zip(prompts, limits))
    size = min(g.cache_size, -(-reach // CHUNK) * CHUNK)
    return limits, size, max(limits)

  def _admit_job(self, slots: Slots, slot: int, prompt, seed: int, index: int,
                 limit: int) -> Slots:
    g = self.generator
    width = prefill_length(len(prompt), g.cfg)
    tokens_1xP = np.zeros((1, width), np.int32)
    tokens_1xP[0, width - len(prompt):] = prompt
    # The prompt's key made as `Generator.generate` makes it, outside any program.
    key = prompt_keys(seed, [index])[0]
    return self._admit(g.params, slots, jnp.asarray(tokens_1xP), jnp.int32(width - len(prompt)),
                       jnp.int32(slot), key, jnp.int32(limit))

  def compile(self, prompt_length: int, max_new_tokens: int) -> float:
    """Compiles the programs `generate` runs for prompts of this length, by running them on
    no tokens; returns the seconds it took."""
    started = time.perf_counter()
    g = self.generator
    prompt = [0] * prompt_length
    _, size, most_new = self._plan([prompt], max_new_tokens)
    with g._mesh():
      slots = self._empty(size=size, most_new=0 if g.grammar is not None else most_new)
      slots = self._admit_job(slots, 0, prompt, 0, 0, 0)  # limit 0: no slot is live
      if g.grammar is None:
        out = self._decode(g.params, slots, jnp.int32(0), jnp.bool_(True))
      else:
        token_S = self._choose(slots.logits_SxV, ~slots.live_S, slots.keys_S, slots.steps_S,
                               jnp.ones(slots.logits_SxV.shape, bool))
        out = self._advance(g.params, slots, token_S, slots.live_S)
        if g.draws is not None:
          out = g._draw(out.logits_SxV, out.keys_S, out.steps_S)
        elif g.lazy is not None:
          out = g._top(out.logits_SxV)
    jax.block_until_ready(out)
    return time.perf_counter() - started

  def generate(self, prompts: Sequence[Sequence[int]], seed: int = 0,
               max_new_tokens: int | Sequence[int] | None = None,
               indices: Sequence[int] | None = None) -> list[Generation]:
    """One continuation per prompt, in the prompts' order. Prompt i draws with the key of
    (`seed`, `indices[i]`) (default: i), as in `Generator.generate`. `max_new_tokens` may
    be one per prompt. A Generation's `seconds` runs from its prefill to its end."""
    prompts = [list(p) for p in prompts]
    indices = list(range(len(prompts))) if indices is None else list(indices)
    limits, size, most_new = self._plan(prompts, max_new_tokens)
    self.decode_steps = 0
    results: list[Generation | None] = [None] * len(prompts)
    queue = collections.deque(range(len(prompts)))
    g = self.generator
    with g._mesh():
      slots = self._empty(size=size, most_new=0 if g.grammar is not None else most_new)
      if g.grammar is None:
        self._run_free(slots, prompts, seed, indices, limits, queue, results)
      else:
        self._run_safe(slots, prompts, seed, indices, limits, queue, results)
    return results

  def _finish(self, results, prompts, job: _Job, tokens: list[int]) -> None:
    ended = self.generator.eos_id in tokens
    if ended:
      tokens = tokens[:tokens.index(self.generator.eos_id) + 1]
    results[job.index] = Generation(prompts[job.index], tokens, ended,
                                    time.perf_counter() - job.started)

  def _run_free(self, slots, prompts, seed, indices, limits, queue, results) -> None:
    g = self.generator
    jobs: list[_Job | None] = [None] * self.slots

    def refill(slots, s):
      while queue:
        i = queue.popleft()
        if limits[i] == 0:  # nothing to generate: no slot needed
          self._finish(results, prompts, _Job(i, 0, time.perf_counter()), [])
          continue
        jobs[s] = _Job(i, limits[i], time.perf_counter())
        return self._admit_job(slots, s, prompts[i], seed, indices[i], limits[i])
      return slots

    for s in range(self.slots):
      slots = refill(slots, s)
    while any(jobs):
      slots, ran = self._decode(g.params, slots, jnp.int32(self.sync_every),
                                jnp.bool_(bool(queue)))
      live_S, steps_S = np.asarray(slots.live_S), np.asarray(slots.steps_S)
      self.decode_steps += int(ran)
      ended = [s for s, job in enumerate(jobs) if job is not None and not live_S[s]]
      if not ended:
        continue
      rows = np.asarray(slots.buffer_SxN[np.asarray(ended)])  # read before a refill reuses them
      for s, row in zip(ended, rows):
        self._finish(results, prompts, jobs[s], [int(t) for t in row[:steps_S[s]]])
        jobs[s] = None
        slots = refill(slots, s)

  def _run_safe(self, slots, prompts, seed, indices, limits, queue, results) -> None:
    g = self.generator
    grammar, pieces, eos = g.grammar, g.pieces, g.eos_id
    jobs: list[_Job | None] = [None] * self.slots

    def refill(slots, s):
      while queue:
        i = queue.popleft()
        state = grammar.advance(grammar.start(), b"".join(pieces[t] for t in prompts[i]))
        if state is None:
          raise ValueError("a prompt is not a valid beginning of this codec's stream")
        job = _Job(i, limits[i], time.perf_counter(), state=state)
        if limits[i] == 0 or grammar.is_complete(state):  # ends at once: EOS, if room
          self._finish(results, prompts, job, [eos] if limits[i] else [])
          continue
        jobs[s] = job
        return self._admit_job(slots, s, prompts[i], seed, indices[i], limits[i])
      return slots

    for s in range(self.slots):
      slots = refill(slots, s)
    while any(jobs):
      live = np.array([job is not None for job in jobs])
      states = [job.state if job else None for job in jobs]
      # numpy arguments: jit takes them on its fast path (jnp.asarray is a dispatch of its own)
      if g.draws is not None:  # drawn on the host, the states advanced with them
        cands = g._draw(slots.logits_SxV, slots.keys_S, slots.steps_S)
        token_S = g._drawn_tokens(states, ~live, cands, slots.logits_SxV, slots.keys_S,
                                  slots.steps_S)
      else:  # lazy masks: the slots' candidates, refilled ones included
        top = g._top(slots.logits_SxV) if g.lazy is not None else None
        allowed = g._masks(states, ~live, top)
        token_S = self._choose(slots.logits_SxV, ~live, slots.keys_S, slots.steps_S, allowed)
      # Dispatched before the host reads the tokens: the grammar advances (and, without lazy
      # masks, the next masks are worked out) meanwhile.
      slots = self._advance(g.params, slots, token_S, live)
      self.decode_steps += 1
      for s, t in enumerate(np.asarray(token_S)):
        job = jobs[s]
        if job is None:
          continue
        job.tokens.append(int(t))
        if g.draws is not None:
          job.state = states[s]
        elif t != eos:
          job.state = grammar.advance(job.state, pieces[t])
        done = t == eos or len(job.tokens) >= job.limit
        if not done and grammar.is_complete(job.state):
          job.tokens.append(eos)  # the only token the grammar then allows
          done = True
        if done:
          self._finish(results, prompts, job, job.tokens)
          jobs[s] = None
          slots = refill(slots, s)


def generate_all(generator: Generator, prompts: Sequence[Sequence[int]], seed: int,
                 batch_size: int, continuous: bool = True) -> list[Generation]:
  """Every prompt's continuation, `batch_size` rows at a time: through continuous batching's
  slots (`sample.continuous`), or in fixed batches in order. Prompt i draws with the key of
  (`seed`, i) either way, so both give the same tokens (a fixed batch may stop a prompt
  sooner: where its longest prompt's context ends)."""
  if continuous:
    slots = max(1, min(batch_size, len(prompts)))  # no idle rows for a short request
    # One batcher per slot count: its compiled programs serve every later call (eval's seeds
    # and ratios) instead of compiling again.
    batcher = generator.batchers.get(slots)
    if batcher is None:
      batcher = generator.batchers[slots] = ContinuousBatcher(generator, slots)
    return batcher.generate(prompts, seed)
  out = []
  for start in range(0, len(prompts), batch_size):
    chunk = prompts[start:start + batch_size]
    out += generator.generate(chunk, seed, indices=range(start, start + len(chunk)))
  return out
