"""GANs: model shapes, each player's gradient, penalties, packing, and a tiny training run."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nets import gan, registry
from nets.apply import Apply


def _key(seed):
  """Keys of the RBG generator: same semantics, far quicker to compile than threefry on the CPU."""
  return jax.random.key(seed, impl="rbg")


def _init(model, x):
  return _cached_init(model, tuple(x.shape[1:]))


@functools.lru_cache(maxsize=None)
def _cached_init(model, example_shape):
  """Initialisation is the slow part of these tests (a compilation per parameter shape): done once per model."""
  x = jnp.zeros((2, *example_shape), jnp.float32)
  return jax.jit(lambda rng: model.init({"params": rng, "dropout": rng}, x, train=False))(_key(0))


def _apply(model, variables, train=True, params=None, rng=1):
  state = {k: v for k, v in variables.items() if k != "params"}
  return Apply(model, variables["params"] if params is None else params, state, _key(rng), train=train)


def _points(n=8, seed=0):
  return jax.random.normal(_key(seed), (n, 2)) + jnp.array([1.0, -2.0])


def test_registered_with_real_field_types():
  assert registry.get("gan_mlp") is gan.GANMLP and registry.get("dcgan") is gan.DCGAN
  for name in ("gan_mlp", "dcgan"):
    for field in registry.hparams(name).values():
      assert isinstance(field.type, type) and field.type in (int, float, str, bool), (name, field)
  assert gan.Adversarial.param_groups == ("generator", "discriminator")
  assert "param_groups" not in {f.name for f in dataclasses.fields(gan.Adversarial)}


def test_gan_mlp_shapes():
  model = gan.GANMLP(latent_dim=3, hidden=16, depth=2)
  x = _points(6)
  variables = _init(model, x)
  assert set(variables) == {"params"} and set(variables["params"]) == {"generator", "discriminator"}
  assert variables["params"]["generator"]["Dense_0"]["kernel"].shape == (3, 16)
  assert model.apply(variables, x).shape == (6,)
  assert model.apply(variables, jnp.ones((5, 3)), method="generate").shape == (5, 2)
  assert model.apply(variables, x, method="discriminate").shape == (6,)


@pytest.mark.parametrize("image_size,num_classes", [(8, 0), (8, 3), (28, 10)])
def test_dcgan_shapes(image_size, num_classes):
  model = gan.DCGAN(image_size=image_size, latent_dim=4, features=4, num_classes=num_classes)
  x = jax.random.uniform(_key(0), (3, image_size, image_size, 1))
  variables = _init(model, x)
  assert set(variables["params"]) == {"generator", "discriminator"}
  assert set(variables["batch_stats"]) == {"generator"}  # batch norm in G only
  assert model.apply(variables, x).shape == (3,)
  z = jax.random.normal(_key(1), (3, 4))
  labels = {"y": jnp.array([0, 1, 2]) % num_classes} if num_classes else {}
  images = model.apply(variables, z, method="generate", **labels)
  assert images.shape == (3, image_size, image_size, 1)
  assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
  assert model.apply(variables, x, method="discriminate", **labels).shape == (3,)
  if num_classes:  # the labels reach both players
    other = {"y": (labels["y"] + 1) % num_classes}
    assert not np.allclose(model.apply(variables, z, method="generate", **other), images)
    assert not np.allclose(model.apply(variables, x, method="discriminate", **other),
                           model.apply(variables, x, method="discriminate", **labels))
    with pytest.raises(ValueError, match="need labels"):
      model.apply(variables, z, method="generate")


def test_dcgan_layouts():
  """(first side, upsamplings): 8 from 2x2, 16 from 2x2, 28 from 7x7, 32 from 4x4."""
  assert [gan._layout(s) for s in (8, 16, 28, 32, 64)] == [(2, 2), (2, 3), (7, 2), (4, 3), (8, 3)]


def _reference_losses(model, params, x, rng, gan_loss, gp_weight=10.0, r1_weight=0.0, pack=1):
  """Batch means of each player's loss, written directly from the papers' formulas."""
  z_rng, eps_rng = jax.random.split(rng)
  n = x.shape[0]
  z = jax.random.normal(z_rng, (n, model.latent_dim))
  fake = model.apply({"params": params}, z, method="generate")

  def disc(packed):
    return model.apply({"params": params}, packed, method="discriminate")

  real, fake = x.reshape(n // pack, -1), fake.reshape(n // pack, -1)  # consecutive rows side by side
  d_real, d_fake = disc(real), disc(fake)
  if gan_loss == "non_saturating":
    d_loss = -jnp.log(jax.nn.sigmoid(d_real)) - jnp.log(1 - jax.nn.sigmoid(d_fake))
    g_loss = -jnp.log(jax.nn.sigmoid(d_fake))
  elif gan_loss == "hinge":
    d_loss = jnp.maximum(0, 1 - d_real) + jnp.maximum(0, 1 + d_fake)
    g_loss = -d_fake
  else:
    eps = jax.random.uniform(eps_rng, (n // pack, 1))
    x_hat = eps * real + (1 - eps) * fake
    grads = jax.vmap(jax.grad(lambda v: disc(v[None])[0]))(x_hat)
    d_loss = d_fake - d_real + gp_weight * (jnp.linalg.norm(grads, axis=-1) - 1) ** 2
    g_loss = -d_fake
  if r1_weight:
    grads = jax.grad(lambda v: jnp.sum(disc(v)))(real)
    d_loss = d_loss + r1_weight / 2 * jnp.sum(grads**2, axis=-1)
  return jnp.mean(d_loss), jnp.mean(g_loss)


@pytest.mark.parametrize("gan_loss,r1_weight,pack", [("non_saturating", 0.0, 1), ("hinge", 0.0, 1),
                                                     ("wgan_gp", 0.0, 1), ("non_saturating", 3.0, 2),
                                                     ("wgan_gp", 1.0, 2)])
def test_each_player_gets_the_gradient_of_its_own_loss(gan_loss, r1_weight, pack):
  model = gan.GANMLP(latent_dim=3, hidden=8, depth=2, pack=pack)
  x = _points(8)
  variables = _init(model, x)
  rng = _key(7)
  objective = gan.Adversarial(loss=gan_loss, r1_weight=r1_weight, gp_weight=5.0, pack=pack)

  def loss(params):
    out = objective(_apply(model, variables, params=params), {"x": x, "y": jnp.zeros(8, jnp.int32)}, rng)
    assert all(v.shape == (8,) for v in out.values())
    return jnp.mean(out["loss"]), out

  grads, out = jax.jit(jax.grad(loss, has_aux=True))(variables["params"])
  d_ref, g_ref = jax.jit(lambda p: _reference_losses(model, p, x, rng, gan_loss, 5.0, r1_weight, pack))(
      variables["params"])
  np.testing.assert_allclose(jnp.mean(out["d_loss"]), d_ref, rtol=1e-5)
  np.testing.assert_allclose(jnp.mean(out["g_loss"]), g_ref, rtol=1e-5)
  ref_d = jax.jit(jax.grad(lambda p: _reference_losses(model, p, x, rng, gan_loss, 5.0, r1_weight, pack)[0]))
  ref_g = jax.jit(jax.grad(lambda p: _reference_losses(model, p, x, rng, gan_loss, 5.0, r1_weight, pack)[1]))
  full_d, full_g = ref_d(variables["params"]), ref_g(variables["params"])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               grads["discriminator"], full_d["discriminator"])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               grads["generator"], full_g["generator"])
  # The test can fail: d_loss does depend on the generator and g_loss on the discriminator.
  assert max(float(jnp.abs(v).max()) for v in jax.tree.leaves(full_d["generator"])) > 1e-4
  assert max(float(jnp.abs(v).max()) for v in jax.tree.leaves(full_g["discriminator"])) > 1e-4
  assert ("gradient_penalty" in out) == (gan_loss == "wgan_gp") and ("r1" in out) == bool(r1_weight)


@pytest.mark.parametrize("pack", [1, 2])
def test_penalties_of_a_linear_critic(pack):
  """D(x) = w.x + b has input gradient w: the penalty is (||w|| - 1)^2 and R1 is ||w||^2."""
  model = gan.GANMLP(latent_dim=2, hidden=4, depth=0, pack=pack)
  x = _points(4)
  variables = _init(model, x)
  w = jnp.array([0.3, 0.4, -1.2, 0.5][:2 * pack])[:, None]
  params = {**variables["params"], "discriminator": {"Dense_0": {"kernel": w, "bias": jnp.array([0.7])}}}
  objective = gan.Adversarial(loss="wgan_gp", gp_weight=2.0, r1_weight=3.0, pack=pack)
  out = jax.jit(lambda: objective(_apply(model, variables, params=params), {"x": x, "y": jnp.zeros(4, jnp.int32)},
                                  _key(0)))()
  norm = float(jnp.linalg.norm(w))
  np.testing.assert_allclose(out["gradient_penalty"], (norm - 1) ** 2, rtol=1e-5)
  np.testing.assert_allclose(out["r1"], norm**2, rtol=1e-5)
  np.testing.assert_allclose(out["d_loss"], out["d_fake"] - out["d_real"] + 2.0 * (norm - 1) ** 2 + 1.5 * norm**2,
                             rtol=1e-5)
  packed = x.reshape(4 // pack, -1)
  np.testing.assert_allclose(out["d_real"], jnp.repeat(packed @ w[:, 0] + 0.7, pack), rtol=1e-5)


def test_pack_samples():
  points = jnp.arange(12.0).reshape(6, 2)
  np.testing.assert_array_equal(gan.pack_samples(points, 2), [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]])
  images = jnp.arange(4 * 2 * 2 * 3.0).reshape(4, 2, 2, 3)
  packed = gan.pack_samples(images, 2)
  assert packed.shape == (2, 2, 2, 6)
  np.testing.assert_array_equal(packed[1], jnp.concatenate([images[2], images[3]], axis=-1))
  np.testing.assert_array_equal(gan.pack_samples(jnp.arange(6), 3), [[0, 1, 2], [3, 4, 5]])


def test_packed_discriminator_sees_pairs():
  model = gan.GANMLP(latent_dim=2, hidden=8, depth=1, pack=2)
  x = _points(6)
  variables = _init(model, x)
  assert variables["params"]["discriminator"]["Dense_0"]["kernel"].shape == (4, 8)
  objective = gan.Adversarial(pack=2)
  out = jax.jit(lambda: objective(_apply(model, variables), {"x": x, "y": jnp.zeros(6, jnp.int32)}, _key(0)))()
  pairs = jnp.concatenate([x[0::2], x[1::2]], axis=-1)
  expected = jax.jit(lambda v: model.apply(variables, v, method="discriminate"))(pairs)
  np.testing.assert_allclose(out["d_real"], jnp.repeat(expected, 2), rtol=1e-5)
  # Images: channels of the pack's members stacked; the conditional projection takes a pair of labels.
  model = gan.DCGAN(latent_dim=4, features=4, num_classes=3, pack=2)
  images = jax.random.uniform(_key(1), (4, 8, 8, 1))
  variables = _init(model, images)
  assert variables["params"]["discriminator"]["Conv_0"]["kernel"].shape == (4, 4, 2, 4)
  assert variables["params"]["discriminator"]["label_projection"]["embedding"].shape == (6, 2 * 2 * 8)
  labels = jnp.array([0, 1, 2, 0])
  out = jax.jit(lambda: objective(_apply(model, variables), {"x": images, "y": labels}, _key(0)))()
  assert all(v.shape == (4,) for v in out.values())
  pairs = jnp.concatenate([images[0::2], images[1::2]], axis=-1)
  discriminate = jax.jit(lambda v, y: model.apply(variables, v, y, method="discriminate"))
  expected = discriminate(pairs, jnp.stack([labels[0::2], labels[1::2]], axis=1))
  np.testing.assert_allclose(out["d_real"], jnp.repeat(expected, 2), rtol=1e-5)
  # The second member's label counts too.
  assert not np.allclose(discriminate(pairs, jnp.array([[0, 2], [2, 0]])), expected)


def test_bad_settings_raise():
  with pytest.raises(ValueError, match="Adversarial.loss"):
    gan.Adversarial(loss="least_squares")
  with pytest.raises(ValueError, match="Adversarial.pack"):
    gan.Adversarial(pack=0)
  with pytest.raises(ValueError, match="gp_weight"):
    gan.Adversarial(gp_weight=-1.0)
  with pytest.raises(ValueError, match="DCGAN.image_size"):
    gan.DCGAN(image_size=7)
  with pytest.raises(ValueError, match="GANMLP.activation"):
    gan.GANMLP(activation="nope")
  with pytest.raises(ValueError, match="GANMLP.depth"):
    gan.GANMLP(depth=-1)
  model = gan.GANMLP(latent_dim=2, hidden=4, depth=1, pack=2)
  variables = _init(model, _points(6))
  batch = {"x": _points(5), "y": jnp.zeros(5, jnp.int32)}
  with pytest.raises(ValueError, match="divisible by pack"):
    gan.Adversarial(pack=2)(_apply(model, variables), batch, _key(0))
  with pytest.raises(ValueError, match="must equal the model's pack"):
    gan.Adversarial(pack=1)(_apply(model, variables), {"x": _points(6), "y": jnp.zeros(6)}, _key(0))


def test_dcgan_batch_norm_state_and_eval():
  model = gan.DCGAN(latent_dim=4, features=4)
  images = jax.random.uniform(_key(1), (4, 8, 8, 1))
  variables = _init(model, images)
  batch = {"x": images, "y": jnp.zeros(4, jnp.int32)}
  objective = gan.Adversarial(loss="hinge", r1_weight=1.0)

  def run(variables):
    apply = _apply(model, variables)
    objective(apply, batch, _key(0))
    return apply.new_model_state

  updated = jax.jit(run)(variables)["batch_stats"]["generator"]
  # The generator's running statistics moved (the discriminator calls after it must not undo that).
  assert not np.allclose(updated["BatchNorm_0"]["mean"], variables["batch_stats"]["generator"]["BatchNorm_0"]["mean"])
  # Eval mode uses the running statistics: a sample does not depend on the rest of its batch.
  apply = _apply(model, variables, train=False)
  out = jax.jit(lambda: objective(apply, batch, _key(0)))()
  assert all(v.shape == (4,) and np.all(np.isfinite(v)) for v in out.values())
  z = jax.random.normal(_key(2), (4, 4))
  images = apply(z, method="generate")
  np.testing.assert_allclose(apply(z[:2], method="generate"), images[:2], rtol=1e-5, atol=1e-6)
  assert apply.new_model_state is apply.model_state


def test_generate():
  model = gan.DCGAN(latent_dim=4, features=4, num_classes=3)
  variables = _init(model, jnp.zeros((2, 8, 8, 1)))
  apply = _apply(model, variables, train=False)
  samples = gan.Adversarial().generate(apply, _key(5), 7)
  assert samples.shape == (7, 8, 8, 1)
  z = jax.random.normal(_key(5), (7, 4))
  expected = model.apply(variables, z, jnp.array([0, 1, 2, 0, 1, 2, 0]), method="generate")
  np.testing.assert_allclose(samples, expected, rtol=1e-6)
  model = gan.GANMLP(latent_dim=2, hidden=8, depth=1)
  variables = _init(model, _points(2))
  assert gan.Adversarial().generate(_apply(model, variables, train=False), _key(0), 5).shape == (5, 2)


def test_training_moves_the_samples_to_the_target():
  """400 steps on N((2, -1), 0.3^2 I), each player with its own Adam, from samples near the origin.

  Simultaneous descent-ascent circles around the equilibrium, so the samples' mean is averaged
  over the second half of training (every 10 steps).
  """
  model = gan.GANMLP(latent_dim=2, hidden=32, depth=2)
  objective = gan.Adversarial()
  target = jnp.array([2.0, -1.0])
  variables = _init(model, _points(2))
  adam = optax.adam(3e-3, b1=0.5)
  tx = optax.multi_transform({"generator": adam, "discriminator": adam}, lambda p: {k: k for k in p})
  params, opt_state = variables["params"], tx.init(variables["params"])

  @jax.jit
  def step(params, opt_state, rng):
    data_rng, model_rng, objective_rng = jax.random.split(rng, 3)
    x = target + 0.3 * jax.random.normal(data_rng, (128, 2))
    grads = jax.grad(lambda p: jnp.mean(objective(Apply(model, p, {}, model_rng, True), {"x": x, "y": x[:, 0]},
                                                  objective_rng)["loss"]))(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  @jax.jit
  def sample_mean(params):
    return jnp.mean(objective.generate(Apply(model, params, {}, _key(0), False), _key(1), 1000), 0)

  assert float(jnp.linalg.norm(sample_mean(params) - target)) > 1.5
  means = []
  for i in range(400):
    params, opt_state = step(params, opt_state, _key(i))
    if i >= 200 and i % 10 == 0:
      means.append(sample_mean(params))
  mean = jnp.mean(jnp.stack(means), axis=0)
  assert float(jnp.linalg.norm(mean - target)) < 0.2, mean
