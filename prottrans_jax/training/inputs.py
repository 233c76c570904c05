"""Batches from seqio tasks: packed for training, padded for evaluation.

Every process builds the same global batch stream (see
`prottrans_jax.partitioning`); it is deterministic given the seed, so the
data position of a run is just the number of batches it has consumed.
"""

from typing import Iterator, Mapping

import numpy as np
import seqio
import tensorflow as tf

Batch = dict[str, np.ndarray]
EVAL_SEED = 0


def train_batches(task_name: str, feature_lengths: Mapping[str, int],
                  batch_size: int, seed: int, start_batch: int = 0,
                  feature_converter: type = seqio.EncDecFeatureConverter
                  ) -> Iterator[Batch]:
  """Packed, shuffled, endlessly repeated global batches from `start_batch`.

  A resumed run passes the number of batches it had consumed and sees
  exactly the batches an uninterrupted run would have seen next.
  `feature_converter` is the model family's (objectives.Setup).
  """
  ds = seqio.get_dataset(
      task_name, dict(feature_lengths),
      feature_converter(pack=True), dataset_split="train",
      shuffle=True, num_epochs=None, seed=seed, batch_size=batch_size)
  return ds.skip(start_batch).prefetch(tf.data.AUTOTUNE).as_numpy_iterator()


def eval_batches(task_name: str, feature_lengths: Mapping[str, int],
                 batch_size: int, split: str = "validation",
                 max_batches: int | None = None,
                 feature_converter: type = seqio.EncDecFeatureConverter
                 ) -> Iterator[Batch]:
  """Unpacked batches of a split, one pass; the last one padded with rows of
  zeros (zero loss weight), so every example counts exactly once.

  The seed is fixed so that random preprocessing (which residues are
  masked) is the same in every evaluation.
  """
  ds = seqio.get_dataset(
      task_name, dict(feature_lengths),
      feature_converter(pack=False), dataset_split=split,
      shuffle=False, num_epochs=1, seed=EVAL_SEED)
  ds = ds.batch(batch_size)
  if max_batches is not None:
    ds = ds.take(max_batches)
  for batch in ds.as_numpy_iterator():
    missing = batch_size - len(next(iter(batch.values())))
    yield {k: np.pad(v, [(0, missing)] + [(0, 0)] * (v.ndim - 1))
           for k, v in batch.items()}


def mask_id(task_name: str) -> int:
  """The mask token of the task's input vocabulary."""
  task = seqio.get_mixture_or_task(task_name)
  return task.output_features["inputs"].vocabulary.mask_id
