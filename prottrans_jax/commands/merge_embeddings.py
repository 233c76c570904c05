"""Merges the shards of a sharded embedding run into the HDF5 file users read.

  prottrans-merge-embeddings --output gs://b/emb/uniref50.h5
  prottrans-merge-embeddings --output /data/emb.h5 --links

`prottrans-embed --num_shards N` leaves OUTPUT.parts/shard-<i>-of-<N>/, one
directory of chunk files per shard. When every shard is complete, this
writes OUTPUT as a single-shard run would have: one dataset per protein
named by its id, the full header in the attribute `original_id` (one file
per output when the run wrote several: OUTPUT with .per_residue,
.per_protein, .layer<k> before the extension). It refuses, naming them,
shards that are missing or unfinished (with the command that finishes each)
and ids that two shards both hold.

--links writes instead an index file of HDF5 virtual datasets over the chunk
files: nothing is copied (per-residue output of millions of proteins), and
readers see the same f[protein_id] as long as OUTPUT and OUTPUT.parts stay
together (local files only). Without merging at all,
`prottrans_jax.inference.read_embeddings(OUTPUT)` streams every shard's
proteins.
"""

import sys

from absl import app
from absl import flags

from prottrans_jax.inference import h5_writer
from prottrans_jax.inference import shards

_OUTPUT = flags.DEFINE_string(
    "output", None, "The --output the embed runs were given (local or "
    "gs://); its .parts directory holds the shards.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False,
                               "Replace existing merged files.")
_LINKS = flags.DEFINE_bool(
    "links", False, "Write virtual datasets over the chunk files instead of "
    "copying them (local files only).")
_REMOVE_PARTS = flags.DEFINE_bool(
    "remove_parts", False, "Delete OUTPUT.parts after a successful merge "
    "(not with --links, which reads them).")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar.")
flags.mark_flag_as_required("output")


def main(argv):
  del argv
  try:
    if _LINKS.value and _REMOVE_PARTS.value:
      raise ValueError("--links reads the chunk files: do not --remove_parts")
    merged = shards.merge(_OUTPUT.value, overwrite=_OVERWRITE.value,
                          links=_LINKS.value, progress=_PROGRESS.value)
    if _REMOVE_PARTS.value:
      shards.remove_parts(_OUTPUT.value)
  except (h5_writer.OutputError, ValueError) as e:
    sys.exit(f"merge_embeddings.py: error: {e}")
  print("wrote " + ", ".join(str(path) for path in merged.values()))


def start() -> None:
  """Parses the command line and runs the command."""
  app.run(main)


if __name__ == "__main__":
  start()
