"""Optimizers and learning-rate schedules.

Every optimizer is built with `optax.inject_hyperparams`, so its learning
rate lives in the optimizer state. The train step writes the schedule's value
for the train state's own step there, rather than letting optax count steps:
the step then survives a params-only restore (fine-tuning continues the step
count, as in T5X) and the logged learning rate is the one applied.

Every optimizer here treats the layers of a scanned stack (parameters under
a `layers` key, stacked on a leading axis: models/layers.py) as the separate
parameters they are unscanned (`per_layer`), so a scanned run takes the same
steps as an unscanned one.
"""

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import optax

from prottrans_jax.models import layers

Schedule = Callable[[jnp.ndarray], jnp.ndarray]


def inverse_sqrt_schedule(peak_learning_rate: float = 0.01,
                          warmup_steps: int = 10_000,
                          linear_warmup: bool = False) -> Schedule:
  """T5's `rsqrt_decay`: peak until `warmup_steps`, then peak*sqrt(w/step).

  With the defaults (0.01, 10k steps, constant warm-up) this is 1/sqrt(max(
  step, 10k)), the schedule T5 and ProtT5 pre-trained with. `linear_warmup`
  ramps from 0 to the peak instead, which small models with short runs need.
  """

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    decay = jnp.sqrt(warmup_steps / jnp.maximum(step, warmup_steps))
    if linear_warmup:
      decay *= jnp.minimum(1.0, (step + 1) / warmup_steps)
    return peak_learning_rate * decay

  return schedule


def linear_warmup_decay_schedule(peak_learning_rate: float,
                                 warmup_steps: int,
                                 total_steps: int) -> Schedule:
  """Linear ramp to the peak, then linear decay to zero (the BERT schedule)."""
  return optax.join_schedules(
      [optax.linear_schedule(0.0, peak_learning_rate, warmup_steps),
       optax.linear_schedule(peak_learning_rate, 0.0,
                             max(total_steps - warmup_steps, 1))],
      [warmup_steps])


def constant_schedule(learning_rate: float) -> Schedule:
  """A fixed learning rate (T5X's fine-tuning default is 1e-3)."""
  return optax.constant_schedule(learning_rate)


def _is_stacked(path: Sequence[Any]) -> bool:
  """Whether the leaf at `path` (of a parameter tree or of a state mirroring
  one) belongs to a scanned layer stack: its leading axis is the layer."""
  return any(isinstance(key, jax.tree_util.DictKey) and key.key == layers.SCANNED_LAYERS
             for key in path)


def _layer_axes(tree: Any) -> Any:
  """0 for every leaf of a scanned stack, None for the rest (vmap axes)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: 0 if _is_stacked(path) else None, tree)


def per_layer(inner: optax.GradientTransformation) -> optax.GradientTransformation:
  """`inner` with each layer of a scanned stack treated as its own parameter.

  Adafactor's factoring, parameter-scale RMS and update clipping, and LAMB's
  trust ratio are computed per parameter; on a stacked [layers, ...] leaf
  they would mix the layers (and factor the wrong dimensions), so a scanned
  run would drift from an unscanned one from the first update on. Here
  `inner` runs vmapped over axis 0 of the stacked leaves (and unmapped over
  the others): every layer gets exactly the computation its unscanned
  `layers_<i>` parameter gets, and the state of a stacked leaf is the stack
  of its layers' states, which is what `families.ModelFamily.to_canonical`
  unstacks for checkpoints. The state is `inner`'s own (no wrapper), so
  `with_learning_rate` works on it; without stacked leaves this is `inner`,
  bit for bit. `inner` must treat parameters independently (every optax
  per-parameter rule does; a global-norm clip does not, and fails to trace).
  """

  def init(params):
    axes = _layer_axes(params)
    if not any(a == 0 for a in jax.tree_util.tree_leaves(axes)):
      return inner.init(params)
    one_layer = jax.tree_util.tree_map_with_path(
        lambda path, x: jax.ShapeDtypeStruct(x.shape[1:] if _is_stacked(path) else x.shape,
                                             x.dtype), params)
    state_axes = _layer_axes(jax.eval_shape(inner.init, one_layer))
    return jax.vmap(inner.init, in_axes=(axes,), out_axes=state_axes)(params)

  def update(updates, state, params=None):
    axes = _layer_axes(updates)
    if not any(a == 0 for a in jax.tree_util.tree_leaves(axes)):
      return inner.update(updates, state, params)
    state_axes = _layer_axes(state)
    return jax.vmap(inner.update,
                    in_axes=(axes, state_axes, None if params is None else axes),
                    out_axes=(axes, state_axes))(updates, state, params)

  return optax.GradientTransformation(init, update)


def adafactor(decay_rate: float = 0.8,
              clipping_threshold: float | None = 1.0,
              min_dim_size_to_factor: int = 128,
              multiply_by_parameter_scale: bool = True,
              factored: bool = True,
              momentum: float | None = None,
              weight_decay_rate: float | None = None
              ) -> optax.GradientTransformation:
  """Adafactor with factored second moments, T5's settings by default."""
  return per_layer(optax.inject_hyperparams(optax.adafactor, static_args=(
      "min_dim_size_to_factor", "multiply_by_parameter_scale", "factored",
      "dtype_momentum"))(
          learning_rate=0.0,
          decay_rate=decay_rate,
          clipping_threshold=clipping_threshold,
          min_dim_size_to_factor=min_dim_size_to_factor,
          multiply_by_parameter_scale=multiply_by_parameter_scale,
          factored=factored,
          momentum=momentum,
          weight_decay_rate=weight_decay_rate))


def adamw(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-6,
          weight_decay: float = 0.01) -> optax.GradientTransformation:
  """AdamW (the BERT family's optimizer at small batch sizes)."""
  return per_layer(optax.inject_hyperparams(optax.adamw)(
      learning_rate=0.0, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay))


def _key_name(key: Any) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def is_layer_adapted(path: Sequence[Any]) -> bool:
  """Whether LAMB's weight decay and trust ratio apply to a parameter.

  BERT's LAMB excludes biases and LayerNorm parameters (names with "bias"
  or "layer_norm"; Hugging Face's "LayerNorm"). A trust ratio on them is
  harmful: it scales a parameter's step to learning rate x its own norm, so
  a bias that starts at zero, once off zero, changes by at most a factor
  (1 + learning rate) per step: at 0.01, ELECTRA's detection bias needs
  some 500 steps to go from 0.01 to the replaced/original prior's -1.9.
  """
  names = [_key_name(k) for k in path]
  return not (names[-1] == "bias" or any("layer_norm" in n or "LayerNorm" in n for n in names))


def _only_where_adapted(inner: optax.GradientTransformation) -> optax.GradientTransformation:
  """`inner` (stateless) applied to the layer-adapted parameters only; the
  rest pass through. The state is `inner`'s own, so the optimizer state has
  the same structure as optax.lamb's."""

  def update_fn(updates, state, params=None):
    transformed, state = inner.update(updates, state, params)
    return jax.tree_util.tree_map_with_path(
        lambda path, new, old: new if is_layer_adapted(path) else old,
        transformed, updates), state

  return optax.GradientTransformation(inner.init, update_fn)


def _bert_lamb(learning_rate: optax.ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999,
               eps: float = 1e-6, eps_root: float = 0.0, weight_decay: float = 0.0,
               mask: Any = None) -> optax.GradientTransformation:
  """optax.lamb's chain (and signature, so that the injected hyperparameters
  match), with decay and trust ratio skipped where `is_layer_adapted` is
  false. `mask` is accepted for that match and must be None."""
  if mask is not None:
    raise ValueError("_bert_lamb chooses the decayed parameters itself")
  return optax.chain(
      optax.scale_by_adam(b1=b1, b2=b2, eps=eps, eps_root=eps_root),
      _only_where_adapted(optax.add_decayed_weights(weight_decay)),
      _only_where_adapted(optax.scale_by_trust_ratio()),
      optax.scale_by_learning_rate(learning_rate))


def lamb(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-6,
         weight_decay: float = 0.01) -> optax.GradientTransformation:
  """LAMB as BERT (and ProtBert) pre-trained with it: Adam moments, weight
  decay and the layer-wise trust ratio, the last two on every parameter
  but biases and LayerNorm parameters (`is_layer_adapted`)."""
  return per_layer(optax.inject_hyperparams(_bert_lamb)(
      learning_rate=0.0, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay))


def with_learning_rate(opt_state: optax.OptState,
                       learning_rate: jnp.ndarray) -> optax.OptState:
  """The state of an `inject_hyperparams` optimizer with a new learning rate."""
  hyperparams = dict(opt_state.hyperparams)
  hyperparams["learning_rate"] = jnp.asarray(
      learning_rate, jnp.asarray(hyperparams["learning_rate"]).dtype)
  return opt_state._replace(hyperparams=hyperparams)
