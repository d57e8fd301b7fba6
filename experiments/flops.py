"""The matrix-product FLOPs of a program, counted from its jaxpr: the count MFU is made of.

XLA's cost analysis counts the operations XLA itself compiles. On a GPU the products go to
cuBLAS and cuDNN as library calls, which it leaves out: for nanoGPT's 6-layer GPU model on
an H200 it gave 322 GFLOP a step with autotuning and 40 without (Triton products are XLA's
own, cuBLAS ones are not), for a step of about 1,160 GFLOP of products. This count is the
same on every platform. It walks the traced program, forward and backward passes as traced
(so rematerialised products count twice: hardware FLOPs, not model FLOPs, under remat):
- `dot_general`: 2 x (the output's size) x (the contracted size);
- convolutions: 2 x the multiply-adds that meet an input element (padding and the holes
  that gradients of strided convolutions insert are not counted, so each gradient counts
  what the forward convolution does). The CPU's 1D convolutions
  (`experiments.runtime.conv`) are products over padded windows, and count as such, padding
  included (the MNIST-1D CNN's SAME-padded layers: a few percent more);
- cuDNN's fused attention: its two products forward (4 x |q| x keys), four backward
  (8 x |q| x keys), the whole score matrix counted even where a causal mask skips it
  (as PaLM's and nanoGPT's MFU count attention);
- inside jit, remat, custom_jvp/vjp, pmap and shard_map (times their devices), `scan` (times its length),
  `cond` (the costliest branch) and `while` (its body once: the trip count is not known).
Everything else (elementwise work, reductions, random bits) counts nothing.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.extend.core as core
import numpy as np

_ATTENTION_FWD = "dot_product_attention_fwd"  # cuDNN's fused attention (jax.nn.dot_product_attention)
_ATTENTION_BWD = "dot_product_attention_bwd"


def _size(shape) -> int:
  return math.prod(int(d) for d in shape)


def _dot(eqn) -> float:
  lhs = eqn.invars[0].aval
  (contract, _), _ = eqn.params["dimension_numbers"]
  return 2.0 * _size(eqn.outvars[0].aval.shape) * _size(lhs.shape[d] for d in contract)


def _conv(eqn) -> float:
  """Multiply-adds that meet an input element (not padding, nor a hole of lhs dilation, which
  gradients of strided convolutions insert): a gradient costs what its forward pass costs."""
  lhs, rhs, out = eqn.invars[0].aval, eqn.invars[1].aval, eqn.outvars[0].aval
  p, dn = eqn.params, eqn.params["dimension_numbers"]
  taps = 1  # (output position, kernel tap) pairs that read an input element, over the spatial dimensions
  for i, (stride, (low, _), lhs_dilation, rhs_dilation) in enumerate(
      zip(p["window_strides"], p["padding"], p["lhs_dilation"], p["rhs_dilation"])):
    n, width, positions = lhs.shape[dn.lhs_spec[2 + i]], rhs.shape[dn.rhs_spec[2 + i]], out.shape[dn.out_spec[2 + i]]
    at = np.arange(positions)[:, None] * stride + np.arange(width)[None, :] * rhs_dilation - low
    taps *= int(np.sum((at >= 0) & (at <= (n - 1) * lhs_dilation) & (at % lhs_dilation == 0)))
  features = out.shape[dn.out_spec[0]] * out.shape[dn.out_spec[1]] * rhs.shape[dn.rhs_spec[1]]
  return 2.0 * features * taps


def _attention(eqn, products: int) -> float:
  q, k = eqn.invars[0].aval, eqn.invars[1].aval
  layout = getattr(eqn.params.get("layout"), "value", eqn.params.get("layout"))
  keys = k.shape[2] if layout == 1 else k.shape[1]  # BNTH or BTNH
  return 2.0 * products * _size(q.shape) * keys


def _subjaxprs(value: Any) -> list[core.Jaxpr]:
  if isinstance(value, core.ClosedJaxpr):
    return [value.jaxpr]
  if isinstance(value, core.Jaxpr):
    return [value]
  if isinstance(value, (tuple, list)):
    return [j for v in value for j in _subjaxprs(v)]
  return []


def _copies(eqn) -> int:
  """How many devices run the body of `eqn`: each of a pmap's or shard_map's (the per-device
  program, whose shapes are one device's share), else 1."""
  if eqn.primitive.name == "xla_pmap":
    return eqn.params["axis_size"]
  if eqn.primitive.name == "shard_map":
    return eqn.params["mesh"].size
  return 1


def count(jaxpr: core.Jaxpr | core.ClosedJaxpr) -> float:
  """The matrix-product FLOPs of one run of `jaxpr` (module docstring)."""
  if isinstance(jaxpr, core.ClosedJaxpr):
    jaxpr = jaxpr.jaxpr
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      total += _dot(eqn)
    elif name == "conv_general_dilated":
      total += _conv(eqn)
    elif name.startswith(_ATTENTION_FWD):
      total += _attention(eqn, 2)
    elif name.startswith(_ATTENTION_BWD):
      total += _attention(eqn, 4)
    elif name == "scan":
      total += eqn.params["length"] * count(eqn.params["jaxpr"])
    elif name == "cond":
      total += max(count(b) for b in eqn.params["branches"])
    elif name == "while":
      total += count(eqn.params["body_jaxpr"])
    else:  # jit, remat, custom_jvp/vjp calls, pmap, shard_map...: their bodies
      total += _copies(eqn) * sum(count(j) for v in eqn.params.values() for j in _subjaxprs(v))
  return total


def of(fn: Callable[..., Any], *args: Any) -> float:
  """The matrix-product FLOPs of `fn(*args)`, traced (arguments may be ShapeDtypeStructs)."""
  return count(jax.make_jaxpr(fn)(*args))
