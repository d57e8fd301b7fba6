"""Diffusion: schedules, the forward process against its step-by-step definition, the DDPM posterior
against Gaussian conditioning, DDPM and DDIM samplers against each other and against the exact
answer for Gaussian data, model shapes, the objective, and a tiny training run."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nets import diffusion, registry
from nets.apply import Apply


def _key(seed):
  """Keys of the RBG generator: same semantics, far quicker to compile than threefry on the CPU."""
  return jax.random.key(seed, impl="rbg")


def _init(model, x):
  return jax.jit(lambda rng: model.init({"params": rng, "dropout": rng}, x, train=False))(_key(0))


def _random_variables(model, x, scale=0.3, seed=0):
  """Variables of init's shapes drawn with numpy (no compilation of init); the zero-initialised output
  layers would otherwise hide what reaches the output."""
  shapes = jax.eval_shape(lambda: model.init({"params": _key(0), "dropout": _key(0)}, x, train=False))
  rs = np.random.RandomState(seed)
  return jax.tree.map(lambda a: jnp.asarray(scale * rs.standard_normal(a.shape), a.dtype), shapes)


def _apply(model, variables, train=True):
  return Apply(model, variables["params"], {k: v for k, v in variables.items() if k != "params"}, _key(1),
               train=train)


# ------------------------------------------------------------------------------------- schedules


def test_linear_schedule_is_ho_et_al():
  b = diffusion.betas("linear", 1000)
  assert b.shape == (1000,) and b.dtype == np.float64
  np.testing.assert_allclose([b[0], b[-1]], [1e-4, 0.02], rtol=0, atol=1e-12)
  np.testing.assert_allclose(np.diff(b), (0.02 - 1e-4) / 999, rtol=1e-9)
  s = diffusion.make_schedule("linear", 1000)
  assert s.num_steps == 1000 and all(v.dtype == jnp.float32 and v.shape == (1000,) for v in s)
  assert 2e-5 < float(s.alpha_bars[-1]) < 1e-4  # x_T is nearly pure noise


def test_cosine_schedule():
  steps, off = 1000, 0.008
  s = diffusion.make_schedule("cosine", steps)
  abar = np.asarray(s.alpha_bars, np.float64)
  f = lambda t: np.cos((t / steps + off) / (1 + off) * np.pi / 2) ** 2
  expected = f(np.arange(1, steps + 1)) / f(0)  # alpha_bar after step t (0-based)
  # Unclipped steps follow the formula exactly; the last beta (1 - 0 / f) is clipped at 0.999.
  np.testing.assert_allclose(abar[:-1], expected[:-1], rtol=1e-5, atol=1e-9)
  assert float(s.betas[-1]) == pytest.approx(0.999) and float(s.betas.max()) <= 0.999 + 1e-7
  assert abar[0] > 0.9999 and abar[-1] < 1e-8
  assert np.all(np.diff(abar) < 0)
  with pytest.raises(ValueError, match="unknown beta schedule"):
    diffusion.betas("quadratic", 10)


# ------------------------------------------------------------------------------- forward process


def test_forward_process_coefficients_follow_the_recursion():
  """x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps_t composes to sqrt(abar_t) x0 + sqrt(1 - abar_t) eps."""
  for name in diffusion.SCHEDULES:
    b = diffusion.betas(name, 1000)
    s = diffusion.make_schedule(name, 1000)
    coef, var = 1.0, 0.0
    coefs, variances = [], []
    for beta in b:  # the exact mean coefficient and variance of x_t given x0, step by step
      coef, var = coef * np.sqrt(1 - beta), (1 - beta) * var + beta
      coefs.append(coef)
      variances.append(var)
    np.testing.assert_allclose(s.sqrt_alpha_bars, coefs, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(1 - np.asarray(s.alpha_bars, np.float64), variances, rtol=0, atol=1e-6)
    np.testing.assert_allclose(s.sqrt_one_minus_alpha_bars, np.sqrt(variances), rtol=0, atol=1e-6)
    rs = np.random.RandomState(0)
    x0, noise = rs.standard_normal((4, 3)), rs.standard_normal((4, 3))
    t = np.array([0, 10, 500, 999])
    expected = np.asarray(coefs)[t, None] * x0 + np.sqrt(variances)[t, None] * noise
    got = diffusion.q_sample(s, jnp.asarray(x0, jnp.float32), jnp.asarray(t), jnp.asarray(noise, jnp.float32))
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-5)


def test_forward_process_statistics():
  """Simulated noising, one step at a time, has the closed form's mean and variance."""
  b = diffusion.betas("linear", 1000)
  s = diffusion.make_schedule("linear", 1000)
  rs = np.random.RandomState(1)
  n, x0 = 20000, 1.5
  x = np.full(n, x0)
  checks = {0: None, 99: None, 499: None, 999: None}
  for t, beta in enumerate(b):
    x = np.sqrt(1 - beta) * x + np.sqrt(beta) * rs.standard_normal(n)
    if t in checks:
      abar = float(s.alpha_bars[t])
      assert abs(x.mean() - np.sqrt(abar) * x0) < 0.03, t
      assert abs(x.var() - (1 - abar)) < 0.04 * max(1 - abar, 0.05), t
  # q_sample in one jump: the same distribution at the last step.
  q = diffusion.q_sample(s, jnp.full((n,), x0), jnp.full((n,), 999), jnp.asarray(rs.standard_normal(n), jnp.float32))
  assert abs(float(q.mean()) - x.mean()) < 0.05 and abs(float(q.var()) - x.var()) < 0.05


def test_posterior_is_gaussian_conditioning():
  """q(x_{t-1} | x_t, x0) from the joint Gaussian of (x_{t-1}, x_t) given x0, computed independently."""
  for name in diffusion.SCHEDULES:
    b = diffusion.betas(name, 200)
    s = diffusion.make_schedule(name, 200)
    for t in (0, 1, 57, 199):
      abar_prev = np.prod(1 - b[:t])  # 1 for t = 0: x_{t-1} is x0 itself
      alpha = 1 - b[t]
      # x_{t-1} = sqrt(abar_prev) x0 + N(0, 1 - abar_prev); x_t = sqrt(alpha) x_{t-1} + N(0, beta_t).
      var_prev, var_t = 1 - abar_prev, alpha * (1 - abar_prev) + b[t]
      cov = np.sqrt(alpha) * var_prev
      gain = cov / var_t
      # mean = sqrt(abar_prev) x0 + gain (x_t - sqrt(alpha abar_prev) x0)
      np.testing.assert_allclose(s.posterior_coef_xt[t], gain, rtol=1e-5, atol=1e-7)
      np.testing.assert_allclose(s.posterior_coef_x0[t], np.sqrt(abar_prev) - gain * np.sqrt(alpha * abar_prev),
                                 rtol=1e-5, atol=1e-7)
      np.testing.assert_allclose(s.posterior_variance[t], var_prev - cov * gain, rtol=1e-5, atol=1e-9)
  # Ho et al.'s epsilon form of the mean equals the x0 form with x0 predicted from epsilon.
  rs = np.random.RandomState(0)
  x, eps = (jnp.asarray(rs.standard_normal((3, 2)), jnp.float32) for _ in range(2))
  t = jnp.array([3, 100, 199])
  eps_form = (x - (s.betas[t] / s.sqrt_one_minus_alpha_bars[t])[:, None] * eps) / jnp.sqrt(s.alphas[t])[:, None]
  x0 = diffusion.predict_x0(s, x, t, eps)
  np.testing.assert_allclose(eps_form, s.posterior_coef_x0[t, None] * x0 + s.posterior_coef_xt[t, None] * x,
                             rtol=1e-4, atol=1e-4)


# -------------------------------------------------------------------------------------- samplers

M, S = 0.7, 0.4  # the data distribution N(M, S^2 I) of the exact denoiser


def _exact_denoiser(schedule):
  """E[eps | x_t] for data N(M, S^2 I): (x_t - sqrt(abar) M) sqrt(1 - abar) / (abar S^2 + 1 - abar)."""

  def denoise(x, t):
    abar = schedule.alpha_bars[t].reshape((-1,) + (1,) * (x.ndim - 1))
    return (x - jnp.sqrt(abar) * M) * jnp.sqrt(1 - abar) / (abar * S**2 + 1 - abar)

  return denoise


def test_ddim_timesteps():
  ts = diffusion.ddim_timesteps(1000, 50)
  assert len(ts) == 50 and ts[0] == 0 and ts[-1] == 999 and np.all(np.diff(ts) > 0)
  np.testing.assert_array_equal(diffusion.ddim_timesteps(7, 7), np.arange(7))
  with pytest.raises(ValueError, match="steps"):
    diffusion.ddim_timesteps(10, 11)


@pytest.mark.parametrize("clip", [None, 0.8])
def test_ddim_eta1_all_steps_is_ancestral_beta_tilde(clip):
  s = diffusion.make_schedule("linear", 1000)
  denoise = _exact_denoiser(s)
  shape, rng = (64, 2), _key(3)
  run = jax.jit(lambda rng: (diffusion.ancestral_sample(denoise, s, shape, rng, variance="beta_tilde", clip=clip),
                             diffusion.ddim_sample(denoise, s, shape, rng, 1000, eta=1.0, clip=clip),
                             diffusion.ancestral_sample(denoise, s, shape, rng, variance="beta", clip=clip)))
  ancestral, ddim, ancestral_beta = map(np.asarray, run(rng))
  np.testing.assert_allclose(ddim, ancestral, rtol=0, atol=1e-4)
  assert np.abs(ancestral_beta - ancestral).max() > 1e-2  # the variance choice matters
  if clip is not None:
    assert ancestral.max() <= clip + 1e-6 and ancestral.max() > clip - 1e-3  # the last step returns clipped x0
  other, _, _ = map(np.asarray, run(_key(4)))
  assert np.abs(other - ancestral).max() > 0.1  # and the rng does


def _ddim_exact_moments(schedule, steps):
  """Mean and std of DDIM(eta=0) samples for N(M, S^2) data: the sampler is affine, x_T ~ N(0, 1)."""
  abar = np.asarray(schedule.alpha_bars, np.float64)
  ts = diffusion.ddim_timesteps(len(abar), steps)
  mean, std = 0.0, 1.0
  for i in reversed(range(len(ts))):
    a, a_prev = abar[ts[i]], abar[ts[i - 1]] if i else 1.0
    c = np.sqrt(1 - a) / (a * S**2 + 1 - a)  # eps = c (x - sqrt(a) M)
    scale = np.sqrt(a_prev) * (1 - np.sqrt(1 - a) * c) / np.sqrt(a) + np.sqrt(1 - a_prev) * c
    mean = scale * mean + (np.sqrt(a_prev) * np.sqrt(1 - a) / np.sqrt(a) - np.sqrt(1 - a_prev)) * c * np.sqrt(a) * M
    std = abs(scale) * std
  return mean, std


def test_samplers_recover_gaussian_data():
  """With the exact denoiser, samples are distributed as the data N(M, S^2) (up to discretisation)."""
  s = diffusion.make_schedule("linear", 1000)
  denoise = _exact_denoiser(s)
  shape = (4000, 2)
  run = jax.jit(lambda rng: (diffusion.ancestral_sample(denoise, s, shape, rng),
                             diffusion.ddim_sample(denoise, s, shape, rng, 50, eta=0.0)))
  ancestral, ddim = map(np.asarray, run(_key(5)))
  # Standard errors: mean 0.4 / sqrt(8000) = 0.0045, std 0.4 / sqrt(16000) = 0.003.
  assert abs(ancestral.mean() - M) < 0.02 and abs(ancestral.std() - S) < 0.02
  assert abs(ddim.mean() - M) < 0.02 and abs(ddim.std() - S) < 0.04  # 50 steps: a few % low
  # DDIM is affine here: its exact output distribution, by hand, matches the samples tightly.
  mean, std = _ddim_exact_moments(s, 50)
  assert abs(mean - M) < 0.01 and 0.9 * S < std < S
  assert abs(ddim.mean() - mean) < 0.02 and abs(ddim.std() - std) < 0.012
  x_T = np.asarray(jax.random.normal(jax.random.split(_key(5))[0], shape))  # eta = 0: a deterministic map of x_T
  np.testing.assert_allclose(ddim, mean + std * x_T, rtol=0, atol=1e-3)


# ---------------------------------------------------------------------------------------- models


def test_registered_with_simple_fields():
  assert registry.get("ddpm_mlp") is diffusion.DDPMMLP and registry.get("unet") is diffusion.UNet
  simple = (int, float, str, bool, tuple[int, ...], tuple[float, ...])
  for name in ("ddpm_mlp", "unet"):
    for field in registry.hparams(name).values():
      assert field.type in simple and field.default is not dataclasses.MISSING, (name, field)
  with pytest.raises(ValueError, match="UNet.groups"):
    diffusion.UNet(features=(12, 20), groups=8)
  with pytest.raises(ValueError, match="DDPMMLP.activation"):
    diffusion.DDPMMLP(activation="nope")


@pytest.mark.parametrize("shape,features,num_classes", [((2, 8, 8, 1), (8, 16), 0), ((2, 28, 28, 1), (8, 16, 32), 0),
                                                        ((2, 28, 28, 1), (8, 16, 32), 10), ((2, 7, 9, 3), (8, 16), 4)])
def test_unet_shapes(shape, features, num_classes):
  """Shapes only, traced abstractly (nothing compiled); 28 -> 14 -> 7 and odd sizes come back whole."""
  model = diffusion.UNet(features=features, groups=4, num_classes=num_classes)
  x = jnp.zeros(shape)
  t, y = jnp.array([1, 999]), (jnp.array([0, num_classes - 1]) if num_classes else None)

  def init_and_apply():
    variables = model.init({"params": _key(0), "dropout": _key(0)}, x)
    return variables, model.apply(variables, x, t, y)

  variables, out = jax.eval_shape(init_and_apply)
  assert set(variables) == {"params"}
  assert ("conditioning" in variables["params"]) and (
      ("label_embedding" in variables["params"]["conditioning"]) == bool(num_classes))
  assert out.shape == shape and out.dtype == jnp.float32


def test_unet_reads_time_and_labels():
  model = diffusion.UNet(features=(4, 8), blocks=1, groups=2, num_classes=3)
  x = jax.random.normal(_key(1), (2, 8, 8, 1))
  variables = _random_variables(model, x)
  f = jax.jit(lambda t, y: model.apply(variables, x, t, y))
  base = f(jnp.array([5, 5]), jnp.array([0, 1]))
  assert base.shape == x.shape
  assert np.abs(f(jnp.array([6, 5]), jnp.array([0, 1])) - base)[0].max() > 1e-4
  assert np.abs(f(jnp.array([5, 5]), jnp.array([2, 1])) - base)[0].max() > 1e-4
  np.testing.assert_allclose(f(jnp.array([6, 5]), jnp.array([2, 1]))[1], base[1], atol=1e-5)  # per example


def test_ddpm_mlp_shapes():
  model = diffusion.DDPMMLP(hidden=16, depth=2, time_dim=8)
  x = jnp.ones((3, 2))
  variables = _init(model, x)
  assert not np.any(jax.jit(model.apply)(variables, x))  # zero-initialised output, as Ho et al.'s
  variables = _random_variables(model, x)
  a, b = jax.jit(jax.vmap(lambda t: model.apply(variables, x, t)))(jnp.array([[0, 1, 2], [0, 1, 3]]))
  np.testing.assert_allclose(a[:2], b[:2])  # each example reads its own timestep
  assert np.abs(a[2] - b[2]).max() > 1e-5
  signals = diffusion.DDPMMLP(hidden=16, depth=1, time_dim=8)
  assert jax.eval_shape(lambda: signals.apply(signals.init(_key(0), jnp.ones((3, 40))), jnp.ones((3, 40)))).shape == (
      3, 40)


# ------------------------------------------------------------------------------------- objective


def test_objective_loss_is_the_simplified_loss_on_images():
  obj = diffusion.Diffusion(diffusion_steps=50)
  model = diffusion.DDPMMLP(hidden=8, depth=1, time_dim=4, num_classes=3)
  x = jax.random.uniform(_key(0), (4, 4, 4, 1))
  batch = {"x": x, "y": jnp.array([0, 1, 2, 0])}
  variables = _random_variables(model, x)
  rng = _key(7)
  out = obj(_apply(model, variables), batch, rng)
  assert set(out) == {"loss", "mse"} and out["loss"].shape == (4,) and out["loss"].dtype == jnp.float32
  # Independently: images to [-1, 1], the forward process by its formula, the label passed on.
  t_rng, noise_rng = jax.random.split(rng)
  t = jax.random.randint(t_rng, (4,), 0, 50)
  noise = jax.random.normal(noise_rng, x.shape)
  abar = np.cumprod(1 - np.linspace(1e-4, 0.02, 50))[np.asarray(t)][:, None, None, None]
  x_t = np.sqrt(abar) * (2 * x - 1) + np.sqrt(1 - abar) * noise
  eps = model.apply(variables, jnp.asarray(x_t, jnp.float32), t, batch["y"])
  np.testing.assert_allclose(out["loss"], np.mean((noise - eps) ** 2, axis=(1, 2, 3)), rtol=1e-4)
  other = obj(_apply(model, variables), {**batch, "y": (batch["y"] + 1) % 3}, rng)
  assert np.abs(other["loss"] - out["loss"]).max() > 1e-6


def test_objective_validation():
  for kwargs, match in [({"beta_schedule": "quad"}, "beta_schedule"), ({"sampler": "euler"}, "sampler"),
                        ({"sampler": "ddim", "diffusion_steps": 10, "sample_steps": 20}, "sample_steps"),
                        ({"ddim_eta": -1.0}, "ddim_eta"), ({"beta_start": 0.1, "beta_end": 0.01}, "beta_start"),
                        ({"data_shape": (0, 2)}, "data_shape")]:
    with pytest.raises(ValueError, match=match):
      diffusion.Diffusion(**kwargs)
  model = diffusion.DDPMMLP(hidden=8, depth=1, time_dim=4)
  variables = _init(model, jnp.zeros((2, 2)))
  with pytest.raises(ValueError, match="data_shape must be set"):
    diffusion.Diffusion().generate(_apply(model, variables, train=False), _key(0), 2)


@pytest.mark.parametrize("sampler,data_shape,schedule", [("ancestral", (4, 4, 1), "linear"),
                                                         ("ddim", (4, 4, 1), "cosine"), ("ddim", (2,), "linear")])
def test_generate(sampler, data_shape, schedule):
  obj = diffusion.Diffusion(diffusion_steps=20, beta_schedule=schedule, beta_end=0.3, sampler=sampler,
                            sample_steps=5, ddim_eta=0.5, data_shape=data_shape)
  model = diffusion.DDPMMLP(hidden=8, depth=1, time_dim=4, num_classes=3)
  variables = _random_variables(model, jnp.zeros((2, *data_shape)), scale=0.5)
  samples = np.asarray(jax.jit(lambda rng: obj.generate(_apply(model, variables, train=False), rng, 5))(_key(2)))
  assert samples.shape == (5, *data_shape) and np.all(np.isfinite(samples))
  if len(data_shape) == 3:
    assert samples.min() >= 0 and samples.max() <= 1
  else:
    assert np.abs(samples).max() > 1.0  # points are not clipped


def test_tiny_ddpm_mlp_learns():
  """A few hundred Adam steps on a 2D two-cluster data set lower the simplified loss."""
  obj = diffusion.Diffusion(diffusion_steps=100, beta_end=0.1)
  model = diffusion.DDPMMLP(hidden=32, depth=2, time_dim=16)
  centres = jnp.array([[-2.0, 0.0], [2.0, 1.0]])

  def data(rng, n):
    pick, jitter = jax.random.split(rng)
    return centres[jax.random.bernoulli(pick, 0.5, (n,)).astype(jnp.int32)] + 0.1 * jax.random.normal(jitter, (n, 2))

  params = _init(model, jnp.zeros((2, 2)))["params"]
  tx = optax.adam(3e-3)

  def loss(params, rng, n):
    data_rng, obj_rng = jax.random.split(rng)
    batch = {"x": data(data_rng, n), "y": jnp.zeros((n,), jnp.int32)}
    return jnp.mean(obj(Apply(model, params, {}, rng, train=True), batch, obj_rng)["loss"])

  def step(carry, rng):
    params, opt_state = carry
    grads = jax.grad(loss)(params, rng, 128)
    updates, opt_state = tx.update(grads, opt_state)
    return (optax.apply_updates(params, updates), opt_state), None

  @jax.jit
  def train_and_eval(params):
    before = loss(params, _key(99), 4096)
    (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), jax.random.split(_key(1), 300))
    return before, loss(params, _key(99), 4096)

  before, after = map(float, train_and_eval(params))
  assert before == pytest.approx(1.0, abs=0.05)  # eps_theta = 0 at initialisation
  assert after < 0.5 * before, (before, after)  # about 0.2 after 300 steps
