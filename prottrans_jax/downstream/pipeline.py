"""Labelled proteins + features -> a trained, saved head -> scores.

What the scripts and the benchmark call: each step is one function, so a
command line is flags in, one call here.
"""

import dataclasses
import logging
from typing import Any, Sequence

import numpy as np

from prottrans_jax.downstream import checkpoints
from prottrans_jax.downstream import features as features_lib
from prottrans_jax.downstream import metrics
from prottrans_jax.downstream import models
from prottrans_jax.downstream import readers
from prottrans_jax.downstream import trainer

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TrainedHead:
  config: models.HeadConfig
  params: Any
  info: dict[str, Any]  # Feature source, best epoch, losses per epoch.
  directory: str | None = None  # Where it is saved, if it is.

  def check_features(self, features: Sequence[np.ndarray],
                     source: str) -> None:
    """A ValueError naming both widths unless `features` (from `source`)
    are as wide as this head's input."""
    widths = sorted({int(f.shape[-1]) for f in features})
    if widths and widths != [self.config.input_dim]:
      raise ValueError(
          f"head {self.directory or '(unsaved)'} takes features of width "
          f"{self.config.input_dim}, but {source} holds width "
          f"{', '.join(map(str, widths))}: embeddings of another model? Use "
          "the embeddings of the model the head was trained on")


def _labelled_tasks(tasks: Sequence[str],
                    labels: Sequence[dict[str, np.ndarray]]) -> list[str]:
  """The tasks with any label here: a head trained without Q8 labels (the
  Swiss-Prot sample has 3 states only) neither reports nor predicts Q8."""
  return [t for t in tasks
          if any(np.any(l[t] != readers.IGNORE) for l in labels)]


def labelled_examples(proteins: Sequence[readers.LabeledProtein],
                      kind: str, source: str
                      ) -> tuple[list[np.ndarray], list[dict[str, np.ndarray]]]:
  """(features, labels) of the proteins with a label for this head kind."""
  shape = models.HeadConfig(kind, input_dim=1)  # Input size is irrelevant.
  kept = [p for p in proteins if readers.has_labels(p, shape.tasks)]
  if not kept:
    raise readers.LabelError(f"none of the {len(proteins)} proteins has a "
                             f"label for {list(shape.tasks)}")
  if len(kept) < len(proteins):
    logger.info("%s head: %d of %d proteins have a label for %s; the "
                "other %d are left out", kind, len(kept), len(proteins),
                list(shape.tasks), len(proteins) - len(kept))
  return (features_lib.load_features(kept, source,
                                     not shape.per_residue_input),
          [dict(p.labels) for p in kept])


def train_head(kind: str, proteins: Sequence[readers.LabeledProtein],
               source: str, train_config: trainer.TrainConfig =
               trainer.TrainConfig(),
               validation: Sequence[readers.LabeledProtein] | None = None,
               output_dir: str | None = None) -> TrainedHead:
  """Trains a head of `kind` on `source` features (HDF5 path or ONEHOT).

  Early stopping uses `validation` or, without it, a held-out split of
  `proteins`; the head is saved in `output_dir` when given.
  """
  features, labels = labelled_examples(proteins, kind, source)
  config = models.HeadConfig(kind, int(features[0].shape[-1]))
  held_out = (labelled_examples(validation, kind, source) if validation
              else None)
  result = trainer.train(config, features, labels, train_config, held_out)
  info = {"features": source if source == features_lib.ONEHOT
          else "embeddings",
          "tasks": _labelled_tasks(config.tasks, labels),
          "trained_on": len(features), "best_epoch": result.best_epoch,
          "history": [list(h) for h in result.history]}
  logger.info("%s head on %s: best epoch %d of %d", kind, info["features"],
              result.best_epoch, len(result.history))
  if output_dir:
    checkpoints.save_head(output_dir, config, result.params,
                          result.best_epoch, info)
  return TrainedHead(config, result.params, info, directory=output_dir)


def evaluate_head(head: TrainedHead,
                  proteins: Sequence[readers.LabeledProtein], source: str
                  ) -> dict[str, metrics.Score]:
  """{task: Score} of a trained head on labelled proteins."""
  features, labels = labelled_examples(proteins, head.config.kind, source)
  head.check_features(features, source)
  probabilities = trainer.predict(head.config, head.params, features)
  tasks = [t for t in _labelled_tasks(head.config.tasks, labels)
           if t in head.info["tasks"]]
  return metrics.evaluate(probabilities, labels, tasks)


def load_trained_head(directory: str) -> TrainedHead:
  return TrainedHead(*checkpoints.load_head(directory),
                     directory=str(directory))


def train_from_files(kind: str, labels_path: str, label_format: str,
                     source: str, output_dir: str,
                     train_config: trainer.TrainConfig = trainer.TrainConfig(),
                     validation_path: str | None = None,
                     test_path: str | None = None, limit: int | None = None
                     ) -> tuple[TrainedHead, dict[str, metrics.Score] | None]:
  """scripts/train_downstream.py: reads the sets, trains, saves the head in
  `output_dir` and scores it on the test set when one is given."""
  if label_format in readers.REGRESSION_FORMATS:
    raise ValueError(
        f"label format {label_format!r} holds regression targets, and the "
        "heads trained on embeddings here classify: train a regression head "
        "with prottrans-finetune (gin REGRESSION = True; for a frozen encoder "
        "also finetune.make_config.freeze_encoder = True and lora = None)")
  read = lambda path: readers.read_labels(path, label_format, limit)
  head = train_head(kind, read(labels_path), source, train_config,
                    read(validation_path) if validation_path else None,
                    output_dir)
  scores = evaluate_head(head, read(test_path), source) if test_path else None
  return head, scores
