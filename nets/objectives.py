"""Pure objectives: what a model is trained to minimise, and what is reported.

An objective is called as `objective(apply, batch, rng)` where `apply(*inputs)` runs the
model (its variables, train/eval mode and dropout randomness already bound by the caller)
and `batch` is a dict of arrays with a leading batch axis. It returns a dict of
per-example arrays of shape (batch,): the entry "loss" is the quantity whose batch mean is
minimised; every entry is averaged over the examples for reporting. Returning per-example
values lets the caller mask padded examples and average exactly across devices.

An objective may also define `evaluate(apply, batch, rng)`, used instead of `__call__`
for evaluation (e.g. to decode). `apply.model` and `apply.variables` give it the bound
module and its variables.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Protocol

import jax
import jax.numpy as jnp
import optax

from nets import decoding

Batch = dict[str, jax.Array]
Apply = Callable[..., Any]


class Objective(Protocol):

  def __call__(self, apply: Apply, batch: Batch, rng: jax.Array) -> dict[str, jax.Array]:
    ...


@dataclasses.dataclass(frozen=True)
class Classification:
  """Softmax cross-entropy on integer labels `batch["y"]` given inputs `batch["x"]`. A batch
  mixed by mixup or cutmix (`nets.augment`) also holds `mix_y`, the partner's labels, and
  `mix_weight`, the share of `y`: the loss is that mixture of the two cross-entropies, the
  accuracy is against `y`."""

  label_smoothing: float = 0.0

  def __call__(self, apply: Apply, batch: Batch, rng: jax.Array) -> dict[str, jax.Array]:
    del rng
    logits = apply(batch["x"])
    labels = batch["y"]
    num_classes = logits.shape[-1]
    # The loss is computed in float32 whatever the model's compute dtype.
    logits = logits.astype(jnp.float32)
    # Cross-entropy against the true labels, whatever the smoothing: comparable across runs.
    def losses(labels):
      nll = loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
      if self.label_smoothing:
        targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), self.label_smoothing)
        loss = optax.softmax_cross_entropy(logits, targets)
      return nll, loss

    nll, loss = losses(labels)
    if "mix_y" in batch:
      w = batch["mix_weight"]
      nll, loss = (w * own + (1 - w) * other for own, other in zip((nll, loss), losses(batch["mix_y"])))
    accuracy = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    return {"loss": loss, "cross_entropy": nll, "accuracy": accuracy}


@dataclasses.dataclass(frozen=True)
class Regression:
  """Mean squared error between the model's output and real targets `batch["y"]`."""

  def __call__(self, apply: Apply, batch: Batch, rng: jax.Array) -> dict[str, jax.Array]:
    del rng
    pred = apply(batch["x"]).astype(jnp.float32)
    target = jnp.reshape(batch["y"], pred.shape).astype(jnp.float32)
    err = (pred - target).reshape(pred.shape[0], -1)
    mse = jnp.mean(err**2, axis=-1)
    return {"loss": mse, "mse": mse, "mae": jnp.mean(jnp.abs(err), axis=-1)}


def _token_cross_entropy(logits: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-token cross-entropy (float32) and whether the argmax is the target."""
  logits = logits.astype(jnp.float32)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  return ce, (jnp.argmax(logits, -1) == targets).astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class LanguageModel:
  """Next-token cross-entropy: `batch["x"]` tokens [B, T], `batch["y"]` the same shifted by one.

  Per example: the mean over its T tokens (in nats), the same in bits, and next-token accuracy.
  """

  def __call__(self, apply: Apply, batch: Batch, rng: jax.Array) -> dict[str, jax.Array]:
    del rng
    ce, correct = _token_cross_entropy(apply(batch["x"]), batch["y"])
    loss = jnp.mean(ce, axis=-1)
    return {"loss": loss, "bits_per_token": loss / math.log(2), "accuracy": jnp.mean(correct, axis=-1)}


@dataclasses.dataclass(frozen=True)
class MaskedLM:
  """BERT's masked-token objective on tokens `batch["x"]` [B, T] with ids < `vocab_size`.

  Each sequence gets exactly round(mask_rate * T) (at least 1) positions chosen at random;
  of those, 80% are replaced by the mask token (id `vocab_size`, so the model's vocabulary
  has `extra_tokens` = 1 more entry), 10% by a random token and 10% kept. The loss is the
  cross-entropy of the original tokens at the chosen positions, averaged per sequence.
  """

  vocab_size: int = 0
  mask_rate: float = 0.15
  extra_tokens = 1  # the mask token

  def __post_init__(self):
    if not 0.0 < self.mask_rate < 1.0:
      raise ValueError(f"MaskedLM.mask_rate must be in (0, 1); got {self.mask_rate!r}")

  def corrupt(self, tokens: jax.Array, rng: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The model's input and the 0/1 float mask of the chosen positions."""
    if self.vocab_size < 1:
      raise ValueError("MaskedLM.vocab_size must be set to the data's vocabulary size")
    length = tokens.shape[-1]
    count = max(1, round(self.mask_rate * length))
    pick_rng, kind_rng, token_rng = jax.random.split(rng, 3)
    rank = jnp.argsort(jnp.argsort(jax.random.uniform(pick_rng, tokens.shape), axis=-1), axis=-1)
    chosen = rank < count
    kind = jax.random.uniform(kind_rng, tokens.shape)
    random_tokens = jax.random.randint(token_rng, tokens.shape, 0, self.vocab_size)
    inputs = jnp.where(chosen & (kind < 0.8), self.vocab_size,
                       jnp.where(chosen & (kind < 0.9), random_tokens, tokens))
    return inputs.astype(tokens.dtype), chosen.astype(jnp.float32)

  def __call__(self, apply: Apply, batch: Batch, rng: jax.Array) -> dict[str, jax.Array]:
    tokens = batch["x"]
    inputs, chosen = self.corrupt(tokens, rng)
    ce, correct = _token_cross_entropy(apply(inputs), tokens)
    count = jnp.sum(chosen, axis=-1)
    loss = jnp.sum(ce * chosen, axis=-1) / count
    return {"loss": loss, "bits_per_token": loss / math.log(2),
            "accuracy": jnp.sum(correct * chosen, axis=-1) / count}


@dataclasses.dataclass(frozen=True)
class Seq2Seq:
  """Teacher-forced cross-entropy of target `batch["y"]` [B, T] given source `batch["x"]` [B, S].

  Targets end with `eos_id` and are padded with `pad_id`; the decoder reads `bos_id`
  followed by the target shifted right. Evaluation adds `exact_match`: greedy decoding
  (`nets.decoding.greedy_translate`) reproduces the whole target.
  """

  pad_id: int = 0
  bos_id: int = 1
  eos_id: int = 2

  def __call__(self, apply: Apply, batch: Batch, rng: jax.Array) -> dict[str, jax.Array]:
    del rng
    source, target = batch["x"], batch["y"]
    bos = jnp.full_like(target[:, :1], self.bos_id)
    ce, correct = _token_cross_entropy(apply(source, jnp.concatenate([bos, target[:, :-1]], axis=1)), target)
    valid = (target != self.pad_id).astype(jnp.float32)
    count = jnp.maximum(jnp.sum(valid, axis=-1), 1.0)
    return {"loss": jnp.sum(ce * valid, axis=-1) / count,
            "token_accuracy": jnp.sum(correct * valid, axis=-1) / count,
            "teacher_forced_match": jnp.all((correct > 0) | (valid == 0), axis=-1).astype(jnp.float32)}

  def evaluate(self, apply: Apply, batch: Batch, rng: jax.Array) -> dict[str, jax.Array]:
    metrics = self(apply, batch, rng)
    target = batch["y"]
    decoded = decoding.greedy_translate(apply.model, apply.variables["params"], batch["x"], target.shape[1],
                                        self.bos_id, self.eos_id)
    metrics["exact_match"] = jnp.all(decoded == target, axis=-1).astype(jnp.float32)
    return metrics


# The generative families define their objectives beside their models.
from nets import autoencoder, diffusion, gan  # noqa: E402  pylint: disable=g-import-not-at-top

OBJECTIVES: dict[str, type] = {
    "classification": Classification,
    "regression": Regression,
    "lm": LanguageModel,  # also WaveNet's: next mu-law sample
    "mlm": MaskedLM,
    "seq2seq": Seq2Seq,
    "reconstruction": autoencoder.Reconstruction,
    "elbo": autoencoder.ELBO,
    "gan": gan.Adversarial,
    "ddpm": diffusion.Diffusion,
}


# Fields the trainer fills from the data, not hyperparameters: the vocabulary's size and one
# example's shape.
DATA_FIELDS = ("vocab_size", "data_shape")


def names() -> list[str]:
  return sorted(OBJECTIVES)


def get(name: str) -> type:
  try:
    return OBJECTIVES[name]
  except KeyError:
    raise ValueError(f"unknown objective {name!r}; known: {', '.join(names())}") from None


def hparams(name: str) -> dict[str, dataclasses.Field]:
  """The hyperparameters of an objective: its dataclass fields but `DATA_FIELDS`, in order."""
  return {f.name: f for f in dataclasses.fields(get(name)) if f.name not in DATA_FIELDS}


def create(name: str, **kwargs: Any) -> Objective:
  """Builds objective `name`; unknown fields are an error that lists the known ones."""
  cls = get(name)
  known = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(kwargs) - known)
  if unknown:
    raise ValueError(f"objective {name!r} has no field(s) {unknown}; it has {sorted(known)}")
  return cls(**kwargs)
