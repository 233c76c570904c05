"""Writing embeddings: shard chunk files against today's one-dataset writer.

  python bench/shard_writer.py                  # the full run, ~25 GB written
  python bench/shard_writer.py --per_protein_records=20000 \
      --per_residue_records=1000 --reference_records=2000 \
      --reference_per_residue_records=200                   # a quick look

Writes ProtT5-XL-wide records (d=1024, float32, random values) through
`inference/shards.ShardWriter` in the batches the engine would plan
(`batching.plan_batches` over protein lengths drawn from the real DeepLoc
test set, one chunk file per batch): --per_protein_records per-protein
records (a large token budget, as a per-protein run on an accelerator would
use: ~100 records per chunk) and --per_residue_records per-residue records
(embed.py's default budget). Each chunk is fsynced and renamed, as in a run.
It prints records/s and MB/s (array bytes) of each and, measured in the same
run on the same batches, today's `h5_writer.EmbeddingWriter.write` (one
HDF5 dataset per protein, the file closed after every batch as run.py did)
on the first --reference_records (per protein) and
--reference_per_residue_records records, as it is and with the file fsynced
after every batch (the durability ShardWriter gives), and the ratios.

Then it merges the per-protein shard into one file (`shards.merge`, a copy
and `links`), reads the parts back (`read_embeddings`) and prints records/s
of each, with what bounds the merge. Arrays are made before the clock
starts; only writing is timed. Temporary files go under --dir (removed).
"""

import os
import platform
import shutil
import tempfile
import time

from absl import app
from absl import flags
import h5py
import numpy as np

from prottrans_jax.data import fasta
from prottrans_jax.inference import batching
from prottrans_jax.inference import engine
from prottrans_jax.inference import h5_writer
from prottrans_jax.inference import shards

import _machine

_DEFAULT_FASTA = os.path.join(os.path.dirname(__file__), "..", "..", "shared",
                              "data", "localization",
                              "deeploc_test_set.fasta")
_FASTA = flags.DEFINE_string("fasta", _DEFAULT_FASTA,
                             "Real proteins whose lengths are drawn.")
_PER_PROTEIN = flags.DEFINE_integer("per_protein_records", 100_000,
                                    "Per-protein records written.")
_PER_RESIDUE = flags.DEFINE_integer("per_residue_records", 10_000,
                                    "Per-residue records written.")
_REFERENCE = flags.DEFINE_integer(
    "reference_records", 10_000, "Per-protein records EmbeddingWriter "
    "writes (the first ones, in the same batches).")
_REFERENCE_PER_RESIDUE = flags.DEFINE_integer(
    "reference_per_residue_records", 1_000, "Per-residue records "
    "EmbeddingWriter writes (the first ones, in the same batches).")
_PER_PROTEIN_TOKENS = flags.DEFINE_integer(
    "per_protein_max_tokens", 65536, "Token budget of per-protein batches.")
_MAX_TOKENS = flags.DEFINE_integer("max_tokens", 16384,
                                   "Token budget of per-residue batches.")
_WIDTH = flags.DEFINE_integer("width", 1024, "d (ProtT5-XL: 1024).")
_DIR = flags.DEFINE_string("dir", None, "Where to write (default: the "
                           "system's temporary directory).")

SPECIAL_TOKENS = 1  # ProtT5 appends </s>: a batch's token lengths are L + 1.


def _plan(lengths: np.ndarray, max_tokens: int) -> list[batching.Batch]:
  return list(batching.plan_batches(
      [int(n) + SPECIAL_TOKENS for n in lengths], max_tokens))


def _headers(records, count: int, rng) -> tuple[list[str], list[str]]:
  """Unique dataset names and real FASTA headers of `count` drawn records."""
  drawn = rng.integers(0, len(records), count)
  return ([f"{records[i].id}_{k}" for k, i in enumerate(drawn)],
          [records[i].description for i in drawn])


def _batch_arrays(batch, lengths, pool, per_residue):
  """Record i of the batch: rows of the random pool (no copy)."""
  if not per_residue:
    return [pool[j] for j in range(len(batch.indices))]
  arrays, start = [], 0
  for i in batch.indices:
    arrays.append(pool[start:start + lengths[i]])
    start += lengths[i]
  return arrays


def _write_shard(output, key, plan, lengths, names, original_ids, pool):
  """Writes the plan through ShardWriter; returns (seconds, array bytes)."""
  per_residue = key.startswith("per_residue")
  writer = shards.ShardWriter(output, 0, 1, {"bench": True}, [key])
  written = 0
  start = time.perf_counter()
  for index, batch in enumerate(plan):
    arrays = _batch_arrays(batch, lengths, pool, per_residue)
    writer.write_chunk(index, [names[i] for i in batch.indices],
                       [original_ids[i] for i in batch.indices],
                       {key: arrays})
    written += sum(a.nbytes for a in arrays)
  writer.complete({"proteins": len(names)})
  return time.perf_counter() - start, written


def _write_reference(path, plan, lengths, names, original_ids, pool,
                     per_residue, limit, fsync):
  """Today's writer on the first `limit` records of the same batches, with
  `fsync`: the file forced to disk after every batch (as ShardWriter forces
  every chunk); returns (records, seconds, array bytes)."""
  if os.path.exists(path):
    os.remove(path)
  writer = h5_writer.EmbeddingWriter(path, {"bench": True})
  records = written = 0
  start = time.perf_counter()
  for batch in plan:
    if records >= limit:
      break
    arrays = _batch_arrays(batch, lengths, pool, per_residue)
    writer.write({names[i]: (original_ids[i], array)
                  for i, array in zip(batch.indices, arrays)})
    if fsync:
      descriptor = os.open(path, os.O_RDONLY)
      os.fsync(descriptor)
      os.close(descriptor)
    records += len(batch.indices)
    written += sum(a.nbytes for a in arrays)
  return records, time.perf_counter() - start, written


def _rate(records, seconds, nbytes) -> str:
  return (f"{records / seconds:10,.0f} records/s {nbytes / seconds / 1e6:8,.0f}"
          f" MB/s  ({records:,} records, {nbytes / 1e9:.2f} GB, "
          f"{seconds:.1f} s)")


def main(argv):
  del argv
  rng = np.random.default_rng(0)
  records = list(fasta.read_fasta(_FASTA.value))
  real_lengths = np.array([len(r.sequence) for r in records])
  d = _WIDTH.value
  print(f"machine: {_machine.describe()}, {platform.machine()}; "
        f"{platform.system()} {platform.release()}; "
        f"h5py {h5py.version.version}, HDF5 {h5py.version.hdf5_version}")
  print(f"lengths drawn from {os.path.normpath(_FASTA.value)} ({len(records)} "
        f"proteins, mean {real_lengths.mean():.0f}, max {real_lengths.max()})"
        f"; d={d}, float32; ShardWriter fsyncs and renames every chunk, "
        "EmbeddingWriter does not fsync unless told (+ fsync: every batch); "
        "ratios of MB/s")
  root = tempfile.mkdtemp(prefix="shard_writer_bench_", dir=_DIR.value)
  try:
    results = {}
    for kind, count, max_tokens, reference_count in (
        ("per_protein", _PER_PROTEIN.value, _PER_PROTEIN_TOKENS.value,
         _REFERENCE.value),
        ("per_residue", _PER_RESIDUE.value, _MAX_TOKENS.value,
         _REFERENCE_PER_RESIDUE.value)):
      key = engine.OutputSpec(kind, -1).key
      per_residue = kind == "per_residue"
      lengths = rng.choice(real_lengths, count)
      names, original_ids = _headers(records, count, rng)
      plan = _plan(lengths, max_tokens)
      rows = (max(int(lengths[list(b.indices)].sum()) for b in plan)
              if per_residue else max(len(b.indices) for b in plan))
      pool = rng.standard_normal((rows, d), dtype=np.float32)
      print(f"\n{kind}: {count:,} records in {len(plan)} chunks (mean "
            f"{count / len(plan):.0f} records, max_tokens={max_tokens:,})")
      output = os.path.join(root, f"{kind}.h5")
      seconds, nbytes = _write_shard(output, key, plan, lengths, names,
                                     original_ids, pool)
      print(f"  ShardWriter             {_rate(count, seconds, nbytes)}")
      for fsync in (False, True):
        reference = _write_reference(
            os.path.join(root, f"{kind}_reference.h5"), plan, lengths, names,
            original_ids, pool, per_residue, reference_count, fsync)
        # In bytes: the reference's records are the plan's first, the longest.
        ratio = (nbytes / seconds) / (reference[2] / reference[1])
        label = "EmbeddingWriter + fsync" if fsync else "EmbeddingWriter"
        print(f"  {label:23} {_rate(*reference)}; ShardWriter: {ratio:.1f}x")
      results[kind] = (output, count, nbytes, seconds)
      if per_residue:  # Its parts are only for the write figure: free disk.
        shutil.rmtree(shards.parts_directory(output))

    output, count, nbytes, _ = results["per_protein"]
    print(f"\nmerge of the per-protein shard ({count:,} records) into one "
          "file:")
    rates = {}
    for links in (False, True):
      start = time.perf_counter()
      shards.merge(output, overwrite=True, links=links, progress=False)
      seconds = time.perf_counter() - start
      rates[links] = count / seconds
      print(f"  {'links' if links else 'copy '}  {count / seconds:10,.0f} "
            f"records/s {nbytes / seconds / 1e6:6,.0f} MB/s ({seconds:.1f} s,"
            f" merged file {os.path.getsize(output) / 1e6:,.0f} MB)")
    start = time.perf_counter()
    read = sum(1 for _ in shards.read_embeddings(output))
    reading = time.perf_counter() - start
    print(f"  read_embeddings over the parts {read / reading:10,.0f} "
          "records/s (every chunk read, nothing merged)")
    disk = results["per_residue"][2] / results["per_residue"][3] / 1e6
    print(f"  what bounds the merge: reading the chunks is "
          f"{reading * rates[False] / count:.0%} of a copy's time and "
          f"{reading * rates[True] / count:.0%} of links' time; the rest is "
          "HDF5 creating one dataset (and its original_id attribute) per "
          "protein, a real or a virtual one. Not the bytes: a copy moves "
          f"{nbytes / 1e6 * rates[False] / count:,.0f} MB/s, where the disk "
          f"took {disk:,.0f} MB/s of per-residue chunks above.")
  finally:
    shutil.rmtree(root)


if __name__ == "__main__":
  app.run(main)
