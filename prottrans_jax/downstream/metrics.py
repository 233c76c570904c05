"""The paper's scores: Q3/Q8 (per-residue accuracy over resolved residues),
Q10 (localization) and Q2 (membrane-bound vs soluble) accuracy, with
uncertainty from a bootstrap over proteins.

Residues of one protein are not independent, so the resampled unit is the
protein: each replicate draws proteins with replacement and pools their
residues. The standard error is the replicates' standard deviation and the
95% interval their 2.5th and 97.5th percentiles. For per-protein tasks this
is the usual binomial standard error sqrt(p(1-p)/n) up to sampling noise.
"""

import dataclasses
from typing import Mapping, Sequence

import numpy as np

from prottrans_jax.downstream import readers

# How the paper names each task's accuracy.
SCORE_NAMES = {"q3": "Q3", "q8": "Q8", "localization": "Q10",
               "membrane": "Q2"}


@dataclasses.dataclass(frozen=True)
class Score:
  value: float  # Accuracy in [0, 1], pooled over all labelled items.
  stderr: float
  ci_low: float
  ci_high: float
  proteins: int  # With at least one labelled item.
  items: int  # Labelled residues (per-residue tasks) or proteins.


def correct_counts(predictions: Sequence[np.ndarray],
                   labels: Sequence[np.ndarray]
                   ) -> tuple[np.ndarray, np.ndarray]:
  """(correct, labelled) item counts per protein; IGNORE is not counted."""
  correct, total = [], []
  for predicted, truth in zip(predictions, labels, strict=True):
    predicted, truth = np.atleast_1d(predicted), np.atleast_1d(truth)
    if predicted.shape != truth.shape:
      raise ValueError(f"prediction shape {predicted.shape} != label shape "
                       f"{truth.shape}")
    valid = truth != readers.IGNORE
    correct.append(int(np.sum((predicted == truth) & valid)))
    total.append(int(np.sum(valid)))
  return np.asarray(correct), np.asarray(total)


def bootstrap_score(correct: np.ndarray, total: np.ndarray,
                    replicates: int = 1000, seed: int = 0) -> Score:
  """Pooled accuracy with a bootstrap over proteins (module docstring)."""
  keep = total > 0
  correct, total = correct[keep], total[keep]
  if not len(total):
    raise ValueError("no labelled items to score")
  value = correct.sum() / total.sum()
  draws = np.random.default_rng(seed).integers(
      0, len(total), size=(replicates, len(total)))
  samples = correct[draws].sum(axis=1) / total[draws].sum(axis=1)
  low, high = np.percentile(samples, [2.5, 97.5])
  return Score(value=float(value), stderr=float(samples.std(ddof=1)),
               ci_low=float(low), ci_high=float(high),
               proteins=int(len(total)), items=int(total.sum()))


def evaluate(probabilities: Sequence[Mapping[str, np.ndarray]],
             labels: Sequence[Mapping[str, np.ndarray]], tasks: Sequence[str],
             seed: int = 0) -> dict[str, Score]:
  """{task: Score} of the most probable class against the labels."""
  return {t: bootstrap_score(*correct_counts(
      [np.argmax(p[t], axis=-1) for p in probabilities],
      [l[t] for l in labels]), seed=seed) for t in tasks}


def majority_class(labels: Sequence[Mapping[str, np.ndarray]], task: str
                   ) -> int:
  """The most frequent labelled class (the trivial predictor's answer)."""
  values = np.concatenate([np.ravel(l[task]) for l in labels])
  values = values[values != readers.IGNORE]
  return int(np.bincount(values).argmax())


def majority_score(train_labels: Sequence[Mapping[str, np.ndarray]],
                   test_labels: Sequence[Mapping[str, np.ndarray]],
                   task: str) -> Score:
  """Accuracy on `test_labels` of always answering the training majority."""
  answer = majority_class(train_labels, task)
  return bootstrap_score(*correct_counts(
      [np.full(np.shape(l[task]), answer) for l in test_labels],
      [l[task] for l in test_labels]))


def format_score(score: Score) -> str:
  """'81.2 ±0.9': accuracy in percent ± its standard error."""
  return f"{100 * score.value:.1f} ±{100 * score.stderr:.1f}"


@dataclasses.dataclass(frozen=True)
class Auc:
  value: float  # Area under the ROC curve: P(positive scores above negative).
  stderr: float  # DeLong's.
  ci_low: float
  ci_high: float
  positives: int
  negatives: int


def binned_roc_auc(positive_counts: np.ndarray, negative_counts: np.ndarray,
                   z: float = 1.959964) -> Auc:
  """ROC AUC with DeLong's standard error, from counts of scores per bin.

  Bin i holds the items whose score falls in the i-th of ascending score
  intervals, so counts add over batches and devices (the eval steps sum
  them) while the AUC is Mann-Whitney's over the binned scores: a positive
  and a negative in the same bin count one half. DeLong's variance treats
  every item as independent: each positive's placement (the share of
  negatives it outranks) and each negative's (the share of positives
  above it) average to the AUC and are constant within a bin, so both
  variances come from the counts exactly. The interval is the normal one, value +- z stderr (z for
  95% by default), cut to [0, 1].
  """
  positive = np.asarray(positive_counts, np.float64)
  negative = np.asarray(negative_counts, np.float64)
  if positive.shape != negative.shape or positive.ndim != 1:
    raise ValueError(f"positive and negative counts must be two equal 1-D "
                     f"histograms, not shapes {positive.shape} and "
                     f"{negative.shape}")
  m, n = positive.sum(), negative.sum()
  if m < 2 or n < 2:
    raise ValueError(f"an AUC needs at least two positives and two "
                     f"negatives, not {m:g} and {n:g}")
  negatives_below = np.cumsum(negative) - negative
  positives_above = m - np.cumsum(positive)
  positive_placement = (negatives_below + 0.5 * negative) / n
  negative_placement = (positives_above + 0.5 * positive) / m
  value = float(np.sum(positive * positive_placement) / m)
  variance = (np.sum(positive * (positive_placement - value) ** 2) / (m - 1) / m
              + np.sum(negative * (negative_placement - value) ** 2)
              / (n - 1) / n)
  stderr = float(np.sqrt(variance))
  return Auc(value=value, stderr=stderr, ci_low=max(0.0, value - z * stderr),
             ci_high=min(1.0, value + z * stderr), positives=int(m),
             negatives=int(n))
