r"""Builds a protein corpus as a TFDS dataset (`tfds_builder.build_corpus`).

  python scripts/prepare_corpus.py --corpus=swissprot_sample --data_dir=DIR
  python scripts/prepare_corpus.py --corpus=custom --fasta='parts/*.fasta.gz' \
      --data_dir=DIR
  python scripts/prepare_corpus.py --corpus=uniref50 --data_dir=gs://b/tfds \
      --manual_dir=gs://b/manual --beam --beam_runner=DataflowRunner \
      --beam_pipeline_options=project=P,region=R,temp_location=gs://b/tmp \
      --beam_pipeline_option=requirements_file=requirements.txt \
      --beam_pipeline_option=experiments=use_runner_v2,shuffle_mode=service

Beam pipeline options come in two forms, which combine (the comma form
first):
  --beam_pipeline_options=K1=V1,K2=V2  a comma starts a new option only
      before "KEY=" or a Beam switch (save_main_session, ...), so
      "experiments=a,b" stays one option;
  --beam_pipeline_option=KEY=VALUE    repeatable, one option each, the value
      taken as it is: for values that contain ",KEY=" (labels, ...).

Shipping the package to the workers: the builder's code runs on the Beam
workers, which must import prottrans_jax. For a runner whose workers run
outside this process (Dataflow, Flink, Spark, PortableRunner; any runner
with environment_type other than LOOPBACK), the script adds
setup_file=<checkout>/setup.py, the setup file of the checkout prottrans_jax
is imported from: Beam builds a source distribution from it and installs it
on every worker. It does not when the options already provide the package
(setup_file, extra_package, sdk_container_image,
worker_harness_container_image, environment_config), or with
--noship_package. The workers also need TensorFlow and TensorFlow Datasets:
a container image (docker/beam_worker.Dockerfile) or requirements_file.

See docs/corpora.md.
"""

import sys

from absl import app
from absl import flags
from absl import logging

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
_BEAM_OPTIONS = flags.DEFINE_string(
    "beam_pipeline_options", None,
    "Comma-separated Beam pipeline options, KEY=VALUE or a Beam switch such "
    "as save_main_session (with --beam). A comma starts a new option only "
    "before KEY= or a switch, so experiments=a,b stays one option; give a "
    "value containing ',KEY=' with --beam_pipeline_option.")
_BEAM_OPTION = flags.DEFINE_multi_string(
    "beam_pipeline_option", None,
    "One Beam pipeline option, KEY=VALUE (the value as it is, commas and all) "
    "or a Beam switch; repeat the flag for more (with --beam). Added after "
    "--beam_pipeline_options.")
_SHIP_PACKAGE = flags.DEFINE_bool(
    "ship_package", True,
    "With --beam and a runner whose workers run outside this process "
    "(Dataflow, Flink, Spark, ...), add setup_file=<checkout>/setup.py so "
    "that Beam installs this package on the workers, unless the options "
    "give setup_file, extra_package or a container image "
    "(sdk_container_image, worker_harness_container_image, "
    "environment_config). --noship_package: the workers have it already.")

flags.mark_flags_as_required(["corpus", "data_dir"])


def _beam_options() -> list[str] | None:
  """The pipeline options of both flags, plus the setup file if needed."""
  options = None
  if _BEAM_OPTIONS.value is not None or _BEAM_OPTION.value:
    options = (tfds_builder.split_pipeline_options(_BEAM_OPTIONS.value or "")
               + list(_BEAM_OPTION.value or ()))
  if _BEAM.value and _SHIP_PACKAGE.value:
    shipped = tfds_builder.ship_package(options, _BEAM_RUNNER.value)
    if len(shipped) > len(options or ()):
      logging.info("Shipping prottrans_jax to the Beam workers: %s",
                   shipped[-1])
    options = shipped
  if options is not None:
    logging.info("Beam pipeline options: %s", options)
  return options


def main(argv):
  del argv  # No positional arguments.
  try:
    builder = tfds_builder.build_corpus(
        _CORPUS.value, _DATA_DIR.value, _FASTA.value,
        manual_dir=_MANUAL_DIR.value, use_beam=_BEAM.value,
        beam_runner=_BEAM_RUNNER.value, beam_options=_beam_options())
  except (FileNotFoundError, ValueError) as e:  # FastaError is a ValueError.
    sys.exit(f"prepare_corpus: {type(e).__name__}: {e}")
  print(f"{tfds_builder.tfds_name(_CORPUS.value)} in {_DATA_DIR.value}")
  for name, split in builder.info.splits.items():
    print(f"{name}: {split.num_examples}")


if __name__ == "__main__":
  app.run(main)
