"""Embedding output at scale: per-shard chunk files, committed atomically.

An embedding run of `num_shards` independent processes ("shards") writes,
for the output `O` (`out.h5` or `gs://bucket/out.h5`):

  O.parts/shard-00000-of-00003/
    settings.json        what produces this shard (written when it starts)
    chunk-0000000.h5     one planned batch: `ids` (the HDF5 names the merged
    chunk-0000004.h5     file uses), `original_ids` (FASTA headers),
    ...                  `lengths` (residues, with per-residue output) and
                         one array per output: `per_protein/layer_-1` is
                         [n, d], `per_residue/layer_-1` the [sum(lengths), d]
                         rows of every record, in record order
    COMPLETED            JSON summary, written last

Every file appears whole under its name or not at all: it is written aside
(a hidden temporary name in the same directory, or a local temporary file
for a bucket), flushed and fsynced, then renamed into place (an object upload,
which a bucket makes visible whole). A process killed at any instant leaves
only complete chunks and, at worst, a temporary file that the next writer of
that shard deletes. Chunks are one array per batch, not one dataset per
protein, so writing costs far less than computing (bench/shard_writer.py).

`merge` turns a complete set of shards into the files users know (one
dataset per protein, `original_id` attribute; one file per output when a run
asks for several: `merged_paths`), also atomically; with `links` it writes
instead an index of HDF5 virtual datasets over the chunk files, nothing
copied (per-residue output of millions of proteins). `read_embeddings`
streams proteins from the shards without merging, or from a merged file.

Test hook: with PROTTRANS_JAX_PAUSE_AT=<point>:<n> in the environment, the
n-th time a process reaches `pause_point(<point>)` it prints a line starting
with PAUSED_MARKER and blocks until killed (crash tests kill it there). Unset,
as always outside tests, a point costs one environment lookup.
"""

import collections
import json
import logging
import os
import tempfile
import time
from typing import Iterator, Mapping, Sequence

from etils import epath
import h5py
import numpy as np
import tqdm

from prottrans_jax import fs
from prottrans_jax.inference import h5_writer

logger = logging.getLogger(__name__)

PARTS_SUFFIX = ".parts"
SETTINGS_FILE = "settings.json"
COMPLETED_FILE = "COMPLETED"
_TEMP_MARK = ".tmp-"

PAUSE_AT_ENV = "PROTTRANS_JAX_PAUSE_AT"
PAUSED_MARKER = "PROTTRANS_JAX_PAUSED"
PAUSE_POINTS = ("batch_computed", "chunk_written", "chunk_committed",
                "merge_written", "merged")
_pauses_reached = collections.Counter()

# Settings renamed since files were first written: {former: current}. A
# merged file recorded under the former name still takes new proteins.
RENAMED_SETTINGS = {"max_residues": "max_tokens"}


def pause_point(name: str) -> None:
  """The crash tests' hook (module docstring); a no-op outside them."""
  value = os.environ.get(PAUSE_AT_ENV)
  if not value:
    return
  point, _, count = value.partition(":")
  if point not in PAUSE_POINTS or not count.isdigit() or int(count) < 1:
    raise ValueError(f"{PAUSE_AT_ENV}={value!r}: expected <point>:<n> with "
                     f"a point among {', '.join(PAUSE_POINTS)} and n >= 1 "
                     "(a test hook; unset it)")
  if point != name:
    return
  _pauses_reached[name] += 1
  if _pauses_reached[name] == int(count):
    print(f"{PAUSED_MARKER} point={name} n={count}", flush=True)
    while True:
      time.sleep(3600)


def check_output_location(output: fs.PathLike) -> None:
  """Refuses a local `output` that cannot be created: under a file, or in
  a directory this process may not write (checked before any work; a URL
  is the bucket's business)."""
  if fs.is_remote(output):
    return
  parent = os.path.dirname(os.path.abspath(os.fspath(output)))
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise h5_writer.OutputError(
        f"--output {output}: {parent} is a file, not a directory, so "
        "nothing can be written under it")
  if not os.access(parent, os.W_OK | os.X_OK):
    raise h5_writer.OutputError(
        f"--output {output}: directory {parent} is not writable")


def parts_directory(output: fs.PathLike) -> epath.Path:
  return fs.path(os.fspath(output) + PARTS_SUFFIX)


def shard_name(shard_index: int, num_shards: int) -> str:
  return f"shard-{shard_index:05d}-of-{num_shards:05d}"


def _chunk_name(batch_index: int) -> str:
  return f"chunk-{batch_index:07d}.h5"


def _parse_key(key: str) -> tuple[str, int]:
  kind, _, layer = key.partition("/layer_")
  return kind, int(layer)


def merged_paths(output: fs.PathLike,
                 output_keys: Sequence[str]) -> dict[str, epath.Path]:
  """The merged file of each output: `output` itself for a single one;
  with several, `output` with `.per_residue`/`.per_protein` (when both kinds
  are asked for) and `.layer<k>` (when several layers are) inserted before
  its extension: out.per_protein.layer-4.h5."""
  parsed = {key: _parse_key(key) for key in output_keys}
  kinds = {kind for kind, _ in parsed.values()}
  layers = {layer for _, layer in parsed.values()}
  stem, extension = os.path.splitext(os.fspath(output))
  paths = {}
  for key, (kind, layer) in parsed.items():
    suffix = (f".{kind}" if len(kinds) > 1 else "") + (
        f".layer{layer}" if len(layers) > 1 else "")
    paths[key] = fs.path(stem + suffix + extension)
  return paths


def merged_file_settings(settings: Mapping[str, object],
                         key: str) -> dict[str, object]:
  """What a merged file records: the run's settings (without the shard's
  own entries under "shard"), its kind and, unless the default -1, its
  layer."""
  kind, layer = _parse_key(key)
  recorded = {k: v for k, v in settings.items() if k != "shard"}
  recorded["per_protein"] = kind == "per_protein"
  if layer != -1:
    recorded["layer"] = layer
  return recorded


def _fsync(path: str) -> None:
  descriptor = os.open(path, os.O_RDONLY)
  try:
    os.fsync(descriptor)
  finally:
    os.close(descriptor)


class _AtomicFile:
  """A local path to write; `commit()` puts it at `target` whole or not at
  all (rename in the same directory, or one upload to a bucket)."""

  def __init__(self, target: epath.Path):
    self.target = target
    if fs.is_remote(target):
      handle, self.path = tempfile.mkstemp(suffix=_TEMP_MARK + "upload")
      os.close(handle)
    else:
      self.path = os.path.join(os.fspath(target.parent),
                               f".{target.name}{_TEMP_MARK}{os.getpid()}")

  def commit(self, pause_at: str | None = None) -> None:
    _fsync(self.path)
    if pause_at:
      pause_point(pause_at)
    if fs.is_remote(self.target):
      epath.Path(self.path).copy(self.target, overwrite=True)
      os.remove(self.path)
    else:
      os.replace(self.path, os.fspath(self.target))
      _fsync(os.fspath(self.target.parent))

  def discard(self) -> None:
    if os.path.exists(self.path):
      os.remove(self.path)


def _write_json(target: epath.Path, record: Mapping[str, object]) -> None:
  staged = _AtomicFile(target)
  with open(staged.path, "w") as f:
    json.dump(record, f, sort_keys=True, indent=1)
  staged.commit()


class ShardWriter:
  """Writes one shard's chunks and its completion marker."""

  def __init__(self, output: fs.PathLike, shard_index: int, num_shards: int,
               settings: Mapping[str, object], output_keys: Sequence[str],
               output_dtype: str = "float32", overwrite: bool = False):
    """Opens (creates, or checks and resumes) the shard's directory.

    Raises:
      h5_writer.OutputError: the directory holds a shard made with other
        settings, or the parts directory shards of another split; unless
        `overwrite`, which deletes them (logged).
    """
    self.output = os.fspath(output)
    self.parts = parts_directory(output)
    self.directory = self.parts / shard_name(shard_index, num_shards)
    self.output_keys = list(output_keys)
    self.output_dtype = output_dtype
    self._record = {"settings": dict(settings),
                    "output_keys": self.output_keys,
                    "output_dtype": output_dtype,
                    "shard_index": shard_index, "num_shards": num_shards}
    self._record = json.loads(json.dumps(self._record))  # As stored.
    self._check_split(num_shards, overwrite)
    settings_file = self.directory / SETTINGS_FILE
    if self.directory.exists() and overwrite:
      logger.warning("--overwrite: deleting %s", self.directory)
      self.directory.rmtree()
    if settings_file.exists():
      found = json.loads(settings_file.read_text())
      if found != self._record and self._holds_nothing():
        # A run that stopped before its first chunk left nothing to keep:
        # a rerun with corrected settings starts afresh.
        logger.info("%s holds no chunk yet; starting it with the new "
                    "settings (%s)", self.directory,
                    h5_writer.first_difference(self._record, found))
        self.directory.rmtree()
      elif found != self._record:
        raise h5_writer.OutputError(
            f"{self.directory} holds a shard made with other settings "
            f"({h5_writer.first_difference(self._record, found)}). Pass "
            "--overwrite to replace it, or another --output")
    self.directory.mkdir(parents=True, exist_ok=True)
    self._remove_temporaries()
    if not settings_file.exists():
      _write_json(settings_file, self._record)

  def _holds_nothing(self) -> bool:
    return not self.committed() and not self.completed

  def remove_if_empty(self) -> None:
    """Deletes this shard's directory, and the parts directory if nothing
    else is in it, when no chunk was committed (a run that failed before
    its first chunk leaves no output behind). Best effort, called while
    another error propagates: a failure here is logged, not raised."""
    try:
      if not self.directory.exists() or not self._holds_nothing():
        return
      self.directory.rmtree()
      if self.parts.is_dir() and not any(self.parts.iterdir()):
        self.parts.rmdir()
    except OSError as e:
      logger.warning("could not remove the empty %s: %s", self.directory, e)

  def _check_split(self, num_shards: int, overwrite: bool) -> None:
    if not self.parts.is_dir():
      return
    others = [p for p in self.parts.iterdir()
              if p.name.startswith("shard-")
              and not p.name.endswith(f"-of-{num_shards:05d}")]
    if others and not overwrite:
      raise h5_writer.OutputError(
          f"{self.parts} holds shards of another split ({others[0].name}); "
          f"now asked for {num_shards} shards. Use the same --num_shards, "
          "or --overwrite to replace them")
    for other in others:
      logger.warning("--overwrite: deleting %s", other)
      other.rmtree()

  def _remove_temporaries(self) -> None:
    stale = [p for p in self.directory.iterdir() if _TEMP_MARK in p.name]
    for path in stale:
      path.unlink()
    if stale:
      logger.info("%s: removed %d unfinished file(s) of a stopped run",
                  self.directory, len(stale))

  def committed(self) -> set[int]:
    """Batch indices whose chunks are on disk."""
    return {int(p.name[len("chunk-"):-len(".h5")])
            for p in self.directory.glob("chunk-*.h5")}

  @property
  def completed(self) -> bool:
    return (self.directory / COMPLETED_FILE).exists()

  def write_chunk(self, batch_index: int, names: Sequence[str],
                  original_ids: Sequence[str],
                  arrays: Mapping[str, Sequence[np.ndarray]]) -> None:
    """Commits one batch: `arrays[key][i]` is record i's (L, d) per residue
    or (d,) per protein."""
    if set(arrays) != set(self.output_keys):
      raise ValueError(f"chunk outputs {sorted(arrays)} are not this "
                       f"shard's {self.output_keys}")
    staged = _AtomicFile(self.directory / _chunk_name(batch_index))
    try:
      with h5py.File(staged.path, "w") as f:
        f.attrs["batch_index"] = batch_index
        f.create_dataset("ids", data=np.array(names, dtype=object),
                         dtype=h5py.string_dtype())
        f.create_dataset("original_ids", data=np.array(original_ids,
                                                       dtype=object),
                         dtype=h5py.string_dtype())
        for key in self.output_keys:
          kind, _ = _parse_key(key)
          values = [np.asarray(a, self.output_dtype) for a in arrays[key]]
          if kind == "per_residue":
            if "lengths" not in f:
              f.create_dataset("lengths", data=np.array(
                  [len(v) for v in values], np.int64))
            data = (np.concatenate(values) if values
                    else np.zeros((0, 0), self.output_dtype))
          else:
            data = (np.stack(values) if values
                    else np.zeros((0, 0), self.output_dtype))
          f.create_dataset(key, data=data)
      staged.commit(pause_at="chunk_written")
    except BaseException:
      staged.discard()
      raise
    pause_point("chunk_committed")

  def complete(self, summary: Mapping[str, object]) -> None:
    """Marks the shard done (the merge requires it of every shard)."""
    _write_json(self.directory / COMPLETED_FILE, summary)


def _shard_directories(parts: epath.Path) -> list[epath.Path]:
  """The shards of a complete split, in order; an OutputError naming what
  is missing or unfinished otherwise."""
  if not parts.is_dir():
    raise h5_writer.OutputError(
        f"{parts} does not exist: no embedding shards to read (run "
        "scripts/embed.py with this --output first)")
  found = sorted(p for p in parts.iterdir() if p.name.startswith("shard-"))
  counts = {int(p.name.rsplit("-of-", 1)[1]) for p in found}
  if len(counts) != 1:
    raise h5_writer.OutputError(
        f"{parts} holds {'no shards' if not counts else 'shards of several splits'}")
  [num_shards] = counts
  problems = []
  for index in range(num_shards):
    directory = parts / shard_name(index, num_shards)
    if not (directory / COMPLETED_FILE).exists():
      problems.append(
          f"shard {index} of {num_shards} is "
          f"{'not complete' if directory.exists() else 'missing'}: run "
          f"scripts/embed.py with --shard_index {index} --num_shards "
          f"{num_shards} and the same --input and --output")
  if problems:
    raise h5_writer.OutputError("; ".join(problems))
  return [parts / shard_name(i, num_shards) for i in range(num_shards)]


def _shard_record(directory: epath.Path) -> dict:
  return json.loads((directory / SETTINGS_FILE).read_text())


def _chunks(directory: epath.Path) -> list[epath.Path]:
  return sorted(directory.glob("chunk-*.h5"))


class _Chunk:
  """One chunk file's records, opened (a bucket's through a local copy)."""

  def __init__(self, path: epath.Path):
    self.path = path

  def __enter__(self):
    self._copy = fs.local_copy(self.path)
    self.local = os.fspath(self._copy.__enter__())
    self.file = h5py.File(self.local, "r")
    self.ids = list(self.file["ids"].asstr()[()])
    self.original_ids = list(self.file["original_ids"].asstr()[()])
    lengths = self.file["lengths"][()] if "lengths" in self.file else None
    self.offsets = (None if lengths is None else
                    np.concatenate([[0], np.cumsum(lengths)]))
    return self

  def __exit__(self, *exc):
    self.file.close()
    self._copy.__exit__(*exc)

  def rows(self, key: str, i: int) -> slice | int:
    """Where record i's array is in the chunk's `key` array."""
    if _parse_key(key)[0] == "per_residue":
      return slice(int(self.offsets[i]), int(self.offsets[i + 1]))
    return i


def _iterate_shards(shard_dirs: Sequence[epath.Path]) -> Iterator[_Chunk]:
  for directory in shard_dirs:
    for path in _chunks(directory):
      with _Chunk(path) as chunk:
        yield chunk


def _common_record(shard_dirs: Sequence[epath.Path]) -> dict:
  """The settings every shard shares (their own "shard" entries aside)."""
  records = [_shard_record(d) for d in shard_dirs]

  def shared(record):
    settings = {k: v for k, v in record["settings"].items() if k != "shard"}
    return {"settings": settings, "output_keys": record["output_keys"],
            "output_dtype": record["output_dtype"]}

  first = shared(records[0])
  for directory, record in zip(shard_dirs[1:], records[1:]):
    if shared(record) != first:
      difference = h5_writer.first_difference(
          first["settings"], shared(record)["settings"])
      raise h5_writer.OutputError(
          f"{directory} was made with other settings than "
          f"{shard_dirs[0]} ({difference}); rerun it with the same command")
  return first


def _check_unique_ids(shard_dirs: Sequence[epath.Path]) -> int:
  owner = {}
  for chunk_shard in shard_dirs:
    for path in _chunks(chunk_shard):
      with _Chunk(path) as chunk:
        for name in chunk.ids:
          if name in owner:
            raise h5_writer.OutputError(
                f"protein {name!r} is in {owner[name]} and in "
                f"{chunk_shard.name}: ids must be unique across the input")
          owner[name] = chunk_shard.name
  return len(owner)


def merge(output: fs.PathLike, *, overwrite: bool = False, links: bool = False,
          extend_existing: bool = False,
          progress: bool = True) -> dict[str, epath.Path]:
  """Merges the complete shards under `output`.parts into the merged files
  (`merged_paths`): one dataset per protein, `original_id` attribute, the
  run's settings in the root attribute `h5_writer.SETTINGS_ATTRIBUTE`.

  Copying (the default) gives self-contained files, at HDF5's cost of one
  dataset per protein (about 7,000/s). `links` writes instead one virtual
  dataset per protein over the rows of the chunk files (relative paths: the
  index and the parts directory move together); no data is copied, which is
  the choice for terabytes of per-residue output. Links need local files.

  An existing merged file is an OutputError unless `overwrite` (replaced)
  or `extend_existing` (it must have these settings; its datasets stay, the
  shards' proteins it lacks are added; left untouched when it lacks none).
  Every file is written aside and renamed into place.
  """
  if links and fs.is_remote(output):
    raise h5_writer.OutputError(
        f"--links writes HDF5 virtual datasets, which need local files; "
        f"{output} is a URL (merge without --links, or copy the parts "
        "directory to local disk)")
  shard_dirs = _shard_directories(parts_directory(output))
  common = _common_record(shard_dirs)
  proteins = _check_unique_ids(shard_dirs)
  targets = merged_paths(output, common["output_keys"])
  for target in targets.values():  # All refused before any is written.
    if target.exists() and not (overwrite or extend_existing):
      raise h5_writer.OutputError(
          f"{target} exists; pass --overwrite to replace it")
  for key, target in targets.items():
    settings = merged_file_settings(common["settings"], key)
    _merge_one(target, key, settings, shard_dirs, proteins, overwrite=overwrite,
               links=links, extend_existing=extend_existing, progress=progress)
  pause_point("merged")
  return targets


def _merge_one(target: epath.Path, key: str, settings: dict,
               shard_dirs: Sequence[epath.Path], proteins: int, *,
               overwrite: bool, links: bool, extend_existing: bool,
               progress: bool) -> None:
  existing = set()
  if target.exists() and extend_existing and not overwrite:
    with fs.local_copy(target) as local:
      existing = h5_writer.EmbeddingWriter(
          os.fspath(local), settings, renamed_settings=RENAMED_SETTINGS,
          name=str(target)).existing_names()
  if existing and not _has_new(shard_dirs, existing):
    logger.info("%s already holds every protein of the shards", target)
    return
  staged = _AtomicFile(target)
  try:
    if existing:
      with fs.open_read(target) as source, open(staged.path, "wb") as copy:
        while block := source.read(1 << 24):
          copy.write(block)
    with h5py.File(staged.path, "a" if existing else "w") as f:
      if not existing:
        f.attrs[h5_writer.SETTINGS_ATTRIBUTE] = json.dumps(settings,
                                                           sort_keys=True)
      with tqdm.tqdm(total=proteins, unit="protein",
                     disable=not progress, desc=f"merging {target.name}") as bar:
        maker = _DatasetMaker(f)
        for chunk in _iterate_shards(shard_dirs):
          _add_chunk(maker, chunk, key, existing, links,
                     os.fspath(target.parent))
          bar.update(len(chunk.ids))
    staged.commit(pause_at="merge_written")
  except BaseException:
    staged.discard()
    raise
  logger.info("wrote %s", target)


def _has_new(shard_dirs, existing: set[str]) -> bool:
  return any(name not in existing for chunk in _iterate_shards(shard_dirs)
             for name in chunk.ids)


class _DatasetMaker:
  """Creates a merged file's datasets, one per protein, through h5py's
  low-level API: the datasets `create_dataset` and `attrs[...] =` make
  (contiguous; the `original_id` a UTF-8 string), at about half the cost
  each, which is what bounds a merge."""

  def __init__(self, f: h5py.File):
    self._group = f.id
    self._string = h5py.h5t.py_create(h5py.string_dtype(), logical=True)
    self._scalar = h5py.h5s.create(h5py.h5s.SCALAR)

  def create(self, name: str, original_id: str, dtype: np.dtype,
             shape: tuple[int, ...], properties=None) -> h5py.h5d.DatasetID:
    dataset = h5py.h5d.create(self._group, name.encode(),
                              h5py.h5t.py_create(dtype),
                              h5py.h5s.create_simple(shape), dcpl=properties)
    attribute = h5py.h5a.create(dataset, b"original_id", self._string,
                                self._scalar)
    attribute.write(np.array(original_id, dtype=h5py.string_dtype()))
    return dataset

  def copy(self, name: str, original_id: str, array: np.ndarray) -> None:
    array = np.ascontiguousarray(array)
    self.create(name, original_id, array.dtype, array.shape).write(
        h5py.h5s.ALL, h5py.h5s.ALL, array)

  def link(self, name: str, original_id: str, source_file: str, key: str,
           source_shape: tuple[int, ...], dtype: np.dtype,
           rows: slice | int) -> None:
    """A virtual dataset over `rows` of dataset `key` of `source_file`."""
    start, count, shape = ((rows.start, rows.stop - rows.start,
                            (rows.stop - rows.start, source_shape[1]))
                           if isinstance(rows, slice) else
                           (rows, 1, (source_shape[1],)))
    selection = h5py.h5s.create_simple(source_shape)
    selection.select_hyperslab((start, 0), (count, source_shape[1]))
    properties = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    properties.set_virtual(h5py.h5s.create_simple(shape),
                           source_file.encode(), key.encode(), selection)
    self.create(name, original_id, dtype, shape, properties)


def _add_chunk(maker: _DatasetMaker, chunk: _Chunk, key: str,
               existing: set[str], links: bool, target_dir: str) -> None:
  source = chunk.file[key]
  data = None if links else source[()]  # One read per chunk, not per row.
  relative = os.path.relpath(chunk.local, target_dir)
  for i, (name, original_id) in enumerate(zip(chunk.ids, chunk.original_ids)):
    if name in existing:
      continue
    if links:
      maker.link(name, original_id, relative, key, source.shape, source.dtype,
                 chunk.rows(key, i))
    else:
      maker.copy(name, original_id, data[chunk.rows(key, i)])


def remove_parts(output: fs.PathLike) -> None:
  """Deletes `output`.parts (after a successful merge)."""
  parts = parts_directory(output)
  if parts.exists():
    parts.rmtree()


def read_embeddings(path: fs.PathLike, output_key: str | None = None
                    ) -> Iterator[tuple[str, str, np.ndarray]]:
  """Streams (name, original_id, array) of every protein: from the shards
  of `path`.parts when they are there (all complete; no merge needed), else
  from the merged HDF5 file `path`.

  `output_key` ("per_protein/layer_-1", ...) picks one output of a run that
  wrote several; a merged file holds one output and ignores it.
  """
  parts = parts_directory(path)
  if parts.is_dir():
    shard_dirs = _shard_directories(parts)
    keys = _common_record(shard_dirs)["output_keys"]
    if output_key is None and len(keys) == 1:
      output_key = keys[0]
    if output_key not in keys:
      raise ValueError(f"{path}: choose output_key among {keys}")
    for chunk in _iterate_shards(shard_dirs):
      data = chunk.file[output_key]
      for i, (name, original_id) in enumerate(zip(chunk.ids,
                                                  chunk.original_ids)):
        yield name, original_id, data[chunk.rows(output_key, i)]
    return
  if not fs.path(path).exists():
    raise FileNotFoundError(f"no embeddings at {path} (nor {parts})")
  with fs.local_copy(path) as local, h5py.File(local, "r") as f:
    for name, dataset in f.items():
      yield name, dataset.attrs["original_id"], dataset[()]
