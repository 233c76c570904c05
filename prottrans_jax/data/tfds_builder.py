"""TensorFlow Datasets builder for protein FASTA corpora (UniRef, BFD, yours).

One builder, `protein_fasta`, with a config per corpus:

| config             | input                                        | valid. |
| ------------------ | -------------------------------------------- | ------ |
| `uniref50`         | `<manual_dir>/uniref50.fasta.gz` (or parts)  | 1%     |
| `uniref100`        | `<manual_dir>/uniref100.fasta.gz` (or parts) | 1%     |
| `bfd`              | `<manual_dir>/bfd/*.fasta*` (FASTA parts)    | 1%     |
| `custom`           | the `fasta_paths` you pass (paths or globs)  | 1%     |
| `swissprot_sample` | the bundled 100-protein sample, no setup     | 10%    |

Nothing is downloaded: the public FASTA files are large and versioned by
their publishers, so the user places them (see docs/corpora.md) and a missing
file is an error naming the expected path. `fasta_paths` overrides where any
config looks.

Each example is `{"id", "sequence", "length"}`, keyed by the record id. Records
go through `fasta.read_fasta` and its `FastaPolicy`, in both paths. The
train/validation split is `splits.split_of(id, validation_fraction)`: a
stable hash of the id, so a protein stays in its split whatever the file
order, the sharding or the runner, and the sample's split equals the one of
the in-memory FASTA source in `prottrans_jax/tasks/`.

Two ways to build, same records:
- the generator path (default): one process, for the sample, custom files and
  laptop-sized tests;
- the Beam path (`use_beam=True`): one FASTA file per Beam element, so
  pre-split UniRef/BFD parts are parsed in parallel on a real runner
  (Dataflow, Flink, Spark). A single gzip file cannot be split by readers, so
  split a huge FASTA into parts first (docs/corpora.md).

Ids must be unique across all files of a corpus (TFDS keys examples by id).
Within a file `FastaPolicy.duplicate_ids` decides; across files a duplicate is
always a `FastaError` naming the id and both places, because TFDS's own
duplicate-key error does not name the record.
"""

import argparse
import dataclasses
import functools
import os
import re
from typing import Iterator, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from prottrans_jax.data import fasta
from prottrans_jax.data import sample_corpus
from prottrans_jax.data import splits

NAME = "protein_fasta"
VERSION = "1.0.0"
_SPLITS = (splits.TRAIN, splits.VALIDATION)

_UNIREF_URL = "https://ftp.uniprot.org/pub/databases/uniprot/uniref"


@dataclasses.dataclass(eq=False)
class ProteinFastaConfig(tfds.core.BuilderConfig):
  """A corpus: where its FASTA files are and how much goes to validation.

  Attributes:
    manual_patterns: globs relative to the manual dir, tried in order; the
      first that matches any file is used (so pre-split parts, listed first,
      win over the single public file).
    fasta_paths: absolute paths or globs, for corpora that need no manual dir.
    validation_fraction: share of ids (by hash) in the validation split.
  """
  manual_patterns: tuple[str, ...] = ()
  fasta_paths: tuple[str, ...] = ()
  validation_fraction: float = 0.01


def _uniref_config(name: str, paper_size: str) -> ProteinFastaConfig:
  return ProteinFastaConfig(
      name=name,
      description=(
          f"{name.capitalize().replace('ref', 'Ref')} from UniProt "
          f"({paper_size} sequences in the ProtTrans paper's release). Place "
          f"{_UNIREF_URL}/{name}/{name}.fasta.gz as "
          f"<manual_dir>/{name}.fasta.gz, or its parts as "
          f"<manual_dir>/{name}/*.fasta[.gz] to read them in parallel with "
          "Beam."),
      manual_patterns=(f"{name}/*.fasta*", f"{name}.fasta.gz",
                       f"{name}.fasta"),
  )


CONFIGS = {
    config.name: config for config in (
        _uniref_config("uniref50", "45 million"),
        _uniref_config("uniref100", "216 million"),
        ProteinFastaConfig(
            name="bfd",
            description=(
                "BFD, the Big Fantastic Database (2,122 million sequences, "
                "https://bfd.mmseqs.com/). Its public download "
                "bfd_metaclust_clu_complete_id30_c90_final_seq.sorted_opt"
                ".tar.gz is an HH-suite database, not FASTA: write its "
                "sequences as FASTA parts to <manual_dir>/bfd/*.fasta[.gz] "
                "(docs/corpora.md)."),
            manual_patterns=("bfd/*.fasta*", "bfd.fasta.gz", "bfd.fasta"),
        ),
        ProteinFastaConfig(
            name="custom",
            description=(
                "Your own FASTA file(s): pass fasta_paths (paths or globs). "
                "One data_dir holds one custom corpus; use another data_dir "
                "(or your own ProteinFastaConfig name) for another."),
        ),
        ProteinFastaConfig(
            name="swissprot_sample",
            description=(
                "The 100 Swiss-Prot proteins bundled with prottrans_jax "
                "(UniProtKB/Swiss-Prot, CC BY 4.0); needs no setup."),
            fasta_paths=(sample_corpus.FASTA_PATH,),
            # 12 of the 100 proteins, the same split as prottrans_jax/tasks/'s sample source.
            validation_fraction=0.1,
        ),
    )
}


def _glob(pattern: str) -> list[str]:
  """Sorted matches of a local or remote (gs://, ...) glob."""
  return sorted(tf.io.gfile.glob(pattern))


def _split_records(path: str, split: str, validation_fraction: float,
                   policy: fasta.FastaPolicy
                   ) -> Iterator[tuple[str, str, dict[str, object]]]:
  """(id, "file:line", example) for the records of `path` in `split`.

  `path` may be a URL (Beam workers on a real runner read the corpus from
  object storage); `read_fasta` streams it through `prottrans_jax.fs`.
  """
  for record in fasta.read_fasta(path, policy):
    if splits.split_of(record.id, validation_fraction) == split:
      yield record.id, f"{path}:{record.line}", {
          "id": record.id,
          "sequence": record.sequence,
          "length": len(record.sequence),
      }


def _duplicate_error(record_id: str, places: Sequence[str]) -> fasta.FastaError:
  return fasta.FastaError(
      f"duplicate id {record_id!r} in {places[0]} and {places[1]}: record ids "
      "must be unique across all files of a corpus (they are the dataset's "
      "keys). Remove or rename one of them; within a single file, "
      "FastaPolicy(duplicate_ids='rename' or 'skip') repairs duplicates.")


def _check_not_empty(count: int, split: str, validation_fraction: float):
  """TFDS cannot write an empty split, and its error does not say why."""
  if not count:
    raise ValueError(
        f"no record falls into the {split!r} split at validation_fraction="
        f"{validation_fraction}: the corpus is too small for this fraction. "
        "Build it with a ProteinFastaConfig of a larger validation_fraction.")


def _generate_split(paths: Sequence[str], split: str,
                    validation_fraction: float, policy: fasta.FastaPolicy):
  """The generator path: yields (key, example), one process.

  Every id of the split is kept in memory to find duplicates across files;
  corpora too large for that are what the Beam path is for.
  """
  seen = {}
  for path in paths:
    for record_id, place, example in _split_records(
        path, split, validation_fraction, policy):
      if record_id in seen:
        raise _duplicate_error(record_id, (seen[record_id], place))
      seen[record_id] = place
      yield record_id, example
  _check_not_empty(len(seen), split, validation_fraction)


def _first_two(groups):
  """Combines tuples of places into the first two (sorted) of them."""
  return tuple(sorted(place for group in groups for place in group)[:2])


def _raise_duplicate(id_and_places):
  raise _duplicate_error(*id_and_places)


def _beam_split(paths: Sequence[str], split: str, validation_fraction: float,
                policy: fasta.FastaPolicy):
  """The Beam path: a PTransform from the pipeline to (key, example)."""
  beam = tfds.core.lazy_imports.apache_beam

  def expand(pipeline):
    records = (
        pipeline
        | "Files" >> beam.Create(paths)
        # Without it a runner may fuse reading into one worker; with it each
        # file is parsed wherever the runner sends it.
        | "Spread" >> beam.Reshuffle()
        | "Read" >> beam.FlatMap(_split_records, split=split,
                                 validation_fraction=validation_fraction,
                                 policy=policy))
    # Only ids and places are shuffled for this check, not the sequences; the
    # same id always lands in the same split, so checking per split is
    # complete.
    _ = (records
         | "Places" >> beam.Map(lambda r: (r[0], (r[1],)))
         | "FirstTwo" >> beam.CombinePerKey(_first_two)
         | "Duplicates" >> beam.Filter(lambda id_places: len(id_places[1]) > 1)
         | "Fail" >> beam.Map(_raise_duplicate))
    _ = (records
         | "Count" >> beam.combiners.Count.Globally()
         | "NotEmpty" >> beam.Map(_check_not_empty, split=split,
                                  validation_fraction=validation_fraction))
    return records | "Examples" >> beam.Map(lambda r: (r[0], r[2]))

  return beam.ptransform_fn(expand)()


class ProteinFasta(tfds.core.GeneratorBasedBuilder):
  """Protein FASTA corpora: `id`, `sequence`, `length`; train/validation."""

  VERSION = tfds.core.Version(VERSION)
  RELEASE_NOTES = {
      str(VERSION): "id, sequence, length; split by hash of the id."}
  BUILDER_CONFIGS = list(CONFIGS.values())
  MANUAL_DOWNLOAD_INSTRUCTIONS = "\n".join(
      f"{c.name}: {c.description}" for c in BUILDER_CONFIGS
      if c.manual_patterns)

  def __init__(self, *, fasta_paths: Sequence[str] | None = None,
               use_beam: bool = False,
               policy: fasta.FastaPolicy = fasta.FastaPolicy(), **kwargs):
    """As `tfds.core.GeneratorBasedBuilder`, plus:

    Args:
      fasta_paths: FASTA paths or globs (local or remote) to read instead of
        the config's files; required by the `custom` config.
      use_beam: build with Apache Beam; pass the runner and pipeline options
        in `download_and_prepare`'s `DownloadConfig`.
      policy: the FASTA validation policy applied to every file.
      **kwargs: `tfds.core.GeneratorBasedBuilder` arguments (`config`,
        `data_dir`, ...).
    """
    self._fasta_paths = tuple(fasta_paths or ())
    self._use_beam = use_beam
    self._policy = policy
    super().__init__(**kwargs)

  # TFDS 4.9.10 finds a builder's source file through `importlib_resources`,
  # which it does not install on Python >= 3.9 (tensorflow/datasets#11212).
  # The path only locates a URL-checksums file, and this builder downloads
  # nothing.
  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> None:
    return None

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=(
            "Protein sequences from FASTA, validated by prottrans_jax's "
            "FastaPolicy, split into train/validation by a hash of the id."),
        features=tfds.features.FeaturesDict({
            "id": tfds.features.Text(),
            "sequence": tfds.features.Text(),
            "length": tfds.features.Scalar(dtype=np.int32),
        }),
        homepage="https://www.uniprot.org/help/downloads",
        # Records which files a dataset was built from (see `build_corpus`).
        metadata=tfds.core.MetadataDict(),
    )

  def _fasta_files(self, dl_manager: tfds.download.DownloadManager
                   ) -> list[str]:
    """The config's FASTA files, or an error saying where they are expected."""
    config = self.builder_config
    patterns = self._fasta_paths or config.fasta_paths
    if patterns:
      files = []
      for pattern in patterns:
        matches = _glob(pattern)
        if not matches:
          raise FileNotFoundError(
              f"protein_fasta/{config.name}: no FASTA file matches {pattern!r}")
        files.extend(matches)
      return files
    if not config.manual_patterns:
      raise ValueError(
          f"protein_fasta/{config.name} reads the FASTA files you give: pass "
          "fasta_paths (paths or globs).")
    try:
      manual_dir = os.fspath(dl_manager.manual_dir)
    except AssertionError as e:  # TFDS's error for a missing or empty dir.
      raise FileNotFoundError(
          f"protein_fasta/{config.name}: expected "
          f"{' or '.join(config.manual_patterns)} in the manual dir, which is "
          f"missing or empty ({e}). Or pass fasta_paths.") from e
    for pattern in config.manual_patterns:
      files = _glob(os.path.join(manual_dir, pattern))
      if files:
        return files
    expected = ", ".join(
        os.path.join(manual_dir, p) for p in config.manual_patterns)
    raise FileNotFoundError(
        f"protein_fasta/{config.name}: none of {expected} exists. "
        f"{config.description} Or pass fasta_paths.")

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    files = self._fasta_files(dl_manager)
    self.info.metadata["fasta_files"] = files
    return {split: self._generate_examples(files, split) for split in _SPLITS}

  def _generate_examples(self, files: Sequence[str], split: str):
    make = _beam_split if self._use_beam else _generate_split
    return make(files, split, self.builder_config.validation_fraction,
                self._policy)


def tfds_name(config: str) -> str:
  """The name `tfds.builder` and `seqio.TfdsDataSource` take, version pinned."""
  return f"{NAME}/{config}:{VERSION}"


# The repository root when this package is imported from a source checkout.
_CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))

# Runners whose workers run in the launching process, which has the package.
LOCAL_RUNNERS = frozenset({
    "DirectRunner", "SwitchingDirectRunner", "BundleBasedDirectRunner",
    "FnApiRunner", "PrismRunner", "InteractiveRunner"})

# Options through which the user already gives the workers this package: a
# setup file or package of their own, or a container image that holds it.
_SHIPPING_OPTIONS = ("setup_file", "extra_package", "extra_packages",
                     "sdk_container_image", "worker_harness_container_image",
                     "environment_config")

# "key=value" or "key", with an optional leading "--".
_OPTION = re.compile(r"(?:--)?([A-Za-z_][A-Za-z0-9_]*)(?:=(.*))?", re.DOTALL)


@functools.cache
def _beam_switches() -> frozenset[str]:
  """Beam's pipeline options that take no value (`save_main_session`, ...).

  Collected from the argument parser Beam builds for its options classes,
  as `PipelineOptions.get_all_options` does.
  """
  options = tfds.core.lazy_imports.apache_beam.options.pipeline_options
  parser = options._BeamArgumentParser(allow_abbrev=False)  # pylint: disable=protected-access
  classes = {}
  for cls in options.PipelineOptions.__subclasses__():
    classes.setdefault(str(cls), cls)
  for cls in classes.values():
    try:
      cls._add_argparse_args(parser)  # pylint: disable=protected-access
    except argparse.ArgumentError:  # A class redefining an option; skip it.
      continue
  return frozenset(
      flag[2:] for action in parser._actions if action.nargs == 0  # pylint: disable=protected-access
      for flag in action.option_strings
      if flag.startswith("--") and flag != "--help")


def _parse_option(option: str) -> tuple[str, str | None]:
  """(key, value) of "[--]key=value", or (key, None) of a Beam switch.

  Raises:
    ValueError: naming `option`, when it is neither.
  """
  match = _OPTION.fullmatch(option.strip())
  if match and (match[2] is not None or match[1] in _beam_switches()):
    return match[1], match[2]
  raise ValueError(
      f"malformed Beam pipeline option {option!r}: expected KEY=VALUE (e.g. "
      "project=my-project), or the name of one of Beam's switches that take "
      "no value (e.g. save_main_session, no_use_public_ips)")


def split_pipeline_options(text: str) -> list[str]:
  """Splits comma-separated Beam pipeline options, keeping commas in values.

  A comma starts a new option only where what follows it is "KEY=..." (KEY
  an identifier, "--" optional) or one of Beam's switches; any other comma
  belongs to the value before it. So
  "project=p,experiments=a,b,region=r" is ["project=p", "experiments=a,b",
  "region=r"]. A value that itself contains ",KEY=" (e.g. labels) cannot be
  written this way: give such an option on its own
  (`prepare_corpus.py --beam_pipeline_option=KEY=VALUE`, or one list item of
  `build_corpus`'s `beam_options`).

  Raises:
    ValueError: naming the piece, when the text does not start with an option.
  """
  options = []
  for piece in text.split(","):
    if not piece.strip():
      continue  # "a=1,,b=2" or a trailing comma.
    match = _OPTION.fullmatch(piece.strip())
    starts_option = match and (match[2] is not None
                               or match[1] in _beam_switches())
    if starts_option or not options or _parse_option(options[-1])[1] is None:
      _parse_option(piece)  # A new option, or an error naming the piece.
      options.append(piece.strip())
    else:
      options[-1] += "," + piece
  return options


def _pipeline_options(options):
  """`PipelineOptions` from "key=value" strings (leading "--" optional).

  Each string is one option, its value taken as it is (commas included).
  None gives empty options: Beam would otherwise parse this process's
  command line (`sys.argv`) as its own.
  """
  beam = tfds.core.lazy_imports.apache_beam
  if isinstance(options, beam.options.pipeline_options.PipelineOptions):
    return options
  flags = []
  for option in options or ():
    key, value = _parse_option(option)
    flags.append(f"--{key}" if value is None else f"--{key}={value}")
  return beam.options.pipeline_options.PipelineOptions(flags)


def package_setup_file() -> str | None:
  """The `setup.py` that ships this package to Beam workers, if any.

  It is the one of the source checkout this package is imported from (the
  repository root), so the workers run the launcher's code; None when the
  package is installed from a distribution, which has no setup file.
  """
  setup_file = os.path.join(_CHECKOUT, "setup.py")
  if (os.path.isfile(setup_file)
      and os.path.isfile(os.path.join(_CHECKOUT, "pyproject.toml"))):
    return setup_file
  return None


def _runner_name(runner) -> str | None:
  if runner is None or isinstance(runner, str):
    return runner and runner.rsplit(".", 1)[-1]
  return type(runner).__name__


def ship_package(beam_options: Sequence[str] | None,
                 beam_runner=None) -> list[str]:
  """`beam_options` plus `setup_file=<checkout>/setup.py` where workers need it.

  The builder's code and the FASTA parsing run on the Beam workers, which
  import this package. A runner whose workers run elsewhere (Dataflow,
  Flink, Spark, a portable job server; `environment_type` other than
  LOOPBACK) gets this checkout's setup file, from which Beam builds a source
  distribution and installs it on every worker; unless the options already
  say how the workers get the package: `setup_file`, `extra_package(s)`, or a
  container image (`sdk_container_image`, `worker_harness_container_image`,
  `environment_config`). Local runners (`LOCAL_RUNNERS`) get the options
  unchanged.

  The package's dependencies (TensorFlow, TensorFlow Datasets) must be on
  the workers too: a container image, or `requirements_file`
  (docs/corpora.md).

  Args:
    beam_options: "key=value" strings, as for `build_corpus`.
    beam_runner: the runner or its name; None means the options' `runner`,
      else Beam's default (DirectRunner).

  Returns:
    The options to pass to `build_corpus`.

  Raises:
    ValueError: a malformed option, or workers that need the package while
      it is not imported from a checkout with a setup file.
  """
  options = list(beam_options or ())
  given = dict(_parse_option(option) for option in options)
  runner = _runner_name(beam_runner) or _runner_name(
      given.get("runner")) or "DirectRunner"
  environment = (given.get("environment_type") or "").upper()
  if (environment == "LOOPBACK"
      or (runner in LOCAL_RUNNERS and not environment)
      or any(key in given for key in _SHIPPING_OPTIONS)):
    return options
  setup_file = package_setup_file()
  if setup_file is None:
    raise ValueError(
        f"the {runner} workers must import prottrans_jax, which is installed "
        f"in {os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}, "
        "not imported from a source checkout whose setup.py could ship it: "
        "give setup_file=<checkout>/setup.py, extra_package=<sdist or wheel> "
        "or a container image holding the package (sdk_container_image, or "
        "environment_config with environment_type=DOCKER); see "
        "docs/corpora.md.")
  return options + [f"setup_file={setup_file}"]


def build_corpus(config: str | ProteinFastaConfig,
                 data_dir: str,
                 fasta_paths: Sequence[str] | None = None,
                 *,
                 manual_dir: str | None = None,
                 use_beam: bool = False,
                 beam_runner=None,
                 beam_options=None,
                 policy: fasta.FastaPolicy = fasta.FastaPolicy()
                 ) -> ProteinFasta:
  """Builds `protein_fasta/<config>` into `data_dir`, unless it is there.

  Args:
    config: a config name ("uniref50", "uniref100", "bfd", "custom",
      "swissprot_sample") or your own `ProteinFastaConfig`.
    data_dir: TFDS data dir; the dataset goes to
      `<data_dir>/protein_fasta/<config>/<version>/`.
    fasta_paths: FASTA paths or globs, required for "custom"; for the other
      configs they replace the manual dir's files.
    manual_dir: where the public FASTA files are; TFDS's default is
      `<data_dir>/downloads/manual`.
    use_beam: build with Apache Beam (for corpora of billions of sequences).
    beam_runner: a runner or its name ("DirectRunner", "DataflowRunner",
      "FlinkRunner", "SparkRunner", or "FnApiRunner", in-process); None lets
      the options choose.
    beam_options: `PipelineOptions`, or "key=value" strings, one option
      each (a value may contain commas), such as ["project=p",
      "region=us-central1", "experiments=use_runner_v2,shuffle_mode=service"];
      a Beam switch is its bare name ("save_main_session"). Workers outside
      this process must be able to import this package: see `ship_package`.
    policy: FASTA validation policy for every file.

  Returns:
    The prepared builder (`as_dataset`, `info.splits`).

  Raises:
    FileNotFoundError: a FASTA file is missing (the message names where it is
      expected).
    fasta.FastaError: bad input the policy does not repair, or an id found
      twice.
    ValueError: inconsistent arguments, a malformed Beam pipeline option, or
      `data_dir` already holds this config built from other files.
  """
  if not use_beam and (beam_runner is not None or beam_options is not None):
    raise ValueError("beam_runner/beam_options are given but use_beam=False")
  options = _pipeline_options(beam_options) if use_beam else None
  builder = ProteinFasta(config=config, data_dir=data_dir,
                         fasta_paths=fasta_paths, use_beam=use_beam,
                         policy=policy)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(
          manual_dir=manual_dir, beam_runner=beam_runner,
          beam_options=options))
  if fasta_paths:
    # TFDS reuses a prepared dataset without looking at its inputs, which
    # would silently serve another corpus under the same name.
    wanted = [f for pattern in fasta_paths for f in _glob(pattern)]
    built = builder.info.metadata.get("fasta_files")
    if built != wanted:
      raise ValueError(
          f"{builder.data_dir} already holds {builder.name}/"
          f"{builder.builder_config.name} built from {built}, not from "
          f"{wanted}; use another data_dir.")
  return builder
