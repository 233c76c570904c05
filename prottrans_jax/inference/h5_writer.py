"""HDF5 output in the layout the ProtTrans embedder and bio_embeddings use.

One dataset per protein at the file's root, named by the record id: shape
(L, d) per residue or (d,) per protein. HDF5 names cannot hold `/` (a path
separator) nor be `.`; such characters are replaced by `_` and the full
header is always kept in the attribute `original_id`.

The file is closed after every batch, so what is on disk is a valid HDF5 file
between batches; a killed run leaves every finished batch readable, and a
restarted run skips the proteins already there. The root attributes record
the settings that produced the file; a restart with other settings is refused
instead of mixing two kinds of embeddings in one file. A setting that was
renamed (`renamed_settings`) still matches under its former name, so files
written before the rename resume.

h5py writes local files only: `run.embed_fasta` writes a URL output
(`gs://...`) through a local copy (`prottrans_jax.fs.staged_output`) and
names the URL in this writer's messages (`name`).
"""

import json
import logging
import os
from typing import Mapping

import h5py
import numpy as np

logger = logging.getLogger(__name__)

SETTINGS_ATTRIBUTE = "prottrans_jax_settings"


class OutputError(ValueError):
  """The output file cannot be used as asked (exists, other settings...)."""


def _flatten(record: Mapping, prefix: str = "") -> dict[str, object]:
  flat = {}
  for key, value in record.items():
    if isinstance(value, Mapping):
      flat.update(_flatten(value, f"{prefix}{key}."))
    else:
      flat[prefix + key] = value
  return flat


def first_difference(expected: Mapping, found: Mapping) -> str:
  """The first setting (dotted path) whose values differ, said plainly:
  what an output holds ("there") against what a run asks for ("now")."""
  expected, found = _flatten(expected), _flatten(found)
  for key in sorted(set(expected) | set(found)):
    if expected.get(key) != found.get(key):
      return f"{key}: {found.get(key)!r} there, {expected.get(key)!r} now"
  return ""


def dataset_name(record_id: str) -> str:
  """A valid HDF5 name for a record id."""
  name = record_id.replace("/", "_")
  return "_" if name in ("", ".") else name


class EmbeddingWriter:
  """Appends embeddings to an HDF5 file, one dataset per protein."""

  def __init__(self, path: str, settings: Mapping[str, object],
               overwrite: bool = False,
               renamed_settings: Mapping[str, str] | None = None,
               name: str | None = None):
    """Opens `path`: a new file, or one this writer may resume.

    Args:
      path: the HDF5 file (local).
      settings: what produced the embeddings (JSON-serialisable values),
        recorded in the file and compared on resume.
      overwrite: replace an existing file instead of resuming it.
      renamed_settings: {former key: current key} for settings whose name
        changed: an existing file that recorded the former key resumes when
        the values agree (its recorded settings are left as they are).
      name: what messages call the file (default `path`): the URL that a
        local staging copy will be uploaded to.
    """
    self.path = path
    self.name = path if name is None else name
    self._settings = json.dumps(dict(settings), sort_keys=True)
    self._renamed = dict(renamed_settings or {})
    if os.path.exists(path):
      if overwrite:
        logger.warning("--overwrite: replacing %s", self.name)
        os.remove(path)
      else:
        self._check_resumable()
    if not os.path.exists(path):
      os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
      with h5py.File(path, "w") as f:
        f.attrs[SETTINGS_ATTRIBUTE] = self._settings

  def _check_resumable(self) -> None:
    try:
      with h5py.File(self.path, "r") as f:
        previous = f.attrs.get(SETTINGS_ATTRIBUTE)
    except OSError as e:
      raise OutputError(
          f"{self.name} exists but is not a readable HDF5 file ({e}); pass "
          "--overwrite to replace it") from e
    if previous is None:
      raise OutputError(f"{self.name} exists and was not written by this "
                        "embedder; pass --overwrite to replace it")
    if previous != self._settings and not self._renamed_match(previous):
      try:
        difference = first_difference(json.loads(self._settings),
                                      json.loads(previous))
      except (TypeError, ValueError):
        difference = f"recorded as {previous!r}"
      raise OutputError(
          f"{self.name} exists with other settings ({difference}). Pass "
          "--overwrite to replace it, or another --output")

  def _renamed_match(self, previous: str) -> bool:
    """Whether `previous` are these settings, some under former names."""
    try:
      recorded = json.loads(previous)
    except (TypeError, ValueError):
      return False
    if not isinstance(recorded, dict):
      return False
    current = {self._renamed.get(key, key): value
               for key, value in recorded.items()}
    return len(current) == len(recorded) and current == json.loads(
        self._settings)

  def existing_names(self) -> set[str]:
    with h5py.File(self.path, "r") as f:
      return set(f.keys())

  def write(self, embeddings: Mapping[str, tuple[str, np.ndarray]],
            dtype: str = "float32") -> None:
    """Writes {dataset name: (original id, array)} and closes the file."""
    with h5py.File(self.path, "a") as f:
      for name, (original_id, array) in embeddings.items():
        if name in f:  # Only possible if two ids sanitize to one name.
          raise OutputError(f"{self.name}: dataset {name!r} (record "
                            f"{original_id!r}) already exists")
        dataset = f.create_dataset(name, data=np.asarray(array, dtype=dtype))
        dataset.attrs["original_id"] = original_id
