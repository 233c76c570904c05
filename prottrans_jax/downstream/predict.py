"""Predictions for new proteins: secondary-structure strings, localization
and membrane class with probabilities, written as TSV and JSON.

Every path (FASTA, embeddings, heads, output prefix) may be a URL
(`gs://...`), through `prottrans_jax.fs`."""

import csv
import dataclasses
import json
from typing import Sequence

import numpy as np

from prottrans_jax import fs
from prottrans_jax.data import fasta
from prottrans_jax.downstream import features as features_lib
from prottrans_jax.downstream import pipeline
from prottrans_jax.downstream import readers
from prottrans_jax.downstream import trainer


@dataclasses.dataclass(frozen=True)
class Prediction:
  """One protein's predictions; a field is None when its head was not run.

  `*_probability` is the mean over residues of the predicted state's
  probability (per-residue tasks) or the predicted class's probability.
  """
  id: str
  length: int
  q3: str | None = None
  q3_probability: float | None = None
  q8: str | None = None
  q8_probability: float | None = None
  localization: str | None = None
  localization_probability: float | None = None
  localization_probabilities: dict[str, float] | None = None
  membrane: str | None = None
  membrane_probability: float | None = None


def _task_fields(task: str, probs: np.ndarray) -> dict[str, object]:
  classes = readers.TASK_CLASSES[task]
  best = np.argmax(probs, axis=-1)
  if probs.ndim == 2:  # Per residue: a string of states.
    return {task: "".join(classes[i] for i in best),
            f"{task}_probability": float(np.mean(np.max(probs, axis=-1)))}
  fields = {task: classes[int(best)],
            f"{task}_probability": float(probs[best])}
  if task == "localization":
    fields["localization_probabilities"] = {
        c: round(float(p), 4) for c, p in zip(classes, probs)}
  return fields


def predict_fasta(fasta_path: str, embeddings_path: str | None,
                  head_dirs: Sequence[str],
                  policy: fasta.FastaPolicy = fasta.FastaPolicy()
                  ) -> list[Prediction]:
  """Runs every head in `head_dirs` on the proteins of a FASTA file.

  Embedding heads read `embeddings_path` (per-residue embeddings of the same
  FASTA, from scripts/embed.py); one-hot heads need only the sequences.
  """
  proteins = [readers.LabeledProtein(r.id, r.sequence, {})
              for r in fasta.read_fasta(fasta_path, policy)]
  fields: list[dict[str, object]] = [{} for _ in proteins]
  for head_dir in head_dirs:
    head = pipeline.load_trained_head(head_dir)
    onehot = head.info["features"] == features_lib.ONEHOT
    if not onehot and not embeddings_path:
      raise ValueError(f"head {head_dir} was trained on embeddings: give "
                       "the embeddings of this FASTA file")
    source = features_lib.ONEHOT if onehot else embeddings_path
    features = features_lib.load_features(
        proteins, source, per_protein=not head.config.per_residue_input)
    head.check_features(features, source)
    for row, probs in zip(fields,
                          trainer.predict(head.config, head.params, features)):
      for task in head.info["tasks"]:
        row.update(_task_fields(task, probs[task]))
  return [Prediction(id=p.id, length=len(p.sequence), **row)
          for p, row in zip(proteins, fields)]


def write_predictions(predictions: Sequence[Prediction], prefix: str
                      ) -> tuple[str, str]:
  """Writes PREFIX.tsv (one row per protein) and PREFIX.json; returns both
  paths. Columns of heads that were not run are left out."""
  rows = [{k: v for k, v in dataclasses.asdict(p).items() if v is not None}
          for p in predictions]
  columns = [f.name for f in dataclasses.fields(Prediction)
             if any(f.name in r for r in rows)]
  tsv_path, json_path = f"{prefix}.tsv", f"{prefix}.json"
  if not fs.is_remote(prefix):
    fs.path(prefix).parent.mkdir(parents=True, exist_ok=True)
  with fs.staged_output(tsv_path) as local, open(
      local, "w", encoding="utf-8", newline="") as handle:
    writer = csv.DictWriter(handle, columns, delimiter="\t",
                            lineterminator="\n")
    writer.writeheader()
    for row in rows:
      writer.writerow({k: json.dumps(v) if isinstance(v, dict) else v
                       for k, v in row.items()})
  with fs.staged_output(json_path) as local, open(
      local, "w", encoding="utf-8") as handle:
    json.dump(rows, handle, indent=1)
  return tsv_path, json_path
