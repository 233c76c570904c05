"""Helpers every converter shares: flat names and the shapes a model expects.

Converters work on flat `{"encoder/layers_0/mlp/wi/kernel": array}` dicts
(T5X's names joined by "/"), one tensor at a time, and only build the nested
Flax tree at the end.
"""
from typing import Any, Callable, Mapping

from flax import linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from prottrans_jax.models import t5


class ConversionError(ValueError):
  """A checkpoint does not match the model it is converted to or from."""


# Reads one tensor when called: converters hold these, not arrays, so a
# checkpoint is converted one tensor at a time.
Loader = Callable[[], np.ndarray]


def flatten(params: Mapping[str, Any]) -> dict[str, Any]:
  """Nested (possibly logically boxed) params -> {"a/b/c": array}."""
  return traverse_util.flatten_dict(nn.meta.unbox(dict(params)), sep="/")


def loaders_of(params: Mapping[str, Any]) -> dict[str, Callable[[], np.ndarray]]:
  """In-memory params (nested, or flat "a/b" names) as {flat name: loader}."""
  flat = flatten(params) if any(isinstance(v, Mapping) for v in params.values()) else params
  return {name: (lambda a=a: np.asarray(a)) for name, a in flat.items()}


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
  return traverse_util.unflatten_dict(dict(flat), sep="/")


def expected_shapes(config: t5.T5Config, encoder_only: bool = False) -> dict[str, tuple[int, ...]]:
  """Flat parameter names and shapes of `T5(config)`, computed without memory.

  `encoder_only` keeps the token embedding and the encoder (what
  `T5.encode` builds), as in Hugging Face's `T5EncoderModel`.
  """
  model = t5.T5(config)
  tokens = jax.ShapeDtypeStruct((1, 1), jnp.int32)
  if encoder_only:
    init = lambda rng, x: model.init(rng, x, method=t5.T5.encode)
  else:
    init = lambda rng, x: model.init(rng, x, x)
  shapes = jax.eval_shape(init, jax.ShapeDtypeStruct((2,), jnp.uint32), tokens)
  return {name: tuple(leaf.shape) for name, leaf in flatten(shapes["params"]).items()}


def check_shape(name: str, shape: tuple[int, ...], expected: tuple[int, ...]) -> None:
  if tuple(shape) != tuple(expected):
    raise ConversionError(
        f"Shape mismatch for {name}: checkpoint has {tuple(shape)}, "
        f"the model expects {tuple(expected)}")


def check_names(found: set[str], expected: set[str], what: str) -> None:
  """Raises listing every missing and every unexpected name."""
  missing, unexpected = sorted(expected - found), sorted(found - expected)
  problems = []
  if missing:
    problems.append(f"missing from {what}: {', '.join(missing)}")
  if unexpected:
    problems.append(f"not mapped to the model ({what}): {', '.join(unexpected)}")
  if problems:
    raise ConversionError("; ".join(problems))
