"""HDF5 output in the layout the ProtTrans embedder and bio_embeddings use.

One dataset per protein at the file's root, named by the record id: shape
(L, d) per residue or (d,) per protein. HDF5 names cannot hold `/` (a path
separator) nor be `.`; such characters are replaced by `_` and the full
header is always kept in the attribute `original_id`.

The file is closed after every batch, so what is on disk is a valid HDF5 file
between batches; a killed run leaves every finished batch readable, and a
restarted run skips the proteins already there. The root attributes record
the settings that produced the file; a restart with other settings is refused
instead of mixing two kinds of embeddings in one file.
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


def dataset_name(record_id: str) -> str:
  """A valid HDF5 name for a record id."""
  name = record_id.replace("/", "_")
  return "_" if name in ("", ".") else name


class EmbeddingWriter:
  """Appends embeddings to an HDF5 file, one dataset per protein."""

  def __init__(self, path: str, settings: Mapping[str, object],
               overwrite: bool = False):
    self.path = path
    self._settings = json.dumps(dict(settings), sort_keys=True)
    if os.path.exists(path):
      if overwrite:
        logger.warning("--overwrite: replacing %s", path)
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
          f"{self.path} exists but is not a readable HDF5 file ({e}); pass "
          "--overwrite to replace it") from e
    if previous is None:
      raise OutputError(f"{self.path} exists and was not written by this "
                        "embedder; pass --overwrite to replace it")
    if previous != self._settings:
      raise OutputError(
          f"{self.path} exists with other settings ({previous}); now asked "
          f"for {self._settings}. Pass --overwrite to replace it, or another "
          "--output")

  def existing_names(self) -> set[str]:
    with h5py.File(self.path, "r") as f:
      return set(f.keys())

  def write(self, embeddings: Mapping[str, tuple[str, np.ndarray]],
            dtype: str = "float32") -> None:
    """Writes {dataset name: (original id, array)} and closes the file."""
    with h5py.File(self.path, "a") as f:
      for name, (original_id, array) in embeddings.items():
        if name in f:  # Only possible if two ids sanitize to one name.
          raise OutputError(f"{self.path}: dataset {name!r} (record "
                            f"{original_id!r}) already exists")
        dataset = f.create_dataset(name, data=np.asarray(array, dtype=dtype))
        dataset.attrs["original_id"] = original_id
