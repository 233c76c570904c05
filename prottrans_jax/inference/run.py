"""FASTA file -> HDF5 embeddings: validation, resume, incremental writes."""

import dataclasses
import logging
from typing import Any

from prottrans_jax.data import fasta
from prottrans_jax.inference import engine
from prottrans_jax.inference import h5_writer

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LoadedModel:
  """An encoder's weights and where they came from (recorded in the output)."""
  name: str  # Model family, e.g. "t5".
  config: Any
  params: Any
  source: str  # Checkpoint path and step, or Hugging Face directory.


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


def embed_fasta(input_path: str, output_path: str, model: LoadedModel,
                settings: engine.EmbedSettings = engine.EmbedSettings(),
                policy: fasta.FastaPolicy = fasta.FastaPolicy(),
                output_dtype: str = "float32", overwrite: bool = False,
                progress: bool = True) -> EmbedSummary:
  """Embeds every protein of a FASTA file into an HDF5 file.

  A run that finds its own earlier, interrupted output (same model and
  settings) skips the proteins already written and ends with the file an
  uninterrupted run would have written. Any other existing file is refused
  unless `overwrite`.
  """
  records = list(fasta.read_fasta(input_path, policy))
  names = _dataset_names(records)
  writer = h5_writer.EmbeddingWriter(
      output_path,
      settings={"model": model.source, "model_name": model.name,
                "per_protein": settings.per_protein,
                "compute_dtype": settings.dtype,
                "output_dtype": output_dtype,
                "max_residues": settings.max_residues},
      overwrite=overwrite)
  existing = writer.existing_names()
  is_done = lambda record: names[record.id] in existing
  already_done = sum(1 for r in records if is_done(r))
  if already_done:
    logger.info("resuming %s: %d of %d proteins already embedded",
                output_path, already_done, len(records))
  embedder = engine.Embedder(model.config, model.params, settings)
  embedded = residues = 0
  for results in engine.embed_with_progress(embedder, records, is_done,
                                            disable=not progress):
    new = {names[r.id]: (r.description, array)
           for r, array in results if not is_done(r)}
    writer.write(new, dtype=output_dtype)
    embedded += len(new)
    residues += sum(len(r.sequence) for r, _ in results if not is_done(r))
  return EmbedSummary(proteins=len(records), already_done=already_done,
                      embedded=embedded, residues=residues)
