"""Training a head on fixed features, with early stopping, and inference.

The features (embeddings) are fixed, so a head trains in seconds to minutes:
Adam, the tasks' cross-entropies added (as in the paper), one pass over the
training proteins per epoch, and after each epoch the loss on a validation
split; training stops when that loss has not improved for `patience` epochs
and the best epoch's parameters are kept.
"""

import dataclasses
import functools
import logging
from typing import Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from prottrans_jax.downstream import models
from prottrans_jax.downstream import readers
from prottrans_jax.inference import batching

logger = logging.getLogger(__name__)

Labels = Mapping[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """How to fit a head.

  Attributes:
    learning_rate: Adam's step size.
    batch_size: proteins per step.
    max_epochs: upper bound on passes over the training set.
    patience: epochs without a better validation loss before stopping.
    validation_fraction: share of the training proteins held out for early
      stopping when no validation set is given.
    seed: initialisation, shuffling, dropout and the validation split.
  """
  learning_rate: float = 1e-3
  batch_size: int = 16
  max_epochs: int = 50
  patience: int = 5
  validation_fraction: float = 0.1
  seed: int = 0


@dataclasses.dataclass(frozen=True)
class TrainResult:
  params: dict
  best_epoch: int  # 1-based.
  history: tuple[tuple[float, float], ...]  # (train loss, val loss)/epoch.


def _batch(features: Sequence[np.ndarray], labels: Sequence[Labels],
           tasks: Sequence[str], per_residue_input: bool, rows: int
           ) -> dict[str, np.ndarray]:
  """Stacks proteins into `rows` rows (a short last batch gets empty rows)
  and residues to a bucket length, so only a few shapes compile; padding is
  masked out of the model and carries no labels."""
  dim = features[0].shape[-1]
  if per_residue_input:
    length = batching.bucket_length(max(len(f) for f in features))
    x = np.zeros((rows, length, dim), np.float32)
    mask = np.zeros((rows, length), np.float32)
    for i, f in enumerate(features):
      x[i, :len(f)] = f
      mask[i, :len(f)] = 1
  else:
    x = np.zeros((rows, dim), np.float32)
    x[:len(features)] = np.stack(features)
    mask = np.ones(rows, np.float32)
  batch = {"x": x, "mask": mask}
  for t in tasks:
    per_residue_labels = labels[0][t].ndim == 1
    y = np.full((rows, x.shape[1]) if per_residue_labels else (rows,),
                readers.IGNORE, np.int32)
    for i, l in enumerate(labels):
      if per_residue_labels:
        y[i, :len(l[t])] = l[t]
      else:
        y[i] = l[t]
    batch[t] = y
  return batch


def _batches(features, labels, order, batch_size, tasks, per_residue_input
             ) -> Iterator[dict[str, np.ndarray]]:
  for start in range(0, len(order), batch_size):
    chunk = order[start:start + batch_size]
    yield _batch([features[i] for i in chunk], [labels[i] for i in chunk],
                 tasks, per_residue_input, batch_size)


def masked_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean cross-entropy over labelled positions (labels != IGNORE)."""
  valid = labels != readers.IGNORE
  losses = optax.softmax_cross_entropy_with_integer_labels(
      logits, jnp.where(valid, labels, 0))
  return jnp.sum(losses * valid) / jnp.maximum(jnp.sum(valid), 1)


def _model_inputs(batch):
  return batch["x"], (batch["mask"] if batch["x"].ndim == 3 else None)


@functools.lru_cache(maxsize=8)
def _make_train_step(config: models.HeadConfig, learning_rate: float):
  """(optimizer, jitted step), cached so that heads trained one after the
  other with one architecture (bench, tests) compile once per shape."""
  head = models.make_head(config)
  optimizer = optax.adam(learning_rate)

  def loss_fn(params, batch, rng):
    x, mask = _model_inputs(batch)
    logits = head.apply({"params": params}, x, mask, train=True,
                        rngs={"dropout": rng})
    # The paper trains the two outputs jointly by adding their losses.
    return sum(masked_cross_entropy(logits[t], batch[t]) for t in config.tasks)

  @jax.jit
  def step(params, opt_state, batch, rng):
    loss, grads = jax.value_and_grad(loss_fn)(params, batch, rng)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return optimizer, step


@functools.lru_cache(maxsize=8)
def _make_predict(config: models.HeadConfig):
  """One jitted function per head config: validation runs every epoch and
  must not compile anew each time."""
  head = models.make_head(config)

  @jax.jit
  def predict_batch(params, x, mask):
    logits = head.apply({"params": params}, x, mask)
    return {t: jax.nn.softmax(v, axis=-1) for t, v in logits.items()}

  return predict_batch


def predict(config: models.HeadConfig, params: dict,
            features: Sequence[np.ndarray], batch_size: int = 16
            ) -> list[dict[str, np.ndarray]]:
  """Class probabilities per protein: {task: (L, C) or (C,)}."""
  predict_batch = _make_predict(config)
  order = sorted(range(len(features)), key=lambda i: len(features[i]))
  results: list[dict[str, np.ndarray]] = [{} for _ in features]
  for start in range(0, len(order), batch_size):
    chunk = order[start:start + batch_size]
    batch = _batch([features[i] for i in chunk], [{}] * len(chunk), (),
                   config.per_residue_input, batch_size)
    probs = jax.device_get(predict_batch(params, *_model_inputs(batch)))
    for row, i in enumerate(chunk):
      results[i] = {t: (p[row, :len(features[i])] if config.per_residue_output
                        else p[row]) for t, p in probs.items()}
  return results


def mean_loss(probabilities: Sequence[Mapping[str, np.ndarray]],
              labels: Sequence[Labels], tasks: Sequence[str]) -> float:
  """Sum over tasks of the mean negative log-likelihood of labelled items."""
  total = 0.0
  for t in tasks:
    p = np.concatenate([np.reshape(pr[t], (-1, pr[t].shape[-1]))
                        for pr in probabilities])
    y = np.concatenate([np.reshape(l[t], -1) for l in labels])
    valid = y != readers.IGNORE
    if valid.any():
      chosen = p[np.flatnonzero(valid), y[valid]]
      total += float(-np.mean(np.log(np.maximum(chosen, 1e-12))))
  return total


def split_validation(n: int, fraction: float, seed: int
                     ) -> tuple[np.ndarray, np.ndarray]:
  """(train indices, validation indices): a seeded random split."""
  order = np.random.default_rng(seed).permutation(n)
  n_val = max(1, int(round(n * fraction)))
  if n_val >= n:
    raise ValueError(f"{n} proteins cannot give a training and a "
                     "validation split")
  return np.sort(order[n_val:]), np.sort(order[:n_val])


def train(config: models.HeadConfig, features: Sequence[np.ndarray],
          labels: Sequence[Labels], train_config: TrainConfig = TrainConfig(),
          validation: tuple[Sequence[np.ndarray], Sequence[Labels]] | None
          = None) -> TrainResult:
  """Fits a head; early stopping on `validation` or on a split of the data.

  Args:
    config: the head's architecture.
    features: one array per protein ((L, d) or (d,), per the head).
    labels: one {task: labels} per protein, aligned with `features`.
    train_config: optimisation settings.
    validation: (features, labels) held out for early stopping; None splits
      `train_config.validation_fraction` off the training data.
  """
  if validation is None:
    train_idx, val_idx = split_validation(
        len(features), train_config.validation_fraction, train_config.seed)
    validation = ([features[i] for i in val_idx], [labels[i] for i in val_idx])
    features = [features[i] for i in train_idx]
    labels = [labels[i] for i in train_idx]
  optimizer, step = _make_train_step(config, train_config.learning_rate)
  params = models.init_params(config, train_config.seed)
  opt_state = optimizer.init(params)
  rng = np.random.default_rng(train_config.seed)
  dropout_key = jax.random.key(train_config.seed + 1)
  best = (np.inf, params, 0)
  history = []
  for epoch in range(1, train_config.max_epochs + 1):
    losses = []
    for batch in _batches(features, labels, rng.permutation(len(features)),
                          train_config.batch_size, config.tasks,
                          config.per_residue_input):
      dropout_key, key = jax.random.split(dropout_key)
      params, opt_state, loss = step(params, opt_state, batch, key)
      losses.append(float(loss))
    val_loss = mean_loss(predict(config, params, validation[0]),
                         validation[1], config.tasks)
    history.append((float(np.mean(losses)), val_loss))
    logger.info("epoch %d: train loss %.4f, validation loss %.4f", epoch,
                history[-1][0], val_loss)
    if val_loss < best[0]:
      best = (val_loss, params, epoch)
    elif epoch - best[2] >= train_config.patience:
      break
  return TrainResult(params=best[1], best_epoch=best[2],
                     history=tuple(history))
