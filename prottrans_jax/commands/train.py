r"""Trains a model configured by gin (T5X conventions).

  prottrans-train \
    --gin_file=models/prott5_tiny.gin --gin_file=runs/pretrain.gin \
    --gin.MODEL_DIR="'runs/prott5_tiny'" --gin.TRAIN_STEPS=300

MODEL_DIR may be a URL (gs://bucket/run). Started again on the same
MODEL_DIR, the run continues from its latest checkpoint and data position;
SIGTERM saves the current step and exits 0.

Multi-process: under SLURM (srun), Open MPI (mpirun) or on every host of a
Cloud TPU VM slice, the same command on each process (the job is found with
jax.distributed.initialize()); elsewhere add, per process,
  --coordinator_address=HOST:PORT --num_processes=N --process_id=I
Each process reads only its shard of the data.
"""

import gin

from prottrans_jax import checkpoints
from prottrans_jax import gin_utils
from prottrans_jax import run_lock
from prottrans_jax.training import loop
from prottrans_jax.training import trainer


def train():
  gin.get_configurable(trainer.train)(
      describe_config=gin.operative_config_str)


# The run cannot go on after these; their messages name the step, holder or
# file.
start = gin_utils.gin_command(
    "prottrans-train", __name__, train,
    (loop.NonFiniteError, run_lock.LockHeldError,
     checkpoints.DamagedCheckpointError))


if __name__ == "__main__":
  start()
