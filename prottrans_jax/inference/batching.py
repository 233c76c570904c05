"""Length buckets and token-budget batches for embedding.

Proteins are sorted by length and grouped so that each batch holds at most
`max_tokens` padded tokens: rows times the bucket length, the special tokens
of every row and the padding included (only a batch of one row per
data-parallel device may exceed it, for a very long protein). The embedding
engine's budget is per device: it plans with its `max_tokens` times the
number of data-parallel devices. Every batch
is padded to one of a few bucket lengths, so the encoder compiles once per
bucket, not once per batch shape.

The buckets are fitted to the proteins being embedded (`fit_buckets`): as
many as the fixed grid of `bucket_length` would use (powers of two and the
quarter steps between them), but placed at the lengths that waste the
fewest padded tokens. So a run never compiles more often than with the grid,
and never pads more: 45 globins of 142-154 tokens pad to 154 (the grid: 160),
and the DeepLoc test set wastes 5% of its tokens instead of 8% with the same
23 compilations. Padding is compute thrown away: on ProtT5-XL it was the
largest gap between our FLOP/s and the matmul peak.

Beyond `linear_from` tokens (where attention runs chunk by chunk) lengths
pad to multiples of `linear_from`: a 35,000-residue protein pads to 36,864.
"""

import dataclasses
from typing import Iterator, Sequence

import numpy as np

from prottrans_jax import deprecation

MIN_BUCKET = 16
STEPS_PER_OCTAVE = 4


def bucket_length(length: int, linear_from: int = 2048) -> int:
  """The grid's padded length for `length` tokens: 16, 20, 24, 28, 32, 40,
  48, ... (quarter-octave steps, at most a fifth of padding) up to
  `linear_from`, then multiples of it. For shapes that must not depend on
  the data (e.g. downstream training batches)."""
  if length <= 0:
    raise ValueError(f"length must be positive, got {length}")
  if length > linear_from:
    return -(-length // linear_from) * linear_from
  if length <= MIN_BUCKET:
    return MIN_BUCKET
  power = MIN_BUCKET
  while power * 2 < length:
    power *= 2
  # power < length <= 2 * power: round up to a quarter of the octave.
  step = power // STEPS_PER_OCTAVE
  return -(-length // step) * step


def fit_buckets(token_lengths: Sequence[int], linear_from: int = 2048
                ) -> list[int]:
  """Sorted bucket lengths for these sequences: padded tokens minimised
  over bucket sets no larger than the grid's (`bucket_length`).

  Dynamic programming over the distinct lengths (at most `linear_from` of
  them, whatever the number of sequences): the best split of the i shortest
  distinct lengths into k buckets extends the best split of a shorter prefix
  into k - 1 buckets by one bucket whose length is its longest member.
  """
  lengths = np.asarray(token_lengths, np.int64)
  if lengths.size and lengths.min() <= 0:
    raise ValueError(f"lengths must be positive, got {lengths.min()}")
  long_buckets = {bucket_length(int(n), linear_from)
                  for n in np.unique(lengths[lengths > linear_from])}
  short = lengths[lengths <= linear_from]
  if not short.size:
    return sorted(long_buckets)
  distinct, counts = np.unique(short, return_counts=True)
  max_buckets = len({bucket_length(int(n), linear_from) for n in distinct})
  cumulative = np.concatenate([[0], np.cumsum(counts)])
  n = len(distinct)
  # padded[i, j]: tokens of one bucket holding distinct lengths i..j-1,
  # all padded to distinct[j - 1] (infinite where the bucket would be empty).
  ends = np.arange(n + 1)
  padded = np.where(
      ends[:, None] < ends[None, :],
      (cumulative[None, :] - cumulative[:, None])
      * np.concatenate([[0], distinct])[None, :], np.inf)
  best = np.full(n + 1, np.inf)  # best[j]: j shortest lengths, k buckets
  best[0] = 0.0
  splits = []
  for _ in range(min(max_buckets, n)):
    totals = best[:, None] + padded
    splits.append(totals.argmin(axis=0))
    best = totals.min(axis=0)
  # With no cost per bucket, more buckets never pad more: use them all.
  buckets, end = [], n
  for split in reversed(splits):
    buckets.append(int(distinct[end - 1]))
    end = int(split[end])
    if end == 0:
      break
  return sorted(set(buckets) | long_buckets)


@dataclasses.dataclass(frozen=True)
class Batch:
  """Indices into the caller's record list, padded to `length` x `rows`."""
  indices: tuple[int, ...]
  length: int  # Padded token length (a bucket).
  rows: int  # Padded number of rows: a multiple of the data-parallel size.


@deprecation.renamed_argument("max_residues", "max_tokens")
def plan_batches(token_lengths: Sequence[int], max_tokens: int,
                 row_multiple: int = 1, linear_from: int = 2048
                 ) -> Iterator[Batch]:
  """Groups sequences by bucket, longest first, within a token budget.

  The plan depends only on `token_lengths` (buckets are fitted to all of
  them) and the arguments, so a resumed run plans the same batches.

  Longest first: the largest compilation and the peak memory come at once,
  so an out-of-memory error shows in the first seconds, not after hours.

  Args:
    token_lengths: tokens per sequence (residues plus special tokens).
    max_tokens: padded tokens per batch, rows x bucket length (special
      tokens and padding count, like residues), over all `row_multiple`
      devices (the engine passes its per-device budget times their number);
      a batch always holds at least `row_multiple` rows, even for one very
      long protein, and may then exceed it. Formerly `max_residues` (still
      accepted, deprecated).
    row_multiple: rows are padded to a multiple of this (the number of
      data-parallel devices), so each device gets a whole share.
    linear_from: see `fit_buckets`.
  """
  if max_tokens <= 0 or row_multiple <= 0:
    raise ValueError("max_tokens and row_multiple must be positive")
  buckets = np.asarray(fit_buckets(token_lengths, linear_from))
  order = sorted(range(len(token_lengths)), key=lambda i: -token_lengths[i])
  current: list[int] = []
  current_bucket = 0

  def emit():
    rows = -(-len(current) // row_multiple) * row_multiple
    return Batch(tuple(current), current_bucket, rows)

  for index in order:
    bucket = int(buckets[np.searchsorted(buckets, token_lengths[index])])
    capacity = max(row_multiple,
                   (max_tokens // bucket) // row_multiple * row_multiple)
    if current and (bucket != current_bucket or len(current) >= capacity):
      yield emit()
      current = []
    current_bucket = bucket
    current.append(index)
  if current:
    yield emit()
