r"""Evaluates a checkpoint on a split: loss, perplexity, masked-residue accuracy.

  prottrans-eval \
    --gin_file=runs/eval.gin \
    --gin.MODEL_DIR="'runs/prott5_tiny'"

Multi-process (one call per process, same flags otherwise):
  --coordinator_address=HOST:PORT --num_processes=N --process_id=I
"""

from absl import flags
import gin

from prottrans_jax import cli
from prottrans_jax import gin_utils
from prottrans_jax.training import trainer


def evaluate():
  gin.get_configurable(trainer.evaluate)()


_GIN_FLAGS = gin_utils.define_gin_flags()
_DISTRIBUTED = cli.define_distributed_flags()
flags.adopt_module_key_flags(cli)  # --help lists them.

def start() -> None:
  """Parses the command line and runs the command."""
  gin_utils.run_gin_main(evaluate, _GIN_FLAGS, _DISTRIBUTED)


if __name__ == "__main__":
  start()
