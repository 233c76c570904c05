"""The console commands installed with the package (`prottrans-embed`, ...).

Each command is a module here whose `start()` parses its flags and calls the
library; `scripts/<module>.py` runs the same module from a checkout. The
modules are imported only when their command starts, so `prottrans-embed`
never imports TensorFlow, and a training command on the light install says
which extra to add instead of failing on an import.
"""

import importlib
import os
import sys

from absl import flags

# Console command -> its module here (needing the `[train]` extra shows as a
# missing training package when the module is imported).
COMMANDS = {
    "prottrans-embed": "embed",
    "prottrans-merge-embeddings": "merge_embeddings",
    "prottrans-convert": "convert_checkpoint",
    "prottrans-train-downstream": "train_downstream",
    "prottrans-predict": "predict",
    "prottrans-visualize": "visualize",
    "prottrans-train": "train",
    "prottrans-eval": "eval",
    "prottrans-merge-lora": "merge_lora",
    "prottrans-finetune": "finetune",
    "prottrans-score-variants": "score_variants",
}
# Top-level packages only the `[train]` extra installs.
TRAIN_PACKAGES = frozenset({"tensorflow", "tensorflow_text", "seqio", "gin",
                            "tensorflow_datasets", "apache_beam"})


def launch(module_name: str) -> None:
  """Runs the command of `prottrans_jax.commands.<module_name>`."""
  command = next(c for c, m in COMMANDS.items() if m == module_name)
  try:
    module = importlib.import_module(f"{__name__}.{module_name}")
  except ModuleNotFoundError as e:
    if (e.name or "").split(".")[0] not in TRAIN_PACKAGES:
      raise
    sys.exit(f"{command}: this command needs the training extra ({e.name} "
             "is not installed): pip install 'prottrans_jax[train]'")
  if os.path.basename(sys.argv[0]) == command:
    sys.argv[0] = command  # "prottrans-embed", not the wrapper's full path.
  # absl's --help prints the __main__ module's docstring and the flags of
  # the program (sys.argv[0]): make them the command module's.
  sys.modules["__main__"].__doc__ = module.__doc__
  for flag in flags.FLAGS.get_key_flags_for_module(module):
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
  module.start()


def embed_command() -> None:
  launch("embed")


def merge_embeddings_command() -> None:
  launch("merge_embeddings")


def convert_command() -> None:
  launch("convert_checkpoint")


def train_downstream_command() -> None:
  launch("train_downstream")


def predict_command() -> None:
  launch("predict")


def visualize_command() -> None:
  launch("visualize")


def train_command() -> None:
  launch("train")


def evaluate_command() -> None:
  launch("eval")


def merge_lora_command() -> None:
  launch("merge_lora")


def finetune_command() -> None:
  launch("finetune")


def score_variants_command() -> None:
  launch("score_variants")
