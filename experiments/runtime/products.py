"""How a model's matrix products are computed: the `dot_general` rule of
`experiments.runtime.rewrite`, `dot_rule(rows, bf16)`.

- `rows` (on the CPU): a dense layer applied to [batch, length, ...] inputs is a product
  of their rows: the leading dimensions are flattened into one before the product and
  restored after. XLA's CPU backend computes the weight gradient of the 2D product without
  the transposed copies it makes for the 3D one (docs/benchmarks.md).
- `bf16` (`--matmul_dtype=bfloat16`): every float32 x float32 product (dense layers,
  attention's products, einsums, a tied embedding's logits) is computed by
  `bf16_dot_general`: its operands rounded to bfloat16, the products accumulated and
  returned in float32, as `torch.autocast` treats matmuls. Every other operation
  (normalisations, softmax, activations, losses) and every array between them stays
  float32. The backward pass does the same: the product's cotangent is rounded to bfloat16
  and both operands' gradients are bfloat16 x bfloat16 -> float32 products. XLA's CPU
  backend runs these on the AMX tiles of processors that have them (Intel Xeon since
  Sapphire Rapids); on accelerators it is the usual mixed precision of the products.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_F32 = jnp.dtype(jnp.float32)
_BF16 = jnp.dtype(jnp.bfloat16)


def _row_major(a: jax.Array) -> jax.Array:
  """`a`, laid out row-major in memory: a reshape to one dimension behind an optimization
  barrier, which XLA's simplifier and layout assignment cannot see through. So XLA can
  neither fold a transposition into the product that reads `a` (or that produced it) nor
  give that product a transposed layout; its CPU backend has no bfloat16 x bfloat16 ->
  float32 product for those (it computes some in float32 and fails at run time on others).
  Free where `a` is already row-major and feeds or comes from another operation."""
  return lax.optimization_barrier(a.reshape(-1)).reshape(a.shape)


class _Layout(NamedTuple):
  """dot_general(x, y) as a [batch, m, k] x [batch, k, n] (or x [batch, n, k]) product with `x`
  on the left: the operands' dimension orders, and the elements transposed to get there."""
  x_order: list[int]
  y_order: list[int]
  y_nk: bool  # the right operand is [batch, n, k]
  x_kept: list[int]
  y_kept: list[int]
  moved: int


def _layout(x, y, dimension_numbers) -> _Layout:
  (x_contract, y_contract), (x_batch, y_batch) = dimension_numbers
  x_kept = [d for d in range(x.ndim) if d not in x_contract and d not in x_batch]
  y_kept = [d for d in range(y.ndim) if d not in y_contract and d not in y_batch]
  x_order = [*x_batch, *x_kept, *x_contract]
  y_order = [*y_batch, *y_kept, *y_contract]  # [batch, n, k]: no copy where y already is
  y_nk = y_order == list(range(y.ndim))
  if not y_nk:
    y_order = [*y_batch, *y_contract, *y_kept]
  moved = lambda a, order: a.size if order != list(range(a.ndim)) else 0
  return _Layout(x_order, y_order, y_nk, x_kept, y_kept, moved(x, x_order) + moved(y, y_order))


def _dot(x: jax.Array, y: jax.Array, dimension_numbers) -> jax.Array:
  """`lax.dot_general(x, y, dimension_numbers)` accumulated and returned in float32, computed
  in the forms XLA's backends run well: [batch, m, k] x [batch, k, n] or x [batch, n, k]
  products of row-major operands, transposed and reshaped into them, with `x` or `y` on the
  left, whichever transposes fewer elements (a weight gradient x.T @ g transposes the smaller
  of x and g)."""
  (x_contract, y_contract), (x_batch, y_batch) = dimension_numbers
  swapped = ((y_contract, x_contract), (y_batch, x_batch))
  plan, other = _layout(x, y, dimension_numbers), _layout(y, x, swapped)
  size = lambda a, dims: math.prod(a.shape[d] for d in dims)
  out_size = size(x, x_batch) * size(x, plan.x_kept) * size(y, plan.y_kept)
  if other.moved + 2 * out_size < plan.moved:  # a float32 result to transpose: twice a bfloat16 operand's bytes
    out = _dot(y, x, swapped)  # [batch, y's kept, x's kept]
    nb, ny = len(x_batch), len(plan.y_kept)
    return jnp.moveaxis(out, list(range(nb, nb + ny)), list(range(out.ndim - ny, out.ndim)))
  lead = (size(x, x_batch),) if x_batch else ()
  m, k, n = size(x, plan.x_kept), size(x, x_contract), size(y, plan.y_kept)
  xm = jnp.transpose(x, plan.x_order).reshape(lead + (m, k))
  ym = jnp.transpose(y, plan.y_order).reshape(lead + ((n, k) if plan.y_nk else (k, n)))
  nb = len(lead)
  batch = tuple(range(nb))
  out = lax.dot_general(_row_major(xm), _row_major(ym), (((nb + 1,), (nb + 1 if plan.y_nk else nb,)), (batch, batch)),
                        preferred_element_type=jnp.float32)
  return _row_major(out).reshape([x.shape[d] for d in (*x_batch, *plan.x_kept)] + [y.shape[d] for d in plan.y_kept])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def bf16_dot_general(x: jax.Array, y: jax.Array, dimension_numbers) -> jax.Array:
  """`lax.dot_general(x, y, dimension_numbers)` on operands rounded to bfloat16, accumulated
  and returned in float32; its gradients are bfloat16 x bfloat16 -> float32 products too."""
  return _forward(x, y, dimension_numbers)[0]


def _forward(x, y, dimension_numbers):
  x, y = x.astype(_BF16), y.astype(_BF16)
  return _dot(x, y, dimension_numbers), (x, y)


def _operand_gradient(g, other, dimension_numbers, ndim: int, second: bool):
  """The cotangent of a product's first operand (of its second with `second`), of `ndim`
  dimensions, from the product's cotangent `g` and the other operand: the product JAX's
  transpose rule for dot_general computes, here in bfloat16 with a float32 result."""
  (contract, other_contract), (batch, other_batch) = dimension_numbers
  kept = [d for d in range(ndim) if d not in contract and d not in batch]
  other_kept = [d for d in range(other.ndim) if d not in other_contract and d not in other_batch]
  nb = len(batch)
  start = nb if second else nb + len(kept)  # g: batch, the first operand's kept, the second's kept
  g_other = list(range(start, start + len(other_kept)))
  grad = _dot(g, other, ((g_other, other_kept), (list(range(nb)), list(other_batch))))
  # grad's dimensions: batch, kept, then the contracting ones in `other`'s order.
  contract_in_other_order = list(np.take(contract, np.argsort(other_contract)))
  return jnp.transpose(grad, np.argsort([*batch, *kept, *contract_in_other_order]))


def _backward(dimension_numbers, residuals, g):
  x, y = residuals
  g = g.astype(_BF16)
  (x_contract, y_contract), (x_batch, y_batch) = dimension_numbers
  dx = _operand_gradient(g, y, dimension_numbers, x.ndim, second=False)
  dy = _operand_gradient(g, x, ((y_contract, x_contract), (y_batch, x_batch)), y.ndim, second=True)
  return dx, dy


bf16_dot_general.defvjp(_forward, _backward)


def _on_rows(x: jax.Array, y: jax.Array, dimension_numbers, product) -> jax.Array | None:
  """`product(x, y, dimension_numbers)` with x's leading (non-contracting) dimensions
  flattened into one, when there are several, x contracts its trailing ones and y its
  leading ones (a dense layer's kernel on [batch, length, features]); None otherwise."""
  (x_contract, y_contract), (x_batch, y_batch) = dimension_numbers
  free = x.ndim - len(x_contract)
  if (x_batch or y_batch or free < 2 or tuple(x_contract) != tuple(range(free, x.ndim))
      or tuple(y_contract) != tuple(range(len(y_contract)))):  # y: a dense layer's [in..., out...] kernel
    return None
  flat = x.reshape((-1,) + x.shape[free:])
  out = product(flat, y, ((tuple(range(1, flat.ndim)), tuple(y_contract)), ((), ())))
  return out.reshape(x.shape[:free] + out.shape[1:])


def bf16_matmuls(fn):
  """`fn` with its float32 matrix products computed by `bf16_dot_general` (what
  `--matmul_dtype=bfloat16` does to a model)."""
  from experiments.runtime import rewrite  # pylint: disable=g-import-not-at-top
  return rewrite.rewrite(fn, {"dot_general": dot_rule(rows=False, bf16=True)})


def dot_rule(rows: bool, bf16: bool):
  """The rewrite rule of `dot_general` equations (experiments.runtime.rewrite), or None:
  - `rows`: products of a dense layer on [batch, length, ...] inputs on 2D rows, whose
    weight gradients XLA's CPU backend computes without the transposed copies it makes for
    3D inputs (docs/benchmarks.md: the GPT CPU recipe's step);
  - `bf16`: float32 x float32 products by `bf16_dot_general`."""
  if not (rows or bf16):
    return None

  def rule(invals, params):
    x, y = invals
    dims = params["dimension_numbers"]
    float32 = all(jnp.result_type(v) == _F32 for v in invals)
    if bf16 and float32 and params.get("preferred_element_type") in (None, _F32):
      product = bf16_dot_general
    elif rows:
      product = functools.partial(lax.dot_general, precision=params.get("precision"),
                                  preferred_element_type=params.get("preferred_element_type"))
    else:
      return None
    out = _on_rows(x, y, dims, product) if rows else None
    if out is None:
      if product is not bf16_dot_general:
        return None
      out = product(x, y, dims)
    return [out]

  return rule
