"""What a generative run writes for people to read at each evaluation: workdir/samples/.

- Language models (`--objective=lm`): `sample_tokens` tokens continued from a newline,
  with `--sample_temperature` and `--sample_top_k`, as text (`step_000250.txt`).
- Sequence-to-sequence models: the first evaluation examples, greedily decoded, beside
  their targets.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable, Iterable

import flax.linen as nn
import jax
import numpy as np

import nets
from experiments.config import Config
from experiments.data import Batch, Tokenizer

Writer = Callable[[Any, int], None]  # (train state, step)


def _write(workdir: str, step: int, text: str) -> None:
  if jax.process_index() != 0:
    return
  directory = os.path.join(workdir, "samples")
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, f"step_{step:06d}.txt")
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(path + ".tmp", path)


def language_model_text(config: Config, model: nn.Module, tokenizer: Tokenizer) -> Callable[[Any, int], str]:
  """params, seed -> `config.sample_tokens` tokens of text continuing a newline."""
  generate = jax.jit(functools.partial(nets.decoding.sample, model, num_tokens=config.sample_tokens,
                                       temperature=config.sample_temperature, top_k=config.sample_top_k))
  try:
    prompt = tokenizer.encode("\n")
  except ValueError:  # no newline in the vocabulary: start from token 0
    prompt = np.zeros((1,), np.int32)

  def text(params, seed: int) -> str:
    tokens = generate(params, prompt=prompt[None], rng=jax.random.key(seed))
    return tokenizer.decode(np.asarray(tokens[0]).tolist())

  return text


def writer(config: Config, model: nn.Module, objective: nets.objectives.Objective, tokenizer: Tokenizer | None,
           eval_batches: Iterable[Batch], workdir: str) -> Writer | None:
  """The samples writer of this run, or None when it has nothing to write."""
  if tokenizer is None:
    return None
  if config.objective == "lm" and config.sample_tokens:
    text = language_model_text(config, model, tokenizer)
    return lambda state, step: _write(workdir, step, text(state.params, step))
  if config.objective == "seq2seq":
    batch = next(iter(eval_batches))
    source, target = batch["x"][:10], batch["y"][:10]
    translate = jax.jit(functools.partial(nets.decoding.greedy_translate, model, length=target.shape[1],
                                          bos_id=objective.bos_id, eos_id=objective.eos_id))

    def write(state, step: int) -> None:
      decoded = np.asarray(translate(state.params, source))
      lines = [f"{tokenizer.decode(s)} -> {tokenizer.decode(d)}" + ("" if (d == t).all() else
                                                                       f"   (target: {tokenizer.decode(t)})")
               for s, d, t in zip(source.tolist(), decoded, target)]
      _write(workdir, step, "\n".join(lines) + "\n")

    return write
  return None
