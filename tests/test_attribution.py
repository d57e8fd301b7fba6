"""nets.attribution: each method against what it must equal, on models small enough to check."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nets
from nets import attribution as attr


def _linear():
  w = jnp.asarray(np.random.default_rng(0).normal(size=(12, 3)), jnp.float32)
  return (lambda x: x @ w), w


def _cnn(**kw):
  model = nets.create("cnn", features=(6, 6), kernel_size=(3, 3), strides=(1, 2), padding="same",
                      activation=kw.pop("activation", "gelu"), num_outputs=4, **kw)
  x = jnp.asarray(np.random.default_rng(1).normal(size=(5, 16)), jnp.float32)
  params = model.init(jax.random.key(0), x)["params"]
  return model, params, (lambda z: model.apply({"params": params}, z)), x


def test_integrated_gradients_of_a_linear_model_is_exact_for_every_rule():
  fn, w = _linear()
  x = jnp.asarray(np.random.default_rng(2).normal(size=(4, 12)), jnp.float32)
  baseline = jnp.linspace(-1, 1, 12)
  target = jnp.array([0, 1, 2, 1])
  for method in attr.RULES:
    a, gap = attr.integrated_gradients(fn, x, target, baseline=baseline, steps=3, method=method)
    np.testing.assert_allclose(a, (x - baseline) * w[:, target].T, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gap, 0, atol=1e-5)


def test_completeness_of_a_small_cnn_and_the_gap_shrinks_with_steps():
  _, _, fn, x = _cnn()
  gaps = {}
  for steps in (2, 64):
    a, gap = jax.jit(lambda z, s=steps: attr.integrated_gradients(fn, z, 1, steps=s))(x)
    out = fn(x)[:, 1] - fn(jnp.zeros_like(x))[:, 1]
    np.testing.assert_allclose(a.reshape(5, -1).sum(1) - out, gap, atol=1e-5)
    gaps[steps] = np.abs(gap / out)
  assert np.all(gaps[64] < 1e-3) and gaps[64].max() < gaps[2].max()


def test_gradient_equals_jax_grad_by_hand_and_x_input():
  _, _, fn, x = _cnn()
  target = jnp.array([0, 1, 2, 3, 0])
  g = attr.gradient(fn, x, target)
  by_hand = jax.jit(jax.grad(lambda xi, t: fn(xi[None])[0, t]))
  for i in range(len(x)):
    np.testing.assert_allclose(g[i], by_hand(x[i], target[i]), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(attr.gradient_x_input(fn, x, target), x * g, rtol=1e-6)


def test_smoothgrad_without_noise_is_the_gradient_and_noise_changes_it():
  _, _, fn, x = _cnn(activation="relu")
  key = jax.random.key(3)
  np.testing.assert_allclose(attr.smoothgrad(fn, x, 2, key, samples=4, noise=0.0), attr.gradient(fn, x, 2),
                             rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(attr.smoothgrad(fn, x, 2, key, samples=4, noise=0.0, squared=True),
                             attr.gradient(fn, x, 2)**2, rtol=1e-5, atol=1e-8)
  assert not np.allclose(attr.smoothgrad(fn, x, 2, key, samples=4, noise=0.2), attr.gradient(fn, x, 2))


def test_batched_results_equal_per_example_results():
  _, _, fn, x = _cnn()
  target = jnp.array([3, 1, 0, 2, 1])
  key = jax.random.key(0)
  ig = jax.jit(lambda z, t, b=None: attr.integrated_gradients(fn, z, t, steps=8, batch_size=b), static_argnums=2)
  a, gap = ig(x, target)
  chunked, _ = ig(x, target, 2)
  smooth = jax.jit(lambda z, t, b=None: attr.smoothgrad(fn, z, t, key, samples=5, batch_size=b), static_argnums=2)
  sg = smooth(x, target)
  for i in range(len(x)):
    one, one_gap = ig(x[i:i + 1], target[i:i + 1])
    np.testing.assert_allclose(one[0], a[i], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(one_gap[0], gap[i], atol=1e-6)
  np.testing.assert_allclose(chunked, a, rtol=1e-5, atol=1e-7)
  # SmoothGrad's noise for example i is keyed by i: the batch gives the same as the loop over it
  np.testing.assert_allclose(smooth(x, target, 2), sg, rtol=1e-5, atol=1e-7)


def test_a_distribution_of_baselines_averages_and_keeps_completeness():
  fn, w = _linear()
  x = jnp.ones((2, 12))
  baselines = jnp.stack([jnp.zeros(12), jnp.full(12, 0.5), -jnp.ones(12)])
  a, gap = attr.integrated_gradients(fn, x, 0, baselines=baselines, steps=2)
  np.testing.assert_allclose(a, (x - baselines.mean(0)) * w[:, 0], rtol=1e-5)
  np.testing.assert_allclose(gap, 0, atol=1e-5)


def test_occlusion_of_a_model_that_reads_one_position():
  fn = lambda x: jnp.stack([3.0 * x[:, 7], -x[:, 7]], axis=1)
  x = jnp.arange(1.0, 21.0)[None].repeat(2, 0)
  a = attr.occlusion(fn, x, jnp.array([0, 1]), window=(1,))
  expected = np.zeros((2, 20))
  expected[0, 7], expected[1, 7] = 3 * 8.0, -8.0
  np.testing.assert_allclose(a, expected)
  wide = attr.occlusion(fn, x, 0, window=(3,), stride=(1,))
  assert np.all(wide[:, [6, 7, 8]] > 0) and np.all(wide[:, :5] == 0) and np.all(wide[:, 10:] == 0)
  # images with channels, and tokens replaced by a token id
  img = jnp.zeros((1, 6, 6, 2)).at[0, 2, 3, :].set(1.0)
  a = attr.occlusion(lambda z: z[:, 2, 3].sum(-1, keepdims=True), img, 0, window=(1, 1))
  assert a.shape == img.shape and float(a[0, 2, 3, 0]) == 2.0 and float(jnp.abs(a).sum()) == 4.0
  tokens = jnp.array([[5, 6, 7, 8]])
  a = attr.occlusion(lambda t: (t == 7).sum(1, keepdims=True).astype(jnp.float32), tokens, 0, window=(1,), value=0)
  np.testing.assert_allclose(a, [[0, 0, 1, 0]])


def test_grad_cam_has_the_layer_shape_and_finds_a_planted_feature():
  model = nets.create("cnn", features=(3,), kernel_size=(3,), strides=(1,), padding="same", num_outputs=2)
  x = jnp.zeros((2, 32)).at[0, 9].set(2.0).at[1, 23].set(2.0)
  params = model.init(jax.random.key(0), x)["params"]
  params = jax.tree_util.tree_map(jnp.zeros_like, params)
  params["Conv_0"]["kernel"] = params["Conv_0"]["kernel"].at[:, 0, 0].set(jnp.array([0.5, 1.0, 0.5]))  # a bump detector
  params["Dense_0"]["kernel"] = params["Dense_0"]["kernel"].at[:, 1].set(1.0)
  fn = lambda z: model.apply({"params": params}, z)
  assert [l.path for l in attr.spatial_layers(fn, x)] == ["Conv_0"]
  cam = attr.grad_cam(fn, x, 1, "Conv_0")
  assert cam.shape == (2, 32)
  assert list(np.argmax(cam, axis=1)) == [9, 23]
  assert attr.upsample(cam[:, ::2], (32,)).shape == (2, 32)


def test_layers_and_layer_errors():
  _, _, fn, x = _cnn()
  found = attr.layers(fn, x)
  assert [l.path for l in found] == ["Conv_0", "Conv_1", "Dropout_0", "Dense_0"]
  assert found[1].shape == (8, 6) and found[1].kind == "Conv"
  with pytest.raises(ValueError, match="no layer 'Conv_9'; the model's layers: Conv_0 .16, 6., Conv_1"):
    attr.grad_cam(fn, x, 0, "Conv_9")
  with pytest.raises(ValueError, match="Grad-CAM needs a layer with spatial axes"):
    attr.grad_cam(fn, x, 0, "Dense_0")


def _gpt(**kw):
  model = nets.create("gpt", vocab_size=11, max_len=8, num_layers=2, num_heads=2, embed_dim=8, **kw)
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 11, (3, 8)))
  return model, model.init(jax.random.key(1), tokens), tokens


def test_attention_maps_are_distributions_that_respect_the_causal_mask():
  model, variables, tokens = _gpt()
  maps = attr.attention_maps(model, variables, tokens)
  assert list(maps) == ["block0/attention", "block1/attention"]
  for m in maps.values():
    assert m.shape == (3, 2, 8, 8)
    np.testing.assert_allclose(m.sum(-1), 1, rtol=1e-5)
    assert float(jnp.abs(jnp.triu(m, 1)).max()) == 0.0
  rolled = attr.attention_rollout(list(maps.values()))
  np.testing.assert_allclose(rolled.sum(-1), 1, rtol=1e-5)
  assert float(jnp.abs(jnp.triu(rolled, 1)).max()) == 0.0
  # a sparse pattern computed as a masked product reports its weights too, zero off the pattern
  sparse, v, _ = _gpt(attention="strided", sparse_block=2, sparse_impl="masked")
  m = attr.attention_maps(sparse, v, tokens)["block0/attention"]
  allowed = nets.sparse_attention.mask("strided", 8, block=2)
  assert float(jnp.abs(jnp.where(allowed, 0, m)).max()) == 0.0
  with pytest.raises(ValueError, match="CNN has no attention layers"):
    model, params, _, x = _cnn()
    attr.attention_maps(model, {"params": params}, x)


def test_token_attributions_from_the_embeddings_are_complete():
  model, variables, tokens = _gpt()
  fn = lambda t: model.apply(variables, t)[:, -1]  # the next-token logits after the whole prompt
  a, gap = jax.jit(lambda t: attr.layer_integrated_gradients(fn, t, 4, "embed/tokens", steps=128))(tokens)
  assert a.shape == tokens.shape
  np.testing.assert_allclose(gap, 0, atol=2e-3 * float(jnp.abs(a).sum(1).max()) + 1e-4)


def test_deletion_insertion_curves_start_and_end_where_they_must():
  _, _, fn, x = _cnn()
  target = jnp.argmax(fn(x), 1)
  a, _ = jax.jit(lambda z: attr.integrated_gradients(fn, z, target, steps=16))(x)
  curves = jax.jit(lambda z, s: attr.deletion_insertion(fn, z, target, a, steps=s), static_argnums=1)
  deletion, insertion = curves(x, 8)
  probs = lambda z: jax.nn.softmax(fn(z))[jnp.arange(5), target]
  assert deletion.shape == insertion.shape == (5, 9)
  np.testing.assert_allclose(deletion[:, 0], probs(x), rtol=1e-5)
  np.testing.assert_allclose(deletion[:, -1], probs(jnp.zeros_like(x)), rtol=1e-5)
  np.testing.assert_allclose(insertion[:, 0], probs(jnp.zeros_like(x)), rtol=1e-5)
  np.testing.assert_allclose(insertion[:, -1], probs(x), rtol=1e-5)
  # the first deleted position is the most attributed one
  first = np.argmax(np.asarray(a), axis=1)
  once = x.at[jnp.arange(5), first].set(0.0)
  deletion, _ = curves(x, 16)
  np.testing.assert_allclose(deletion[:, 1], probs(once), rtol=1e-5)


def test_spearman_and_cascading_randomisation():
  a = jnp.asarray(np.random.default_rng(0).normal(size=(3, 50)))
  ties = jnp.array([[0.0, 0, 0, 1, 2], [3.0, 1, 1, 0, 5]])
  np.testing.assert_allclose(attr.spearman(ties, jnp.array([[1.0, 2, 3, 4, 5], [5.0, 1, 3, 2, 4]])),
                             [0.8944272, 0.7181848], rtol=1e-5)  # scipy.stats.spearmanr, ties averaged
  assert np.isnan(attr.spearman(jnp.zeros((1, 5)), a[:1, :5]))[0]  # a constant map has no ranking
  np.testing.assert_allclose(attr.spearman(a, a), 1, rtol=1e-6)
  np.testing.assert_allclose(attr.spearman(a, -a), -1, rtol=1e-6)
  np.testing.assert_allclose(attr.spearman(a, 2 * a**3 + 1), 1, rtol=1e-6)
  params = {"Conv_0": 0, "Conv_1": 1, "Dense_0": 2}
  fresh = {"Conv_0": 10, "Conv_1": 11, "Dense_0": 12}
  steps = attr.randomized_top_down(params, fresh, ["Conv_0", "Conv_1", "Dense_0"])
  assert steps == [("Dense_0", {"Conv_0": 0, "Conv_1": 1, "Dense_0": 12}),
                   ("Conv_1", {"Conv_0": 0, "Conv_1": 11, "Dense_0": 12}),
                   ("Conv_0", {"Conv_0": 10, "Conv_1": 11, "Dense_0": 12})]
  # the model's call order, not the parameter tree's sorted keys ("Conv_10" < "Conv_2")
  model = nets.create("cnn", features=(2,) * 11, kernel_size=(1,) * 11, strides=(1,) * 11, num_outputs=2)
  x = jnp.zeros((1, 8))
  params = model.init(jax.random.key(0), x)["params"]
  order = attr.call_order(lambda z: model.apply({"params": params}, z), x, params)
  assert order == [f"Conv_{i}" for i in range(11)] + ["Dense_0"] and sorted(params) != order


def test_bad_arguments_are_one_clear_line():
  fn, _ = _linear()
  x = jnp.ones((2, 12))
  with pytest.raises(ValueError, match="integration method must be one of gausslegendre"):
    attr.integrated_gradients(fn, x, 0, method="simpson")
  with pytest.raises(ValueError, match="baseline must be a scalar, of one example's shape"):
    attr.integrated_gradients(fn, x, 0, baseline=jnp.zeros(5))
  with pytest.raises(ValueError, match="occlusion window .50,. must fit the input"):
    attr.occlusion(fn, x, 0, window=(50,))
  with pytest.raises(ValueError, match="must return scores .batch, classes."):
    attr.gradient(lambda z: z.sum(1), x, 0)
