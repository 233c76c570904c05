"""Length buckets and residue-budget batches for embedding.

Proteins are sorted by length and grouped so that each batch holds about
`max_residues` padded tokens. Lengths are padded up to a small set of bucket
sizes, so the encoder compiles once per bucket, not once per batch shape:
16, 20, 24, 28, 32, 40, 48, 56, 64, 80, ... (powers of two and the quarter
steps between them: 29 buckets up to `linear_from` = 2048, and padding
wastes at most a fifth and typically a tenth of the compute; a 150-residue
protein pads to 160, where powers of two and 1.5x them padded it to 192),
then multiples of `linear_from` (a 35,000-residue protein pads to 36,864,
not 65,536). Padding is compute thrown away: on ProtT5-XL it was the
largest gap between our FLOP/s and the matmul peak.
"""

import dataclasses
from typing import Iterator, Sequence

MIN_BUCKET = 16
STEPS_PER_OCTAVE = 4


def bucket_length(length: int, linear_from: int = 2048) -> int:
  """The padded length for `length` tokens."""
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


@dataclasses.dataclass(frozen=True)
class Batch:
  """Indices into the caller's record list, padded to `length` x `rows`."""
  indices: tuple[int, ...]
  length: int  # Padded token length (a bucket).
  rows: int  # Padded number of rows: a multiple of the data-parallel size.


def plan_batches(token_lengths: Sequence[int], max_residues: int,
                 row_multiple: int = 1, linear_from: int = 2048
                 ) -> Iterator[Batch]:
  """Groups sequences by bucket, longest first, within a residue budget.

  Longest first: the largest compilation and the peak memory come at once,
  so an out-of-memory error shows in the first seconds, not after hours.

  Args:
    token_lengths: tokens per sequence (residues plus special tokens).
    max_residues: padded tokens per batch; a batch always holds at least
      `row_multiple` rows, even for one very long protein.
    row_multiple: rows are padded to a multiple of this (the number of
      data-parallel devices), so each device gets a whole share.
    linear_from: see `bucket_length`.
  """
  if max_residues <= 0 or row_multiple <= 0:
    raise ValueError("max_residues and row_multiple must be positive")
  order = sorted(range(len(token_lengths)), key=lambda i: -token_lengths[i])
  current: list[int] = []
  current_bucket = 0

  def emit():
    rows = -(-len(current) // row_multiple) * row_multiple
    return Batch(tuple(current), current_bucket, rows)

  for index in order:
    bucket = bucket_length(token_lengths[index], linear_from)
    capacity = max(row_multiple,
                   (max_residues // bucket) // row_multiple * row_multiple)
    if current and (bucket != current_bucket or len(current) >= capacity):
      yield emit()
      current = []
    current_bucket = bucket
    current.append(index)
  if current:
    yield emit()
