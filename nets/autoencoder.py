"""Autoencoders and variational autoencoders with MLP encoders and decoders, and their objectives.

- `autoencoder`: x -> MLP -> a latent code -> mirrored MLP -> a reconstruction of x, trained by
  `Reconstruction` (squared error, or Bernoulli cross-entropy on logits), optionally denoising
  (Vincent et al. 2008: corrupt the input with Gaussian noise, reconstruct the clean one).
- `vae`: the variational autoencoder of Kingma & Welling (2014): a Gaussian encoder q(z|x), a
  standard normal prior and a Bernoulli or Gaussian decoder p(x|z), trained by `ELBO` with the
  reparameterisation trick and evaluated also by the importance-weighted bound of Burda, Grosse &
  Salakhutdinov (2016), which tightens to log p(x) as its number of samples grows.

Inputs are [B, D] vectors or [B, H, W, C] images; the decoder's output has the example's shape.
Decoding a latent on its own needs that shape: the field `data_shape` (the spine fills it from
the data); `__call__(x)` checks it against (or, when it is empty, takes it from) `x`.
"""

import dataclasses
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from nets import activations
from nets.registry import register

Batch = dict[str, jax.Array]
Apply = Callable[..., Any]

LIKELIHOODS = ("gaussian", "bernoulli")
_LOG_2PI = math.log(2 * math.pi)
# Decoder outputs (floats) evaluated at once by the IWAE bound: its samples are processed in
# chunks so that a chunk's decoder activations stay below this many floats (64 MiB).
_IWAE_CHUNK_FLOATS = 2**24


def _activation(owner: str, name: str) -> Callable[[jax.Array], jax.Array]:
  try:
    return activations.get(name)
  except ValueError as e:
    raise ValueError(f"{owner}.activation: {e}") from None


class _Decoder(nn.Module):
  """Dense hidden layers, then an affine map to the example's size, reshaped to its shape."""

  hidden: tuple[int, ...]
  activation: str

  @nn.compact
  def __call__(self, z: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    act = activations.get(self.activation)
    h = z
    for width in self.hidden:
      h = act(nn.Dense(width)(h))
    out = nn.Dense(math.prod(shape), name="output")(h)
    return out.reshape(*z.shape[:-1], *shape)


class _LogStd(nn.Module):
  """A learned per-dimension log standard deviation of the data, initialised to 0 (std 1)."""

  @nn.compact
  def __call__(self, shape: tuple[int, ...]) -> jax.Array:
    return self.param("log_std", nn.initializers.zeros, tuple(shape), jnp.float32)


class _AutoencoderBase(nn.Module):
  """Hyperparameters, validation, the encoder's hidden layers and the decoder of both models."""

  hidden: tuple[int, ...] = (256, 128)  # encoder widths; the decoder's are the reverse
  latent_dim: int = 16
  activation: str = "relu"
  data_shape: tuple[int, ...] = ()  # one example's shape; empty: taken from x by __call__

  def __post_init__(self):
    owner = type(self).__name__
    _activation(owner, self.activation)
    if any(int(w) < 1 for w in self.hidden):
      raise ValueError(f"{owner}.hidden must be positive widths; got {self.hidden!r}")
    if int(self.latent_dim) < 1:
      raise ValueError(f"{owner}.latent_dim must be at least 1; got {self.latent_dim!r}")
    if any(int(d) < 1 for d in self.data_shape):
      raise ValueError(f"{owner}.data_shape must be positive sizes (or empty); got {self.data_shape!r}")
    super().__post_init__()

  def setup(self):
    self.encoder_layers = [nn.Dense(int(w)) for w in self.hidden]
    self.decoder = _Decoder(tuple(int(w) for w in reversed(self.hidden)), self.activation)

  def _features(self, x: jax.Array) -> jax.Array:
    """The encoder's last hidden layer (the flattened input itself when `hidden` is empty)."""
    act = activations.get(self.activation)
    h = jnp.asarray(x, jnp.float32).reshape(x.shape[0], -1)
    for layer in self.encoder_layers:
      h = act(layer(h))
    return h

  def _shape_of(self, x: jax.Array) -> tuple[int, ...]:
    shape = tuple(x.shape[1:])
    if self.data_shape and tuple(self.data_shape) != shape:
      raise ValueError(f"{type(self).__name__}.data_shape is {tuple(self.data_shape)} but the input's "
                       f"examples have shape {shape}")
    return shape

  def _known_shape(self) -> tuple[int, ...]:
    if not self.data_shape:
      raise ValueError(f"{type(self).__name__}.data_shape must be set (one example's shape, e.g. (8, 8, 1)) "
                       "to decode latents on their own")
    return tuple(int(d) for d in self.data_shape)


@register("autoencoder")
class Autoencoder(_AutoencoderBase):
  """A deterministic autoencoder with a linear `latent_dim`-wide bottleneck.

  `encode(x)` -> codes [B, latent_dim]; `decode(z)` -> the decoder's raw output
  [B, *data_shape] (means for squared error, logits for a Bernoulli likelihood);
  `__call__(x)` = decode(encode(x)).
  """

  def setup(self):
    super().setup()
    self.code = nn.Dense(self.latent_dim)

  def encode(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train
    return self.code(self._features(x))

  def decode(self, z: jax.Array, train: bool = False) -> jax.Array:
    del train
    return self.decoder(z, self._known_shape())

  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    return self.decoder(self.encode(x, train), self._shape_of(x))


@register("vae")
class VAE(_AutoencoderBase):
  """A variational autoencoder: Gaussian q(z|x) = N(mean, diag(exp(log_variance))), prior N(0, I).

  `encode(x)` -> (mean, log_variance), each [B, latent_dim]; `decode(z)` -> the decoder's raw
  output [..., *data_shape]: Bernoulli logits, or the means of a Gaussian whose per-dimension log
  standard deviation is the learned parameter `decoder_log_std()` [*data_shape] (shared by all
  examples; initialised to 0; unused, so never updated, under a Bernoulli likelihood).
  `__call__(x)` = decode(mean): a deterministic reconstruction that creates every parameter.
  """

  def setup(self):
    super().setup()
    self.mean = nn.Dense(self.latent_dim)
    self.log_variance = nn.Dense(self.latent_dim)
    self.decoder_scale = _LogStd()

  def encode(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
    del train
    h = self._features(x)
    return self.mean(h), self.log_variance(h)

  def decode(self, z: jax.Array, train: bool = False) -> jax.Array:
    del train
    return self.decoder(z, self._known_shape())

  def decoder_log_std(self, train: bool = False) -> jax.Array:
    del train
    return self.decoder_scale(self._known_shape())

  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    shape = self._shape_of(x)
    mean, _ = self.encode(x, train)
    self.decoder_scale(shape)
    return self.decoder(mean, shape)


def reparameterize(mean: jax.Array, log_variance: jax.Array, eps: jax.Array) -> jax.Array:
  """z = mean + exp(log_variance / 2) * eps: a sample of N(mean, exp(log_variance)) for eps ~ N(0, I)
  that is differentiable in the mean and the log-variance (Kingma & Welling 2014)."""
  return mean + jnp.exp(0.5 * log_variance) * eps


def gaussian_kl(mean: jax.Array, log_variance: jax.Array) -> jax.Array:
  """KL(N(mean, diag(exp(log_variance))) || N(0, I)) in nats, summed over the last axis."""
  return 0.5 * jnp.sum(jnp.exp(log_variance) + mean**2 - 1.0 - log_variance, axis=-1)


def standard_normal_log_density(z: jax.Array) -> jax.Array:
  """log N(z; 0, I), summed over the last axis."""
  return -0.5 * jnp.sum(z**2 + _LOG_2PI, axis=-1)


def dynamic_binarize(x: jax.Array, rng: jax.Array) -> jax.Array:
  """Each value in [0, 1] replaced by a draw of Bernoulli(value), as float32 0s and 1s.

  Dynamic binarisation (a fresh draw at every use) is the usual treatment of MNIST-like
  images under a Bernoulli likelihood (e.g. Burda et al. 2016).
  """
  return (jax.random.uniform(rng, x.shape) < x).astype(jnp.float32)


def _check_likelihood(owner: str, likelihood: str) -> None:
  if likelihood not in LIKELIHOODS:
    raise ValueError(f"{owner}.likelihood must be one of {', '.join(LIKELIHOODS)}; got {likelihood!r}")


def _example_axes(x: jax.Array) -> tuple[int, ...]:
  """The trailing axes of one example (all but the leading batch axis of `x`)."""
  return tuple(range(-(x.ndim - 1), 0)) if x.ndim > 1 else ()


def log_likelihood(likelihood: str, output: jax.Array, x: jax.Array, log_std: jax.Array | None = None) -> jax.Array:
  """log p(x|z) in nats per example, from the decoder's raw `output` [..., B, *shape] and data x [B, *shape].

  "bernoulli": `output` are logits; "gaussian": means with per-dimension log standard deviation
  `log_std` (broadcast against x), the full density including the -log(2 pi)/2 terms.
  """
  output = output.astype(jnp.float32)
  if likelihood == "bernoulli":
    log_p = -optax.sigmoid_binary_cross_entropy(output, jnp.broadcast_to(x, output.shape))
  else:
    log_std = jnp.asarray(log_std, jnp.float32)
    log_p = -0.5 * ((x - output) * jnp.exp(-log_std))**2 - log_std - 0.5 * _LOG_2PI
  return jnp.sum(log_p, axis=_example_axes(x))


def _to_data(likelihood: str, output: jax.Array) -> jax.Array:
  """The decoder's raw output in data space: Bernoulli probabilities, or the Gaussian means."""
  output = output.astype(jnp.float32)
  return jax.nn.sigmoid(output) if likelihood == "bernoulli" else output


@dataclasses.dataclass(frozen=True)
class Reconstruction:
  """How well an autoencoder reconstructs `batch["x"]`, per example.

  - likelihood "gaussian": "loss" = "mse", the mean squared error over the example's values;
  - likelihood "bernoulli": the model outputs logits; "loss" = "bce", the binary cross-entropy
    summed over the example's values (nats), and "mse" of the probabilities.

  `noise_std` > 0 makes it a denoising autoencoder: in training (`__call__`) the model sees
  x + noise_std * N(0, I) and is scored against the clean x; `evaluate` scores reconstructions of
  clean inputs and, when noise_std > 0, also reports the denoising metrics ("denoising_loss", ...).
  `binarize` replaces x by Bernoulli(x) draws first (dynamic binarisation, in training and
  evaluation alike); the draw uses the first key of `jax.random.split(rng)`, the noise the second.
  """

  likelihood: str = "gaussian"
  noise_std: float = 0.0
  binarize: bool = False

  def __post_init__(self):
    _check_likelihood("Reconstruction", self.likelihood)
    if not self.noise_std >= 0:
      raise ValueError(f"Reconstruction.noise_std must be non-negative; got {self.noise_std!r}")

  def _score(self, output: jax.Array, target: jax.Array) -> dict[str, jax.Array]:
    flat = lambda a: a.astype(jnp.float32).reshape(a.shape[0], -1)
    mse = jnp.mean((flat(_to_data(self.likelihood, output)) - flat(target))**2, axis=-1)
    if self.likelihood == "bernoulli":
      bce = jnp.sum(optax.sigmoid_binary_cross_entropy(flat(output), flat(target)), axis=-1)
      return {"loss": bce, "bce": bce, "mse": mse}
    return {"loss": mse, "mse": mse}

  def _inputs(self, x: jax.Array, rng: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(clean target, noisy input) of a batch."""
    binarize_rng, noise_rng = jax.random.split(rng)
    x = jnp.asarray(x, jnp.float32)
    if self.binarize:
      x = dynamic_binarize(x, binarize_rng)
    noisy = x + self.noise_std * jax.random.normal(noise_rng, x.shape) if self.noise_std else x
    return x, noisy

  def __call__(self, apply: Apply, batch: Batch, rng: jax.Array) -> dict[str, jax.Array]:
    clean, noisy = self._inputs(batch["x"], rng)
    return self._score(apply(noisy), clean)

  def evaluate(self, apply: Apply, batch: Batch, rng: jax.Array) -> dict[str, jax.Array]:
    clean, noisy = self._inputs(batch["x"], rng)
    metrics = self._score(apply(clean), clean)
    if self.noise_std:
      metrics.update({f"denoising_{k}": v for k, v in self._score(apply(noisy), clean).items()})
    return metrics

  def reconstruct(self, apply: Apply, x: jax.Array, rng: jax.Array) -> jax.Array:
    """The reconstructions of x as given (neither noised nor binarised), in data space."""
    del rng
    return _to_data(self.likelihood, apply(x))


@dataclasses.dataclass(frozen=True)
class ELBO:
  """The negative evidence lower bound of a `vae`, in nats per example (Kingma & Welling 2014).

  ELBO = E_q[log p(x|z)] - KL(q(z|x) || N(0, I)), with one reparameterised sample of z for the
  first term and the KL in closed form. Per example: "loss" = -ELBO, "elbo", "kl",
  "reconstruction" (the sampled -log p(x|z)) and "bits_per_dim" = -ELBO / (D ln 2) for D values
  per example. Under the "gaussian" likelihood log p(x|z) is the full Gaussian density with the
  decoder's learned `decoder_log_std`, so these are true (continuous) densities of the data.

  `evaluate` adds the importance-weighted bound of Burda et al. (2016) with k = `iwae_samples`:
  "iwae_bound" = log (1/k) sum_i p(x, z_i) / q(z_i|x) with z_i ~ q(z|x), which is at least the
  ELBO on average, grows with k and tends to log p(x); "iwae_nll" = -iwae_bound and its
  "iwae_bits_per_dim". With `binarize`, x is replaced by Bernoulli(x) draws (dynamic binarisation)
  in training and evaluation alike: evaluation scores one random binarisation of each example,
  the same for every metric, drawn from the evaluation rng.
  """

  likelihood: str = "bernoulli"
  binarize: bool = False
  iwae_samples: int = 100

  def __post_init__(self):
    _check_likelihood("ELBO", self.likelihood)
    if self.iwae_samples < 1:
      raise ValueError(f"ELBO.iwae_samples must be at least 1; got {self.iwae_samples!r}")

  def _data(self, x: jax.Array, rng: jax.Array) -> jax.Array:
    x = jnp.asarray(x, jnp.float32)
    return dynamic_binarize(x, rng) if self.binarize else x

  def _log_std(self, apply: Apply) -> jax.Array | None:
    return apply(method="decoder_log_std") if self.likelihood == "gaussian" else None

  def _elbo(self, apply: Apply, x: jax.Array, mean: jax.Array, log_variance: jax.Array,
            rng: jax.Array) -> dict[str, jax.Array]:
    z = reparameterize(mean, log_variance, jax.random.normal(rng, mean.shape))
    log_p = log_likelihood(self.likelihood, apply(z, method="decode"), x, self._log_std(apply))
    kl = gaussian_kl(mean, log_variance)
    elbo = log_p - kl
    dims = math.prod(x.shape[1:])
    return {"loss": -elbo, "elbo": elbo, "kl": kl, "reconstruction": -log_p,
            "bits_per_dim": -elbo / (dims * math.log(2))}

  def __call__(self, apply: Apply, batch: Batch, rng: jax.Array) -> dict[str, jax.Array]:
    data_rng, sample_rng = jax.random.split(rng)
    x = self._data(batch["x"], data_rng)
    mean, log_variance = apply(x, method="encode")
    return self._elbo(apply, x, mean.astype(jnp.float32), log_variance.astype(jnp.float32), sample_rng)

  def log_weights(self, apply: Apply, x: jax.Array, mean: jax.Array, log_variance: jax.Array,
                  eps: jax.Array) -> jax.Array:
    """log p(x, z) - log q(z|x) [k, B] for z = reparameterize(mean, log_variance, eps), eps [k, B, latent].

    The samples are decoded in chunks (`jax.lax.map`) so that at most about 2**24 decoder
    outputs exist at once, whatever k and the batch size.
    """
    log_std = self._log_std(apply)
    model = apply.model
    widest = max((x[0].size, mean.shape[-1], *(int(w) for w in getattr(model, "hidden", ()))))
    chunk = max(1, min(eps.shape[0], _IWAE_CHUNK_FLOATS // max(1, x.shape[0] * widest)))

    def one(e):
      z = reparameterize(mean, log_variance, e)
      log_p = log_likelihood(self.likelihood, apply(z, method="decode"), x, log_std)
      log_q = -0.5 * jnp.sum(e**2 + log_variance + _LOG_2PI, axis=-1)
      return log_p + standard_normal_log_density(z) - log_q

    return jax.lax.map(one, eps, batch_size=chunk)

  def evaluate(self, apply: Apply, batch: Batch, rng: jax.Array) -> dict[str, jax.Array]:
    data_rng, sample_rng, iwae_rng = jax.random.split(rng, 3)
    x = self._data(batch["x"], data_rng)
    mean, log_variance = apply(x, method="encode")
    mean, log_variance = mean.astype(jnp.float32), log_variance.astype(jnp.float32)
    metrics = self._elbo(apply, x, mean, log_variance, sample_rng)
    eps = jax.random.normal(iwae_rng, (self.iwae_samples, *mean.shape))
    log_w = self.log_weights(apply, x, mean, log_variance, eps)
    bound = jax.nn.logsumexp(log_w, axis=0) - math.log(self.iwae_samples)
    dims = math.prod(x.shape[1:])
    metrics.update({"iwae_bound": bound, "iwae_nll": -bound, "iwae_bits_per_dim": -bound / (dims * math.log(2))})
    return metrics

  def generate(self, apply: Apply, rng: jax.Array, num: int) -> jax.Array:
    """`num` samples [num, *data_shape] of z ~ N(0, I) decoded: Bernoulli probabilities or Gaussian means."""
    z = jax.random.normal(rng, (num, apply.model.latent_dim))
    return _to_data(self.likelihood, apply(z, method="decode"))

  def reconstruct(self, apply: Apply, x: jax.Array, rng: jax.Array) -> jax.Array:
    """decode(mean of q(z|x)) in data space, for x as given (not binarised)."""
    del rng
    mean, _ = apply(x, method="encode")
    return _to_data(self.likelihood, apply(mean, method="decode"))
