"""Generative adversarial networks (Goodfellow et al. 2014): two players, one training step.

Models have two submodules, `generator` and `discriminator`, so their parameters are
{"generator": ..., "discriminator": ...} and each group can have its own optimizer. They
expose `generate(z)` (latent [B, latent_dim] -> samples in data space) and
`discriminate(x)` (packed samples -> one logit or critic value per row):

- "gan_mlp": fully connected players for the 2D mixtures of PacGAN (Lin et al. 2018);
- "dcgan": the convolutional players of DCGAN (Radford et al. 2016) for small images in
  [0, 1], optionally class-conditional (label embedding into the generator, projection
  discriminator of Miyato & Koyama 2018).

PacGAN packing: with `pack` = m the discriminator judges m samples at once, concatenated
along the feature (points) or channel (images) axis; the models' `pack` sizes the
discriminator's input, `pack_samples` builds it.

The objective `Adversarial` is simultaneous gradient descent-ascent written as ONE scalar:
loss = d_loss + g_loss, where the discriminator's term sees the fake samples under
stop_gradient and the generator's term runs the discriminator with frozen parameters, so
the gradient with respect to each player's parameters is exactly that of its own loss.
Losses: non-saturating (Goodfellow et al. 2014), hinge (Lim & Ye 2017; Miyato et al. 2018)
and WGAN-GP (Gulrajani et al. 2017); optionally the R1 penalty (Mescheder et al. 2018).
"""

import dataclasses
import functools
from typing import Any, Callable, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from nets import activations
from nets.registry import register

GAN_LOSSES = ("non_saturating", "hinge", "wgan_gp")
_LEAK = 0.2  # the discriminators' leaky-ReLU slope, as in DCGAN


def _leaky_relu(x: jax.Array) -> jax.Array:
  return jax.nn.leaky_relu(x, _LEAK)


def _check_positive(owner: str, **values: int) -> None:
  for name, value in values.items():
    if value < 1:
      raise ValueError(f"{owner}.{name} must be >= 1; got {value!r}")


def pack_samples(x: jax.Array, pack: int) -> jax.Array:
  """Groups consecutive rows of `x` in `pack`s, concatenated along the last (feature or channel) axis.

  [B, D] -> [B / pack, pack * D]; [B, H, W, C] -> [B / pack, H, W, pack * C], the members'
  channels in order. Labels [B] -> [B / pack, pack].
  """
  if x.shape[0] % pack:
    raise ValueError(f"Adversarial.pack: the batch ({x.shape[0]}) must be divisible by pack ({pack})")
  groups = x.reshape(x.shape[0] // pack, pack, *x.shape[1:])
  if x.ndim <= 2:
    return groups.reshape(groups.shape[0], -1)
  return jnp.moveaxis(groups, 1, -2).reshape(*groups.shape[:1], *x.shape[1:-1], pack * x.shape[-1])


def _per_row(discriminate: Callable[..., jax.Array], x: jax.Array, pack: int, y: Any = None,
             train: bool = False) -> jax.Array:
  """The discriminator's value for each row of `x`: that of its pack, rows cycled to fill the last one."""
  n = x.shape[0]
  rows = jnp.arange(-(-n // pack) * pack) % n
  labels = {} if y is None else {"y": pack_samples(y[rows], pack)}
  out = discriminate(pack_samples(x[rows], pack), train=train, **labels)
  return jnp.repeat(out, pack)[:n]


class MLPGenerator(nn.Module):
  """`depth` dense layers of width `hidden` with `activation`, then a linear map to data space."""

  hidden: int
  depth: int
  data_dim: int
  activation: str = "relu"

  @nn.compact
  def __call__(self, z: jax.Array, train: bool = False) -> jax.Array:
    del train
    act = activations.get(self.activation)
    h = z
    for _ in range(self.depth):
      h = act(nn.Dense(self.hidden)(h))
    return nn.Dense(self.data_dim)(h)


class MLPDiscriminator(nn.Module):
  """`depth` dense layers of width `hidden` with leaky ReLU (slope 0.2), then one logit per row."""

  hidden: int
  depth: int

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train
    h = x.reshape(x.shape[0], -1)
    for _ in range(self.depth):
      h = _leaky_relu(nn.Dense(self.hidden)(h))
    return nn.Dense(1)(h)[:, 0]


@register("gan_mlp")
class GANMLP(nn.Module):
  """A GAN of two MLPs for low-dimensional points, PacGAN's 2D mixtures in particular.

  The generator maps z ~ N(0, I) of `latent_dim` through `depth` hidden layers of
  `hidden` units (`activation`) to an unbounded point of `data_dim`; the discriminator
  has `depth` hidden layers of `hidden` leaky-ReLU units and reads `pack` points at once
  (PacGAN's degree of packing; it must equal the objective's `pack`). With depth 0 both
  players are affine.
  """

  latent_dim: int = 2
  hidden: int = 400
  depth: int = 3
  data_dim: int = 2
  activation: str = "relu"
  pack: int = 1

  def __post_init__(self):
    _check_positive("GANMLP", latent_dim=self.latent_dim, hidden=self.hidden, data_dim=self.data_dim,
                    pack=self.pack)
    if self.depth < 0:
      raise ValueError(f"GANMLP.depth must be >= 0; got {self.depth!r}")
    try:
      activations.get(self.activation)
    except ValueError as e:
      raise ValueError(f"GANMLP.activation: {e}") from None
    super().__post_init__()

  def setup(self):
    self.generator = MLPGenerator(self.hidden, self.depth, self.data_dim, self.activation)
    self.discriminator = MLPDiscriminator(self.hidden, self.depth)

  def generate(self, z: jax.Array, train: bool = False) -> jax.Array:
    """Latent codes [B, latent_dim] -> points [B, data_dim]."""
    return self.generator(z, train)

  def discriminate(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Packed points [B, pack * data_dim] -> logits [B]."""
    return self.discriminator(x, train)

  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Each point's discriminator logit (that of its pack); creates both players' parameters."""
    self.generate(jnp.zeros((x.shape[0], self.latent_dim), jnp.float32), train)
    return _per_row(self.discriminate, x, self.pack, train=train)


def _layout(image_size: int) -> tuple[int, int]:
  """(side of the generator's first feature map, number of 2x upsamplings) for `image_size`.

  Halves up to 3 times while the side stays even and above 2: 8 -> (2, 2), 16 -> (2, 3),
  28 -> (7, 2), 32 -> (4, 3).
  """
  start, doublings = image_size, 0
  while start % 2 == 0 and start > 2 and doublings < 3:
    start, doublings = start // 2, doublings + 1
  return start, doublings


class ConvGenerator(nn.Module):
  """DCGAN's generator: dense -> (s, s, width) -> 4x4 stride-2 transposed convs, batch norm, ReLU.

  Widths halve at each upsampling down to `features`; the last transposed conv gives
  `channels` and a sigmoid, so pixels lie in [0, 1]. With classes, a learned label
  embedding of size `latent_dim` is concatenated to z.
  """

  image_size: int
  channels: int
  features: int
  num_classes: int = 0

  @nn.compact
  def __call__(self, z: jax.Array, y: jax.Array | None = None, train: bool = False) -> jax.Array:
    start, doublings = _layout(self.image_size)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5)
    if self.num_classes:
      z = jnp.concatenate([z, nn.Embed(self.num_classes, z.shape[-1], name="label_embedding")(y)], axis=-1)
    width = self.features * 2 ** (doublings - 1)
    h = nn.Dense(start * start * width, use_bias=False)(z).reshape(z.shape[0], start, start, width)
    h = nn.relu(norm()(h))
    for i in range(doublings - 1):
      h = nn.ConvTranspose(width // 2 ** (i + 1), (4, 4), strides=(2, 2), padding="SAME", use_bias=False)(h)
      h = nn.relu(norm()(h))
    h = nn.ConvTranspose(self.channels, (4, 4), strides=(2, 2), padding="SAME")(h)
    return jax.nn.sigmoid(h)


class ConvDiscriminator(nn.Module):
  """DCGAN's discriminator without batch norm: 4x4 stride-2 convs with leaky ReLU, then a logit.

  Widths double from `features` at each of `downsamplings` convs. With classes the logit
  gains the projection term <embed(y), h> of the flattened features h (Miyato & Koyama
  2018); a pack of labels [B, pack] uses one embedding per (pack position, class), summed.
  """

  features: int
  downsamplings: int
  num_classes: int = 0

  @nn.compact
  def __call__(self, x: jax.Array, y: jax.Array | None = None, train: bool = False) -> jax.Array:
    del train
    h = x
    for i in range(self.downsamplings):
      h = _leaky_relu(nn.Conv(self.features * 2**i, (4, 4), strides=(2, 2), padding="SAME")(h))
    h = h.reshape(h.shape[0], -1)
    logit = nn.Dense(1)(h)[:, 0]
    if self.num_classes:
      y = y.reshape(h.shape[0], -1)
      position = jnp.arange(y.shape[1]) * self.num_classes
      embed = nn.Embed(self.num_classes * y.shape[1], h.shape[-1], name="label_projection")
      logit = logit + jnp.sum(embed(y + position).sum(axis=1) * h, axis=-1)
    return logit


@register("dcgan")
class DCGAN(nn.Module):
  """DCGAN (Radford et al. 2016) for small images in [0, 1], optionally class-conditional.

  The generator starts from an (s, s) map, s = `image_size` halved up to 3 times (2 for 8,
  7 for 28, 4 for 32), and doubles it with transposed convs; the discriminator mirrors it
  with strided convs and has no batch norm, so it may be called several times per step.
  Base width `features`; with `num_classes` > 0 both players take labels `y`. The
  discriminator reads `pack` images at once, stacked along channels (PacGAN).
  """

  image_size: int = 8
  channels: int = 1
  latent_dim: int = 64
  features: int = 64
  num_classes: int = 0
  pack: int = 1

  def __post_init__(self):
    _check_positive("DCGAN", channels=self.channels, latent_dim=self.latent_dim, features=self.features,
                    pack=self.pack)
    if self.image_size < 4 or self.image_size % 2:
      raise ValueError(f"DCGAN.image_size must be even and >= 4; got {self.image_size!r}")
    if self.num_classes < 0:
      raise ValueError(f"DCGAN.num_classes must be >= 0 (0: unconditional); got {self.num_classes!r}")
    super().__post_init__()

  def setup(self):
    self.generator = ConvGenerator(self.image_size, self.channels, self.features, self.num_classes)
    self.discriminator = ConvDiscriminator(self.features, _layout(self.image_size)[1], self.num_classes)

  def _labels(self, y: jax.Array | None, batch: int) -> jax.Array | None:
    if not self.num_classes:
      return None
    if y is None:
      raise ValueError(f"DCGAN: num_classes={self.num_classes}, so generate/discriminate need labels y")
    return jnp.asarray(y, jnp.int32).reshape(batch, -1)

  def generate(self, z: jax.Array, y: jax.Array | None = None, train: bool = False) -> jax.Array:
    """Latent codes [B, latent_dim] (and labels [B]) -> images [B, image_size, image_size, channels]."""
    labels = self._labels(y, z.shape[0])
    return self.generator(z, None if labels is None else labels[:, 0], train)

  def discriminate(self, x: jax.Array, y: jax.Array | None = None, train: bool = False) -> jax.Array:
    """Packed images [B, H, W, pack * channels] (and labels [B, pack] or [B]) -> logits [B]."""
    return self.discriminator(x, self._labels(y, x.shape[0]), train)

  def __call__(self, x: jax.Array, y: jax.Array | None = None, train: bool = False) -> jax.Array:
    """Each image's discriminator logit (that of its pack; class 0 unless `y` is given); creates all parameters."""
    if self.num_classes and y is None:
      y = jnp.zeros((x.shape[0],), jnp.int32)
    z = jnp.zeros((x.shape[0], self.latent_dim), jnp.float32)
    self.generate(z, y, train)
    return _per_row(self.discriminate, x, self.pack, y, train)


@dataclasses.dataclass(frozen=True)
class Adversarial:
  """The GAN game as one loss; each player's gradient is that of its own loss.

  Per example (each pack's values repeated for its `pack` members): "d_loss", "g_loss",
  their sum "loss", "d_real" and "d_fake" (the discriminator's value on real and generated
  samples) and, when used, "gradient_penalty" ((||grad D(x_hat)|| - 1)^2 at random
  interpolates x_hat) and "r1" (||grad D(x_real)||^2), both unweighted.

  - non_saturating: d_loss = softplus(-D(x)) + softplus(D(G(z))), g_loss = softplus(-D(G(z)));
  - hinge: d_loss = relu(1 - D(x)) + relu(1 + D(G(z))), g_loss = -D(G(z));
  - wgan_gp: d_loss = D(G(z)) - D(x) + gp_weight * gradient_penalty, g_loss = -D(G(z)).

  `r1_weight` = gamma adds gamma / 2 * r1 to d_loss for any loss. Fakes are generated for
  the batch's own labels when the model has `num_classes`. Randomness: z is drawn from the
  first and the interpolation weights from the second key of `jax.random.split(rng)`.
  """

  param_groups: ClassVar[tuple[str, ...]] = ("generator", "discriminator")

  loss: str = "non_saturating"
  gp_weight: float = 10.0
  r1_weight: float = 0.0
  pack: int = 1

  def __post_init__(self):
    if self.loss not in GAN_LOSSES:
      raise ValueError(f"Adversarial.loss must be one of {', '.join(GAN_LOSSES)}; got {self.loss!r}")
    if self.pack < 1:
      raise ValueError(f"Adversarial.pack must be >= 1; got {self.pack!r}")
    if self.gp_weight < 0 or self.r1_weight < 0:
      raise ValueError(f"Adversarial.gp_weight and r1_weight must be >= 0; got {self.gp_weight!r}, "
                       f"{self.r1_weight!r}")

  def __call__(self, apply: Any, batch: dict[str, jax.Array], rng: jax.Array) -> dict[str, jax.Array]:
    model = apply.model
    model_pack = getattr(model, "pack", 1)
    if model_pack != self.pack:
      raise ValueError(f"Adversarial.pack ({self.pack}) must equal the model's pack ({model_pack}), which sizes "
                       "the discriminator's input")
    x = batch["x"].astype(jnp.float32)
    num = x.shape[0]
    if num % self.pack:
      raise ValueError(f"Adversarial.pack: the batch ({num}) must be divisible by pack ({self.pack})")
    z_rng, eps_rng = jax.random.split(rng)
    z = jax.random.normal(z_rng, (num, model.latent_dim), jnp.float32)
    cond = {"y": batch["y"].astype(jnp.int32)} if getattr(model, "num_classes", 0) else {}
    fake = apply(z, method="generate", **cond).astype(jnp.float32)
    # Only the generator has model state (batch norm); keep its update through the discriminator calls.
    generator_state = getattr(apply, "new_model_state", None)
    packed_cond = {"y": pack_samples(cond["y"], self.pack)} if cond else {}
    real = pack_samples(x, self.pack)
    fake = pack_samples(fake, self.pack)

    def discriminate(inputs: jax.Array) -> jax.Array:
      return apply(inputs, method="discriminate", **packed_cond).astype(jnp.float32)

    def input_gradient(inputs: jax.Array) -> jax.Array:
      return jax.grad(lambda v: jnp.sum(discriminate(v)))(inputs).reshape(inputs.shape[0], -1)

    d_real = discriminate(real)
    d_fake = discriminate(jax.lax.stop_gradient(fake))
    g_fake = apply.frozen(fake, method="discriminate", **packed_cond).astype(jnp.float32)
    out = {}
    if self.loss == "non_saturating":
      d_loss = jax.nn.softplus(-d_real) + jax.nn.softplus(d_fake)
      g_loss = jax.nn.softplus(-g_fake)
    elif self.loss == "hinge":
      d_loss = jax.nn.relu(1.0 - d_real) + jax.nn.relu(1.0 + d_fake)
      g_loss = -g_fake
    else:
      eps = jax.random.uniform(eps_rng, (real.shape[0],) + (1,) * (real.ndim - 1), jnp.float32)
      interpolates = eps * real + (1.0 - eps) * jax.lax.stop_gradient(fake)
      grad = input_gradient(interpolates)
      # A safe norm: finite gradient where the input gradient vanishes.
      out["gradient_penalty"] = (jnp.sqrt(jnp.sum(grad**2, axis=-1) + 1e-12) - 1.0) ** 2
      d_loss = d_fake - d_real + self.gp_weight * out["gradient_penalty"]
      g_loss = -g_fake
    if self.r1_weight:
      out["r1"] = jnp.sum(input_gradient(real) ** 2, axis=-1)
      d_loss = d_loss + 0.5 * self.r1_weight * out["r1"]
    if generator_state is not None:
      apply.new_model_state = generator_state
    out.update(loss=d_loss + g_loss, d_loss=d_loss, g_loss=g_loss, d_real=d_real, d_fake=d_fake)
    return {k: jnp.repeat(v, self.pack) for k, v in out.items()}

  def generate(self, apply: Any, rng: jax.Array, num: int) -> jax.Array:
    """`num` samples G(z), z ~ N(0, I); sample i of class i % num_classes for a conditional model."""
    model = apply.model
    z = jax.random.normal(rng, (num, model.latent_dim), jnp.float32)
    classes = getattr(model, "num_classes", 0)
    cond = {"y": jnp.arange(num) % classes} if classes else {}
    return apply(z, method="generate", **cond)
