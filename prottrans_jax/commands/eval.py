r"""Evaluates a checkpoint on a split: loss, perplexity, masked-residue accuracy.

  prottrans-eval \
    --gin_file=runs/eval.gin \
    --gin.MODEL_DIR="'runs/prott5_tiny'"

Multi-process (one call per process, same flags otherwise):
  --coordinator_address=HOST:PORT --num_processes=N --process_id=I
"""

import gin

from prottrans_jax import gin_utils
from prottrans_jax.training import trainer


def evaluate():
  gin.get_configurable(trainer.evaluate)()


start = gin_utils.gin_command("prottrans-eval", __name__, evaluate)


if __name__ == "__main__":
  start()
