"""What every model config shares: a frozen dataclass that round-trips a dict.

Checkpoints record `config.to_dict()` (prottrans_jax/checkpoints.py) and
rebuild the config with `from_dict`, which refuses unknown and missing fields
so that a config written by another version fails loudly.
"""
import dataclasses
from typing import Any, TypeVar

_C = TypeVar("_C", bound="DictConfig")


class DictConfig:
  """Mixin for frozen dataclass configs: `to_dict` / `from_dict`, the
  dtype policy (`with_dtype`), the layer options (`with_layer_options`) and
  where attention runs block by block (`attention_block`,
  `with_blockwise_attention`)."""

  def check_dimensions(self, *names: str) -> None:
    """Raises ValueError naming the first of fields `names` (sizes, layer
    and head counts) that is not an integer >= 1: a zero or negative one
    builds an empty or broken network, failing later somewhere obscure."""
    for name in names:
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{type(self).__name__}.{name} must be an integer "
                         f">= 1, got {value!r}")

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls: type[_C], d: dict[str, Any]) -> _C:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
      raise ValueError(f"Unknown {cls.__name__} field(s): {', '.join(unknown)}")
    missing = sorted(f.name for f in dataclasses.fields(cls)
                     if f.name not in d and f.default is dataclasses.MISSING)
    if missing:
      raise ValueError(f"{cls.__name__} is missing required field(s): {', '.join(missing)}")
    return cls(**d)

  def with_dtype(self: _C, dtype: str) -> _C:
    """This config computing its activations in `dtype` (parameters keep
    `param_dtype`). A config made of several networks overrides this."""
    return dataclasses.replace(self, dtype=dtype)

  def attention_block(self, length: int) -> int:
    """Queries that attend at once in a `length`-token input: all of them up
    to `long_sequence_threshold`, else `attention_chunk_size`
    (`layers.MultiHeadAttention`). A config made of several networks
    overrides this."""
    return (self.attention_chunk_size if length > self.long_sequence_threshold
            else length)

  def with_blockwise_attention(self: _C) -> _C:
    """This config attending `attention_chunk_size` queries at a time at
    every length above that: the same results (up to rounding) in less
    memory, slower below the usual threshold (the embedding engine's last
    retry of a batch out of memory). A config made of several networks
    overrides this."""
    return dataclasses.replace(self, long_sequence_threshold=min(
        self.long_sequence_threshold, self.attention_chunk_size))

  def with_layer_options(self: _C, *, scan_layers: bool | None = None,
                         remat_policy: str | None = None,
                         scan_unroll: int | None = None) -> _C:
    """This config with its layer stacks scanned or not (`scan_unroll`
    layers per loop iteration) and rematerialised by `remat_policy` (None
    keeps a setting). `scan_layers=False` is the
    canonical parameter layout, the one checkpoints hold. A config made of
    several networks overrides this."""
    changes = {name: value for name, value in (("scan_layers", scan_layers),
                                               ("remat_policy", remat_policy),
                                               ("scan_unroll", scan_unroll))
               if value is not None}
    return dataclasses.replace(self, **changes)
