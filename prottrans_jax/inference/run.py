"""FASTA in, HDF5 embeddings out: one shard of the input, crash-safe, resumable.

A run embeds shard `shard_index` of `num_shards` of its input (one FASTA file,
a glob or a comma-separated list, local or at URLs): the records whose
headers fall in the shard's share of the input's bytes (`fasta.read_fasta_shard`,
balanced by residues), on this process's own devices, without talking to
any other process. So the shards of a pod run never wait for each other, and
a shard that failed is rerun alone with the same command.

Output for `--output O` (`out.h5` or `gs://bucket/out.h5`), through
`prottrans_jax.fs`:

  O.parts/shard-<i>-of-<n>/   settings.json, one chunk file per planned
                              batch (committed atomically), COMPLETED
  O                           the file users read: one dataset per protein,
                              made by `shards.merge` from every shard's
                              chunks (at the end of a single-shard run;
                              scripts/merge_embeddings.py after a sharded one)

Crash safety: a chunk appears whole under its final name or not at all, and
the merged file likewise, so whatever instant a run is killed at, the same
command finishes it with exactly the output of an uninterrupted run, redoing
at most the batch that was in flight. Batches are planned from the shard's
records alone (lengths, the token budget, the local device count), so a
rerun computes each remaining protein in the batch an uninterrupted run would
have: the same shapes, the same numbers bit for bit.

A single-shard run whose merged output already exists with the same settings
and weights (`LoadedModel.fingerprint`; an earlier run's, possibly over
fewer proteins) adds what it lacks: proteins already in it count as done.
Any other existing output is refused unless `overwrite`. Nothing non-finite
is written (`engine.NonFiniteEmbeddingError`), and a run that fails before
its first chunk leaves no parts directory behind.
"""

import dataclasses
import hashlib
import logging
from typing import Sequence

from prottrans_jax import fs
from prottrans_jax import run_lock
from prottrans_jax.data import fasta
from prottrans_jax.inference import engine
from prottrans_jax.inference import h5_writer
from prottrans_jax.inference import loading
from prottrans_jax.inference import shards

logger = logging.getLogger(__name__)

@dataclasses.dataclass(frozen=True)
class EmbedSummary:
  proteins: int  # In this shard of the input.
  already_done: int  # In the existing output or committed chunks.
  embedded: int  # Computed by this run.
  residues: int  # Computed by this run.
  shard_index: int = 0
  num_shards: int = 1
  merged: tuple[str, ...] = ()  # The merged files, when this run merged.


def _dataset_names(records: Sequence[fasta.FastaRecord]) -> dict[str, str]:
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


def _records_fingerprint(records: Sequence[fasta.FastaRecord]) -> str:
  """A digest of the shard's ids and lengths, in order: a rerun whose input
  changed would plan other batches, so its chunks must not be reused."""
  digest = hashlib.blake2b(digest_size=16)
  for record in records:
    digest.update(f"{record.id}\t{len(record.sequence)}\n".encode())
  return digest.hexdigest()


def _names_in_existing_output(output_path: str, file_settings: dict,
                              output_keys: Sequence[str]) -> set[str]:
  """Dataset names present in every existing merged file of this output
  (proteins an earlier run embedded); an existing file with other settings
  is an OutputError naming it."""
  done = None
  for key, path in shards.merged_paths(output_path, output_keys).items():
    if not path.exists():
      return set()
    with fs.local_copy(path) as local:
      writer = h5_writer.EmbeddingWriter(
          str(local), shards.merged_file_settings(file_settings, key),
          renamed_settings=shards.RENAMED_SETTINGS, name=str(path))
      names = writer.existing_names()
    done = names if done is None else done & names
  return done or set()


def embed_fasta(input_path: str, output_path: str, model: loading.LoadedModel,
                settings: engine.EmbedSettings = engine.EmbedSettings(),
                policy: fasta.FastaPolicy = fasta.FastaPolicy(),
                output_dtype: str = "float32", overwrite: bool = False,
                progress: bool = True, shard_index: int = 0,
                num_shards: int = 1) -> EmbedSummary:
  """Embeds shard `shard_index` of `num_shards` of the proteins of
  `input_path` (a FASTA path, glob or comma-separated list) under
  `output_path` (see the module docstring for the layout); a single-shard
  run also merges, into `output_path` itself.

  Raises:
    fasta.FastaError: bad input the policy does not repair.
    h5_writer.OutputError: the output cannot be written there, or exists
      with other settings or weights (`model.fingerprint`), or holds another
      input's chunks (pass `overwrite` to replace it).
    engine.ProteinTooLongError: proteins longer than the model's positions,
      all named, before anything is written.
    engine.NonFiniteEmbeddingError: a protein's embedding is NaN or
      infinite; its batch is not written (the batches before it are).
  """
  shards.check_output_location(output_path)
  # One writer per output: `<output>.lock`, or one per shard (shards are
  # independent processes).
  lock_name = (f"{fs.path(output_path).name}.lock" if num_shards == 1 else
               f"{fs.path(output_path).name}."
               f"{shards.shard_name(shard_index, num_shards)}.lock")
  with run_lock.RunLock(fs.path(output_path).parent / lock_name,
                        f"embedding into {output_path}"):
    return _embed_holding_lock(input_path, output_path, model, settings,
                               policy, output_dtype, overwrite, progress,
                               shard_index, num_shards)


def _embed_holding_lock(input_path: str, output_path: str,
                        model: loading.LoadedModel,
                        settings: engine.EmbedSettings,
                        policy: fasta.FastaPolicy, output_dtype: str,
                        overwrite: bool, progress: bool, shard_index: int,
                        num_shards: int) -> EmbedSummary:
  """`embed_fasta`'s work, once the output's lock is held."""
  stats = fasta.ShardReadStats()
  records = list(fasta.read_fasta_shard(fasta.expand_inputs(input_path),
                                        shard_index, num_shards, policy,
                                        stats))
  names = _dataset_names(records)
  output_keys = [spec.key for spec in settings.outputs]
  file_settings = {"model": model.source, "model_name": model.name,
                   "compute_dtype": settings.dtype,
                   "output_dtype": output_dtype,
                   "max_tokens": settings.max_tokens}
  if model.fingerprint is not None:
    # Which weights: the same path may hold others by now (a MODEL_DIR
    # retrained to the same step, a model downloaded again).
    file_settings["weights_fingerprint"] = model.fingerprint
  if model.tokenizer is not None:
    # Another tokenizer file gives other ids: not the same embeddings.
    file_settings["tokenizer"] = model.tokenizer.fingerprint
  done_names = set()
  if num_shards == 1 and not overwrite:
    done_names = _names_in_existing_output(output_path, file_settings,
                                           output_keys)
  embedder = engine.Embedder(model.config, model.params, settings,
                             tokenizer=model.tokenizer)
  plan = embedder.plan(records)
  writer = shards.ShardWriter(
      output_path, shard_index, num_shards,
      dict(file_settings, shard={
          "input": str(input_path), "records": _records_fingerprint(records),
          "data_parallel": embedder.data_parallel}),
      output_keys, output_dtype=output_dtype, overwrite=overwrite)
  committed = writer.committed()
  is_done = lambda record: names[record.id] in done_names
  skip = lambda index: index in committed or all(
      is_done(records[i]) for i in plan[index].indices)
  already_done = sum(
      len(plan[i].indices) for i in committed) + sum(
          is_done(records[i]) for b, batch in enumerate(plan)
          if b not in committed for i in batch.indices)
  logger.info("shard %d of %d: %d proteins (%d residues, %d bytes of input "
              "read), %d batches; %d proteins already done",
              shard_index, num_shards, len(records), stats.residues,
              stats.bytes_read, len(plan), already_done)
  embedded = residues = 0
  if not writer.completed:
    try:
      for batch in engine.embed_batches_with_progress(
          embedder, records, skip, disable=not progress, batches=plan):
        shards.pause_point("batch_computed")  # Test hook: killed mid-run.
        keep = [j for j, r in enumerate(batch.records) if not is_done(r)]
        writer.write_chunk(
            batch.index, [names[batch.records[j].id] for j in keep],
            [batch.records[j].description for j in keep],
            {key: [arrays[j] for j in keep]
             for key, arrays in batch.outputs.items()})
        embedded += len(keep)
        residues += sum(len(batch.records[j].sequence) for j in keep)
    except BaseException:
      writer.remove_if_empty()  # Nothing of this run to resume.
      raise
    writer.complete({"proteins": len(records), "residues": stats.residues,
                     "input_bytes_read": stats.bytes_read,
                     "batches": len(plan)})
  merged = ()
  if num_shards == 1:
    merged = tuple(str(p) for p in shards.merge(
        output_path, overwrite=overwrite, extend_existing=not overwrite,
        progress=progress).values())
    shards.remove_parts(output_path)
  else:
    logger.info("shard %d of %d is complete; when every shard is, "
                "scripts/merge_embeddings.py --output %s makes the file",
                shard_index, num_shards, output_path)
  return EmbedSummary(proteins=len(records), already_done=already_done,
                      embedded=embedded, residues=residues,
                      shard_index=shard_index, num_shards=num_shards,
                      merged=merged)
