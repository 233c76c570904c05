"""Prints decoded examples of a registered pre-training task.

  python scripts/show_examples.py --task swissprot_sample_prott5_denoise
"""

from absl import app
from absl import flags

from prottrans_jax.tasks import inspection

_TASK = flags.DEFINE_string("task", "swissprot_sample_prott5_denoise",
                            "Registered seqio task name.")
_LENGTH = flags.DEFINE_integer("length", 512, "Feature length (residues + "
                               "special tokens) for inputs and targets.")
_NUM = flags.DEFINE_integer("num_examples", 3, "How many examples to print.")
_SPLIT = flags.DEFINE_enum("split", "train", ["train", "validation"], "Split.")
_SEED = flags.DEFINE_integer("seed", 0, "Shuffling and masking seed.")


def main(argv):
  del argv
  try:
    text = inspection.describe_examples(
        _TASK.value, {"inputs": _LENGTH.value, "targets": _LENGTH.value},
        _NUM.value, _SPLIT.value, _SEED.value)
  except ValueError as e:
    raise app.UsageError(f"--task: {e}") from e
  print(text)


if __name__ == "__main__":
  app.run(main)
