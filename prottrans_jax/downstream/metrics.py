"""The paper's scores: Q3/Q8 (per-residue accuracy over resolved residues),
Q10 (localization) and Q2 (membrane-bound vs soluble) accuracy, with
uncertainty from a bootstrap over proteins.

Residues of one protein are not independent, so the resampled unit is the
protein: each replicate draws proteins with replacement and pools their
residues. The standard error is the replicates' standard deviation and the
95% interval their 2.5th and 97.5th percentiles. For per-protein tasks this
is the usual binomial standard error sqrt(p(1-p)/n) up to sampling noise.

Regression tasks score Spearman's rank correlation of predictions and
targets over the items with a target (proteins, or all residues of every
protein pooled), with the same bootstrap over proteins.
"""

import dataclasses
from typing import Mapping, Sequence

import numpy as np

from prottrans_jax.downstream import readers

# How the paper names each task's accuracy.
SCORE_NAMES = {"q3": "Q3", "q8": "Q8", "localization": "Q10",
               "membrane": "Q2", "target": "Spearman",
               "residue_target": "Spearman"}


@dataclasses.dataclass(frozen=True)
class Score:
  value: float  # Accuracy in [0, 1], pooled over all labelled items
  # (Spearman's rho in [-1, 1] for a regression task).
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


def _ranks(x: np.ndarray) -> np.ndarray:
  """1-based ranks along the last axis, ties given their average rank."""
  order = np.argsort(x, axis=-1, kind="stable")
  ordered = np.take_along_axis(x, order, axis=-1)
  ranks = np.empty(x.shape, np.float64)
  for row in np.ndindex(x.shape[:-1]):
    _, inverse, counts = np.unique(ordered[row], return_inverse=True,
                                   return_counts=True)
    # A tie group ending at position e (1-based) of size c spans ranks
    # e-c+1 .. e, whose mean is e - (c-1)/2.
    average = np.cumsum(counts) - (counts - 1) / 2
    ranks[row + (order[row],)] = average[inverse]
  return ranks


def spearman(predictions: np.ndarray, targets: np.ndarray) -> np.ndarray:
  """Spearman's rank correlation over the last axis (leading axes are
  separate samples): Pearson's correlation of the tie-averaged ranks. NaN
  where either side is constant (no ranking to correlate)."""
  predictions = np.asarray(predictions, np.float64)
  targets = np.asarray(targets, np.float64)
  if predictions.shape != targets.shape or predictions.shape[-1] < 2:
    raise ValueError(f"Spearman needs two equal shapes of at least 2 items, "
                     f"not {predictions.shape} and {targets.shape}")
  a, b = _ranks(predictions), _ranks(targets)
  a = a - a.mean(axis=-1, keepdims=True)
  b = b - b.mean(axis=-1, keepdims=True)
  norm = np.sqrt(np.sum(a * a, axis=-1) * np.sum(b * b, axis=-1))
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.sum(a * b, axis=-1) / norm


def spearman_score(predictions: Sequence[np.ndarray],
                   targets: Sequence[np.ndarray], replicates: int = 1000,
                   seed: int = 0) -> Score:
  """Spearman's rho over every item with a finite target, per protein a
  scalar (per-protein task) or an (L,) array (per-residue task), pooled;
  with a bootstrap over proteins, each replicate pooling the items of the
  proteins it draws (replicates drawing a constant side are left out of
  the spread)."""
  pairs = []
  for predicted, target in zip(predictions, targets, strict=True):
    predicted = np.ravel(np.asarray(predicted, np.float64))
    target = np.ravel(np.asarray(target, np.float64))
    if predicted.shape != target.shape:
      raise ValueError(f"prediction shape {predicted.shape} != target shape "
                       f"{target.shape}")
    keep = np.isfinite(target)
    if keep.any():
      pairs.append((predicted[keep], target[keep]))
  if not pairs:
    raise ValueError("no finite targets to score")
  lengths = np.asarray([len(t) for _, t in pairs])
  starts = np.cumsum(lengths) - lengths
  predictions = np.concatenate([p for p, _ in pairs])
  targets = np.concatenate([t for _, t in pairs])
  value = float(spearman(predictions, targets))
  draws = np.random.default_rng(seed).integers(
      0, len(pairs), size=(replicates, len(pairs)))
  samples = []
  for draw in draws:
    # The item indices of the drawn proteins, in draw order.
    counts = lengths[draw]
    offsets = np.cumsum(counts) - counts
    items = np.repeat(starts[draw] - offsets, counts) + np.arange(counts.sum())
    samples.append(spearman(predictions[items], targets[items]))
  samples = np.asarray(samples)
  samples = samples[np.isfinite(samples)]
  if len(samples) > 1:
    stderr = float(samples.std(ddof=1))
    low, high = np.percentile(samples, [2.5, 97.5])
  else:
    stderr, low, high = float("nan"), float("nan"), float("nan")
  return Score(value=value, stderr=stderr, ci_low=float(low),
               ci_high=float(high), proteins=len(pairs),
               items=int(len(targets)))


def evaluate(probabilities: Sequence[Mapping[str, np.ndarray]],
             labels: Sequence[Mapping[str, np.ndarray]], tasks: Sequence[str],
             seed: int = 0) -> dict[str, Score]:
  """{task: Score}: the most probable class against the labels; for a
  regression task, Spearman's rho of the predictions and targets."""
  scores = {}
  for t in tasks:
    if t in readers.REGRESSION_TASKS:
      scores[t] = spearman_score([p[t] for p in probabilities],
                                 [l[t] for l in labels], seed=seed)
    else:
      scores[t] = bootstrap_score(*correct_counts(
          [np.argmax(p[t], axis=-1) for p in probabilities],
          [l[t] for l in labels]), seed=seed)
  return scores


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
