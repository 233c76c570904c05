"""Optimizers and learning-rate schedules.

Every optimizer is built with `optax.inject_hyperparams`, so its learning
rate lives in the optimizer state. The train step writes the schedule's value
for the train state's own step there, rather than letting optax count steps:
the step then survives a params-only restore (fine-tuning continues the step
count, as in T5X) and the logged learning rate is the one applied.
"""

from typing import Callable

import jax.numpy as jnp
import optax

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


def adafactor(decay_rate: float = 0.8,
              clipping_threshold: float | None = 1.0,
              min_dim_size_to_factor: int = 128,
              multiply_by_parameter_scale: bool = True,
              factored: bool = True,
              momentum: float | None = None,
              weight_decay_rate: float | None = None
              ) -> optax.GradientTransformation:
  """Adafactor with factored second moments, T5's settings by default."""
  return optax.inject_hyperparams(optax.adafactor, static_args=(
      "min_dim_size_to_factor", "multiply_by_parameter_scale", "factored",
      "dtype_momentum"))(
          learning_rate=0.0,
          decay_rate=decay_rate,
          clipping_threshold=clipping_threshold,
          min_dim_size_to_factor=min_dim_size_to_factor,
          multiply_by_parameter_scale=multiply_by_parameter_scale,
          factored=factored,
          momentum=momentum,
          weight_decay_rate=weight_decay_rate)


def adamw(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-6,
          weight_decay: float = 0.01) -> optax.GradientTransformation:
  """AdamW (the BERT family's optimizer at small batch sizes)."""
  return optax.inject_hyperparams(optax.adamw)(
      learning_rate=0.0, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)


def lamb(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-6,
         weight_decay: float = 0.01) -> optax.GradientTransformation:
  """LAMB (large-batch BERT pre-training, as ProtBert used)."""
  return optax.inject_hyperparams(optax.lamb)(
      learning_rate=0.0, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)


def with_learning_rate(opt_state: optax.OptState,
                       learning_rate: jnp.ndarray) -> optax.OptState:
  """The state of an `inject_hyperparams` optimizer with a new learning rate."""
  hyperparams = dict(opt_state.hyperparams)
  hyperparams["learning_rate"] = jnp.asarray(
      learning_rate, jnp.asarray(hyperparams["learning_rate"]).dtype)
  return opt_state._replace(hyperparams=hyperparams)
