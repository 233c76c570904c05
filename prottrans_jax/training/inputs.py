"""Batches from seqio tasks, each process reading only its shard.

A global batch is laid over the mesh's `data` axis; each process holds some
of its rows. Processes that hold the same rows (model parallelism across
hosts) form one *input shard*: they read the same `seqio.ShardInfo` shard
with the same seed, so they produce identical rows, and the shards are
disjoint. Per-host input work therefore shrinks as hosts are added, and
`jax.make_array_from_process_local_data` assembles the global batch from
what each process read (partitioning.global_batch_from_process_rows).

The data position of a training run is the state of each process's tf.data
iterator (shuffle buffer, packing carry-over, random-seed streams included),
saved with every checkpoint as the `dataset` item (one file per process, as
T5X's `save_dataset` does) and restored in constant time: nothing is re-read
on resume.
"""

import dataclasses
import os
from typing import Any, Iterator, Mapping

from absl import logging
from etils import epath
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp
import seqio
import tensorflow as tf

from prottrans_jax import fs
from prottrans_jax import partitioning

Batch = dict[str, np.ndarray]
EVAL_SEED = 0


@dataclasses.dataclass(frozen=True)
class InputShard:
  """This process's part of every global batch.

  Attributes:
    index, count: the shard this process reads, of `count` disjoint shards
      (one per distinct block of batch rows held by processes).
    rows: the rows of the global batch this process's devices hold.
  """
  index: int
  count: int
  rows: slice

  @classmethod
  def whole(cls, batch_size: int) -> "InputShard":
    """The one shard of a single-process run: every row of every batch."""
    return cls(index=0, count=1, rows=slice(0, batch_size))

  @property
  def batch_size(self) -> int:
    return self.rows.stop - self.rows.start

  def shard_info(self) -> seqio.ShardInfo | None:
    return seqio.ShardInfo(self.index, self.count) if self.count > 1 else None


def input_shard(sharding: jax.sharding.Sharding,
                global_batch_size: int) -> InputShard:
  """The input shard of this process for batches laid out by `sharding`.

  Computed from the sharding alone (every process gets the same answer
  without communicating): each process's block of rows, one shard per
  distinct block, numbered in row order.
  """
  blocks = partitioning.batch_rows_by_process(sharding, global_batch_size)
  distinct = sorted({(b.start, b.stop) for b in blocks.values()})
  sizes = {stop - start for start, stop in distinct}
  if len(sizes) != 1 or sum(sizes) * len(distinct) != global_batch_size:
    raise ValueError(
        f"processes hold uneven or overlapping blocks of the batch's "
        f"{global_batch_size} rows: {distinct}")
  rows = blocks[jax.process_index()]
  return InputShard(index=distinct.index((rows.start, rows.stop)),
                    count=len(distinct), rows=rows)


def _to_numpy(element: Mapping[str, tf.Tensor]) -> Batch:
  return {k: v.numpy() for k, v in element.items()}


def train_examples(task_name: str, feature_lengths: Mapping[str, int],
                   shard: InputShard, seed: int,
                   num_epochs: int | None = None) -> tf.data.Dataset:
  """This shard's preprocessed training examples, shuffled, before packing:
  what `TrainInput` packs into batches (`num_epochs=None`: endless)."""
  return seqio.get_mixture_or_task(task_name).get_dataset(
      dict(feature_lengths), split="train", shuffle=True, seed=seed,
      num_epochs=num_epochs, shard_info=shard.shard_info())


class TrainInput:
  """This process's rows of every training batch: packed, shuffled, endless.

  Iterating gives numpy batches of `shard.batch_size` rows; the position can
  be saved and restored (`save_state` / `restore_state`), which is how a
  resumed run sees exactly the batches an uninterrupted one would have.

  With `segment_length`, each batch of rows is given as its consecutive
  windows instead (`consecutive_windows`), one per step, so the position
  counts windows and a run stopped inside a batch of rows resumes inside it.
  """

  def __init__(self, task_name: str, feature_lengths: Mapping[str, int],
               shard: InputShard, seed: int,
               feature_converter: type = seqio.EncDecFeatureConverter,
               segment_length: int | None = None):
    self.shard = shard
    ds = feature_converter(pack=True)(
        train_examples(task_name, feature_lengths, shard, seed),
        task_feature_lengths=dict(feature_lengths))
    ds = ds.batch(shard.batch_size, drop_remainder=True)
    if segment_length is not None:
      ds = ds.map(lambda rows: consecutive_windows(rows, segment_length)).unbatch()
    self._dataset = ds.prefetch(tf.data.AUTOTUNE)
    self._iterator = iter(self._dataset)

  def __iter__(self) -> Iterator[Batch]:
    return self

  def __next__(self) -> Batch:
    return _to_numpy(next(self._iterator))

  def skip(self, num_batches: int) -> None:
    """Moves on `num_batches` by reading them: the slow way, for a
    checkpoint that has no data state this run can use."""
    self._iterator = iter(self._dataset.skip(num_batches))

  @staticmethod
  def state_file_name() -> str:
    return f"process_{jax.process_index()}-of-{jax.process_count()}"

  def save_state(self, directory: epath.Path) -> None:
    """Writes this process's iterator state into `directory` (any path the
    filesystem layer reaches; staged locally, as TensorFlow's checkpoint
    writer names files itself)."""
    target = fs.path(directory) / self.state_file_name()
    with fs.staged_output(target) as local:
      local.mkdir(parents=True, exist_ok=True)
      tf.train.Checkpoint(iterator=self._iterator).write(
          os.fspath(local / "iterator"))

  def has_state(self, directory: epath.Path) -> bool:
    return (fs.path(directory) / self.state_file_name()).is_dir()

  def restore_state(self, directory: epath.Path) -> None:
    with fs.local_copy(fs.path(directory) / self.state_file_name()) as local:
      tf.train.Checkpoint(iterator=self._iterator).read(
          os.fspath(local / "iterator")).assert_consumed()


def consecutive_windows(rows: Mapping[str, tf.Tensor], segment_length: int
                        ) -> dict[str, tf.Tensor]:
  """A batch of rows [B, L] -> [L / segment_length, B, segment_length + 1]:
  each row's consecutive segments in order, each followed by the token
  after it (the next segment's first; zero after the row's last), which
  the segment's last position predicts. L must be a multiple of
  `segment_length` (`objectives.Objective.step_feature_lengths` checks)."""
  windows = {}
  for name, feature in rows.items():
    length = feature.shape[1]
    padded = tf.pad(feature, [[0, 0], [0, 1]])
    windows[name] = tf.stack([padded[:, start:start + segment_length + 1]
                              for start in range(0, length, segment_length)])
  return windows


class DataStateHandler(ocp.CheckpointHandler):
  """Orbax handler of the `dataset` item of a training checkpoint
  (checkpoints.DATASET): each process writes and reads its own iterator
  state. The save blocks (Orbax runs non-async handlers before `save`
  returns), so the state is the one at the checkpoint's step however the
  arrays are written."""

  def save(self, directory: epath.Path, args: "DataStateSave") -> None:
    args.train_input.save_state(directory)

  def restore(self, directory: epath.Path,
              args: "DataStateRestore | None" = None) -> None:
    if args is None:
      raise ValueError("restoring the data state needs the TrainInput")
    args.train_input.restore_state(directory)

  def metadata(self, directory: epath.Path) -> None:
    del directory

  def finalize(self, directory: epath.Path) -> None:
    del directory

  def close(self) -> None:
    pass


@ocp.args.register_with_handler(DataStateHandler, for_save=True)
@dataclasses.dataclass
class DataStateSave(ocp.args.CheckpointArgs):
  train_input: TrainInput


@ocp.args.register_with_handler(DataStateHandler, for_restore=True)
@dataclasses.dataclass
class DataStateRestore(ocp.args.CheckpointArgs):
  train_input: TrainInput


def _agreed(local: Iterator[Batch], template: Mapping[str, Any]
            ) -> Iterator[Batch]:
  """Batches until no process has one left; a process that ran out feeds
  rows of zeros (zero loss weight) so that every process runs every step."""
  for batch in _with_end(local):
    have = batch is not None
    if jax.process_count() > 1:
      have_any = bool(np.any(multihost_utils.process_allgather(
          np.int32(have))))
    else:
      have_any = have
    if not have_any:
      return
    yield batch if have else {k: np.zeros(shape, dtype)
                              for k, (shape, dtype) in template.items()}


def _with_end(batches: Iterator[Batch]) -> Iterator[Batch | None]:
  yield from batches
  while True:
    yield None


def eval_batches(task_name: str, feature_lengths: Mapping[str, int],
                 shard: InputShard, split: str = "validation",
                 max_batches: int | None = None,
                 feature_converter: type = seqio.EncDecFeatureConverter
                 ) -> Iterator[Batch]:
  """This process's rows of unpacked batches of a split, one pass.

  Sharded like training; each process's last batch is padded with rows of
  zeros (zero loss weight), so every example counts exactly once, and all
  processes run the same number of steps (`max_batches` caps it).

  The seed is fixed so that random preprocessing (which residues are
  masked) is the same in every evaluation.
  """
  ds = seqio.get_dataset(
      task_name, dict(feature_lengths),
      feature_converter(pack=False), dataset_split=split,
      shuffle=False, num_epochs=1, seed=EVAL_SEED,
      shard_info=shard.shard_info())
  rows = shard.batch_size
  ds = ds.batch(rows)
  if max_batches is not None:
    ds = ds.take(max_batches)
  template = {k: ((rows,) + tuple(spec.shape[1:]), spec.dtype.as_numpy_dtype)
              for k, spec in ds.element_spec.items()}

  def padded():
    for batch in ds.as_numpy_iterator():
      missing = rows - len(next(iter(batch.values())))
      yield {k: np.pad(v, [(0, missing)] + [(0, 0)] * (v.ndim - 1))
             for k, v in batch.items()}

  yield from _agreed(padded(), template)


def mask_id(task_name: str) -> int:
  """The mask token of the task's input vocabulary; -1 (none) for a task
  without inputs (a causal LM reads its targets)."""
  task = seqio.get_mixture_or_task(task_name)
  if "inputs" not in task.output_features:
    return -1
  return task.output_features["inputs"].vocabulary.mask_id


def log_shard(shard: InputShard, global_batch_size: int) -> None:
  logging.info("input shard %d of %d: %d of the %d rows of every batch "
               "(rows %d:%d)", shard.index, shard.count, shard.batch_size,
               global_batch_size, shard.rows.start, shard.rows.stop)
