"""Throughput of the ProtT5 pre-training input pipeline.

Prints examples/s and residues/s of a seqio task, as tokenized, masked and
(optionally) packed batches come out of the feature converter — the rate a
trainer on this host could be fed at.

  python bench/data_pipeline.py [--task swissprot_sample_prott5_denoise]
"""

import time

from absl import app
from absl import flags
import numpy as np
import seqio

import prottrans_jax.tasks  # pylint: disable=unused-import  (registers the tasks)

import _machine

_TASK = flags.DEFINE_string("task", "swissprot_sample_prott5_denoise",
                            "Registered seqio task.")
_LENGTH = flags.DEFINE_integer("length", 512, "Task feature length.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Examples per batch.")
_EPOCHS = flags.DEFINE_integer("epochs", 10, "Passes over the train split.")


def _measure(pack: bool) -> tuple[float, float, float]:
  converter = seqio.EncDecFeatureConverter(pack=pack)
  ds = seqio.get_dataset(_TASK.value, {"inputs": _LENGTH.value,
                                       "targets": _LENGTH.value},
                         dataset_split="train", shuffle=True, seed=0,
                         num_epochs=_EPOCHS.value, feature_converter=converter)
  ds = ds.batch(_BATCH.value)
  start = time.perf_counter()
  rows = residues = examples = 0
  for batch in ds.as_numpy_iterator():
    targets = batch["decoder_target_tokens"]
    rows += targets.shape[0]
    residues += int((targets > 1).sum())  # Not padding, not </s>.
    if pack:
      examples += int(sum(len(np.unique(s[s > 0]))
                          for s in batch["decoder_segment_ids"]))
    else:
      examples += int((targets[:, 0] > 0).sum())
  seconds = time.perf_counter() - start
  return examples / seconds, residues / seconds, rows / seconds


def main(argv):
  del argv
  print(f"machine: {_machine.describe()}; task {_TASK.value}, length {_LENGTH.value}, "
        f"batch {_BATCH.value}, {_EPOCHS.value} epochs")
  for pack in (False, True):
    eps, rps, bps = _measure(pack)
    print(f"pack={pack!s:5}  {eps:10.1f} examples/s  {rps:12.0f} residues/s  "
          f"{bps:8.1f} rows/s")


if __name__ == "__main__":
  app.run(main)
