"""Denoising diffusion: noise schedules, the forward process, DDPM and DDIM samplers, models, objective.

- Ho, Jain & Abbeel (2020), "Denoising Diffusion Probabilistic Models" (DDPM): the linear beta
  schedule, the closed-form forward process q(x_t | x_0), the epsilon-prediction network trained
  by the simplified loss ||eps - eps_theta(x_t, t)||^2, and ancestral sampling.
- Song, Meng & Ermon (2021), "Denoising Diffusion Implicit Models" (DDIM): sampling on a
  sub-sequence of the timesteps, deterministic at eta = 0 and DDPM's posterior at eta = 1.
- Nichol & Dhariwal (2021), "Improved Denoising Diffusion Probabilistic Models": the cosine schedule.

Timesteps are 0-based: t = 0 is the first noising step, so the array index t holds the paper's
step t + 1 (alpha_bars[t] = prod_{s <= t} alphas[s]) and the data x_0 sits "before" t = 0.
Randomness of both samplers (one convention, so that DDIM with every timestep and eta = 1 and
ancestral sampling with variance "beta_tilde" follow the same trajectory for the same rng):
`init_rng, noise_rng = jax.random.split(rng)`; x_T ~ N(0, I) is drawn from `init_rng`, and the
noise added by the step that leaves timestep t from `jax.random.fold_in(noise_rng, t)`.

Models predict epsilon: `ddpm_mlp` for vectors (2D points, signals) and `unet` for images, both
`__call__(x, t=None, y=None, train=False)` with a sinusoidal timestep embedding and optional
class conditioning. The objective `Diffusion` maps images in [0, 1] to [-1, 1] for the diffusion.
"""

import dataclasses
import math
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from nets import activations
from nets.registry import register

Array = jax.Array
Batch = dict[str, Array]
Denoiser = Callable[[Array, Array], Array]  # (x_t, t int32 [B]) -> predicted epsilon, x_t's shape

SCHEDULES = ("linear", "cosine")
SAMPLERS = ("ancestral", "ddim")
VARIANCES = ("beta", "beta_tilde")
_COSINE_OFFSET = 0.008  # s of Nichol & Dhariwal
_MAX_BETA = 0.999


# ------------------------------------------------------------------------------------- schedules


def betas(name: str, steps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
  """The noise variances beta_t, t = 0..steps-1, in float64.

  "linear": evenly from `beta_start` to `beta_end` (Ho et al.: 1e-4 to 0.02 over 1000 steps; with
  far fewer steps these ends leave alpha_bar far from 0 at the last step, so scale them).
  "cosine": beta_t = 1 - abar(t + 1) / abar(t) with abar(t) = f(t) / f(0),
  f(t) = cos^2((t / steps + s) / (1 + s) * pi / 2), s = 0.008, clipped at 0.999 (Nichol & Dhariwal).
  """
  if steps < 1:
    raise ValueError(f"the number of diffusion steps must be positive; got {steps!r}")
  if name == "linear":
    return np.linspace(beta_start, beta_end, steps, dtype=np.float64)
  if name == "cosine":
    f = lambda t: np.cos((t / steps + _COSINE_OFFSET) / (1 + _COSINE_OFFSET) * np.pi / 2) ** 2
    abar = f(np.arange(steps + 1, dtype=np.float64)) / f(0.0)
    return np.minimum(1.0 - abar[1:] / abar[:-1], _MAX_BETA)
  raise ValueError(f"unknown beta schedule {name!r}; known: {', '.join(SCHEDULES)}")


class Schedule(NamedTuple):
  """A schedule's per-timestep constants, float32 arrays [T] (computed in float64).

  The posterior q(x_{t-1} | x_t, x_0) (0-based: the step into timestep t - 1, or into the data
  when t = 0) is N(posterior_coef_x0 * x_0 + posterior_coef_xt * x_t, posterior_variance).
  """

  betas: Array
  alphas: Array  # 1 - beta
  alpha_bars: Array  # cumulative products of alphas
  alpha_bars_prev: Array  # alpha_bars shifted right, 1 before t = 0
  sqrt_alpha_bars: Array
  sqrt_one_minus_alpha_bars: Array
  posterior_variance: Array  # beta_tilde = beta (1 - alpha_bar_prev) / (1 - alpha_bar); 0 at t = 0
  posterior_coef_x0: Array  # beta sqrt(alpha_bar_prev) / (1 - alpha_bar)
  posterior_coef_xt: Array  # sqrt(alpha) (1 - alpha_bar_prev) / (1 - alpha_bar)

  @property
  def num_steps(self) -> int:
    return self.betas.shape[0]


def make_schedule(name: str, steps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Schedule:
  """The `Schedule` of `betas(name, steps, beta_start, beta_end)`."""
  beta = betas(name, steps, beta_start, beta_end)
  if not np.all((beta > 0) & (beta < 1)):
    raise ValueError(f"the betas must lie in (0, 1); got the range [{beta.min()}, {beta.max()}]")
  alpha = 1.0 - beta
  abar = np.cumprod(alpha)
  abar_prev = np.concatenate([[1.0], abar[:-1]])
  arrays = dict(
      betas=beta, alphas=alpha, alpha_bars=abar, alpha_bars_prev=abar_prev,
      sqrt_alpha_bars=np.sqrt(abar), sqrt_one_minus_alpha_bars=np.sqrt(1.0 - abar),
      posterior_variance=beta * (1.0 - abar_prev) / (1.0 - abar),
      posterior_coef_x0=beta * np.sqrt(abar_prev) / (1.0 - abar),
      posterior_coef_xt=np.sqrt(alpha) * (1.0 - abar_prev) / (1.0 - abar))
  return Schedule(**{k: jnp.asarray(v, jnp.float32) for k, v in arrays.items()})


def _per_example(values: Array, t: Array, x: Array) -> Array:
  """values[t] [B] shaped to broadcast against x [B, ...]."""
  return values[t].reshape((-1,) + (1,) * (x.ndim - 1))


def q_sample(schedule: Schedule, x0: Array, t: Array, noise: Array) -> Array:
  """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise, t int [B] (0-based)."""
  return (_per_example(schedule.sqrt_alpha_bars, t, x0) * x0
          + _per_example(schedule.sqrt_one_minus_alpha_bars, t, x0) * noise)


def predict_x0(schedule: Schedule, x_t: Array, t: Array, eps: Array) -> Array:
  """The x0 that x_t and the noise eps imply: (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)."""
  return ((x_t - _per_example(schedule.sqrt_one_minus_alpha_bars, t, x_t) * eps)
          / _per_example(schedule.sqrt_alpha_bars, t, x_t))


# -------------------------------------------------------------------------------------- samplers


def _check_variance(variance: str) -> None:
  if variance not in VARIANCES:
    raise ValueError(f"variance must be one of {', '.join(VARIANCES)}; got {variance!r}")


def ancestral_sample(denoise: Denoiser, schedule: Schedule, shape: tuple[int, ...], rng: Array,
                     variance: str = "beta", clip: float | None = None) -> Array:
  """DDPM's reverse process (Ho et al., Algorithm 2) from x_T ~ N(0, I), one `fori_loop` over T steps.

  Each step from timestep t draws x_{t-1} ~ N(mean, sigma_t^2 I) with sigma_t^2 = beta_t
  (`variance="beta"`, Ho et al.'s choice) or the posterior variance beta_tilde_t; the last step
  (t = 0) returns its mean without noise. The mean is 1/sqrt(alpha_t) (x_t - beta_t /
  sqrt(1 - alpha_bar_t) eps), or, with `clip`, the posterior mean given the predicted x0 clipped
  to [-clip, clip]. Randomness as in the module docstring.
  """
  _check_variance(variance)
  init_rng, noise_rng = jax.random.split(rng)
  num = shape[0]
  sigmas = jnp.sqrt(schedule.betas if variance == "beta" else schedule.posterior_variance)
  eps_coef = schedule.betas / schedule.sqrt_one_minus_alpha_bars
  inv_sqrt_alphas = 1.0 / jnp.sqrt(schedule.alphas)

  def step(i, x):
    t = schedule.num_steps - 1 - i
    ts = jnp.full((num,), t, jnp.int32)
    eps = denoise(x, ts).astype(jnp.float32)
    if clip is None:
      mean = inv_sqrt_alphas[t] * (x - eps_coef[t] * eps)
    else:
      x0 = jnp.clip(predict_x0(schedule, x, ts, eps), -clip, clip)
      mean = schedule.posterior_coef_x0[t] * x0 + schedule.posterior_coef_xt[t] * x
    noise = jax.random.normal(jax.random.fold_in(noise_rng, t), shape, jnp.float32)
    return mean + jnp.where(t > 0, sigmas[t], 0.0) * noise

  x_T = jax.random.normal(init_rng, shape, jnp.float32)
  return jax.lax.fori_loop(0, schedule.num_steps, step, x_T)


def ddim_timesteps(num_steps: int, steps: int) -> np.ndarray:
  """`steps` timesteps evenly spaced over [0, num_steps - 1], both ends included, increasing."""
  if not 1 <= steps <= num_steps:
    raise ValueError(f"DDIM needs 1 <= steps <= {num_steps} (the diffusion's steps); got {steps!r}")
  if steps == 1:
    return np.array([num_steps - 1])
  return np.round(np.linspace(0, num_steps - 1, steps)).astype(np.int32)


def ddim_sample(denoise: Denoiser, schedule: Schedule, shape: tuple[int, ...], rng: Array, steps: int,
                eta: float = 0.0, clip: float | None = None) -> Array:
  """DDIM (Song et al., eq. 12) on `ddim_timesteps(T, steps)`, one `scan` from x_T ~ N(0, I).

  From timestep t to the previous one s of the sub-sequence (the data after the first):
  x0 = predict_x0(x_t, eps), clipped with `clip` (eps then recomputed from it);
  x_s = sqrt(abar_s) x0 + sqrt(1 - abar_s - sigma^2) eps + sigma z with
  sigma = eta sqrt((1 - abar_s) / (1 - abar_t)) sqrt(1 - abar_t / abar_s). eta = 0 is
  deterministic given x_T; eta = 1 with every timestep is DDPM with variance beta_tilde, and
  draws the same noise (module docstring), so the two give the same samples.
  """
  if eta < 0:
    raise ValueError(f"DDIM's eta must be non-negative; got {eta!r}")
  ts = ddim_timesteps(schedule.num_steps, steps)
  prev = np.concatenate([[-1], ts[:-1]])
  init_rng, noise_rng = jax.random.split(rng)
  num = shape[0]

  def step(x, pair):
    t, s = pair
    ts_b = jnp.full((num,), t, jnp.int32)
    eps = denoise(x, ts_b).astype(jnp.float32)
    abar_t = schedule.alpha_bars[t]
    abar_s = jnp.where(s >= 0, schedule.alpha_bars[jnp.maximum(s, 0)], 1.0)
    x0 = predict_x0(schedule, x, ts_b, eps)
    if clip is not None:
      x0 = jnp.clip(x0, -clip, clip)
      eps = (x - jnp.sqrt(abar_t) * x0) / jnp.sqrt(1.0 - abar_t)
    sigma = eta * jnp.sqrt((1.0 - abar_s) / (1.0 - abar_t) * (1.0 - abar_t / abar_s))
    direction = jnp.sqrt(jnp.maximum(1.0 - abar_s - sigma**2, 0.0))
    noise = jax.random.normal(jax.random.fold_in(noise_rng, t), shape, jnp.float32)
    return jnp.sqrt(abar_s) * x0 + direction * eps + sigma * noise, None

  x_T = jax.random.normal(init_rng, shape, jnp.float32)
  pairs = (jnp.asarray(ts[::-1], jnp.int32), jnp.asarray(prev[::-1], jnp.int32))
  x, _ = jax.lax.scan(step, x_T, pairs)
  return x


# ---------------------------------------------------------------------------------------- models


def timestep_embedding(t: Array, dim: int, max_period: float = 10000.0) -> Array:
  """Sinusoidal embedding [B, dim] of integer timesteps t [B] (Transformer-style, t used directly).

  The first half are sin(t w_i), the second cos(t w_i), w_i = max_period^(-i / (dim / 2)).
  """
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = t.astype(jnp.float32)[:, None] * freqs[None]
  emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
  return jnp.pad(emb, ((0, 0), (0, dim - 2 * half)))


def _activation(owner: str, name: str) -> Callable[[Array], Array]:
  try:
    return activations.get(name)
  except ValueError as e:
    raise ValueError(f"{owner}.activation: {e}") from None


def _timesteps(t: Array | None, batch: int) -> Array:
  return jnp.zeros((batch,), jnp.int32) if t is None else jnp.broadcast_to(jnp.asarray(t, jnp.int32), (batch,))


class _Conditioning(nn.Module):
  """The time embedding, an MLP of the sinusoidal one, plus a learned label embedding when conditional.

  Labels index `num_classes` + 1 embeddings: y = None uses the last, a "no label" class (so
  initialisation creates every parameter and an unconditional call is defined).
  """

  sinusoid_dim: int
  width: int
  num_classes: int
  act: Callable[[Array], Array]

  @nn.compact
  def __call__(self, t: Array, y: Array | None) -> Array:
    emb = nn.Dense(self.width)(timestep_embedding(t, self.sinusoid_dim))
    emb = nn.Dense(self.width)(self.act(emb))
    if self.num_classes:
      labels = jnp.full(t.shape, self.num_classes, jnp.int32) if y is None else jnp.asarray(y, jnp.int32)
      emb = emb + nn.Embed(self.num_classes + 1, self.width, name="label_embedding")(labels)
    return emb


@register("ddpm_mlp")
class DDPMMLP(nn.Module):
  """An epsilon-predicting residual MLP for vectors [B, D] (2D points, signals; other ranks are flattened).

  Dense(hidden), then `depth` pre-LayerNorm residual blocks h += Dense(act(Dense(act(LN h)) + Dense(act(emb)))),
  with emb the timestep (and label) embedding of width `hidden` from a `time_dim` sinusoid;
  a final LayerNorm, activation and a zero-initialised Dense back to D (so training starts
  from eps_theta = 0, as Ho et al.'s output layer).
  """

  hidden: int = 256
  depth: int = 4
  time_dim: int = 128
  activation: str = "silu"
  num_classes: int = 0

  def __post_init__(self):
    _activation("DDPMMLP", self.activation)
    for field, value, low in (("hidden", self.hidden, 1), ("depth", self.depth, 0), ("time_dim", self.time_dim, 2),
                              ("num_classes", self.num_classes, 0)):
      if value < low:
        raise ValueError(f"DDPMMLP.{field} must be >= {low}; got {value!r}")
    super().__post_init__()

  @nn.compact
  def __call__(self, x: Array, t: Array | None = None, y: Array | None = None, train: bool = False) -> Array:
    del train
    act = _activation("DDPMMLP", self.activation)
    shape = x.shape
    h = x.reshape(shape[0], -1).astype(jnp.float32)
    emb = _Conditioning(self.time_dim, self.hidden, self.num_classes, act, name="conditioning")(
        _timesteps(t, shape[0]), y)
    h = nn.Dense(self.hidden, name="input")(h)
    for i in range(self.depth):
      r = nn.Dense(self.hidden, name=f"block{i}_dense0")(act(nn.LayerNorm(name=f"block{i}_norm")(h)))
      r = r + nn.Dense(self.hidden, name=f"block{i}_time")(act(emb))
      h = h + nn.Dense(self.hidden, name=f"block{i}_dense1")(act(r))
    out = nn.Dense(math.prod(shape[1:]), kernel_init=nn.initializers.zeros, name="output")(
        act(nn.LayerNorm(name="output_norm")(h)))
    return out.reshape(shape)


class ResBlock(nn.Module):
  """GroupNorm -> SiLU -> conv, + the projected embedding, GroupNorm -> SiLU -> dropout -> conv (zero init)."""

  features: int
  groups: int
  dropout: float

  @nn.compact
  def __call__(self, x: Array, emb: Array, train: bool) -> Array:
    h = nn.Conv(self.features, (3, 3), padding="SAME")(nn.silu(nn.GroupNorm(self.groups)(x)))
    h = h + nn.Dense(self.features)(nn.silu(emb))[:, None, None, :]
    h = nn.silu(nn.GroupNorm(self.groups)(h))
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = nn.Conv(self.features, (3, 3), padding="SAME", kernel_init=nn.initializers.zeros)(h)
    shortcut = x if x.shape[-1] == self.features else nn.Conv(self.features, (1, 1), name="shortcut")(x)
    return shortcut + h


class SelfAttention(nn.Module):
  """Single-head self-attention over all positions of a feature map, residual (zero-initialised output)."""

  groups: int

  @nn.compact
  def __call__(self, x: Array) -> Array:
    batch, height, width, channels = x.shape
    h = nn.GroupNorm(self.groups)(x).reshape(batch, height * width, channels)
    q, k, v = jnp.split(nn.Dense(3 * channels, name="qkv")(h), 3, axis=-1)
    weights = jax.nn.softmax(jnp.einsum("bqc,bkc->bqk", q, k) / math.sqrt(channels), axis=-1)
    out = nn.Dense(channels, kernel_init=nn.initializers.zeros, name="out")(jnp.einsum("bqk,bkc->bqc", weights, v))
    return x + out.reshape(x.shape)


@register("unet")
class UNet(nn.Module):
  """The epsilon-predicting U-Net of Ho et al. (2020), small, for images [B, H, W, C].

  A 3x3 conv to `features[0]` channels; per resolution level `blocks` ResNet blocks of
  `features[i]` channels (each output kept as a skip connection), then a stride-2 conv (SAME
  padding: 7 -> 4) to the next level; at the lowest resolution ResBlock, self-attention
  (`attention`) and ResBlock; the way up mirrors it, each block reading its skip concatenated,
  and each level upsamples (nearest, resized to the skip's shape, so odd sizes such as
  28 -> 14 -> 7 come back exactly) followed by a 3x3 conv. Output GroupNorm, SiLU and a
  zero-initialised conv to C channels. The timestep embedding (4 * features[0] wide) enters
  every ResBlock; with `num_classes` > 0 a label embedding is added to it (y = None: a
  learned "no label" embedding).
  """

  features: tuple[int, ...] = (32, 64)
  blocks: int = 2
  attention: bool = True
  groups: int = 8
  dropout: float = 0.0
  num_classes: int = 0

  def __post_init__(self):
    if not self.features or any(int(f) < 1 for f in self.features):
      raise ValueError(f"UNet.features must be positive channel widths; got {self.features!r}")
    if self.groups < 1 or any(int(f) % self.groups for f in self.features):
      raise ValueError(f"UNet.groups must be positive and divide every width of features={self.features!r}; "
                       f"got {self.groups!r}")
    if self.blocks < 1:
      raise ValueError(f"UNet.blocks must be >= 1; got {self.blocks!r}")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"UNet.dropout must be in [0, 1); got {self.dropout!r}")
    if self.num_classes < 0:
      raise ValueError(f"UNet.num_classes must be >= 0 (0: unconditional); got {self.num_classes!r}")
    super().__post_init__()

  @nn.compact
  def __call__(self, x: Array, t: Array | None = None, y: Array | None = None, train: bool = False) -> Array:
    if x.ndim != 4:
      raise ValueError(f"UNet expects images [batch, height, width, channels]; got shape {x.shape}")
    features = tuple(int(f) for f in self.features)
    emb = _Conditioning(features[0], 4 * features[0], self.num_classes, nn.silu, name="conditioning")(
        _timesteps(t, x.shape[0]), y)
    block = lambda f: ResBlock(f, self.groups, self.dropout)
    h = nn.Conv(features[0], (3, 3), padding="SAME", name="input")(x.astype(jnp.float32))
    skips = []
    for level, f in enumerate(features):
      for _ in range(self.blocks):
        h = block(f)(h, emb, train)
        skips.append(h)
      if level < len(features) - 1:
        h = nn.Conv(f, (3, 3), strides=(2, 2), padding="SAME", name=f"down{level}")(h)
    h = block(features[-1])(h, emb, train)
    if self.attention:
      h = SelfAttention(self.groups, name="attention")(h)
    h = block(features[-1])(h, emb, train)
    for level in reversed(range(len(features))):
      for _ in range(self.blocks):
        h = block(features[level])(jnp.concatenate([h, skips.pop()], axis=-1), emb, train)
      if level > 0:
        target = skips[-1].shape
        h = jax.image.resize(h, (h.shape[0], target[1], target[2], h.shape[-1]), "nearest")
        h = nn.Conv(features[level], (3, 3), padding="SAME", name=f"up{level}")(h)
    h = nn.silu(nn.GroupNorm(self.groups, name="output_norm")(h))
    return nn.Conv(x.shape[-1], (3, 3), padding="SAME", kernel_init=nn.initializers.zeros, name="output")(h)


# ------------------------------------------------------------------------------------- objective


@dataclasses.dataclass(frozen=True)
class Diffusion:
  """DDPM training by Ho et al.'s simplified loss, and sampling by DDPM or DDIM.

  Per example: t ~ Uniform{0..T-1}, eps ~ N(0, I), x_t = q_sample(x0, t, eps) and "loss" = "mse"
  = the mean over the example's values of (eps - eps_theta(x_t, t))^2. Images (rank-4 inputs,
  values in [0, 1]) are diffused as 2 x - 1 in [-1, 1], and sampling clips the predicted x0 to
  [-1, 1] and maps samples back to [0, 1]; other data (points, signals) is used as it is, unclipped.
  A model with `num_classes` > 0 is conditioned on `batch["y"]`; `generate` makes sample i of
  class i % num_classes. Randomness: t from the first key of `jax.random.split(rng)`, eps from the second.

  `sampler` "ancestral" runs all `diffusion_steps` of DDPM (variance beta_t); "ddim" runs
  `sample_steps` DDIM steps with `ddim_eta`. `data_shape` is one example's shape (the spine
  fills it from the data); `generate` needs it.
  """

  diffusion_steps: int = 1000
  beta_schedule: str = "linear"
  beta_start: float = 1e-4
  beta_end: float = 0.02
  sampler: str = "ancestral"
  sample_steps: int = 50
  ddim_eta: float = 0.0
  data_shape: tuple[int, ...] = ()

  def __post_init__(self):
    if self.beta_schedule not in SCHEDULES:
      raise ValueError(f"Diffusion.beta_schedule must be one of {', '.join(SCHEDULES)}; got {self.beta_schedule!r}")
    if self.sampler not in SAMPLERS:
      raise ValueError(f"Diffusion.sampler must be one of {', '.join(SAMPLERS)}; got {self.sampler!r}")
    if self.diffusion_steps < 1:
      raise ValueError(f"Diffusion.diffusion_steps must be positive; got {self.diffusion_steps!r}")
    if self.beta_schedule == "linear" and not 0 < self.beta_start <= self.beta_end < 1:
      raise ValueError("Diffusion.beta_start and beta_end must satisfy 0 < beta_start <= beta_end < 1; got "
                       f"{self.beta_start!r}, {self.beta_end!r}")
    if self.sampler == "ddim" and not 1 <= self.sample_steps <= self.diffusion_steps:
      raise ValueError(f"Diffusion.sample_steps must be in [1, diffusion_steps={self.diffusion_steps}]; "
                       f"got {self.sample_steps!r}")
    if not self.ddim_eta >= 0:
      raise ValueError(f"Diffusion.ddim_eta must be non-negative; got {self.ddim_eta!r}")
    if any(int(d) < 1 for d in self.data_shape):
      raise ValueError(f"Diffusion.data_shape must be positive sizes (or empty); got {self.data_shape!r}")

  def schedule(self) -> Schedule:
    return make_schedule(self.beta_schedule, self.diffusion_steps, self.beta_start, self.beta_end)

  def __call__(self, apply: Any, batch: Batch, rng: Array) -> dict[str, Array]:
    x = jnp.asarray(batch["x"], jnp.float32)
    if x.ndim == 4:
      x = 2.0 * x - 1.0
    t_rng, noise_rng = jax.random.split(rng)
    t = jax.random.randint(t_rng, (x.shape[0],), 0, self.diffusion_steps, jnp.int32)
    noise = jax.random.normal(noise_rng, x.shape, jnp.float32)
    x_t = q_sample(self.schedule(), x, t, noise)
    cond = {"y": jnp.asarray(batch["y"], jnp.int32)} if getattr(apply.model, "num_classes", 0) else {}
    eps = apply(x_t, t, **cond).astype(jnp.float32)
    mse = jnp.mean(((noise - eps) ** 2).reshape(x.shape[0], -1), axis=-1)
    return {"loss": mse, "mse": mse}

  def generate(self, apply: Any, rng: Array, num: int) -> Array:
    """`num` samples [num, *data_shape] by the chosen sampler (images in [0, 1])."""
    if not self.data_shape:
      raise ValueError("Diffusion.data_shape must be set (one example's shape, e.g. (8, 8, 1) or (2,)) to generate")
    shape = (num, *(int(d) for d in self.data_shape))
    images = len(shape) == 4
    classes = getattr(apply.model, "num_classes", 0)
    cond = {"y": jnp.arange(num, dtype=jnp.int32) % classes} if classes else {}
    denoise = lambda x, t: apply(x, t, **cond)
    clip = 1.0 if images else None
    if self.sampler == "ddim":
      x = ddim_sample(denoise, self.schedule(), shape, rng, self.sample_steps, self.ddim_eta, clip=clip)
    else:
      x = ancestral_sample(denoise, self.schedule(), shape, rng, clip=clip)
    return jnp.clip((x + 1.0) / 2.0, 0.0, 1.0) if images else x
