r"""Draws a 2-D map of per-protein embeddings coloured by a label (Fig. 4).

  prottrans-visualize --embeddings deeploc.h5 \
      --labels deeploc.fasta --label_format deeploc \
      --color_by localization --output maps/deeploc_tsne.png [--method umap]

Writes the PNG and the coordinates next to it (same name, .tsv). t-SNE
always works; UMAP needs the optional umap-learn package. Every path may be
a gs:// URL.
"""

import sys

from absl import app
from absl import flags

from prottrans_jax.downstream import features
from prottrans_jax.downstream import maps
from prottrans_jax.downstream import readers

_EMBEDDINGS = flags.DEFINE_string(
    "embeddings", None, "HDF5 from prottrans-embed (per residue or per "
    "protein).")
_ONEHOT = flags.DEFINE_bool("onehot", False, "Map amino-acid composition "
                            "instead (the baseline).")
_LABELS = flags.DEFINE_string("labels", None, "Proteins to map and labels.")
_FORMAT = flags.DEFINE_enum("label_format", None, sorted(readers.FORMATS),
                            "Format of --labels.")
_COLOR = flags.DEFINE_enum("color_by", "localization",
                           list(readers.PROTEIN_TASKS), "Colouring label.")
_METHOD = flags.DEFINE_enum("method", "tsne", ["tsne", "umap"],
                            "Projection.")
_OUTPUT = flags.DEFINE_string("output", None, "PNG to write.")
_LIMIT = flags.DEFINE_integer("limit", None, "Map at most this many.")
_SEED = flags.DEFINE_integer("seed", 0, "Projection seed.")

flags.mark_flags_as_required(["labels", "label_format", "output"])


def main(argv):
  del argv
  if bool(_EMBEDDINGS.value) == _ONEHOT.value:
    raise app.UsageError("give exactly one of --embeddings and --onehot")
  try:
    coords = maps.embedding_map(
        readers.read_labels(_LABELS.value, _FORMAT.value, _LIMIT.value),
        features.ONEHOT if _ONEHOT.value else _EMBEDDINGS.value,
        _COLOR.value, _OUTPUT.value, _METHOD.value, _SEED.value)
  except (readers.LabelError, FileNotFoundError, ValueError) as e:
    sys.exit(f"visualize.py: error: {e}")
  print(f"wrote {_OUTPUT.value}: {len(coords)} proteins")


def start() -> None:
  """Parses the command line and runs the command."""
  app.run(main)


if __name__ == "__main__":
  start()
