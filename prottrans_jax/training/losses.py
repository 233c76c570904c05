"""Cross-entropy with z-loss and the T5X loss normalizing factor."""

import jax
import jax.numpy as jnp

# T5X's special normalizing factors, by name: the loss is divided by the
# number of real (non-padding) target tokens, or by all target positions.
NUM_REAL_TARGET_TOKENS = "num_real_target_tokens"
NUM_TOTAL_TARGET_TOKENS = "num_total_target_tokens"

LossNormalizingFactor = float | str | None


def normalizing_factor(loss_weights: jnp.ndarray,
                       factor: LossNormalizingFactor) -> jnp.ndarray:
  """The number the summed loss of a whole batch is divided by.

  It is computed once per global batch, before the batch is split into
  microbatches, so that accumulating microbatch gradients gives exactly the
  full batch's gradient. `None` means no normalization (the summed loss).
  """
  if factor is None:
    return jnp.float32(1.0)
  if factor == NUM_REAL_TARGET_TOKENS:
    return jnp.maximum(jnp.sum(loss_weights, dtype=jnp.float32), 1.0)
  if factor == NUM_TOTAL_TARGET_TOKENS:
    return jnp.float32(loss_weights.size)
  if isinstance(factor, str):
    raise ValueError(f"unknown loss_normalizing_factor {factor!r}; use a "
                     f"number, None, {NUM_REAL_TARGET_TOKENS!r} or "
                     f"{NUM_TOTAL_TARGET_TOKENS!r}")
  return jnp.float32(factor)


def cross_entropy_sums(logits: jnp.ndarray, targets: jnp.ndarray,
                       weights: jnp.ndarray, z_loss: float
                       ) -> dict[str, jnp.ndarray]:
  """Weighted sums of cross-entropy and z-loss over all positions.

  The z-loss, z_loss * log(Z)^2, keeps the softmax normalizer near 1 so that
  bfloat16 logits stay in range (Mesh TensorFlow / T5X).
  """
  logits = logits.astype(jnp.float32)
  weights = weights.astype(jnp.float32)
  log_z = jax.nn.logsumexp(logits, axis=-1)
  target_logits = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  cross_entropy = log_z - target_logits
  return {
      "cross_entropy": jnp.sum(cross_entropy * weights),
      "z_loss": jnp.sum(z_loss * jnp.square(log_z) * weights),
      "correct": jnp.sum((jnp.argmax(logits, -1) == targets) * weights),
      "weight": jnp.sum(weights),
  }
