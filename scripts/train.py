r"""Trains a model configured by gin (T5X conventions).

  python scripts/train.py \
    --gin_file=gin/models/prott5_tiny.gin --gin_file=gin/runs/pretrain.gin \
    --gin.MODEL_DIR="'runs/prott5_tiny'" --gin.TRAIN_STEPS=300

Multi-process (one call per process, same flags otherwise):
  --coordinator_address=HOST:PORT --num_processes=N --process_id=I
"""

import sys

from absl import app
from absl import flags
from absl import logging
import gin

from prottrans_jax import gin_utils
from prottrans_jax import partitioning
from prottrans_jax.training import trainer

_GIN_FILES = flags.DEFINE_multi_string(
    "gin_file", [], "gin files, in order (model first, then run).")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "HOST:PORT of process 0 (multi-process).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 1, "processes in all.")
_PROCESS_ID = flags.DEFINE_integer("process_id", 0, "this process's index.")

_BINDINGS = []


def main(argv):
  del argv
  if _COORDINATOR.value:
    partitioning.initialize_distributed(
        _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  try:
    gin_utils.parse(_GIN_FILES.value, _BINDINGS)
  except gin_utils.GinConfigError as e:
    raise app.UsageError(str(e)) from e
  logging.set_verbosity(logging.INFO)
  gin.get_configurable(trainer.train)(
      describe_config=gin.operative_config_str)


if __name__ == "__main__":
  argv, _BINDINGS[:] = gin_utils.split_gin_bindings(sys.argv)
  app.run(main, argv=argv)
