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

import gin

from prottrans_jax import checkpoints
from prottrans_jax import gin_utils
from prottrans_jax import run_lock
from prottrans_jax.training import finetune
from prottrans_jax.training import loop
from prottrans_jax.training import trainer


def run():
  encoder = gin_utils.configured_arguments(trainer.train).get("model_config")
  if encoder is None:
    sys.exit("prottrans-finetune: error: no encoder: pass a model gin file "
             "(e.g. --gin_file=models/prott5_xl.gin) before the run file")
  config = gin.get_configurable(finetune.make_config)(encoder_config=encoder)
  gin.get_configurable(finetune.train)(
      config=config, describe_config=gin.operative_config_str)


# Bad settings, labelled files (LabelError: file and line) and checkpoints,
# a held run lock, a non-finite step: each message names what to fix.
start = gin_utils.gin_command(
    "prottrans-finetune", __name__, run,
    (ValueError, FileNotFoundError, loop.NonFiniteError,
     run_lock.LockHeldError, checkpoints.DamagedCheckpointError))
