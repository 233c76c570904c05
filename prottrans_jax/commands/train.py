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

import sys

from absl import flags
import gin

from prottrans_jax import checkpoints
from prottrans_jax import cli
from prottrans_jax import gin_utils
from prottrans_jax import run_lock
from prottrans_jax.training import trainer


def train():
  try:
    gin.get_configurable(trainer.train)(
        describe_config=gin.operative_config_str)
  except (trainer.NonFiniteError, run_lock.LockHeldError,
          checkpoints.DamagedCheckpointError) as e:
    # The run cannot go on; the message names the step, holder or file.
    sys.exit(f"prottrans-train: error: {e}")


_GIN_FLAGS = gin_utils.define_gin_flags()
_DISTRIBUTED = cli.define_distributed_flags()
flags.adopt_module_key_flags(cli)  # --help lists them.


def start() -> None:
  """Parses the command line and runs the command."""
  gin_utils.run_gin_main(train, _GIN_FLAGS, _DISTRIBUTED)


if __name__ == "__main__":
  start()
