"""The train state and its shardings.

The state holds plain (unboxed) arrays. Logical axis names live on the boxed
tree that `model.init` returns; they are turned into shardings once, from an
abstract (`jax.eval_shape`) initialisation, so nothing is allocated to plan
the layout and the real initialisation can write every shard in place.
"""

import dataclasses
import math
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from prottrans_jax import partitioning


@flax.struct.dataclass
class TrainState:
  """Attributes:
    memory: what the model carries from one train step to the next
      (Transformer-XL's memory, `objectives.CarriedMemory`); None (no
      arrays) for every other objective, so their states are unchanged.
  """
  step: jnp.ndarray
  params: Any
  opt_state: optax.OptState
  memory: Any = None


@dataclasses.dataclass(frozen=True)
class StateLayout:
  """Abstract train state (shapes, dtypes) and the shardings that place it;
  `init_memory` makes the memory of a fresh state (None: no memory)."""
  abstract_state: TrainState
  shardings: TrainState
  init_memory: Callable[[], Any] | None = None


def _new_state(params: Any, tx: optax.GradientTransformation,
               step: jnp.ndarray | int = 0,
               init_memory: Callable[[], Any] | None = None) -> TrainState:
  return TrainState(step=jnp.asarray(step, jnp.int32), params=params,
                    opt_state=tx.init(params),
                    memory=init_memory() if init_memory else None)


def state_layout(init_boxed_params: Callable[[jax.Array], Any],
                 tx: optax.GradientTransformation,
                 mesh: jax.sharding.Mesh,
                 rules: partitioning.LogicalRules,
                 init_memory: Callable[[], Any] | None = None,
                 memory_axes: Any = None) -> StateLayout:
  """Plans the train state from an init function that returns boxed params,
  and the memory `init_memory` makes, whose arrays have the logical axes
  `memory_axes` (a tree of tuples of names, like the memory).

  Works with an `AbstractMesh` too: nothing is allocated.
  """
  # The key is made inside the traced function: a concrete one would be
  # placed on the mesh in effect, which may be a TPU topology's
  # compile-only devices (ahead-of-time compilation, training/aot.py).
  boxed = jax.eval_shape(lambda: init_boxed_params(jax.random.key(0)))
  # Plain `.value`: unboxing with `nn.meta.unbox` would add sharding
  # constraints, which only make sense on traced values.
  abstract_params = jax.tree_util.tree_map(
      lambda x: x.value if isinstance(x, nn.meta.AxisMetadata) else x, boxed,
      is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))
  param_shardings = partitioning.params_shardings(boxed, mesh, rules)
  abstract_state = jax.eval_shape(
      lambda p: _new_state(p, tx, init_memory=init_memory), abstract_params)
  opt_shardings = partitioning.optimizer_state_shardings(
      abstract_state.opt_state, abstract_params, param_shardings, mesh)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  memory_shardings = None if init_memory is None else partitioning.logical_shardings(
      jax.tree_util.tree_map(lambda axes: jax.sharding.PartitionSpec(*axes), memory_axes,
                             is_leaf=lambda x: isinstance(x, tuple)), mesh, rules)
  return StateLayout(
      abstract_state=abstract_state,
      shardings=TrainState(step=replicated, params=param_shardings,
                           opt_state=opt_shardings, memory=memory_shardings),
      init_memory=init_memory)


def init_state(init_boxed_params: Callable[[jax.Array], Any],
               tx: optax.GradientTransformation, layout: StateLayout,
               rng: jax.Array) -> TrainState:
  """A fresh state, each shard initialised on its own device."""

  def init(key):
    return _new_state(nn.meta.unbox(init_boxed_params(key)), tx,
                      init_memory=layout.init_memory)

  return jax.jit(init, out_shardings=layout.shardings)(rng)


def state_from_params(params: Any, tx: optax.GradientTransformation,
                      layout: StateLayout, step: int) -> TrainState:
  """A state around restored params, with a freshly initialised optimizer.

  This is how fine-tuning starts from a params-only (e.g. converted)
  checkpoint.
  """
  return jax.jit(lambda p: _new_state(p, tx, step, layout.init_memory),
                 in_shardings=(layout.shardings.params,),
                 out_shardings=layout.shardings)(params)


def state_bytes_per_device(layout: StateLayout) -> dict[str, int]:
  """Bytes of params, optimizer state (and the memory carried between
  steps, where there is one) on the most loaded device.

  Computed from shapes and shardings alone, so it sizes layouts for hardware
  that is not present.
  """

  def tree_bytes(abstract, shardings):
    total = 0
    for leaf, sharding in zip(jax.tree_util.tree_leaves(abstract),
                              jax.tree_util.tree_leaves(shardings)):
      shard = sharding.shard_shape(leaf.shape)
      total += jnp.dtype(leaf.dtype).itemsize * math.prod(shard)
    return total

  state, shardings = layout.abstract_state, layout.shardings
  sizes = {
      "params": tree_bytes(state.params, shardings.params),
      "opt_state": tree_bytes(state.opt_state, shardings.opt_state),
  }
  if state.memory is not None:
    sizes["memory"] = tree_bytes(state.memory, shardings.memory)
  return sizes
