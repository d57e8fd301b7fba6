"""Autoencoder and VAE: shapes, the reparameterisation gradient, the KL, and the ELBO/IWAE bounds
checked against log-likelihoods known independently (a linear-Gaussian model in closed form, a
one-dimensional Bernoulli model by quadrature)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats

import nets
from nets import autoencoder as ae
from nets.apply import Apply


def _init(model, x):
  return model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, x, train=False)


def _bind(model, variables, train=False):
  return Apply(model, variables["params"], {k: v for k, v in variables.items() if k != "params"},
               jax.random.key(0), train=train)


def _over_rngs(fn, count, seed=0):
  """fn(rng) -> (B,) arrays (in any pytree), run for `count` rngs: the same of [count, B] numpy arrays."""
  return jax.tree.map(np.asarray, jax.jit(jax.vmap(fn))(jax.random.split(jax.random.key(seed), count)))


@pytest.mark.parametrize("shape", [(3, 40), (3, 8, 8, 1)])
def test_shapes_and_per_example_metrics(shape):
  # Shapes only, so traced abstractly (jax.eval_shape): nothing is compiled.
  x = jax.random.uniform(jax.random.key(0), shape)
  rng = jax.random.key(1)
  for name in ("autoencoder", "vae"):
    model = nets.create(name, hidden=(16, 8), latent_dim=3, data_shape=shape[1:])
    variables = jax.eval_shape(lambda: _init(model, x))
    run = lambda fn: jax.eval_shape(lambda v: fn(_bind(model, v)), variables)
    assert run(lambda apply: apply(x)).shape == shape
    assert run(lambda apply: apply(jnp.ones((5, 3)), method="decode")).shape == (5, *shape[1:])
    if name == "vae":
      mean, log_variance = run(lambda apply: apply(x, method="encode"))
      assert mean.shape == log_variance.shape == (3, 3)
      assert run(lambda apply: apply(method="decoder_log_std")).shape == shape[1:]
      for likelihood in ("gaussian", "bernoulli"):
        objective = ae.ELBO(likelihood=likelihood, iwae_samples=7)
        metrics = run(lambda apply: objective.evaluate(apply, {"x": x}, rng))
        assert {"loss", "elbo", "kl", "reconstruction", "bits_per_dim", "iwae_bound", "iwae_nll"} <= set(metrics)
        assert set(run(lambda apply: objective(apply, {"x": x}, rng))) < set(metrics)
        assert all(v.shape == (3,) and v.dtype == jnp.float32 for v in metrics.values())
        assert run(lambda apply: objective.generate(apply, rng, 5)).shape == (5, *shape[1:])
        assert run(lambda apply: objective.reconstruct(apply, x, rng)).shape == shape
    else:
      assert run(lambda apply: apply(x, method="encode")).shape == (3, 3)
      for likelihood in ("bernoulli", "gaussian"):
        objective = ae.Reconstruction(likelihood=likelihood, noise_std=0.1)
        for fn in (objective, objective.evaluate):
          metrics = run(lambda apply: fn(apply, {"x": x}, rng))
          assert metrics and all(v.shape == (3,) and v.dtype == jnp.float32 for v in metrics.values())
        assert run(lambda apply: objective.reconstruct(apply, x, rng)).shape == shape


def test_data_shape_is_inferred_for_init_and_required_to_decode():
  x = jnp.zeros((2, 8, 8, 1))
  for cls in (ae.Autoencoder, ae.VAE):
    model = cls(hidden=(4,), latent_dim=2)
    variables = _init(model, x)  # infers the shape from x
    assert model.apply(variables, x).shape == x.shape
    with pytest.raises(ValueError, match="data_shape must be set"):
      model.apply(variables, jnp.zeros((2, 2)), method="decode")
    with pytest.raises(ValueError, match="data_shape is"):
      _init(cls(hidden=(4,), latent_dim=2, data_shape=(64,)), x)


def test_hyperparameter_validation():
  with pytest.raises(ValueError, match="VAE.activation"):
    ae.VAE(activation="nope")
  with pytest.raises(ValueError, match="Autoencoder.latent_dim"):
    ae.Autoencoder(latent_dim=0)
  with pytest.raises(ValueError, match="VAE.hidden"):
    ae.VAE(hidden=(8, 0))
  with pytest.raises(ValueError, match="ELBO.likelihood"):
    ae.ELBO(likelihood="poisson")
  with pytest.raises(ValueError, match="Reconstruction.likelihood"):
    ae.Reconstruction(likelihood="laplace")
  with pytest.raises(ValueError, match="Reconstruction.noise_std"):
    ae.Reconstruction(noise_std=-1.0)
  with pytest.raises(ValueError, match="ELBO.iwae_samples"):
    ae.ELBO(iwae_samples=0)


def test_reparameterization_gradient_is_unbiased():
  # f(z) = sum(a z^2 + b z), z ~ N(m, exp(v)): E f = sum(a (m^2 + exp(v)) + b m).
  a, b = jnp.array([0.5, -1.0, 2.0]), jnp.array([1.0, 0.3, -0.7])
  m, v = jnp.array([0.2, -1.0, 0.5]), jnp.array([0.0, -0.5, 0.7])
  f = lambda m, v, eps: jnp.sum(a * ae.reparameterize(m, v, eps)**2 + b * ae.reparameterize(m, v, eps))
  eps = jax.random.normal(jax.random.key(0), (20000, 3))
  gm, gv = jax.vmap(jax.grad(f, argnums=(0, 1)), in_axes=(None, None, 0))(m, v, eps)
  exact_m, exact_v = 2 * a * m + b, a * jnp.exp(v)
  for g, exact in ((gm, exact_m), (gv, exact_v)):
    se = np.std(g, axis=0) / np.sqrt(len(g))
    assert np.all(np.abs(np.mean(g, axis=0) - exact) < 4 * se + 1e-6), (np.mean(g, axis=0), exact, se)
  # And a sample has the right moments.
  z = ae.reparameterize(m, v, eps)
  np.testing.assert_allclose(np.mean(z, 0), m, atol=0.05)
  np.testing.assert_allclose(np.var(z, 0), np.exp(v), rtol=0.05)


def test_kl_matches_closed_form_and_monte_carlo():
  mean = np.array([[0.3, -1.2, 0.0], [2.0, 0.1, -0.4]])
  log_variance = np.array([[0.5, -0.3, 0.0], [-1.0, 1.2, 0.2]])
  kl = np.asarray(ae.gaussian_kl(jnp.asarray(mean), jnp.asarray(log_variance)))
  for i in range(2):  # the general multivariate formula, with explicit matrices
    cov = np.diag(np.exp(log_variance[i]))
    expected = 0.5 * (np.trace(cov) + mean[i] @ mean[i] - 3 - np.log(np.linalg.det(cov)))
    np.testing.assert_allclose(kl[i], expected, rtol=1e-5)
    z = stats.multivariate_normal(mean[i], cov).rvs(200_000, random_state=i)
    mc = stats.multivariate_normal(mean[i], cov).logpdf(z) - stats.multivariate_normal(np.zeros(3)).logpdf(z)
    assert abs(np.mean(mc) - kl[i]) < 4 * np.std(mc) / np.sqrt(len(mc))
  np.testing.assert_allclose(ae.gaussian_kl(jnp.zeros((1, 4)), jnp.zeros((1, 4))), [0.0], atol=1e-7)


def test_log_likelihoods_against_scipy():
  rng = np.random.default_rng(0)
  x = rng.uniform(size=(2, 3, 2)).astype(np.float32)
  out = rng.normal(size=(2, 3, 2)).astype(np.float32)
  log_std = rng.normal(size=(3, 2)).astype(np.float32)
  expected = stats.norm(out, np.exp(log_std)).logpdf(x).reshape(2, -1).sum(-1)
  np.testing.assert_allclose(ae.log_likelihood("gaussian", jnp.asarray(out), jnp.asarray(x), jnp.asarray(log_std)),
                             expected, rtol=1e-5)
  binary = (x > 0.5).astype(np.float32)
  p = 1 / (1 + np.exp(-out.astype(np.float64)))
  expected = stats.bernoulli(p).logpmf(binary).reshape(2, -1).sum(-1)
  np.testing.assert_allclose(ae.log_likelihood("bernoulli", jnp.asarray(out), jnp.asarray(binary)), expected, rtol=1e-5)


def test_elbo_terms_are_consistent():
  x = jax.random.uniform(jax.random.key(0), (4, 6))
  model = ae.VAE(hidden=(8,), latent_dim=2, data_shape=(6,))
  variables = _init(model, x)
  apply = _bind(model, variables)
  mean, log_variance = model.apply(variables, x, method="encode")
  for likelihood in ("bernoulli", "gaussian"):
    m = jax.jit(lambda r, o=ae.ELBO(likelihood=likelihood): o(apply, {"x": x}, r))(jax.random.key(3))
    np.testing.assert_allclose(m["kl"], ae.gaussian_kl(mean, log_variance), rtol=1e-6)
    np.testing.assert_allclose(m["elbo"], -m["reconstruction"] - m["kl"], rtol=1e-6)
    np.testing.assert_allclose(m["loss"], -m["elbo"])
    np.testing.assert_allclose(m["bits_per_dim"], -m["elbo"] / (6 * math.log(2)), rtol=1e-6)


def test_iwae_bound_k1_matches_elbo_and_grows_with_k():
  x = jax.random.uniform(jax.random.key(0), (4, 6))
  model = ae.VAE(hidden=(8,), latent_dim=2, data_shape=(6,))
  apply = _bind(model, _init(model, x))

  def bounds(rng):
    return [ae.ELBO(likelihood="gaussian", iwae_samples=k).evaluate(apply, {"x": x}, r)
            for k, r in zip((1, 4, 64), jax.random.split(rng, 3))]

  one, four, many = _over_rngs(bounds, 400)
  se = lambda a: np.std(a, axis=0) / np.sqrt(a.shape[0])
  # k = 1: log p(x, z) - log q(z|x) with one z is an unbiased estimate of the ELBO.
  diff = one["iwae_bound"] - one["elbo"]
  assert np.all(np.abs(np.mean(diff, 0)) < 4 * se(diff)), (np.mean(diff, 0), se(diff))
  # The bound is at least the ELBO and grows with k, beyond the Monte-Carlo noise.
  for low, high in ((one["elbo"], four["iwae_bound"]), (four["iwae_bound"], many["iwae_bound"])):
    gain = np.mean(high, 0) - np.mean(low, 0)
    assert np.all(gain > 3 * np.sqrt(se(high)**2 + se(low)**2)), gain
  np.testing.assert_allclose(many["iwae_nll"], -many["iwae_bound"])


def _linear_gaussian(perturb: float):
  """A linear-Gaussian VAE (probabilistic PCA) set by hand, its data and their exact log p(x).

  x = W z + b + s * noise with W's columns orthogonal, so the true posterior is diagonal: the
  encoder is exact when `perturb` is 0; otherwise its means are `perturb` posterior standard
  deviations off and its variances exp(perturb) times too large.
  """
  rng = np.random.default_rng(1)
  q, _ = np.linalg.qr(rng.normal(size=(3, 2)))
  w, b, s = q * np.array([1.5, 0.7]), np.array([0.2, -0.5, 1.0]), 0.4
  posterior_var = 1.0 / (1.0 + np.sum(w**2, axis=0) / s**2)
  kernel = w * posterior_var / s**2  # posterior mean = (x - b) @ kernel
  params = {
      "mean": {"kernel": kernel, "bias": -b @ kernel + perturb * np.sqrt(posterior_var)},
      "log_variance": {"kernel": np.zeros((3, 2)), "bias": np.log(posterior_var) + perturb},
      "decoder": {"output": {"kernel": w.T, "bias": b}},
      "decoder_scale": {"log_std": np.full(3, np.log(s))},
  }
  params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
  x = rng.normal(size=(5, 3)) * 1.5
  log_px = stats.multivariate_normal(b, w @ w.T + s**2 * np.eye(3)).logpdf(x)
  model = ae.VAE(hidden=(), latent_dim=2, data_shape=(3,))
  init = _init(model, jnp.asarray(x, jnp.float32))
  assert jax.tree.structure(init["params"]) == jax.tree.structure(params)
  return _bind(model, {"params": params}), jnp.asarray(x, jnp.float32), log_px, posterior_var


def test_iwae_and_elbo_recover_the_exact_linear_gaussian_likelihood():
  apply, x, log_px, _ = _linear_gaussian(perturb=0.0)
  # With the exact posterior every importance weight equals p(x): the bound is exact for any k.
  m = ae.ELBO(likelihood="gaussian", iwae_samples=3).evaluate(apply, {"x": x}, jax.random.key(0))
  np.testing.assert_allclose(m["iwae_bound"], log_px, atol=2e-4)
  # ... and the ELBO is log p(x) in expectation.
  elbo = _over_rngs(lambda r: ae.ELBO(likelihood="gaussian")(apply, {"x": x}, r), 2000)["elbo"]
  se = np.std(elbo, 0) / np.sqrt(len(elbo))
  assert np.all(np.abs(np.mean(elbo, 0) - log_px) < 4 * se + 1e-4)


def test_iwae_approaches_log_likelihood_with_an_inexact_encoder():
  perturb = 0.7
  apply, x, log_px, _ = _linear_gaussian(perturb)
  # The ELBO falls short of log p(x) by KL(q(z|x) || p(z|x)), in closed form for these Gaussians.
  gap = 2 * 0.5 * (math.exp(perturb) + perturb**2 - 1 - perturb)
  assert gap > 0.5
  elbo = _over_rngs(lambda r: ae.ELBO(likelihood="gaussian")(apply, {"x": x}, r), 2000)["elbo"]
  se = np.std(elbo, 0) / np.sqrt(len(elbo))
  assert np.all(np.abs(np.mean(elbo, 0) - (log_px - gap)) < 4 * se), (np.mean(elbo, 0) - log_px, gap)
  m = ae.ELBO(likelihood="gaussian", iwae_samples=4000).evaluate(apply, {"x": x}, jax.random.key(0))
  np.testing.assert_allclose(m["iwae_bound"], log_px, atol=0.05)  # vs a gap of 0.80 nats for the ELBO


def test_iwae_matches_quadrature_for_a_bernoulli_decoder():
  # latent_dim 1: log p(x) = log integral of p(x|z) N(z; 0, 1) dz, by the trapezoid rule.
  w, c = np.array([[2.0, -1.5, 0.5, 1.0]]), np.array([0.3, -0.2, 0.0, -1.0])
  params = {
      "mean": {"kernel": np.full((4, 1), 0.3), "bias": np.array([-0.2])},
      "log_variance": {"kernel": np.zeros((4, 1)), "bias": np.array([math.log(2.0)])},
      "decoder": {"output": {"kernel": w, "bias": c}},
      "decoder_scale": {"log_std": np.zeros(4)},
  }
  params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
  model = ae.VAE(hidden=(), latent_dim=1, data_shape=(4,))
  x = np.array([[1, 0, 1, 1], [0, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]], np.float32)
  assert jax.tree.structure(_init(model, jnp.asarray(x))["params"]) == jax.tree.structure(params)
  z = np.linspace(-12, 12, 48001)
  logits = z[:, None] * w + c  # [grid, 4]
  log_px = []
  for xi in x:
    log_joint = np.sum(xi * logits - np.logaddexp(0, logits), axis=1) + stats.norm.logpdf(z)
    log_px.append(np.log(np.trapezoid(np.exp(log_joint), z)))
  m = ae.ELBO(likelihood="bernoulli", iwae_samples=4000).evaluate(_bind(model, {"params": params}), {"x": x},
                                                                  jax.random.key(0))
  np.testing.assert_allclose(m["iwae_bound"], log_px, atol=0.02)


def test_denoising_noise_only_in_training():
  x = jax.random.uniform(jax.random.key(0), (4, 40))
  model = ae.Autoencoder(hidden=(16,), latent_dim=4)
  variables = _init(model, x)
  apply = _bind(model, variables, train=True)
  clean_mse = np.mean((np.asarray(model.apply(variables, x)) - np.asarray(x))**2, axis=-1)
  objective = ae.Reconstruction(noise_std=0.5)
  evaluated = objective.evaluate(apply, {"x": x}, jax.random.key(1))
  np.testing.assert_allclose(evaluated["loss"], clean_mse, rtol=1e-5)
  np.testing.assert_allclose(evaluated["mse"], clean_mse, rtol=1e-5)
  trained = objective(apply, {"x": x}, jax.random.key(1))
  noise = jax.random.normal(jax.random.split(jax.random.key(1))[1], x.shape)
  noisy_mse = np.mean((np.asarray(model.apply(variables, x + 0.5 * noise)) - np.asarray(x))**2, axis=-1)
  np.testing.assert_allclose(trained["loss"], noisy_mse, rtol=1e-5)
  np.testing.assert_allclose(evaluated["denoising_loss"], noisy_mse, rtol=1e-5)
  assert not np.allclose(trained["loss"], clean_mse)
  assert not np.allclose(trained["loss"], objective(apply, {"x": x}, jax.random.key(2))["loss"])
  plain = ae.Reconstruction()
  np.testing.assert_allclose(plain(apply, {"x": x}, jax.random.key(1))["loss"], clean_mse, rtol=1e-5)
  assert "denoising_loss" not in plain.evaluate(apply, {"x": x}, jax.random.key(1))


def test_dynamic_binarization():
  x = jnp.concatenate([jnp.zeros((1, 2000)), jnp.full((1, 2000), 0.3), jnp.ones((1, 2000))])
  b = np.asarray(ae.dynamic_binarize(x, jax.random.key(0)))
  assert set(np.unique(b)) == {0.0, 1.0}
  assert np.all(b[0] == 0) and np.all(b[2] == 1)
  assert abs(b[1].mean() - 0.3) < 4 * math.sqrt(0.3 * 0.7 / 2000)


def test_objectives_binarize_their_data():
  x = jnp.full((4, 6), 0.5)
  model = ae.VAE(hidden=(8,), latent_dim=2, data_shape=(6,))
  variables = _init(model, x)
  apply = _bind(model, variables)
  rng = jax.random.key(5)
  # ELBO: evaluation scores the binarised data (first of three keys), like training.
  binary = ae.dynamic_binarize(x, jax.random.split(rng, 3)[0])
  got = ae.ELBO(binarize=True, iwae_samples=5).evaluate(apply, {"x": x}, rng)
  want = ae.ELBO(binarize=False, iwae_samples=5).evaluate(apply, {"x": binary}, rng)
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-6)
  other = ae.ELBO(binarize=True, iwae_samples=5).evaluate(apply, {"x": x}, jax.random.key(6))
  assert not np.allclose(got["reconstruction"], other["reconstruction"])
  # Data already in {0, 1} are left alone.
  ones = (jax.random.uniform(jax.random.key(1), (4, 6)) > 0.5).astype(jnp.float32)
  a, b = ae.ELBO(binarize=True)(apply, {"x": ones}, rng), ae.ELBO()(apply, {"x": ones}, rng)
  np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-6)
  # Reconstruction: Bernoulli cross-entropy of the logits against a binarisation (first of two keys).
  model = ae.Autoencoder(hidden=(8,), latent_dim=2)
  variables = _init(model, x)
  got = ae.Reconstruction(likelihood="bernoulli", binarize=True)(_bind(model, variables), {"x": x}, rng)
  binary = ae.dynamic_binarize(x, jax.random.split(rng)[0])
  logits = model.apply(variables, binary)
  np.testing.assert_allclose(got["bce"], np.sum(optax.sigmoid_binary_cross_entropy(logits, binary), -1), rtol=1e-6)
  np.testing.assert_allclose(got["loss"], got["bce"])


def test_generate_and_reconstruct_in_data_space():
  x = jax.random.uniform(jax.random.key(0), (3, 8, 8, 1))
  model = ae.VAE(hidden=(8,), latent_dim=2, data_shape=(8, 8, 1))
  variables = _init(model, x)
  apply = _bind(model, variables)
  samples = ae.ELBO().generate(apply, jax.random.key(1), 6)
  z = jax.random.normal(jax.random.key(1), (6, 2))
  np.testing.assert_allclose(samples, jax.nn.sigmoid(model.apply(variables, z, method="decode")), rtol=1e-6)
  assert samples.shape == (6, 8, 8, 1) and np.all((samples >= 0) & (samples <= 1))
  means = ae.ELBO(likelihood="gaussian").generate(apply, jax.random.key(1), 6)
  np.testing.assert_allclose(means, model.apply(variables, z, method="decode"), rtol=1e-6)
  recon = ae.ELBO().reconstruct(apply, x, jax.random.key(1))
  np.testing.assert_allclose(recon, jax.nn.sigmoid(model.apply(variables, x)), rtol=1e-6)
  auto = ae.Autoencoder(hidden=(8,), latent_dim=2)
  auto_vars = _init(auto, x)
  np.testing.assert_allclose(ae.Reconstruction(likelihood="bernoulli").reconstruct(_bind(auto, auto_vars), x, None),
                             jax.nn.sigmoid(auto.apply(auto_vars, x)), rtol=1e-6)


def test_vae_trains():
  x = (jax.random.uniform(jax.random.key(0), (16, 20)) > 0.5).astype(jnp.float32)
  model = ae.VAE(hidden=(32,), latent_dim=4, data_shape=(20,))
  params = _init(model, x)["params"]
  objective = ae.ELBO()
  optimizer = optax.adam(1e-2)

  @jax.jit
  def step(params, opt_state, rng):
    loss_fn = lambda p: jnp.mean(objective(Apply(model, p, {}, rng, train=True), {"x": x}, rng)["loss"])
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, loss

  opt_state = optimizer.init(params)
  losses = []
  for i in range(150):
    params, opt_state, loss = step(params, opt_state, jax.random.key(i))
    losses.append(float(loss))
  assert np.mean(losses[-20:]) < np.mean(losses[:5]) - 2.0


def test_iwae_chunking_does_not_change_the_bound(monkeypatch):
  x = jax.random.uniform(jax.random.key(0), (3, 6))
  model = ae.VAE(hidden=(8,), latent_dim=2, data_shape=(6,))
  apply = _bind(model, _init(model, x))
  objective = ae.ELBO(iwae_samples=7)
  bound = lambda: jax.jit(lambda r: objective.evaluate(apply, {"x": x}, r)["iwae_bound"])(jax.random.key(1))
  whole = bound()
  monkeypatch.setattr(ae, "_IWAE_CHUNK_FLOATS", 3 * 8 * 2)  # chunks of 2 samples: 2, 2, 2, then 1
  chunked = bound()
  np.testing.assert_allclose(chunked, whole, rtol=1e-6)
