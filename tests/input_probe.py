"""One process of a multi-process input check (tests/test_train_inputs.py).

Joins a `jax.distributed` run as the scripts do (`cli`'s distributed flags:
--coordinator_address, or the job the environment describes), then for each mesh
shape given reports, as JSON, what this process's training input reads: its
shard, the ids of one epoch of its shard's examples, how many rows each
batch has, and a digest of its first batches.
"""

import hashlib
import json
import sys

from absl import app
from absl import flags
import jax
import numpy as np

from prottrans_jax import cli
from prottrans_jax import partitioning
import prottrans_jax.tasks  # pylint: disable=unused-import  (registers tasks)
from prottrans_jax.training import inputs

TASK = "swissprot_sample_prott5_denoise"
LENGTHS = {"inputs": 64, "targets": 64}
BATCH_SIZE = 8

_DISTRIBUTED = cli.define_distributed_flags()
_MESHES = flags.DEFINE_multi_string("mesh", ["4,2"], "data,model")


def probe(mesh_shape: tuple[int, int]) -> dict:
  mesh = partitioning.create_mesh(mesh_shape=mesh_shape)
  sharding = partitioning.batch_sharding(mesh, partitioning.logical_axis_rules())
  shard = inputs.input_shard(sharding, BATCH_SIZE)
  epoch = inputs.train_examples(TASK, LENGTHS, shard, seed=0, num_epochs=1)
  ids = [x["id"].decode() for x in epoch.as_numpy_iterator()]
  train_input = inputs.TrainInput(TASK, LENGTHS, shard, seed=0)
  digest = hashlib.sha256()
  rows = []
  for _ in range(3):
    batch = next(train_input)
    rows.append(len(batch["decoder_target_tokens"]))
    for name in sorted(batch):
      digest.update(np.ascontiguousarray(batch[name]).tobytes())
    global_batch = partitioning.global_batch_from_process_rows(
        batch, sharding, BATCH_SIZE)
    assert global_batch["decoder_target_tokens"].shape == (BATCH_SIZE, 64)
  return {"mesh": list(mesh_shape), "shard_index": shard.index,
          "shard_count": shard.count, "rows": rows, "epoch_ids": ids,
          "digest": digest.hexdigest()}


def main(argv):
  del argv
  _DISTRIBUTED.initialize()
  results = [probe(tuple(int(n) for n in m.split(","))) for m in _MESHES.value]
  print(json.dumps({"process": jax.process_index(), "results": results}))
  sys.stdout.flush()


if __name__ == "__main__":
  app.run(main)
