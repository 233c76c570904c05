r"""Fine-tunes a pre-trained encoder with a task head (LoRA or full).

  prottrans-finetune --gin_file=models/prott5_xl.gin \
    --gin_file=runs/finetune_per_residue.gin \
    --gin.MODEL_DIR="'runs/ss_lora'" \
    --gin.INITIAL_CHECKPOINT_PATH="'converted/prott5_xl'"

The model gin file picks the encoder (its `trainer.train.model_config`), the
run file the head, adapters, data and optimizer
(prottrans_jax/training/finetune.py). Started again on the same MODEL_DIR,
the run continues exactly from its latest checkpoint.
"""

import sys

from absl import flags
import gin

from prottrans_jax import cli
from prottrans_jax import gin_utils
from prottrans_jax import run_lock
from prottrans_jax.training import finetune
from prottrans_jax.training import trainer


def run():
  encoder = gin_utils.configured_arguments(trainer.train).get("model_config")
  if encoder is None:
    sys.exit("prottrans-finetune: error: no encoder: pass a model gin file "
             "(e.g. --gin_file=models/prott5_xl.gin) before the run file")
  try:
    config = gin.get_configurable(finetune.make_config)(encoder_config=encoder)
    gin.get_configurable(finetune.train)(config=config)
  except (ValueError, FloatingPointError, run_lock.LockHeldError) as e:
    sys.exit(f"prottrans-finetune: error: {e}")


_GIN_FLAGS = gin_utils.define_gin_flags()
_DISTRIBUTED = cli.define_distributed_flags()
flags.adopt_module_key_flags(cli)  # --help lists them.


def start() -> None:
  gin_utils.run_gin_main(run, _GIN_FLAGS, _DISTRIBUTED)
