r"""Predicts secondary structure and localization for the proteins of a FASTA.

  prottrans-predict --fasta new.fasta --embeddings new.h5 \
      --heads heads/ss,heads/loc --output_prefix predictions/new

Writes PREFIX.tsv (one row per protein: q3/q8 strings, localization and
membrane classes, their probabilities) and PREFIX.json (the same, with the
probability of every localization class). --embeddings are the per-residue
embeddings of the same FASTA (prottrans-embed); one-hot heads need none.
Every path may be a gs:// URL (an embeddings file there is copied to a
local temporary file to read).
"""

import sys

from absl import app
from absl import flags

from prottrans_jax.data import fasta
from prottrans_jax.downstream import predict
from prottrans_jax.downstream import readers

_FASTA = flags.DEFINE_string("fasta", None, "Proteins to predict.")
_EMBEDDINGS = flags.DEFINE_string("embeddings", None,
                                  "Their per-residue embeddings (HDF5).")
_HEADS = flags.DEFINE_list("heads", None, "Trained head directories.")
_OUTPUT = flags.DEFINE_string("output_prefix", None,
                              "Writes PREFIX.tsv and PREFIX.json.")

flags.mark_flags_as_required(["fasta", "heads", "output_prefix"])


def main(argv):
  del argv
  try:
    paths = predict.write_predictions(
        predict.predict_fasta(_FASTA.value, _EMBEDDINGS.value, _HEADS.value),
        _OUTPUT.value)
  except (fasta.FastaError, readers.LabelError, FileNotFoundError,
          ValueError) as e:
    sys.exit(f"predict.py: error: {e}")
  print("wrote " + " and ".join(paths))


def start() -> None:
  """Parses the command line and runs the command."""
  app.run(main)


if __name__ == "__main__":
  start()
