r"""Trains a downstream head on embeddings (or the one-hot baseline).

  # Secondary structure (Q3/Q8) from per-residue embeddings:
  prottrans-train-downstream --head ss_cnn \
      --labels train.csv --label_format netsurfp --embeddings train.h5 \
      --output_dir heads/ss [--test_labels test.csv]
  # Localization (Q10) and membrane (Q2), paper's FNN on mean embeddings:
  prottrans-train-downstream --head mlp --labels deeploc.fasta \
      --label_format deeploc --embeddings deeploc.h5 --output_dir heads/loc

The embeddings file must hold every labelled protein (embed the same
sequences: FASTA ids, or for NetSurfP CSVs the ids `<stem>_<row>` that
`readers.write_fasta` writes). Per-residue embeddings serve every head; the
MLP takes their mean. The head is saved as an Orbax checkpoint in
--output_dir; --test_labels prints its Q3/Q8 or Q10/Q2 with standard errors.
Every path may be a gs:// URL (an embeddings file there is copied to a
local temporary file for each set read).
"""

import sys

from absl import app
from absl import flags

from prottrans_jax.downstream import features
from prottrans_jax.downstream import metrics
from prottrans_jax.downstream import models
from prottrans_jax.downstream import pipeline
from prottrans_jax.downstream import readers
from prottrans_jax.downstream import trainer

_HEAD = flags.DEFINE_enum("head", None, sorted(models.HEADS),
                          "ss_cnn: secondary structure; mlp or "
                          "light_attention: localization + membrane.")
_LABELS = flags.DEFINE_string("labels", None, "Training labels.")
_FORMAT = flags.DEFINE_enum("label_format", None,
                            sorted(readers.CLASSIFICATION_FORMATS),
                            "netsurfp CSV, deeploc FASTA, or the bundled "
                            "Swiss-Prot sample's annotation TSV (regression "
                            "TSVs train with prottrans-finetune).")
_EMBEDDINGS = flags.DEFINE_string(
    "embeddings", None, "HDF5 from prottrans-embed (per residue).")
_ONEHOT = flags.DEFINE_bool("onehot", False,
                            "Train on one-hot residues (the baseline).")
_OUTPUT = flags.DEFINE_string("output_dir", None, "Where the head is saved.")
_VALIDATION = flags.DEFINE_string(
    "validation_labels", None, "Early-stopping set (same format); default: "
    "a held-out share of --labels.")
_TEST = flags.DEFINE_string("test_labels", None,
                            "Scored after training (same format).")
_LIMIT = flags.DEFINE_integer("limit", None, "Read at most this many "
                              "proteins of each set.")
_EPOCHS = flags.DEFINE_integer("max_epochs", 50, "Upper bound on epochs.")
_PATIENCE = flags.DEFINE_integer("patience", 5, "Early-stopping patience.")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Proteins per step.")
_LR = flags.DEFINE_float("learning_rate", 1e-3, "Adam step size.")
_SEED = flags.DEFINE_integer("seed", 0, "Initialisation, shuffling, split.")

flags.mark_flags_as_required(["head", "labels", "label_format", "output_dir"])


def main(argv):
  del argv
  if bool(_EMBEDDINGS.value) == _ONEHOT.value:
    raise app.UsageError("give exactly one of --embeddings and --onehot")
  try:
    head, scores = pipeline.train_from_files(
        _HEAD.value, _LABELS.value, _FORMAT.value,
        features.ONEHOT if _ONEHOT.value else _EMBEDDINGS.value,
        _OUTPUT.value,
        trainer.TrainConfig(learning_rate=_LR.value,
                            batch_size=_BATCH.value,
                            max_epochs=_EPOCHS.value,
                            patience=_PATIENCE.value, seed=_SEED.value),
        _VALIDATION.value, _TEST.value, _LIMIT.value)
  except (readers.LabelError, FileNotFoundError, ValueError) as e:
    sys.exit(f"train_downstream.py: error: {e}")
  print(f"{_OUTPUT.value}: {_HEAD.value} head, {head.info['trained_on']} "
        f"proteins, best epoch {head.info['best_epoch']}")
  for task, score in (scores or {}).items():
    print(f"  {metrics.SCORE_NAMES[task]} {metrics.format_score(score)} "
          f"({score.proteins} proteins, {score.items} labelled items)")


def start() -> None:
  """Parses the command line and runs the command."""
  app.run(main)


if __name__ == "__main__":
  start()
