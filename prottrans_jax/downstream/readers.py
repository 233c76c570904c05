"""Labelled protein sets in the formats the community uses.

Every reader returns `LabeledProtein`s: an id, the sequence, and integer
labels per task (`-1` = no label, ignored by losses and metrics), so one
trainer and one set of metrics serve every task.

- NetSurfP-2.0 CSV (CB513, TS115, CASP12, NEW364 and the training set, as
  ProtTrans used them): `input, dssp3, dssp8, disorder, <set>_mask`, each
  field a space-separated per-residue list. A residue is scored when it is
  resolved (`disorder` 1.0) and inside the set's mask (1.0); CB513's mask
  marks the part of each chain that belongs to the original CB513 domain.
  The rows have no ids, so they are named `<file stem>_<row number>`.
- DeepLoc FASTA: header `>ID Location-M|S|U ...`: 10 localization classes
  and membrane-bound (M) / soluble (S); U (unknown) is no label.
- The bundled Swiss-Prot sample's annotation TSV: 3-state secondary structure
  from HELIX/STRAND/TURN features, Swiss-Prot locations mapped onto DeepLoc's
  classes (`SWISSPROT_LOCATIONS`), membrane M/S.
- A regression TSV (`tsv_regression`): header `protein_id<TAB>sequence<TAB>
  target`, one protein per line, a finite real target per protein (task
  "target", a float32 scalar; NaN would mean no label, but the reader
  refuses rows without a finite target rather than dropping them).
- A per-residue regression TSV (`tsv_residue_regression`, e.g. disorder,
  pLDDT or solvent accessibility per residue): header `protein_id<TAB>
  sequence<TAB>targets`, `targets` comma-separated, one value per residue
  (task "residue_target", float32 (L,)); an empty value or "nan" is a
  residue without a target (NaN: excluded from loss and metric). A count
  that differs from the sequence's length, a value that is neither a
  number nor missing (text, inf), a duplicate id or a missing column is a
  LabelError naming the file and line.

Files may be local or at a URL (`gs://...`): they are read (and
`write_fasta` writes) through `prottrans_jax.fs`.
"""

import csv
import dataclasses
import io
import logging
import os
from typing import Iterable, Literal, Mapping, Sequence

import numpy as np

from prottrans_jax import fs
from prottrans_jax.data import fasta
from prottrans_jax.data import sample_corpus

logger = logging.getLogger(__name__)

IGNORE = -1  # Label of a residue/protein without annotation.

# Task name -> class symbols, in the order of the heads' outputs.
Q3_CLASSES = ("H", "E", "C")
Q8_CLASSES = ("H", "G", "I", "E", "B", "T", "S", "C")
LOCALIZATION_CLASSES = (
    "Cell.membrane", "Cytoplasm", "Endoplasmic.reticulum", "Golgi.apparatus",
    "Lysosome/Vacuole", "Mitochondrion", "Nucleus", "Peroxisome", "Plastid",
    "Extracellular")
MEMBRANE_CLASSES = ("M", "S")
TASK_CLASSES: Mapping[str, tuple[str, ...]] = {
    "q3": Q3_CLASSES, "q8": Q8_CLASSES,
    "localization": LOCALIZATION_CLASSES, "membrane": MEMBRANE_CLASSES}
RESIDUE_TASKS = ("q3", "q8")
PROTEIN_TASKS = ("localization", "membrane")
# Real-valued tasks, per protein and per residue: float32 labels, NaN = no
# label (a class index's IGNORE of -1 is a legitimate real target).
PROTEIN_REGRESSION_TASKS = ("target",)
RESIDUE_REGRESSION_TASKS = ("residue_target",)
REGRESSION_TASKS = PROTEIN_REGRESSION_TASKS + RESIDUE_REGRESSION_TASKS
REGRESSION_COLUMNS = ("protein_id", "sequence", "target")
RESIDUE_REGRESSION_COLUMNS = ("protein_id", "sequence", "targets")

# DeepLoc marks proteins found in both compartments "Cytoplasm-Nucleus".
DUAL_LOCATIONS = {"Cytoplasm-Nucleus": "Cytoplasm"}

# Swiss-Prot's first subcellular location -> DeepLoc class. The locations
# of SWISSPROT_UNMAPPED_LOCATIONS (a bare "Membrane" does not say which
# one) are no label rather than a guess, counted in a log line; any other
# location is an error naming the record, never a silent drop.
SWISSPROT_LOCATIONS = {
    "Cytoplasm": "Cytoplasm", "Cytosol": "Cytoplasm",
    "Nucleus": "Nucleus", "Cell membrane": "Cell.membrane",
    "Cell inner membrane": "Cell.membrane",
    "Cell outer membrane": "Cell.membrane",
    "Cell junction": "Cell.membrane",
    "Endoplasmic reticulum": "Endoplasmic.reticulum",
    "Endoplasmic reticulum membrane": "Endoplasmic.reticulum",
    "Golgi apparatus": "Golgi.apparatus",
    "Golgi apparatus membrane": "Golgi.apparatus",
    "Lysosome": "Lysosome/Vacuole", "Vacuole": "Lysosome/Vacuole",
    "Protein storage vacuole": "Lysosome/Vacuole",
    "Mitochondrion": "Mitochondrion",
    "Mitochondrion inner membrane": "Mitochondrion",
    "Mitochondrion matrix": "Mitochondrion",
    "Peroxisome": "Peroxisome", "Plastid": "Plastid",
    "Chloroplast": "Plastid", "Secreted": "Extracellular",
}
SWISSPROT_UNMAPPED_LOCATIONS = ("Membrane",)


class LabelError(ValueError):
  """Bad labelled input; the message names the file and the record."""


@dataclasses.dataclass(frozen=True)
class LabeledProtein:
  """A protein and its labels: task -> int array ((L,) per residue, () per
  protein), IGNORE where there is no label."""
  id: str
  sequence: str
  labels: Mapping[str, np.ndarray]


def encode_labels(symbols: Sequence[str], task: str, where: str
                  ) -> np.ndarray:
  """Class symbols -> class indices; an unknown symbol is an error."""
  classes = TASK_CLASSES[task]
  index = {c: i for i, c in enumerate(classes)}
  unknown = sorted(set(symbols) - set(index))
  if unknown:
    raise LabelError(f"{where}: unknown {task} class(es) {unknown}; expected "
                     f"one of {list(classes)}")
  return np.asarray([index[s] for s in symbols], np.int32)


def _residue_labels(symbols: Sequence[str], task: str, scored: np.ndarray,
                    where: str) -> np.ndarray:
  labels = encode_labels(symbols, task, where)
  return np.where(scored, labels, IGNORE).astype(np.int32)


def _check_length(name: str, values: Sequence[object], length: int,
                  where: str) -> None:
  if len(values) != length:
    raise LabelError(f"{where}: {name} has {len(values)} entries but the "
                     f"sequence has {length} residues")


def _netsurfp_row(fields: Sequence[str], where: str
                  ) -> tuple[str, dict[str, np.ndarray]]:
  residues, dssp3, dssp8, disorder, mask = (f.split() for f in fields)
  for name, values in (("dssp3", dssp3), ("dssp8", dssp8),
                       ("disorder", disorder), ("mask", mask)):
    _check_length(name, values, len(residues), where)
  try:
    scored = ((np.asarray(disorder, np.float32) == 1.0) &
              (np.asarray(mask, np.float32) == 1.0))
  except ValueError as e:
    raise LabelError(f"{where}: disorder/mask must be numbers: {e}") from e
  return "".join(residues), {
      "q3": _residue_labels(dssp3, "q3", scored, where),
      "q8": _residue_labels(dssp8, "q8", scored, where)}


def read_netsurfp(path: str | os.PathLike, limit: int | None = None
                  ) -> list[LabeledProtein]:
  """Reads a NetSurfP-2.0 CSV (see the module docstring); `limit` rows."""
  path = os.fspath(path)
  stem = os.path.splitext(os.path.basename(path))[0].split("_")[0]
  proteins = []
  with fs.open_read(path) as raw, io.TextIOWrapper(
      raw, encoding="utf-8") as handle:
    header = [h.strip() for h in handle.readline().split(",")]
    if header[:4] != ["input", "dssp3", "dssp8", "disorder"] or len(
        header) != 5 or not header[4].endswith("mask"):
      raise LabelError(f"{path}:1: not a NetSurfP-2.0 CSV header: {header}")
    for line_number, line in enumerate(handle, start=2):
      if limit is not None and len(proteins) >= limit:
        break
      if not line.strip():
        continue
      where = f"{path}:{line_number}"
      fields = line.split(",")
      if len(fields) != 5:
        raise LabelError(f"{where}: {len(fields)} columns, expected 5")
      protein_id = f"{stem}_{len(proteins) + 1:04d}"
      sequence, labels = _netsurfp_row(fields, f"{where}: {protein_id!r}")
      proteins.append(LabeledProtein(
          protein_id, fasta.clean_sequence(sequence, protein_id, where,
                                           fasta.FastaPolicy()), labels))
  return proteins


def _deeploc_fields(record: fasta.FastaRecord, where: str
                    ) -> tuple[str, str]:
  """'>ID Location-M|S|U ...' -> (location, membrane symbol)."""
  fields = record.description.split()
  if len(fields) < 2 or "-" not in fields[1]:
    raise LabelError(f"{where}: header has no 'Location-M|S|U' field")
  location, membrane = fields[1].rsplit("-", 1)
  return location, membrane


def _deeploc_labels(location: str, membrane: str, where: str
                    ) -> dict[str, np.ndarray]:
  return {"localization": encode_labels([location], "localization", where)[0],
          "membrane": (np.int32(IGNORE) if membrane == "U" else
                       encode_labels([membrane], "membrane", where)[0])}


def read_deeploc(path: str | os.PathLike, limit: int | None = None,
                 dual_location: Literal["first", "skip", "error"] = "first",
                 policy: fasta.FastaPolicy = fasta.FastaPolicy()
                 ) -> list[LabeledProtein]:
  """Reads a DeepLoc FASTA (see the module docstring); `limit` records.

  DeepLoc's dual location "Cytoplasm-Nucleus" (23 records of the validation
  set) is, by `dual_location`: labelled with its first location (logged
  once), skipped (logged), or an error.
  """
  proteins, dual = [], 0
  for record in fasta.read_fasta(path, policy):
    if limit is not None and len(proteins) >= limit:
      break
    where = f"{os.fspath(path)}:{record.line}: {record.id!r}"
    location, membrane = _deeploc_fields(record, where)
    if location in DUAL_LOCATIONS:
      if dual_location == "error":
        raise LabelError(f"{where}: dual location {location!r}; use "
                         "dual_location='first' or 'skip'")
      if dual_location == "skip":
        logger.warning("%s: skipped: dual location %s", where, location)
        continue
      dual += 1
      location = DUAL_LOCATIONS[location]
    proteins.append(LabeledProtein(
        record.id, record.sequence, _deeploc_labels(location, membrane,
                                                    where)))
  if dual:
    logger.warning("%s: %d dual-location records labelled with their first "
                   "location (%s)", path, dual, DUAL_LOCATIONS)
  return proteins


def _sample_labels(row: Mapping[str, str], sequence: str, where: str
                   ) -> dict[str, np.ndarray]:
  structure = row["secondary_structure"]
  if structure:
    _check_length("secondary_structure", structure, len(sequence), where)
    q3 = encode_labels(structure, "q3", where)
  else:
    q3 = np.full(len(sequence), IGNORE, np.int32)
  location = row["location"]
  if location and location not in SWISSPROT_LOCATIONS and (
      location not in SWISSPROT_UNMAPPED_LOCATIONS):
    raise LabelError(
        f"{where}: unknown location {location!r}; expected one of "
        f"{sorted(SWISSPROT_LOCATIONS)}, or one of "
        f"{list(SWISSPROT_UNMAPPED_LOCATIONS)} (no label), or nothing")
  location = SWISSPROT_LOCATIONS.get(location)
  return {
      "q3": q3, "q8": np.full(len(sequence), IGNORE, np.int32),
      "localization": (encode_labels([location], "localization", where)[0]
                       if location else np.int32(IGNORE)),
      "membrane": encode_labels([row["membrane"]], "membrane", where)[0]}


def read_swissprot_sample(
    annotations_path: str | os.PathLike = sample_corpus.ANNOTATIONS_PATH,
    limit: int | None = None,
    fasta_path: str | os.PathLike = sample_corpus.FASTA_PATH
) -> list[LabeledProtein]:
  """The bundled sample: its annotation TSV joined with its FASTA by id."""
  sequences = {r.id: r.sequence for r in fasta.read_fasta(fasta_path)}
  proteins, unmapped = [], 0
  with fs.open_read(annotations_path) as raw, io.TextIOWrapper(
      raw, encoding="utf-8", newline="") as handle:
    for line_number, row in enumerate(csv.DictReader(handle, delimiter="\t"),
                                      start=2):
      where = f"{os.fspath(annotations_path)}:{line_number}: {row['id']!r}"
      if row["id"] not in sequences:
        raise LabelError(f"{where}: id not in {os.fspath(fasta_path)}")
      sequence = sequences[row["id"]]
      proteins.append(LabeledProtein(row["id"], sequence,
                                     _sample_labels(row, sequence, where)))
      unmapped += row["location"] in SWISSPROT_UNMAPPED_LOCATIONS
  if unmapped:
    logger.info("%s: %d proteins whose location is one of %s have no "
                "localization label", annotations_path, unmapped,
                list(SWISSPROT_UNMAPPED_LOCATIONS))
  return proteins[:limit]


def _tsv_rows(path: str, columns: Sequence[str], limit: int | None
              ) -> Iterable[tuple[str, str, str, str]]:
  """(where, protein_id, sequence, value field) of each row of a
  three-column regression TSV whose header is `columns`, up to `limit`
  rows; a wrong header, a missing or empty column and an id seen before
  are LabelErrors naming the file and line."""
  seen = {}
  with fs.open_read(path) as raw, io.TextIOWrapper(
      raw, encoding="utf-8", newline="") as handle:
    header = handle.readline().rstrip("\r\n").split("\t")
    if tuple(h.strip() for h in header) != tuple(columns):
      raise LabelError(f"{path}:1: header {header}, expected the tab-separated "
                       f"columns {list(columns)}")
    for line_number, line in enumerate(handle, start=2):
      if limit is not None and len(seen) >= limit:
        return
      line = line.rstrip("\r\n")
      if not line.strip():
        continue
      where = f"{path}:{line_number}"
      fields = [f.strip() for f in line.split("\t")]
      if len(fields) != len(columns) or not all(fields):
        raise LabelError(f"{where}: {len(fields)} tab-separated fields "
                         f"{fields}, expected non-empty {list(columns)}")
      protein_id = fields[0]
      if protein_id in seen:
        raise LabelError(f"{where}: duplicate protein_id {protein_id!r} "
                         f"(first on line {seen[protein_id]})")
      seen[protein_id] = line_number
      yield where, protein_id, fields[1], fields[2]


def read_tsv_regression(path: str | os.PathLike, limit: int | None = None,
                        policy: fasta.FastaPolicy = fasta.FastaPolicy()
                        ) -> list[LabeledProtein]:
  """Reads a regression TSV (see the module docstring); `limit` rows. A
  missing column, a target that is not a finite number, or an id seen
  before is a LabelError naming the file and line."""
  path = os.fspath(path)
  proteins = []
  for where, protein_id, sequence, target in _tsv_rows(
      path, REGRESSION_COLUMNS, limit):
    try:
      value = np.float32(float(target))
    except ValueError:
      value = np.float32(np.nan)
    if not np.isfinite(value):
      raise LabelError(f"{where}: {protein_id!r}: target {target!r} is not "
                       "a finite number")
    proteins.append(LabeledProtein(
        protein_id, fasta.clean_sequence(sequence, protein_id, where, policy),
        {"target": value}))
  return proteins


# Per-residue values that mean "no target for this residue".
MISSING_RESIDUE_VALUES = ("", "nan")


def _residue_targets(field: str, length: int, where: str) -> np.ndarray:
  """'0.1,,nan,2' -> float32 (L,), NaN where a residue has no target."""
  values = [v.strip() for v in field.split(",")]
  _check_length("targets", values, length, where)
  targets = np.full(length, np.nan, np.float32)
  for i, value in enumerate(values):
    if value.lower() in MISSING_RESIDUE_VALUES:
      continue
    try:
      targets[i] = float(value)
      finite = bool(np.isfinite(targets[i]))
    except ValueError:
      finite = False
    if not finite:
      raise LabelError(f"{where}: residue {i + 1}: target {value!r} is not a "
                       f"finite number (leave it empty or write nan for no "
                       f"target)")
  return targets


def read_tsv_residue_regression(
    path: str | os.PathLike, limit: int | None = None,
    policy: fasta.FastaPolicy = fasta.FastaPolicy()) -> list[LabeledProtein]:
  """Reads a per-residue regression TSV (see the module docstring); `limit`
  rows. Errors are LabelErrors naming the file and line (and the residue
  of a bad value)."""
  path = os.fspath(path)
  proteins = []
  for where, protein_id, sequence, field in _tsv_rows(
      path, RESIDUE_REGRESSION_COLUMNS, limit):
    sequence = fasta.clean_sequence(sequence, protein_id, where, policy)
    proteins.append(LabeledProtein(protein_id, sequence, {
        "residue_target": _residue_targets(
            field, len(sequence), f"{where}: {protein_id!r}")}))
  return proteins


FORMATS = {"netsurfp": read_netsurfp, "deeploc": read_deeploc,
           "sample": read_swissprot_sample,
           "tsv_regression": read_tsv_regression,
           "tsv_residue_regression": read_tsv_residue_regression}
# Real-valued targets: fine-tuning (prottrans-finetune) trains regression
# heads; the frozen-embedding heads of downstream/pipeline.py classify only.
REGRESSION_FORMATS = ("tsv_regression", "tsv_residue_regression")
CLASSIFICATION_FORMATS = tuple(f for f in FORMATS if f not in REGRESSION_FORMATS)


def read_labels(path: str | os.PathLike, label_format: str,
                limit: int | None = None) -> list[LabeledProtein]:
  """Any supported set by format name (a key of FORMATS)."""
  if label_format not in FORMATS:
    raise ValueError(f"unknown label format {label_format!r}; known: "
                     f"{sorted(FORMATS)}")
  return FORMATS[label_format](path, limit=limit)


def is_labelled(task: str, labels: np.ndarray) -> np.ndarray:
  """Where `labels` of `task` hold a label (not IGNORE; finite for a
  regression task). Works on numpy and jax arrays alike."""
  if task in REGRESSION_TASKS:
    return labels == labels  # False at NaN alone.
  return labels != IGNORE


def has_labels(protein: LabeledProtein, tasks: Iterable[str]) -> bool:
  """Whether any of `tasks` labels anything in this protein (a task the
  protein has no labels for at all counts as unlabelled)."""
  return any(t in protein.labels and np.any(is_labelled(t, protein.labels[t]))
             for t in tasks)


def write_fasta(proteins: Sequence[LabeledProtein], path: str | os.PathLike
                ) -> None:
  """The sequences as FASTA, so the embedding engine can embed a set."""
  with fs.staged_output(path) as local, open(
      local, "w", encoding="utf-8") as handle:
    for protein in proteins:
      handle.write(f">{protein.id}\n{protein.sequence}\n")
