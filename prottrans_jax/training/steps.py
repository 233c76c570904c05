"""Train and eval steps, jitted with shardings.

The steps know no model family: the loss comes from the family's
`objectives.Objective` (prottrans_jax/families.py names it).

The step functions are pure: (state, batch) -> (state, metrics). Everything
that does not change between steps (model, optimizer, schedule, loss
settings) is bound once by `make_train_step` / `make_eval_step`, which also
fix the in/out shardings. Metrics come back as sums where a mean over many
batches or devices has to be formed later.
"""

import dataclasses
import functools
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from prottrans_jax.training import losses
from prottrans_jax.training import objectives as objectives_lib
from prottrans_jax.training import optimizers
from prottrans_jax.training import train_state as train_state_lib

Batch = objectives_lib.Batch


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """How the training loss is formed.

  Attributes:
    z_loss: weight of the log(Z)^2 auxiliary loss.
    loss_normalizing_factor: a number, None (summed loss) or one of
      `losses.NUM_REAL_TARGET_TOKENS` / `losses.NUM_TOTAL_TARGET_TOKENS`.
  """
  z_loss: float = 1e-4
  loss_normalizing_factor: losses.LossNormalizingFactor = (
      losses.NUM_REAL_TARGET_TOKENS)


def _split_microbatches(batch: Batch, num_microbatches: int) -> Batch:
  """[B, ...] -> [k, B/k, ...], microbatch i = rows i, i+k, i+2k, ...

  Strided rows keep every microbatch spread over all `data` shards (each
  device holds a contiguous block of rows), so no microbatch is confined to
  a few devices.
  """

  def split(x):
    if x.shape[0] % num_microbatches:
      raise ValueError(f"batch size {x.shape[0]} is not divisible by "
                       f"num_microbatches={num_microbatches}")
    x = x.reshape((x.shape[0] // num_microbatches, num_microbatches)
                  + x.shape[1:])
    x = jnp.swapaxes(x, 0, 1)
    return nn.with_logical_constraint(x, (None, "batch", "length")[:x.ndim])

  return {k: split(v) for k, v in batch.items()}


def accumulate_gradients(grad_fn: Callable[[Any, Batch, jax.Array], Any],
                         params: Any, batch: Batch, rng: jax.Array,
                         num_microbatches: int) -> Any:
  """`grad_fn(params, batch, rng)` (gradients and auxiliary sums), summed
  over `num_microbatches` microbatches of `batch` (`_split_microbatches`),
  one after another so that only a microbatch's activations are live.

  Equal to the whole batch's when `grad_fn`'s loss is a sum over rows
  divided by a constant of the whole batch (a normalizing factor computed
  before the split), as both the pre-training and the fine-tuning losses
  are. Microbatch i draws its dropout from `fold_in(rng, i)`; one
  microbatch uses `rng` itself.
  """
  if num_microbatches == 1:
    return grad_fn(params, batch, rng)
  microbatches = _split_microbatches(batch, num_microbatches)

  def accumulate(carry, index):
    microbatch = jax.tree_util.tree_map(lambda x: x[index], microbatches)
    out = grad_fn(params, microbatch, jax.random.fold_in(rng, index))
    return jax.tree_util.tree_map(jnp.add, carry, out), None

  zeros = jax.tree_util.tree_map(
      jnp.zeros_like,
      jax.eval_shape(grad_fn, params,
                     jax.tree_util.tree_map(lambda x: x[0], microbatches),
                     rng))
  total, _ = jax.lax.scan(accumulate, zeros, jnp.arange(num_microbatches))
  return total


def train_step(state: train_state_lib.TrainState, batch: Batch, *,
               model: nn.Module, tx: optax.GradientTransformation,
               schedule: optimizers.Schedule, loss_config: LossConfig,
               objective: objectives_lib.Objective, dropout_seed: int,
               num_microbatches: int = 1
               ) -> tuple[train_state_lib.TrainState, dict[str, jnp.ndarray]]:
  """One optimizer update over a global batch, optionally in microbatches.

  With an objective that carries a memory (`Objective.memory`), the batch
  is one window of every row and the state's memory goes in and the next
  comes out (no gradient flows into it); microbatches are refused where the
  step is built (`build_train_step`).
  """
  factor = losses.normalizing_factor(objective.loss_weights(batch),
                                     loss_config.loss_normalizing_factor)
  # A different dropout mask every step, reproducible from the step alone,
  # so a restored run draws the same masks as an uninterrupted one.
  step_rng = jax.random.fold_in(jax.random.key(dropout_seed), state.step)

  def loss_fn(params, microbatch, rng):
    if objective.memory is None:
      sums, memory = objective.loss_sums(model, params, microbatch, rng,
                                         loss_config.z_loss), None
    else:
      sums, memory = objective.loss_sums(model, params, microbatch, rng,
                                         loss_config.z_loss, state.memory)
    return sums["loss"] / factor, (sums, memory)

  grads, (sums, memory) = accumulate_gradients(
      jax.grad(loss_fn, has_aux=True), state.params, batch, step_rng,
      num_microbatches)
  learning_rate = schedule(state.step)
  opt_state = optimizers.with_learning_rate(state.opt_state, learning_rate)
  updates, opt_state = tx.update(grads, opt_state, state.params)
  new_state = state.replace(step=state.step + 1,
                            params=optax.apply_updates(state.params, updates),
                            opt_state=opt_state,
                            memory=state.memory if memory is None else memory)
  weight = jnp.maximum(sums["weight"], 1.0)
  metrics = {
      "loss": sums["loss"] / factor,
      "cross_entropy": sums["cross_entropy"] / weight,
      "z_loss": sums["z_loss"] / weight,
      "accuracy": sums["correct"] / weight,
      "target_tokens": sums["weight"],
      "learning_rate": learning_rate,
      "grad_norm": optax.global_norm(grads),
      **objective.extra_metrics(sums),
  }
  return new_state, metrics


def eval_sums(params: Any, batch: Batch, *, model: nn.Module,
              objective: objectives_lib.Objective, mask_id: int
              ) -> dict[str, jnp.ndarray]:
  """Sums over one eval batch; `eval_metrics` turns totals into metrics.

  Masked-residue accuracy is measured where the target's own token was
  hidden (`Objective.masked`): for denoising and masked LM, where the
  encoder saw the mask token (targets are aligned 1:1 with the inputs, so
  those positions hold exactly the residues the model had to reconstruct);
  for the permutation LM, every predicted token.
  """
  logits, targets, weights, extra = objective.eval_outputs(model, params, batch)
  weights = weights.astype(jnp.float32)
  sums = losses.cross_entropy_sums(logits, targets, weights, z_loss=0.0)
  masked = weights * objective.masked(batch, mask_id)
  correct = jnp.argmax(logits, -1) == targets
  vocab_size = logits.shape[-1]
  return {
      "cross_entropy": sums["cross_entropy"],
      "weight": sums["weight"],
      "correct": sums["correct"],
      "masked": jnp.sum(masked),
      "masked_correct": jnp.sum(masked * correct),
      # Residue counts at masked positions: the most-common-residue baseline.
      "masked_target_counts": jnp.zeros(vocab_size, jnp.float32).at[
          targets.reshape(-1)].add(masked.reshape(-1)),
      **extra,
  }


def eval_metrics(totals: Mapping[str, Any], objective: objectives_lib.Objective
                 ) -> dict[str, float]:
  """Loss, perplexity and accuracies from summed `eval_sums`, and the
  objective's own metrics."""
  weight = max(float(totals["weight"]), 1.0)
  masked = max(float(totals["masked"]), 1.0)
  loss = float(totals["cross_entropy"]) / weight
  return {
      "loss": loss,
      "perplexity": float(jnp.exp(loss)),
      "accuracy": float(totals["correct"]) / weight,
      "masked_residue_accuracy": float(totals["masked_correct"]) / masked,
      "most_common_residue_baseline":
          float(jnp.max(totals["masked_target_counts"])) / masked,
      "masked_residues": float(totals["masked"]),
      **objective.eval_metrics(totals),
  }


def make_train_step(*, model: nn.Module, objective: objectives_lib.Objective,
                    tx: optax.GradientTransformation,
                    schedule: optimizers.Schedule, loss_config: LossConfig,
                    dropout_seed: int, num_microbatches: int,
                    layout: train_state_lib.StateLayout,
                    batch_sharding: jax.sharding.Sharding) -> Callable:
  """`train_step` bound and jitted; the old state's buffers are donated."""
  step = functools.partial(
      train_step, model=model, tx=tx, schedule=schedule,
      loss_config=loss_config, dropout_seed=dropout_seed,
      num_microbatches=num_microbatches, objective=objective)
  replicated = jax.sharding.NamedSharding(batch_sharding.mesh,
                                          jax.sharding.PartitionSpec())
  return jax.jit(step, in_shardings=(layout.shardings, batch_sharding),
                 out_shardings=(layout.shardings, replicated),
                 donate_argnums=0)


def make_eval_step(*, model: nn.Module, objective: objectives_lib.Objective,
                   mask_id: int, params_shardings: Any,
                   batch_sharding: jax.sharding.Sharding) -> Callable:
  replicated = jax.sharding.NamedSharding(batch_sharding.mesh,
                                          jax.sharding.PartitionSpec())
  step = functools.partial(eval_sums, model=model, mask_id=mask_id,
                           objective=objective)
  return jax.jit(step, in_shardings=(params_shardings, batch_sharding),
                 out_shardings=replicated)

