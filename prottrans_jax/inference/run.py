"""FASTA file -> HDF5 embeddings: validation, resume, incremental writes.

Input and output may be local paths or URLs (`gs://bucket/out.h5`), through
`prottrans_jax.fs`. h5py writes local files only, so a URL output is
written to a local temporary file (which starts as a copy of the bucket's
file when one exists, so a rerun resumes it) and uploaded when the run ends
normally; a run killed or failing before then uploads nothing, and the
bucket keeps what it held.
"""

import contextlib
import dataclasses
import logging
import os
import time
from typing import Iterator

import jax
from jax.experimental import multihost_utils
import numpy as np

from prottrans_jax import fs
from prottrans_jax.data import fasta
from prottrans_jax.inference import engine
from prottrans_jax.inference import h5_writer
from prottrans_jax.inference import loading

logger = logging.getLogger(__name__)

# Settings renamed since files were first written: {former: current}. An
# output recorded under the former name still resumes.
RENAMED_SETTINGS = {"max_residues": "max_tokens"}

# Test hook, for tests that kill a run at a known point: with
# PROTTRANS_JAX_PAUSE_AFTER_BATCHES=N in the environment, a run that has
# written its N-th batch (the file is closed after every batch, so that
# batch is on disk) prints a line starting with PAUSED_MARKER and blocks
# until it is killed. Unset, as always outside tests, it costs one
# environment lookup per run.
PAUSE_AFTER_BATCHES_ENV = "PROTTRANS_JAX_PAUSE_AFTER_BATCHES"
PAUSED_MARKER = "PROTTRANS_JAX_PAUSED"


def _pause_after_batches() -> int | None:
  value = os.environ.get(PAUSE_AFTER_BATCHES_ENV)
  if not value:
    return None
  if not value.isdigit() or int(value) < 1:
    raise ValueError(f"{PAUSE_AFTER_BATCHES_ENV}={value!r}: expected a "
                     "positive number of batches (a test hook; unset it)")
  return int(value)


def _pause_for_test(batches: int, proteins: int, output_path: str) -> None:
  """Announces the pause on stdout and blocks until the process is killed."""
  logger.warning("%s=%d: pausing until killed", PAUSE_AFTER_BATCHES_ENV,
                 batches)
  print(f"{PAUSED_MARKER} batches={batches} proteins={proteins} "
        f"output={output_path}", flush=True)
  while True:
    time.sleep(3600)


@dataclasses.dataclass(frozen=True)
class EmbedSummary:
  proteins: int  # In the input.
  already_done: int  # Found in the output by a resumed run.
  embedded: int  # Computed by this run.
  residues: int  # Computed by this run.


def _dataset_names(records: list[fasta.FastaRecord]) -> dict[str, str]:
  """Record id -> HDF5 dataset name; two ids may not share a name."""
  names, owner = {}, {}
  for record in records:
    name = h5_writer.dataset_name(record.id)
    if name in owner:
      raise fasta.FastaError(
          f"records {owner[name]!r} and {record.id!r} both map to HDF5 "
          f"dataset name {name!r} ('/' is replaced by '_'); rename one")
    owner[name] = record.id
    names[record.id] = name
  return names


@contextlib.contextmanager
def _local_output(output_path: str, overwrite: bool) -> Iterator[str]:
  """A local path for the HDF5 output: `output_path` itself, or for a URL a
  local copy (of the existing file, unless `overwrite`) uploaded when the
  block ends normally."""
  if not fs.is_remote(output_path):
    yield output_path
    return
  exists = fs.path(output_path).exists()
  with fs.staged_output(output_path, copy_existing=not overwrite) as local:
    logger.warning(
        "%s is a URL: writing %s locally (%s) and uploading it when the run "
        "ends; a run stopped before then uploads nothing, and running the "
        "same command again resumes from what the bucket holds",
        output_path,
        ("a copy of it, to resume" if exists and not overwrite else
         "replacing it (--overwrite)" if exists else "a new file"), local)
    yield os.fspath(local)
    logger.info("uploading %s to %s", local, output_path)


def embed_fasta(input_path: str, output_path: str, model: loading.LoadedModel,
                settings: engine.EmbedSettings = engine.EmbedSettings(),
                policy: fasta.FastaPolicy = fasta.FastaPolicy(),
                output_dtype: str = "float32", overwrite: bool = False,
                progress: bool = True) -> EmbedSummary:
  """Embeds every protein of a FASTA file into an HDF5 file.

  A run that finds its own earlier, interrupted output (same model and
  settings) skips the proteins already written and ends with the file an
  uninterrupted run would have written. Any other existing file is refused
  unless `overwrite`.

  Either path may be a URL; a URL output is written locally and uploaded
  when the run ends (the module docstring says what a stopped run leaves).
  """
  pause_after = _pause_after_batches()
  records = list(fasta.read_fasta(input_path, policy))
  names = _dataset_names(records)
  with contextlib.ExitStack() as stack:
    # With several processes (jax.distributed) all compute, process 0 writes;
    # a URL output's local file is uploaded when this block ends normally.
    writer = None
    done = np.zeros(len(records), bool)
    if jax.process_index() == 0:
      writer = h5_writer.EmbeddingWriter(
          stack.enter_context(_local_output(output_path, overwrite)),
          settings={"model": model.source, "model_name": model.name,
                    "per_protein": settings.per_protein,
                    "compute_dtype": settings.dtype,
                    "output_dtype": output_dtype,
                    "max_tokens": settings.max_tokens},
          overwrite=overwrite, renamed_settings=RENAMED_SETTINGS,
          name=output_path)
      existing = writer.existing_names()
      done = np.array([names[r.id] in existing for r in records], bool)
    if jax.process_count() > 1:
      done = np.asarray(multihost_utils.broadcast_one_to_all(done))
    done_ids = {r.id for r, d in zip(records, done) if d}
    is_done = lambda record: record.id in done_ids
    already_done = len(done_ids)
    if already_done:
      logger.info("resuming %s: %d of %d proteins already embedded",
                  output_path, already_done, len(records))
    embedder = engine.Embedder(model.config, model.params, settings)
    embedded = residues = batches = 0
    for results in engine.embed_with_progress(
        embedder, records, is_done, disable=not progress or writer is None):
      new = {names[r.id]: (r.description, array)
             for r, array in results if not is_done(r)}
      if writer is not None:
        writer.write(new, dtype=output_dtype)
      embedded += len(new)
      residues += sum(len(r.sequence) for r, _ in results if not is_done(r))
      batches += 1
      if batches == pause_after:
        _pause_for_test(batches, already_done + embedded, output_path)
  return EmbedSummary(proteins=len(records), already_done=already_done,
                      embedded=embedded, residues=residues)
