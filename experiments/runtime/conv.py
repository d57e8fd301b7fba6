"""Convolutions computed the way XLA's CPU backend runs fast, and the rule that puts them in
place of a model's convolutions (`experiments.runtime.rewrite`).

The rule takes channels-last convolutions without input dilation or feature groups (what
`nn.Conv` builds) and computes the same values:

- in 1D, the convolution and both its derivatives are matrix products over the input's
  windows (`_conv1d`): the forward pass multiplies the K windows, side by side, with the
  [K x Cin, Cout] kernel; the kernel gradient contracts the same windows with the output
  gradient; the input gradient multiplies the output gradient with the kernel and adds each
  window's part back where it came from;
- in 2D and more, its derivatives are written out as two more channels-last convolutions:
  the input gradient convolves the output gradient with the flipped kernel, the kernel
  gradient convolves the input (batch as channels) with the output gradient. JAX's own
  derivatives swap the roles of the batch and channel dimensions instead, which XLA's CPU
  backend turns back into fast convolutions only at the top level of a program: inside a
  loop (the training loop's `lax.scan` over steps) they run many times slower.

What it buys is measured in docs/benchmarks.md (the MNIST-1D paper CNN's step, the 8x8
digits CNN's). Anything else keeps `lax.conv_general_dilated`.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax


def _channels_last(ndim: int) -> lax.ConvDimensionNumbers:
  spatial = tuple(range(1, ndim - 1))
  return lax.ConvDimensionNumbers(lhs_spec=(0, ndim - 1) + spatial, rhs_spec=(ndim - 1, ndim - 2) + tuple(range(ndim - 2)),
                                  out_spec=(0, ndim - 1) + spatial)


def _conv(x, w, strides, padding, dilation, lhs_dilation=None):
  return lax.conv_general_dilated(x, w, strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=dilation,
                                  dimension_numbers=_channels_last(x.ndim))


def _windows(x, kernel: int, stride: int, padding, dilation: int, out: int):
  """[B, out, kernel x C]: the padded input's (x: [B, L, C]) windows of a 1D convolution,
  tap by tap, side by side in the features."""
  x = jnp.pad(x, ((0, 0), padding, (0, 0)))
  taps = [x[:, i * dilation:i * dilation + (out - 1) * stride + 1:stride] for i in range(kernel)]
  return jnp.concatenate(taps, axis=-1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv1d(x, w, stride: int, padding: tuple[int, int], dilation: int):
  """x [B, L, Cin] convolved with w [K, Cin, Cout] (channels last), as matrix products."""
  return _conv1d_forward(x, w, stride, padding, dilation)[0]


def _conv1d_forward(x, w, stride, padding, dilation):
  out = (x.shape[1] + sum(padding) - (w.shape[0] - 1) * dilation - 1) // stride + 1
  windows = _windows(x, w.shape[0], stride, padding, dilation, out)  # [B, out, K * Cin]
  windows = windows.reshape(-1, windows.shape[-1])  # [B * out, K * Cin]
  y = windows @ w.reshape(-1, w.shape[-1])
  return y.reshape(x.shape[0], out, w.shape[-1]), (x, w, windows)


def _conv1d_backward(stride, padding, dilation, residuals, g):
  x, w, windows = residuals
  batch, out, cout = g.shape
  g = g.reshape(batch * out, cout)
  # Kernel gradient: the forward pass's windows contracted with g over their B * out rows.
  dw = lax.dot_general(windows, g, (((0,), (0,)), ((), ()))).reshape(w.shape)
  # Input gradient: each window's gradient, g times the kernel, added back where it came from.
  d_windows = lax.dot_general(g, w.reshape(-1, cout), (((1,), (1,)), ((), ())))  # [B * out, K * Cin]
  _, to_input = jax.vjp(lambda x: _windows(x, w.shape[0], stride, padding, dilation, out), x)
  (dx,) = to_input(d_windows.reshape(batch, out, -1))
  return dx, dw


_conv1d.defvjp(_conv1d_forward, _conv1d_backward)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _channels_last_conv(x, w, strides, padding, dilation):
  return _conv(x, w, strides, padding, dilation)


def _forward(x, w, strides, padding, dilation):
  return _conv(x, w, strides, padding, dilation), (x, w)


def _backward(strides, padding, dilation, residuals, g):
  x, w = residuals
  nd = x.ndim - 2
  spatial = range(1, nd + 1)
  sizes, outs = x.shape[1:-1], g.shape[1:-1]
  reach = [(k - 1) * d + 1 for k, d in zip(w.shape[:nd], dilation)]  # the kernel's dilated extent
  # Input gradient: the output gradient, dilated by the strides, convolved with the flipped
  # kernel (in and out channels swapped).
  flipped = jnp.swapaxes(jnp.flip(w, axis=tuple(range(nd))), -1, -2)
  pads = [(r - 1 - lo, n + r - 2 - (m - 1) * s - (r - 1 - lo))
          for r, (lo, _), n, m, s in zip(reach, padding, sizes, outs, strides)]
  # A forward padding wider than the kernel's reach makes these negative, and XLA's CPU
  # convolution reads outside its input for negative padding (JAX's own gradient of such a
  # convolution returned garbage here): pad by zero there and crop the result instead.
  dx = _conv(g, flipped, (1,) * nd, [(max(lo, 0), max(hi, 0)) for lo, hi in pads], dilation, lhs_dilation=strides)
  dx = dx[(slice(None), *(slice(max(-lo, 0), max(-lo, 0) + n) for (lo, _), n in zip(pads, sizes)))]
  # Kernel gradient: the input with its channels as the batch and its batch as the channels,
  # convolved with the output gradient (batch as input channels), the forward's strides as
  # the kernel's dilation.
  x_t = jnp.transpose(x, (nd + 1, *spatial, 0))  # [Cin, *spatial, B]
  g_t = jnp.transpose(g, (*spatial, 0, nd + 1))  # [*out, B, Cout]
  pads = [(lo, (m - 1) * s + 1 - n + r - lo - 1) for r, (lo, _), n, m, s in zip(reach, padding, sizes, outs, strides)]
  dw = _conv(x_t, g_t, dilation, [(lo, max(hi, 0)) for lo, hi in pads], strides)  # as above: no negative padding
  dw = dw[(slice(None), *(slice(0, k) for k in w.shape[:nd]))]  # [Cin, *kernel, Cout]
  return dx, jnp.transpose(dw, (*spatial, 0, nd + 1))


_channels_last_conv.defvjp(_forward, _backward)


def _simple(lhs, rhs, lhs_dilation, dimension_numbers, feature_group_count, batch_group_count, precision,
            preferred_element_type) -> bool:
  """Whether the convolution is one this module computes: channels last, no input dilation,
  no feature or batch groups, default precision and result type."""
  dims = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  return (dims == _channels_last(lhs.ndim) and tuple(lhs_dilation or (1,) * (lhs.ndim - 2)) == (1,) * (lhs.ndim - 2)
          and feature_group_count == 1 and batch_group_count == 1 and preferred_element_type is None
          and precision is None)


def conv_general_dilated(lhs, rhs, window_strides: Sequence[int], padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count: int = 1, batch_group_count: int = 1,
                         precision=None, preferred_element_type=None):
  """`lax.conv_general_dilated`, computed as the module docstring says where it can."""
  nd = lhs.ndim - 2
  ones = (1,) * nd
  if not _simple(lhs, rhs, lhs_dilation, dimension_numbers, feature_group_count, batch_group_count, precision,
                 preferred_element_type):
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
                                    feature_group_count, batch_group_count, precision, preferred_element_type)
  dilation = tuple(rhs_dilation or ones)
  if isinstance(padding, str):
    reach = [(k - 1) * d + 1 for k, d in zip(rhs.shape[:nd], dilation)]
    padding = lax.padtype_to_pads(lhs.shape[1:-1], reach, window_strides, padding)
  padding = tuple(tuple(int(p) for p in pair) for pair in padding)
  if nd == 1 and min(padding[0]) >= 0:
    reach = (rhs.shape[0] - 1) * dilation[0] + 1
    if lhs.shape[1] + sum(padding[0]) >= reach:  # at least one output position
      return _conv1d(lhs, rhs, int(window_strides[0]), padding[0], dilation[0])
  return _channels_last_conv(lhs, rhs, tuple(window_strides), padding, dilation)


def rule(invals, params):
  """The rewrite rule of `conv_general_dilated` equations (experiments.runtime.rewrite)."""
  lhs, rhs = invals
  if not _simple(lhs, rhs, params["lhs_dilation"], params["dimension_numbers"], params["feature_group_count"],
                 params["batch_group_count"], params["precision"], params["preferred_element_type"]):
    return None
  return [conv_general_dilated(lhs, rhs, params["window_strides"], params["padding"], params["lhs_dilation"],
                               params["rhs_dilation"], params["dimension_numbers"], params["feature_group_count"],
                               params["batch_group_count"], params["precision"], params["preferred_element_type"])]
