r"""Builds a protein corpus as a TFDS dataset (`tfds_builder.build_corpus`).

  python scripts/prepare_corpus.py --corpus=swissprot_sample --data_dir=DIR
  python scripts/prepare_corpus.py --corpus=custom --fasta='parts/*.fasta.gz' \
      --data_dir=DIR
  python scripts/prepare_corpus.py --corpus=uniref50 --data_dir=gs://b/tfds \
      --manual_dir=gs://b/manual --beam --beam_runner=DataflowRunner \
      --beam_pipeline_options=project=P,region=R,temp_location=gs://b/tmp

See docs/corpora.md.
"""

import sys

from absl import app
from absl import flags

from prottrans_jax.data import tfds_builder

_CORPUS = flags.DEFINE_enum("corpus", None, list(tfds_builder.CONFIGS),
                            "Which corpus (builder config) to build.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data dir to write.")
_FASTA = flags.DEFINE_list(
    "fasta", None, "FASTA paths or globs; required for --corpus=custom, "
    "replace the manual dir's files otherwise.")
_MANUAL_DIR = flags.DEFINE_string(
    "manual_dir", None, "Where the public FASTA files are "
    "(default <data_dir>/downloads/manual).")
_BEAM = flags.DEFINE_bool("beam", False, "Build with Apache Beam.")
_BEAM_RUNNER = flags.DEFINE_string(
    "beam_runner", None, "Beam runner name, e.g. DirectRunner, "
    "DataflowRunner, FlinkRunner, SparkRunner, FnApiRunner (with --beam).")
_BEAM_OPTIONS = flags.DEFINE_list(
    "beam_pipeline_options", None,
    "Comma-separated key=value Beam pipeline options (with --beam).")

flags.mark_flags_as_required(["corpus", "data_dir"])


def main(argv):
  del argv  # No positional arguments.
  try:
    builder = tfds_builder.build_corpus(
        _CORPUS.value, _DATA_DIR.value, _FASTA.value,
        manual_dir=_MANUAL_DIR.value, use_beam=_BEAM.value,
        beam_runner=_BEAM_RUNNER.value, beam_options=_BEAM_OPTIONS.value)
  except (FileNotFoundError, ValueError) as e:  # FastaError is a ValueError.
    sys.exit(f"prepare_corpus: {type(e).__name__}: {e}")
  print(f"{tfds_builder.tfds_name(_CORPUS.value)} in {_DATA_DIR.value}")
  for name, split in builder.info.splits.items():
    print(f"{name}: {split.num_examples}")


if __name__ == "__main__":
  app.run(main)
