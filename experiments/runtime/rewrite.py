"""A model's traced program with some of its operations replaced: how the runtime makes a
plain Flax model fast on a given machine without editing the model.

`rewrite(fn, rules)` returns `fn` traced once to a jaxpr, then evaluated equation by equation
inside the caller's trace with the operations that a rule claims replaced by what the rule
computes. A rule takes an equation's input values and its parameters and returns its outputs
(a list), or None to keep the equation as it is. The rules act in the bodies of `jit`,
`remat`, `scan`, `while` and `cond` too; functions with custom derivatives (e.g.
`jax.nn.relu`) are kept as they are, since their derivative rules refer to their bodies.
Differentiating the rewritten function differentiates what the rules computed, so a rule
that returns a function with a custom derivative sets the backward pass as well.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import jax.extend.core as jex
import numpy as np

# A rule: (input values, equation parameters) -> output values, or None to keep the equation.
Rule = Callable[[Sequence[Any], dict[str, Any]], "list[Any] | None"]

_INLINED = ("jit", "pjit", "closed_call", "core_call")
_REMAT = ("checkpoint", "remat2")
_CUSTOM_DERIVATIVES = ("custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr", "custom_lin")


def _rewritten(closed: jex.ClosedJaxpr, rules: dict[str, Rule]) -> jex.ClosedJaxpr:
  """`closed` with its operations rewritten: a jaxpr of the same signature."""
  avals = [jax.ShapeDtypeStruct(v.aval.shape, v.aval.dtype) for v in closed.jaxpr.invars]
  return jax.make_jaxpr(lambda *a: evaluate(closed.jaxpr, closed.consts, a, rules))(*avals)


def _rewritten_param(value: Any, rules: dict[str, Rule]) -> Any:
  if isinstance(value, jex.ClosedJaxpr):  # scan's and while's bodies
    return _rewritten(value, rules)
  if isinstance(value, tuple) and value and all(isinstance(v, jex.ClosedJaxpr) for v in value):  # cond's branches
    return tuple(_rewritten(v, rules) for v in value)
  return value


def evaluate(jaxpr: jex.Jaxpr, consts: Sequence[Any], args: Sequence[Any], rules: dict[str, Rule]) -> list[Any]:
  """`jaxpr` evaluated on `args` (as `jax.core.eval_jaxpr` does) with the rules applied."""
  env: dict[Any, Any] = {}

  def read(v):
    return v.val if isinstance(v, jex.Literal) else env[v]

  env.update(zip(jaxpr.constvars, consts))
  env.update(zip(jaxpr.invars, args))
  for eqn in jaxpr.eqns:
    invals = [read(v) for v in eqn.invars]
    name, params = eqn.primitive.name, eqn.params
    rule = rules.get(name)
    out = rule(invals, params) if rule is not None else None
    if out is not None:
      pass
    elif name in _INLINED:
      out = evaluate(params["jaxpr"].jaxpr, params["jaxpr"].consts, invals, rules)
    elif name in _REMAT:
      body = functools.partial(evaluate, params["jaxpr"], (), rules=rules)
      out = jax.checkpoint(lambda *a, body=body: body(args=a), prevent_cse=params["prevent_cse"],
                           policy=params["policy"])(*invals)
    else:
      if name not in _CUSTOM_DERIVATIVES:
        params = {k: _rewritten_param(v, rules) for k, v in params.items()}
      with eqn.ctx.manager:
        out = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(params))
      out = out if eqn.primitive.multiple_results else [out]
    env.update(zip(eqn.outvars, out))
  return [read(v) for v in jaxpr.outvars]


def rewrite(fn: Callable[..., Any], rules: dict[str, Rule]) -> Callable[..., Any]:
  """`fn` with the operations the rules claim replaced (module docstring). Its arguments may
  be any pytrees; leaves that are not arrays (flags, names) are held fixed."""
  if not rules:
    return fn

  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    leaves, tree = jax.tree.flatten((args, kwargs))
    arrays = [i for i, x in enumerate(leaves) if isinstance(x, (jax.Array, np.ndarray, np.generic))]

    def on_arrays(*values):
      full = list(leaves)
      for i, v in zip(arrays, values):
        full[i] = v
      a, k = jax.tree.unflatten(tree, full)
      return fn(*a, **k)

    values = [leaves[i] for i in arrays]
    closed, shape = jax.make_jaxpr(on_arrays, return_shape=True)(*values)
    return jax.tree.unflatten(jax.tree.structure(shape), evaluate(closed.jaxpr, closed.consts, values, rules))

  return wrapped
