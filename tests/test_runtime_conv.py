"""experiments.runtime.conv: its gradients (1D: matrix products over windows; 2D: channels-last
convolutions) against those of the same convolution written with explicit zero padding
(JAX's own gradient of a convolution padded wider than its kernel is not a reference: on
XLA's CPU it read outside its input)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from experiments.runtime import conv

_CASES = [(nd, k, s, pad, n, c) for nd, k, s, pad, n, c in itertools.product(
    (1, 2), (2, 3, 5), (1, 2), ("SAME", "VALID", (2, 0), (0, 3)), (7, 8), (4, 1))
    if (nd == 1 or n == 7) and (c == 4 or nd == 1 and n == 8)]  # 1D: matrix products over windows


def _loss(x, w, f, strides, padding, dims):
  return (f(x, w, strides, padding, dimension_numbers=dims) ** 2).sum()


@pytest.mark.parametrize("nd,k,s,pad,n,c", _CASES)
def test_gradients_match_the_explicitly_padded_convolution(nd, k, s, pad, n, c):
  """1D: the matrix products over the input's windows; 2D: the channels-last convolutions."""
  rng = np.random.default_rng(k * 100 + s * 10 + n)
  x = jnp.asarray(rng.normal(size=(3,) + (n,) * nd + (c,)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(k,) * nd + (c, 5)), jnp.float32)
  dims = lax.conv_dimension_numbers(x.shape, w.shape, ("NHC", "HIO", "NHC") if nd == 1 else ("NHWC", "HWIO", "NHWC"))
  strides = (s,) * nd
  padding = pad if isinstance(pad, str) else (pad,) * nd
  pads = lax.padtype_to_pads(x.shape[1:-1], w.shape[:nd], strides, pad) if isinstance(pad, str) else padding

  def padded(x, w, *_, **__):
    return lax.conv_general_dilated(jnp.pad(x, ((0, 0), *pads, (0, 0))), w, strides, "VALID", dimension_numbers=dims)

  want = jax.grad(_loss, (0, 1))(x, w, padded, strides, padding, dims)
  got = jax.jit(jax.grad(_loss, (0, 1)), static_argnums=(2, 3, 4, 5))(x, w, conv.conv_general_dilated, strides,
                                                                       padding, dims)
  for g, r in zip(got, want):
    np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4 * float(jnp.abs(r).max()))
  np.testing.assert_allclose(conv.conv_general_dilated(x, w, strides, padding, dimension_numbers=dims),
                             padded(x, w), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("nd,c", [(1, 1), (1, 3), (2, 1)])
def test_dilated_kernels_match_lax(nd, c):
  rng = np.random.default_rng(c)
  x = jnp.asarray(rng.normal(size=(2, 11, 9)[:nd + 1] + (c,)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(3, 2)[:nd] + (c, 4)), jnp.float32)
  dims = ("NHC", "HIO", "NHC") if nd == 1 else ("NHWC", "HWIO", "NHWC")
  args = ((2, 1)[:nd], ((2, 1), (0, 3))[:nd])
  f = lambda conv_fn, x, w: conv_fn(x, w, *args, rhs_dilation=(3, 2)[:nd], dimension_numbers=dims)
  np.testing.assert_allclose(f(conv.conv_general_dilated, x, w), f(lax.conv_general_dilated, x, w), rtol=1e-5, atol=1e-5)
  got = jax.grad(lambda w: (f(conv.conv_general_dilated, x, w) ** 2).sum())(w)
  want = jax.grad(lambda w: (f(lax.conv_general_dilated, x, w) ** 2).sum())(w)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(jnp.abs(want).max()))


def test_an_input_shorter_than_the_kernel_gives_an_empty_output():
  x, w = jnp.ones((2, 2, 3)), jnp.ones((5, 3, 4))
  got = conv.conv_general_dilated(x, w, (1,), "VALID", dimension_numbers=("NHC", "HIO", "NHC"))
  assert got.shape == lax.conv_general_dilated(x, w, (1,), "VALID", dimension_numbers=("NHC", "HIO", "NHC")).shape
  assert got.shape == (2, 0, 4)
