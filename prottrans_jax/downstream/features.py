"""Inputs of the heads: embeddings from the engine's HDF5 files, or one-hot.

Per-protein inputs are the mean over residues (the engine's definition of a
per-protein embedding), so one per-residue file serves every head. The
one-hot residue encoding is the baseline that shows what embeddings add.
An embeddings file at a URL (`gs://...`) is copied to a local temporary
file for each read (h5py opens local files only; `prottrans_jax.fs`).
"""

import logging
import os
from typing import Sequence

import h5py
import numpy as np

from prottrans_jax import fs
from prottrans_jax.downstream import readers
from prottrans_jax.inference import h5_writer

logger = logging.getLogger(__name__)

ONEHOT = "onehot"  # Feature source name of the baseline.
# The 20 standard residues, then X for everything else (U, Z, O, B, X, ...).
ONEHOT_ALPHABET = "ACDEFGHIKLMNPQRSTVWY"
ONEHOT_DIM = len(ONEHOT_ALPHABET) + 1


def onehot(sequence: str) -> np.ndarray:
  """(L, 21) float32 one-hot residues."""
  index = {c: i for i, c in enumerate(ONEHOT_ALPHABET)}
  rows = np.asarray([index.get(c, len(ONEHOT_ALPHABET)) for c in sequence])
  return np.eye(ONEHOT_DIM, dtype=np.float32)[rows]


def _from_h5(handle: h5py.File, protein: readers.LabeledProtein,
             per_protein: bool, path: str) -> np.ndarray:
  name = h5_writer.dataset_name(protein.id)
  if name not in handle:
    raise readers.LabelError(
        f"{protein.id!r} is missing from the embeddings file {path} "
        f"(dataset {name!r}); embed the same FASTA the labels come from")
  array = np.asarray(handle[name], np.float32)
  if array.ndim == 1:
    if not per_protein:
      raise readers.LabelError(
          f"{path}: {protein.id!r} is a per-protein embedding; this head "
          "needs per-residue embeddings (embed without --per_protein)")
    return array
  if array.shape[0] != len(protein.sequence):
    raise readers.LabelError(
        f"{path}: {protein.id!r} has {array.shape[0]} embedding rows but "
        f"its labelled sequence has {len(protein.sequence)} residues")
  return array.mean(axis=0) if per_protein else array


def load_features(proteins: Sequence[readers.LabeledProtein], source: str,
                  per_protein: bool) -> list[np.ndarray]:
  """One array per protein: (L, d), or (d,) when `per_protein`.

  Args:
    proteins: whose features to load, in this order.
    source: an HDF5 file written by the embedding engine (local or a URL),
      or ONEHOT.
    per_protein: mean over residues.
  """
  if source == ONEHOT:
    arrays = [onehot(p.sequence) for p in proteins]
    return [a.mean(axis=0) for a in arrays] if per_protein else arrays
  path = os.fspath(source)
  if not fs.path(path).is_file():
    raise FileNotFoundError(f"embeddings file not found: {path} (write it "
                            "with scripts/embed.py)")
  if fs.is_remote(path):
    logger.info("copying %s to a local file (h5py reads local files)", path)
  with fs.local_copy(path) as local, h5py.File(local, "r") as handle:
    return [_from_h5(handle, p, per_protein, path) for p in proteins]

