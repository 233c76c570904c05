"""Deterministic train/validation assignment by a stable hash of the record id.

The same id lands in the same split forever, whatever the file order, the
number of shards or the machine, so validation never leaks into training when
a corpus is re-built or grows.
"""

import hashlib

TRAIN = "train"
VALIDATION = "validation"


def split_of(record_id: str, validation_fraction: float) -> str:
  """"validation" for about `validation_fraction` of all ids, else "train"."""
  if not 0.0 <= validation_fraction < 1.0:
    raise ValueError(
        f"validation_fraction must be in [0, 1), got {validation_fraction}")
  digest = hashlib.sha256(record_id.encode("utf-8")).digest()
  position = int.from_bytes(digest[:8], "big") / 2.0**64
  return VALIDATION if position < validation_fraction else TRAIN
