"""nets.conv: its channels-last gradients against those of the same convolution written with
explicit zero padding (JAX's own gradient of a convolution padded wider than its kernel is
not a reference: on XLA's CPU it read outside its input)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from nets import conv

_CASES = [(nd, k, s, pad, n) for nd, k, s, pad, n in itertools.product(
    (1, 2), (2, 3, 5), (1, 2), ("SAME", "VALID", (2, 0), (0, 3)), (7, 8)) if nd == 1 or n == 7]


def _loss(x, w, f, strides, padding, dims):
  return (f(x, w, strides, padding, dimension_numbers=dims) ** 2).sum()


@pytest.mark.parametrize("nd,k,s,pad,n", _CASES)
def test_gradients_match_the_explicitly_padded_convolution(nd, k, s, pad, n):
  rng = np.random.default_rng(k * 100 + s * 10 + n)
  x = jnp.asarray(rng.normal(size=(3,) + (n,) * nd + (4,)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(k,) * nd + (4, 5)), jnp.float32)
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
