"""What every converter shares: flat names, tensor plans, shapes and checks.

Converters work on flat `{"encoder/layers_0/mlp/wi/kernel": array}` dicts
(T5X's names joined by "/"), one tensor at a time, and build the nested Flax
tree only at the end. Nothing here knows a model family or a file format.

A Hugging Face model type plugs in as an `HfConverter` (hf_t5.py,
hf_bert.py): its config to and from `config.json`, its tensor plan (which
Hugging Face tensor is which of our parameters, and whether it is stored
transposed), its tied copies and its tokenizer files. `read_state_dict` and
`hf_tensors` do the rest for every model type: name checks that list every
missing and every unexpected tensor, shape checks, tied-copy checks,
relayout and dtype, each tensor read only when its loader is called.
"""
import abc
import dataclasses
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

from flax import linen as nn
from flax import traverse_util
import jax
import numpy as np


class ConversionError(ValueError):
  """A checkpoint does not match the model it is converted to or from."""


# Reads one tensor when called: converters hold these, not arrays, so a
# checkpoint is converted one tensor at a time.
Loader = Callable[[], np.ndarray]


@dataclasses.dataclass(frozen=True)
class TensorMapping:
  """One Hugging Face tensor and the parameter it becomes."""
  hf: str  # e.g. "encoder.block.0.layer.0.SelfAttention.q.weight"
  ours: str  # e.g. "encoder/layers_0/attention/query/kernel"
  transpose: bool  # 2-D transpose between the two layouts


def relayout(mapping: TensorMapping, array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  """Hugging Face layout <-> ours, as an array of `shape` (the other side's).

  A transposed mapping is a 2-D transpose of our kernel read as
  (in, everything else): a Linear's (out, in) weight may be our (in, a, b)
  kernel (a fused q/k/v projection as (in, 3, heads x head_dim)).
  """
  if not mapping.transpose:
    return array
  return np.ascontiguousarray(array.reshape(array.shape[0], -1).T).reshape(shape)


def hf_shape(mapping: TensorMapping, shapes: Mapping[str, tuple[int, ...]]) -> tuple[int, ...]:
  """The Hugging Face shape of a tensor, from our parameter shapes."""
  shape = tuple(shapes[mapping.ours])
  return (int(np.prod(shape[1:])), shape[0]) if mapping.transpose else shape


def flatten(params: Mapping[str, Any]) -> dict[str, Any]:
  """Nested (possibly logically boxed) params -> {"a/b/c": array}."""
  return traverse_util.flatten_dict(nn.meta.unbox(dict(params)), sep="/")


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
  return traverse_util.unflatten_dict(dict(flat), sep="/")


def loaders_of(params: Mapping[str, Any]) -> dict[str, Loader]:
  """In-memory params (nested, or flat "a/b" names) as {flat name: loader}."""
  flat = flatten(params) if any(isinstance(v, Mapping) for v in params.values()) else params
  return {name: (lambda a=a: np.asarray(a)) for name, a in flat.items()}


def abstract_shapes(init: Callable[[jax.Array], Any]) -> dict[str, tuple[int, ...]]:
  """Flat names and shapes of the parameters `init(rng)` builds, without memory."""
  shapes = jax.eval_shape(init, jax.random.key(0))
  return {name: tuple(leaf.shape) for name, leaf in flatten(shapes).items()}


def top_level(name: str) -> str:
  """The parameter group a flat name belongs to ("decoder/layers_0/..." -> "decoder")."""
  return name.split("/")[0]


def check_shape(name: str, shape: tuple[int, ...], expected: tuple[int, ...]) -> None:
  if tuple(shape) != tuple(expected):
    raise ConversionError(
        f"Shape mismatch for {name}: checkpoint has {tuple(shape)}, "
        f"the model expects {tuple(expected)}")


def check_names(found: Iterable[str], expected: Iterable[str], what: str) -> None:
  """Raises listing every missing and every unexpected name."""
  found, expected = set(found), set(expected)
  missing, unexpected = sorted(expected - found), sorted(found - expected)
  problems = []
  if missing:
    problems.append(f"missing from {what}: {', '.join(missing)}")
  if unexpected:
    problems.append(f"not mapped to the model ({what}): {', '.join(unexpected)}")
  if problems:
    raise ConversionError("; ".join(problems))


# A `ConfigFields` default for a field config.json must give.
REQUIRED = object()


@dataclasses.dataclass(frozen=True)
class ConfigFields:
  """The fields a config shares with a Hugging Face `config.json`, one
  table for both directions.

  Attributes:
    defaults: Hugging Face's field name -> its default for a config.json that
      omits the field, or `REQUIRED`; the order config.json is written in.
    ours: Hugging Face's name -> our config's field, where they differ.
    old_names: a former Hugging Face name -> the current one (read, never
      written).
  """
  defaults: Mapping[str, Any]
  ours: Mapping[str, str] = dataclasses.field(default_factory=dict)
  old_names: Mapping[str, str] = dataclasses.field(default_factory=dict)

  def read(self, hf_config: Mapping[str, Any]) -> dict[str, Any]:
    """Our field -> value, from `hf_config` or the defaults."""
    hf_config = {self.old_names.get(k, k): v for k, v in hf_config.items()}
    fields = {}
    for name, default in self.defaults.items():
      if name not in hf_config and default is REQUIRED:
        raise ConversionError(f"config.json lacks {name!r}")
      fields[self.ours.get(name, name)] = hf_config.get(name, default)
    return fields

  def write(self, config: Any) -> dict[str, Any]:
    """Hugging Face's field -> the value of `config`."""
    return {name: getattr(config, self.ours.get(name, name)) for name in self.defaults}


def architecture_of(hf_config: Mapping[str, Any], supported: Iterable[str],
                    default: str) -> str:
  """The one architecture config.json names (`default` when it names none);
  raises for several or one not `supported`."""
  supported = tuple(supported)
  names = hf_config.get("architectures") or [default]
  if len(names) != 1 or names[0] not in supported:
    raise ConversionError(f"Unknown architecture {names} in config.json; supported: "
                          f"{', '.join(supported)}")
  return names[0]


def hf_config_head(model_type: str, architecture: str,
                   supported: Iterable[str]) -> dict[str, Any]:
  """config.json's first fields, for an `architecture` this model type has."""
  if architecture not in tuple(supported):
    raise ConversionError(f"Unknown {model_type} architecture {architecture!r}")
  return {"architectures": [architecture], "model_type": model_type}


def config_from_fields(config_class: type, fields: Mapping[str, Any]) -> Any:
  """`config_class.from_dict(fields)`, its refusal a `ConversionError`
  naming config.json."""
  try:
    return config_class.from_dict(dict(fields))
  except ValueError as e:
    raise ConversionError(f"config.json: {e}") from None


class HfConverter(abc.ABC):
  """One Hugging Face model type <-> the parameters of one of our families.

  "Parts" are the parameter groups outside the encoder (the family's
  `non_encoder_parts`: T5's decoder, a BERT's heads). A Hugging Face
  architecture holds some of them; an encoder-only conversion drops them.

  Attributes:
    model_type: `config.json`'s model_type.
    parts: every part this model type can hold.
  """
  model_type: str
  parts: tuple[str, ...]

  @abc.abstractmethod
  def architecture(self, hf_config: Mapping[str, Any]) -> str:
    """The architecture `config.json` names; raises for one not supported."""

  @abc.abstractmethod
  def config_from_hf(self, hf_config: Mapping[str, Any], **overrides: Any) -> Any:
    """Our config from a `config.json` dict; `overrides` set fields it lacks
    (dtype, attention chunking) or replace its values."""

  @abc.abstractmethod
  def hf_config(self, config: Any, architecture: str, torch_dtype: str) -> dict[str, Any]:
    """A `config.json` dict `transformers` loads as `architecture`."""

  @abc.abstractmethod
  def parts_in_checkpoint(self, names: set[str], config: Any,
                          architecture: str) -> tuple[str, ...]:
    """Which parts a checkpoint of `architecture` with tensors `names` holds."""

  @abc.abstractmethod
  def architecture_for(self, config: Any, parts: Sequence[str]) -> str:
    """The architecture an export holding exactly `parts` is saved as."""

  @abc.abstractmethod
  def tensor_plan(self, config: Any, architecture: str,
                  parts: Sequence[str]) -> list[TensorMapping]:
    """Every tensor of the encoder plus `parts`, in checkpoint order."""

  @abc.abstractmethod
  def expected_shapes(self, config: Any, parts: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """Our flat parameter names and shapes for the encoder plus `parts`."""

  @abc.abstractmethod
  def tokenizer_files(self, config: Any) -> dict[str, str | bytes]:
    """Files (name -> text or bytes) written beside an export's weights."""

  def tied_copies(self, config: Any, parts: Sequence[str]) -> dict[str, str]:
    """{tensor some writers store: the planned tensor it must equal}.

    Copies are checked equal when read and never written (`transformers`
    re-ties them on load); a checkpoint that stores only a copy is read
    from the copy.
    """
    del config, parts
    return {}

  def constant_tensors(self, config: Any, architecture: str) -> dict[str, np.ndarray]:
    """Tensors a checkpoint stores that are no parameters but follow from
    the config (buffers such as Transformer-XL's inverse frequencies):
    written beside the weights, and checked (to float32 rounding) and
    skipped when read."""
    del config, architecture
    return {}

  def ignored(self, name: str) -> bool:
    """Tensors older checkpoints carry that are not parameters."""
    del name
    return False

  def untied_copy_hint(self, copy: str) -> str:
    """Completes "<copy> differs from <original>, ..." for a tied copy that
    does not equal its original."""
    del copy
    return "but the model ties them"

  def mismatch_hint(self, names: set[str], config: Any, parts: Sequence[str]) -> str:
    """Appended to a name mismatch: what in config.json may disagree with
    the tensors (e.g. a T5 1.1 variant); empty if nothing."""
    del names, config, parts
    return ""

  def parts_of_params(self, names: Iterable[str]) -> tuple[str, ...]:
    """Which parts a flat parameter tree holds."""
    groups = {top_level(n) for n in names}
    return tuple(p for p in self.parts if p in groups)


def read_state_dict(state_dict: Mapping[str, np.ndarray], converter: HfConverter,
                    config: Any, architecture: str, encoder_only: bool = False,
                    dtype: Optional[np.dtype] = None
                    ) -> tuple[dict[str, Loader], tuple[str, ...]]:
  """({our flat name: loader}, parts) of a Hugging Face state dict.

  Checks every name first (each missing or unmapped tensor is listed);
  each loader checks its tensor's shape and its tied copies. Nothing is
  read until a loader is called, so a lazy `state_dict` converts one tensor
  at a time. `encoder_only` skips the parts; `dtype` casts (None keeps the
  checkpoint's: HF -> ours -> HF is then byte-identical).
  """
  names = set(state_dict.keys())
  held = converter.parts_in_checkpoint(names, config, architecture)
  parts = () if encoder_only else held
  plan = converter.tensor_plan(config, architecture, parts)
  planned = {m.hf for m in plan}
  copies = {c: s for c, s in converter.tied_copies(config, held).items() if c in names}
  # A planned tensor the checkpoint stores only as a tied copy is read there.
  source = {m.hf: m.hf if m.hf in names else next(
      (c for c, s in copies.items() if s == m.hf), m.hf) for m in plan}
  read = set(source.values())
  skipped = {n for n in names if n not in read and (
      n in copies or converter.ignored(n))}
  skipped |= {m.hf for m in converter.tensor_plan(config, architecture, held)} - planned
  for name, value in converter.constant_tensors(config, architecture).items():
    if name in names:
      stored = np.asarray(state_dict[name])
      if stored.shape != value.shape or not np.allclose(stored, value, rtol=1e-6, atol=0):
        raise ConversionError(f"{name} differs from what config.json implies "
                              f"(shape {stored.shape}, expected {value.shape})")
      skipped.add(name)
  try:
    check_names(names - skipped, read, "the Hugging Face checkpoint")
  except ConversionError as e:
    raise ConversionError(f"{e}{converter.mismatch_hint(names, config, parts)}") from None
  shapes = converter.expected_shapes(config, parts)

  def loader(m: TensorMapping) -> Loader:
    def load() -> np.ndarray:
      array = np.asarray(state_dict[source[m.hf]])
      check_shape(source[m.hf], array.shape, hf_shape(m, shapes))
      for copy, original in copies.items():
        if original == m.hf and copy != source[m.hf] and not np.array_equal(
            np.asarray(state_dict[copy]), array):
          raise ConversionError(f"{copy} differs from {original}, "
                                f"{converter.untied_copy_hint(copy)}")
      array = relayout(m, array, shapes[m.ours])
      return array if dtype is None else array.astype(dtype)
    return load

  return {m.ours: loader(m) for m in plan}, parts


def hf_tensors(params: Mapping[str, Loader], converter: HfConverter, config: Any,
               encoder_only: bool = False, dtype: Optional[np.dtype] = None
               ) -> tuple[str, dict[str, tuple[tuple[int, ...], Loader]]]:
  """(architecture, {HF name: (HF shape, loader)} in checkpoint order).

  The parts written are those `params` (our flat names -> loaders) hold,
  none with `encoder_only`. Raises on a missing or unexpected parameter;
  each loader raises on a shape that does not match `config`.
  """
  parts = () if encoder_only else converter.parts_of_params(params)
  architecture = converter.architecture_for(config, parts)
  plan = converter.tensor_plan(config, architecture, parts)
  present = {n for n in params if not (encoder_only and top_level(n) in converter.parts)}
  check_names(present, {m.ours for m in plan}, "the parameters")
  shapes = converter.expected_shapes(config, parts)

  def loader(m: TensorMapping) -> Loader:
    def load() -> np.ndarray:
      array = np.asarray(params[m.ours]())
      check_shape(m.ours, array.shape, shapes[m.ours])
      array = relayout(m, array, hf_shape(m, shapes))
      return array if dtype is None else array.astype(dtype)
    return load

  tensors = {m.hf: (hf_shape(m, shapes), loader(m)) for m in plan}
  for name, value in converter.constant_tensors(config, architecture).items():
    tensors[name] = (value.shape, lambda value=value: (
        value if dtype is None else value.astype(dtype)))
  return architecture, tensors


def state_dict_to_params(state_dict: Mapping[str, np.ndarray], converter: HfConverter,
                         config: Any, architecture: str, encoder_only: bool = False,
                         dtype: Optional[np.dtype] = None) -> dict[str, Any]:
  """A Hugging Face state dict -> our nested params (numpy), all in memory."""
  loaders, _ = read_state_dict(state_dict, converter, config, architecture, encoder_only,
                               dtype)
  return unflatten({name: load() for name, load in loaders.items()})


def params_to_state_dict(params: Mapping[str, Any], converter: HfConverter, config: Any,
                         encoder_only: bool = False,
                         dtype: Optional[np.dtype] = None) -> dict[str, np.ndarray]:
  """Our nested params -> a Hugging Face state dict (numpy, no tied copies)."""
  _, tensors = hf_tensors(loaders_of(params), converter, config, encoder_only, dtype)
  return {name: load() for name, (_, load) in tensors.items()}
