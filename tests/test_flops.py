"""The matrix-product FLOPs counted from a traced program (`experiments.flops`)."""

import jax
import jax.extend.core as jex
import jax.numpy as jnp
import optax
import pytest

import nets
from experiments import flops as matmul_flops


def test_a_product_and_its_gradients():
  a, b = jnp.ones((3, 5, 7)), jnp.ones((3, 7, 4))
  product = lambda a, b: jnp.einsum("bik,bkj->bij", a, b)
  assert matmul_flops.of(product, a, b) == 2 * 3 * 5 * 7 * 4
  assert matmul_flops.of(jax.grad(lambda a, b: product(a, b).sum(), argnums=(0, 1)), a, b) == 3 * 2 * 3 * 5 * 7 * 4
  assert matmul_flops.of(lambda a: jnp.tanh(a).sum(), a) == 0  # elementwise work and reductions count nothing


@pytest.mark.parametrize("x,w,kwargs", [
    ((2, 9, 9, 3), (3, 3, 3, 8), dict(window_strides=(1, 1), padding="VALID")),
    ((2, 8, 8, 3), (3, 3, 3, 8), dict(window_strides=(2, 2), padding="SAME")),
    ((2, 8, 8, 3), (4, 4, 3, 8), dict(window_strides=(2, 2), padding=((1, 1), (1, 1)))),
    ((2, 16, 16, 3), (3, 3, 3, 8), dict(window_strides=(1, 1), padding="SAME", rhs_dilation=(2, 2))),
    ((2, 9, 9, 4), (3, 3, 2, 8), dict(window_strides=(1, 1), padding="VALID", feature_group_count=2)),
    ((2, 4, 4, 8), (4, 4, 8, 3), dict(window_strides=(1, 1), padding=((2, 2), (2, 2)), lhs_dilation=(2, 2))),
])
def test_convolutions_count_the_inputs_they_meet(x, w, kwargs):
  """A VALID convolution's count is exact; each of its gradients counts what it does, so a
  training step's convolutions count 3x their forward pass whatever the padding, stride,
  dilation (the holes a strided convolution's gradient inserts are not work) or groups."""
  conv = lambda x, w: jax.lax.conv_general_dilated(x, w, dimension_numbers=("NHWC", "HWIO", "NHWC"), **kwargs)
  x, w = jnp.ones(x), jnp.ones(w)
  forward = matmul_flops.of(conv, x, w)
  if kwargs["padding"] == "VALID":
    out = conv(x, w).shape
    assert forward == 2 * out[0] * out[1] * out[2] * out[3] * w.shape[0] * w.shape[1] * w.shape[2]
  assert matmul_flops.of(jax.grad(lambda x, w: conv(x, w).sum(), argnums=(0, 1)), x, w) == 3 * forward


def test_loops_branches_and_transforms():
  a = jnp.ones((4, 4))
  one = 2 * 4 * 4 * 4
  scanned = lambda a: jax.lax.scan(lambda c, _: (c @ a, None), a, None, length=5)[0]
  assert matmul_flops.of(scanned, a) == 5 * one
  branches = lambda a, i: jax.lax.cond(i > 0, lambda a: a @ a @ a, lambda a: a @ a, a)
  assert matmul_flops.of(branches, a, 1) == 2 * one  # the costlier branch
  assert matmul_flops.of(jax.jit(jax.checkpoint(lambda a: (a @ a).sum())), a) == one
  # rematerialised: the gradient recomputes the product (hardware FLOPs)
  assert matmul_flops.of(jax.grad(jax.checkpoint(lambda a: jnp.sin(a @ a).sum())), a) == 4 * one


def test_gpt_training_step_matches_nanogpts_estimate():
  """nanoGPT's MFU count, 6N + 12 L T d per token (N: the weights of every product, the tied
  embedding as the output layer), is exactly what the traced gradient computes."""
  vocab, layers, d, t, batch = 11, 2, 16, 8, 3
  model = nets.create("gpt", vocab_size=vocab, max_len=t, num_layers=layers, num_heads=2, embed_dim=d,
                      use_bias=False)
  tokens = jax.random.randint(jax.random.key(0), (batch, t), 0, vocab)
  params = model.init(jax.random.key(1), tokens)["params"]

  def loss(params):
    logits = model.apply({"params": params}, tokens)
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens).mean()

  n = 12 * layers * d * d + vocab * d
  assert matmul_flops.of(jax.grad(loss), params) == batch * t * (6 * n + 12 * layers * t * d)


def test_fused_attention_counts_its_products():
  """cuDNN's fused attention (which only a GPU can trace) counts 2 products forward and 4
  backward over the whole score matrix; here a stand-in primitive of the same name and layout."""
  fwd = jex.Primitive("dot_product_attention_fwd_wrapper")
  fwd.def_abstract_eval(lambda q, k, v, **params: q)
  q, k = jnp.ones((2, 16, 4, 8)), jnp.ones((2, 32, 4, 8))  # [batch, length, heads, head_dim]: BTNH
  assert matmul_flops.of(lambda q, k: fwd.bind(q, k, k, layout=0), q, k) == 2 * 2 * (2 * 16 * 4 * 8) * 32
  kt = jnp.ones((2, 4, 32, 8))  # BNTH
  assert matmul_flops.of(lambda q, k: fwd.bind(q, k, k, layout=1), jnp.ones((2, 4, 16, 8)), kt) == 2 * 2 * (2 * 16 * 4 * 8) * 32
