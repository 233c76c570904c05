"""The checkpoint format: model config, params-only checkpoints, train state.

Layout of a MODEL_DIR:

  checkpoints/<step>/        one Orbax checkpoint per saved step:
    params/                  the parameter tree (always)
    opt_state/               optimizer state (training checkpoints only)
    train_info/              json: step, batches consumed (training only)
    dataset/                 each process's input iterator state (training
                             only; training/inputs.py writes and reads it)
    memory/                  what the model carries between train steps
                             (Transformer-XL's memory; only training runs
                             with carry_memory_between_steps)
    model_config/            json: {"model_name": family, "config": {...}}
    integrity/               json: each saved array's shape, dtype and
                             checksum, and the items written (see below)

MODEL_DIR may be a local path or a URL (`gs://bucket/run`): every path here
goes through the filesystem layer (`prottrans_jax.fs`, etils epath).

On disk the parameters (and the optimizer state's mirrors of them) are
always in the canonical, unscanned layout (`encoder/layers_0/...`, the names
the converters map), whatever the config's `scan_layers`: `save` converts a
scanned model's trees to it and the restores convert back to the layout the
target config wants (families.ModelFamily.to_layout / to_canonical), on the
devices, under jit, into the target shardings. A checkpoint written with one
setting therefore resumes, embeds and converts with the other.

Every step directory records its model family (a fine-tuning network,
whose config names its own `checkpoint_model_name`, records that name and
is saved in the layout it trains in) and config, so a step
directory copied elsewhere restores on its own, and embedding, conversion and
evaluation need nothing but the path. A step without `opt_state` is a
params-only checkpoint (written by a converter or `write_params_checkpoint`):
training resumes from it with a freshly initialised optimizer, which is how
fine-tuning from converted weights starts.

Converters stream: `write_params_checkpoint` takes `LazyArray` leaves and
reads each only when Orbax writes it, and `lazy_params` restores one leaf per
call, so a checkpoint larger than memory converts with about one tensor held.
Embedding reads only the encoder's parameters, each straight into its
sharding (`restore_params_subset`), so no device holds a whole tensor that
the embedding mesh splits.

Damage is detected, not read as weights: every array is checksummed as
it is written (`array_checksum`: a position-weighted sum of its bytes as
32-bit words, the same integer whether computed on the host or under jit
over a sharded array, so it is of the whole logical array and every process
agrees) and the `integrity` item records them with the items the step was
written with. Restores check the arrays they read against it and raise
`DamagedCheckpointError` naming the step (also for a missing item or a read
that fails: a truncated file); `verify_params` checks a step's parameters
alone. Steps written before the record existed restore unchecked.

This module is the format only: the trainer, the converters and the
embedding loader all use it, and it imports none of them.
"""

import dataclasses
import functools
from typing import Any, Callable

from absl import logging
from etils import epath
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from prottrans_jax import families
from prottrans_jax import fs

CHECKPOINTS_SUBDIR = "checkpoints"
PARAMS = "params"
OPT_STATE = "opt_state"
TRAIN_INFO = "train_info"
MODEL_CONFIG = "model_config"
DATASET = "dataset"
MEMORY = "memory"
INTEGRITY = "integrity"
ITEM_NAMES = (PARAMS, OPT_STATE, TRAIN_INFO, MODEL_CONFIG, DATASET, MEMORY, INTEGRITY)
# Checksummed items: (restored trees are checked against the record).
CHECKED_ITEMS = (PARAMS, OPT_STATE, MEMORY)


class DamagedCheckpointError(ValueError):
  """A checkpoint step that cannot be restored as written: an item missing,
  a file unreadable, or an array whose checksum differs from the one
  recorded when it was saved. `step_dir` is the step's directory."""

  def __init__(self, step_dir: fs.PathLike, reason: str):
    self.step_dir = fs.path(step_dir)
    self.reason = reason
    super().__init__(f"checkpoint step {self.step_dir.name} is damaged "
                     f"({self.step_dir}): {reason}")


def _words_np(array: np.ndarray) -> np.ndarray:
  """`array`'s bytes as a flat array of uint32 words (2- and 1-byte elements
  widened one per word, 8-byte ones split in two)."""
  array = np.ascontiguousarray(array)
  if array.dtype == np.bool_:
    return array.astype(np.uint32).reshape(-1)
  size = array.dtype.itemsize
  if size in (4, 8):
    return array.reshape(-1).view(np.uint32)
  return array.reshape(-1).view(np.dtype(f"uint{8 * size}")).astype(np.uint32)


def _words_jax(x: jax.Array) -> jax.Array:
  """`_words_np` under jit, keeping the array's shape (no reshape, so a
  sharded array is not gathered): 8-byte elements gain a trailing axis."""
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  size = x.dtype.itemsize
  if size in (4, 8):
    return jax.lax.bitcast_convert_type(x, jnp.uint32)
  return jax.lax.bitcast_convert_type(
      x, jnp.dtype(f"uint{8 * size}")).astype(jnp.uint32)


_CHUNK_WORDS = 1 << 24


def array_checksum(array: np.ndarray) -> int:
  """A host array's checksum: sum over its words w_i of w_i * (2i + 1),
  modulo 2**32. Each word's factor is odd, so changing any one word always
  changes the sum; positions are weighted, so moved bytes do too."""
  words = _words_np(np.asarray(array))
  total = np.uint32(0)
  for start in range(0, words.size, _CHUNK_WORDS):
    chunk = words[start:start + _CHUNK_WORDS]
    factors = np.arange(start, start + chunk.size, dtype=np.uint32)
    factors = factors * np.uint32(2) + np.uint32(1)
    total = total + np.sum(chunk * factors, dtype=np.uint32)
  return int(total)


def _checksum_traced(x: jax.Array) -> jax.Array:
  words = _words_jax(x)
  index = jnp.zeros(words.shape, jnp.uint32)
  stride = 1
  for axis in reversed(range(words.ndim)):
    index = index + jax.lax.broadcasted_iota(jnp.uint32, words.shape,
                                             axis) * jnp.uint32(stride)
    stride *= words.shape[axis]
  return jnp.sum(words * (index * jnp.uint32(2) + jnp.uint32(1)),
                 dtype=jnp.uint32)


@jax.jit
def _device_checksums(tree: Any) -> Any:
  return jax.tree_util.tree_map(_checksum_traced, tree)


def _array_record(array: Any, checksum: int) -> dict[str, Any]:
  return {"shape": list(array.shape), "dtype": np.dtype(array.dtype).name,
          "checksum": int(checksum)}


def tree_checksums(tree: Any) -> dict[str, dict[str, Any]]:
  """{key path: {shape, dtype, checksum}} of every array of `tree`: jax
  arrays checksummed where they are (sharded or not; only scalars reach the
  host), numpy arrays on the host. `array_checksum` of a leaf's host copy
  gives the same number."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  on_device = {jax.tree_util.keystr(k): v for k, v in leaves
               if isinstance(v, jax.Array)}
  sums = jax.device_get(_device_checksums(on_device)) if on_device else {}
  return {jax.tree_util.keystr(k): _array_record(
      v, sums[jax.tree_util.keystr(k)] if isinstance(v, jax.Array)
      else array_checksum(np.asarray(v))) for k, v in leaves}


def _integrity_record(kind: str, items: Any, arrays: dict[str, Any]
                      ) -> dict[str, Any]:
  return {"version": 1, "kind": kind, "items": sorted(items),
          "arrays": arrays}


def read_integrity(step_dir: fs.PathLike) -> dict[str, Any] | None:
  """A step's integrity record; None for a step written before they were
  (restored unchecked). Raises DamagedCheckpointError if it is unreadable."""
  step_dir = fs.path(step_dir)
  record_dir = step_dir / INTEGRITY
  if not record_dir.is_dir():
    return None
  try:
    return ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(record_dir)
  except Exception as e:  # pylint: disable=broad-except
    raise DamagedCheckpointError(
        step_dir, f"its {INTEGRITY} record is unreadable: {e!r}") from e


def check_items(step_dir: fs.PathLike, record: dict[str, Any] | None,
                wanted: Any = ()) -> None:
  """Raises DamagedCheckpointError if an item the step was written with
  (per `record`), or one of `wanted`, is missing from `step_dir`."""
  step_dir = fs.path(step_dir)
  expected = set(wanted) | set(record["items"] if record else ())
  missing = sorted(item for item in expected if not (step_dir / item).exists())
  if missing:
    raise DamagedCheckpointError(
        step_dir, f"missing {', '.join(f'{m}/' for m in missing)}"
        + (f" (it was written with {', '.join(record['items'])})"
           if record else ""))


def _check_shapes(step_dir: epath.Path, item: str, abstract: Any,
                  record: dict[str, Any] | None) -> None:
  """A ValueError (not damage: another model or optimizer) if the arrays
  `abstract` asks for are not the ones the step recorded."""
  if record is None or item not in record["arrays"]:
    return
  saved = record["arrays"][item]
  wanted = {jax.tree_util.keystr(k): list(v.shape)
            for k, v in jax.tree_util.tree_flatten_with_path(abstract)[0]}
  differ = sorted(set(wanted) ^ set(saved)) or sorted(
      k for k in wanted if wanted[k] != saved[k]["shape"])
  if differ:
    name = differ[0]
    raise ValueError(
        f"checkpoint step {step_dir.name} ({step_dir}) holds another "
        f"{item} tree than this run's model and optimizer build: e.g. "
        f"{item}{name} is {saved[name]['shape'] if name in saved else 'absent'}"
        f" there and {wanted.get(name, 'absent')} here")


def verify_arrays(step_dir: fs.PathLike, item: str, tree: Any,
                  record: dict[str, Any] | None) -> None:
  """Raises DamagedCheckpointError naming the step and the first array of
  `tree` (restored from `item`) whose checksum is not the recorded one.
  Arrays restored into another dtype than saved are not checked."""
  if record is None or item not in record["arrays"]:
    return
  saved = record["arrays"][item]
  found = tree_checksums(tree)
  for name, entry in found.items():
    expected = saved.get(name)
    if expected is None or expected["dtype"] != entry["dtype"]:
      continue
    if expected["checksum"] != entry["checksum"]:
      raise DamagedCheckpointError(
          step_dir, f"{item}{name} does not match the checksum recorded when "
          f"it was saved (its bytes changed on disk)")


def _verify_leaf(step_dir: epath.Path, saved: dict[str, Any] | None,
                 name: str, array: np.ndarray) -> None:
  """`verify_arrays` for one host array of the params item."""
  expected = (saved or {}).get(name)
  if (expected is not None and expected["dtype"] == array.dtype.name
      and expected["checksum"] != array_checksum(array)):
    raise DamagedCheckpointError(
        step_dir, f"{PARAMS}{name} does not match the checksum recorded "
        f"when it was saved (its bytes changed on disk)")


def _read_error(step_dir: fs.PathLike, item: str, error: Exception
                ) -> DamagedCheckpointError:
  return DamagedCheckpointError(step_dir, f"reading {item}/ failed: {error!r}")


def _own_name(config: Any) -> str | None:
  """The model name a config that is not one family's records for itself
  (`checkpoint_model_name`: fine-tuning's encoder + head); its trees are
  saved in the layout they train in."""
  return getattr(config, "checkpoint_model_name", None)


def _config_record(config: Any) -> dict[str, Any]:
  return {"model_name": _own_name(config) or families.of(config).name,
          "config": config.to_dict()}


def _config_from_record(record: dict[str, Any], source: str) -> tuple[str, Any]:
  try:
    model_name = record["model_name"]
    return model_name, families.get(model_name).config_class.from_dict(record["config"])
  except (KeyError, TypeError) as e:
    raise ValueError(f"{source} is not a model config record: {e!r}") from e


def checkpoint_manager(model_dir: fs.PathLike, *,
                       keep: int | None = None,
                       async_save: bool = True,
                       item_handlers: dict[str, Any] | None = None
                       ) -> ocp.CheckpointManager:
  """The Orbax manager of MODEL_DIR/checkpoints.

  Args:
    model_dir: the run's directory.
    keep: how many recent checkpoints to keep (None keeps all).
    async_save: write in the background while training continues.
    item_handlers: handlers for some items (others follow the save args).
  """
  return ocp.CheckpointManager(
      fs.path(model_dir) / CHECKPOINTS_SUBDIR,
      options=ocp.CheckpointManagerOptions(
          max_to_keep=keep,
          enable_async_checkpointing=async_save, create=True),
      item_names=ITEM_NAMES, item_handlers=item_handlers)


def _shardings(abstract: Any) -> Any:
  return jax.tree_util.tree_map(lambda x: x.sharding, abstract)


def _abstract(tree: Any) -> Any:
  return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def _to_canonical(config: Any, tree: Any) -> Any:
  """`tree` (params or optimizer state in `config`'s layout) in the on-disk
  layout, computed under jit where its shards are (no host gather)."""
  if tree is None or _own_name(config):
    return tree
  family = families.of(config)
  if not family.scanned_stacks(config):
    return tree
  tree = jax.tree_util.tree_map(
      lambda x: x if isinstance(x, jax.Array) else jnp.asarray(x), tree)
  out = family.to_canonical(config, _abstract(tree))
  return jax.jit(functools.partial(family.to_canonical, config),
                 out_shardings=_shardings(out))(tree)


def _to_layout(config: Any, tree: Any, target: Any) -> Any:
  """Canonical `tree` in `config`'s layout, placed as the abstract `target`
  says (shardings), under jit. (Donating the canonical buffers would not
  help: stacked outputs cannot reuse per-layer inputs.)"""
  if _own_name(config):
    return tree
  family = families.of(config)
  if not family.scanned_stacks(config):
    return tree
  return jax.jit(functools.partial(family.to_layout, config),
                 out_shardings=_shardings(target))(tree)


def save(manager: ocp.CheckpointManager, step: int, *, params: Any,
         config: Any, opt_state: Any = None,
         train_info: dict[str, Any] | None = None,
         data_state: ocp.args.CheckpointArgs | None = None,
         memory: Any = None) -> None:
  """Saves one step (in the background if the manager is asynchronous).

  `config` is the model's config (its family is recorded with it); `params`
  and `opt_state` are in its layout and are written canonical (scanned
  stacks unstacked into `layers_<i>`). Without `opt_state` and `train_info`
  this writes a params-only checkpoint. `data_state` saves the input
  position as the `dataset` item (its handler is the trainer's); `memory`
  (the train state's, in the model's own layout) the `memory` item.
  """
  params, opt_state = _to_canonical(config, params), _to_canonical(config, opt_state)
  items = {PARAMS: ocp.args.StandardSave(params),
           MODEL_CONFIG: ocp.args.JsonSave(_config_record(config))}
  if opt_state is not None:
    items[OPT_STATE] = ocp.args.StandardSave(opt_state)
  if train_info is not None:
    items[TRAIN_INFO] = ocp.args.JsonSave(train_info)
  if data_state is not None:
    items[DATASET] = data_state
  if memory is not None:
    items[MEMORY] = ocp.args.StandardSave(memory)
  arrays = {PARAMS: tree_checksums(params)}
  if opt_state is not None:
    arrays[OPT_STATE] = tree_checksums(opt_state)
  if memory is not None:
    arrays[MEMORY] = tree_checksums(memory)
  kind = "train" if train_info is not None else "params"
  items[INTEGRITY] = ocp.args.JsonSave(
      _integrity_record(kind, list(items), arrays))
  manager.save(step, args=ocp.args.Composite(**items), force=True)


@dataclasses.dataclass(frozen=True)
class LazyArray:
  """A parameter that is read (`load()`) only when it is written or used.

  `shape` and `dtype` are known up front, as Orbax needs them for the
  checkpoint's metadata before any data.
  """
  shape: tuple[int, ...]
  dtype: np.dtype
  load: Callable[[], np.ndarray]

  def materialize(self, name: str = "") -> np.ndarray:
    array = np.asarray(self.load(), dtype=self.dtype)
    if array.shape != tuple(self.shape):
      raise ValueError(f"{name or 'lazy array'}: loaded shape {array.shape}, "
                       f"declared {tuple(self.shape)}")
    return array


class _StreamingHandler(ocp.type_handlers.NumpyHandler):
  """Writes `LazyArray` leaves one after another, each loaded just before.

  Orbax's numpy handler serializes a whole batch of leaves concurrently (and
  copies each first); here only one loaded array is alive at a time, written
  in the same tensorstore format, so the checkpoint restores like any other.
  """

  async def serialize(self, values, infos, args=None):
    args = args or [ocp.SaveArgs()] * len(values)

    async def write_one_at_a_time():
      for value, info, arg in zip(values, infos, args):
        array = value.materialize(info.name)
        await self._background_serialize([array], [info], [arg])
        del array

    return [ocp.future.CommitFutureAwaitingContractedSignals(
        write_one_at_a_time(), name="streaming_params")]


def _params_handler() -> ocp.PyTreeCheckpointHandler:
  """The params item's handler: Orbax's own for arrays, plus LazyArray."""
  registry = ocp.type_handlers.create_type_handler_registry(
      (jax.Array, ocp.type_handlers.get_type_handler(jax.Array)),
      (np.ndarray, ocp.type_handlers.get_type_handler(np.ndarray)),
      (LazyArray, _StreamingHandler()))
  return ocp.PyTreeCheckpointHandler(type_handler_registry=registry)


def write_params_checkpoint(model_dir: fs.PathLike, params: Any, config: Any,
                            step: int = 0) -> epath.Path:
  """A params-only checkpoint of a `config` network in MODEL_DIR.

  Leaves are jax or numpy arrays, or `LazyArray`s, which are loaded one at a
  time while writing (peak memory about one tensor). `params` are in the
  canonical layout whatever `config.scan_layers` says (what converters
  produce; a scanned model's trees go through `save`). Returns the step
  directory. Training started on this MODEL_DIR fine-tunes from these params
  (fresh optimizer state, step counting on from `step`).
  """
  # Lazy leaves are checksummed as they are loaded for writing (each read
  # once); the record is written into the step once they all have been.
  lazy_sums = {}

  def checksummed(key_path, leaf):
    if not isinstance(leaf, LazyArray):
      return leaf
    name = jax.tree_util.keystr(key_path)

    def load():
      array = leaf.materialize(name)
      lazy_sums[name] = _array_record(array, array_checksum(array))
      return array
    return LazyArray(leaf.shape, leaf.dtype, load)

  arrays = tree_checksums(jax.tree_util.tree_map(
      lambda x: None if isinstance(x, LazyArray) else x, params))
  params = jax.tree_util.tree_map_with_path(checksummed, params)
  manager = checkpoint_manager(model_dir, async_save=False,
                               item_handlers={PARAMS: _params_handler()})
  manager.save(step, force=True, args=ocp.args.Composite(**{
      PARAMS: ocp.args.PyTreeSave(params),
      MODEL_CONFIG: ocp.args.JsonSave(_config_record(config))}))
  manager.wait_until_finished()
  manager.close()
  step_dir = fs.path(model_dir) / CHECKPOINTS_SUBDIR / str(step)
  if jax.process_index() == 0:
    ocp.Checkpointer(ocp.JsonCheckpointHandler()).save(
        step_dir / INTEGRITY, _integrity_record(
            "params", (PARAMS, MODEL_CONFIG), {PARAMS: {**arrays, **lazy_sums}}))
  return step_dir


def has_item(manager: ocp.CheckpointManager, step: int, item: str) -> bool:
  return (fs.path(manager.directory) / str(step) / item).exists()


def has_optimizer_state(manager: ocp.CheckpointManager, step: int) -> bool:
  return has_item(manager, step, OPT_STATE)


def restore_train_items(manager: ocp.CheckpointManager, step: int, *,
                        config: Any, abstract_params: Any,
                        abstract_opt_state: Any = None,
                        data_state: ocp.args.CheckpointArgs | None = None,
                        abstract_memory: Any = None) -> dict[str, Any]:
  """Restores a step's items onto the given abstract (sharded) targets.

  `abstract_*` are trees of `jax.ShapeDtypeStruct` with shardings, in the
  layout `config` (the model being trained) wants; the canonical trees on
  disk are read shard by shard onto the same devices and converted there.
  Pass `abstract_opt_state=None` for a params-only checkpoint, and
  `data_state` (the restore args of the `dataset` item) to restore the
  input position too, and `abstract_memory` for the `memory` item.

  Raises DamagedCheckpointError naming the step when an item it was written
  with is missing, a read fails or an array's checksum differs; ValueError
  when the step holds other arrays than `abstract_*` (another config).
  """
  on_disk = ((lambda tree: tree) if _own_name(config) else
             functools.partial(families.of(config).to_canonical, config))
  step_dir = fs.path(manager.directory) / str(step)
  record = read_integrity(step_dir)
  items = {PARAMS: ocp.args.StandardRestore(on_disk(abstract_params))}
  if abstract_opt_state is not None:
    items[OPT_STATE] = ocp.args.StandardRestore(on_disk(abstract_opt_state))
    items[TRAIN_INFO] = ocp.args.JsonRestore()
  if data_state is not None:
    items[DATASET] = data_state
  if abstract_memory is not None:
    items[MEMORY] = ocp.args.StandardRestore(abstract_memory)
  check_items(step_dir, record, items)
  for item in CHECKED_ITEMS:
    if item in items:
      _check_shapes(step_dir, item, items[item].item, record)
  try:
    restored = manager.restore(step, args=ocp.args.Composite(**items))
  except Exception as e:  # pylint: disable=broad-except
    raise _read_error(step_dir, "/, ".join(items), e) from e
  out = {name: restored[name] for name in items}
  for item in CHECKED_ITEMS:
    if item in out:
      verify_arrays(step_dir, item, out[item], record)
  out[PARAMS] = _to_layout(config, out[PARAMS], abstract_params)
  if abstract_opt_state is not None:
    out[OPT_STATE] = _to_layout(config, out[OPT_STATE], abstract_opt_state)
  return out


def step_directory(path: fs.PathLike) -> epath.Path:
  """A step directory from a MODEL_DIR (latest step) or a step directory."""
  path = fs.path(path)
  if (path / PARAMS).is_dir():
    return path
  checkpoints = path / CHECKPOINTS_SUBDIR
  steps = sorted(int(p.name) for p in checkpoints.iterdir()
                 if p.name.isdigit() and (p / PARAMS).is_dir()) if (
                     checkpoints.is_dir()) else []
  if not steps:
    raise FileNotFoundError(
        f"no checkpoint at {path}: expected a MODEL_DIR with "
        f"{CHECKPOINTS_SUBDIR}/<step>/{PARAMS} or a step directory")
  return checkpoints / str(steps[-1])


def checkpoint_model_config(path: fs.PathLike) -> tuple[str, Any]:
  """(model_name, config) of a checkpoint (MODEL_DIR: its latest step)."""
  step_dir = step_directory(path)
  config_path = step_dir / MODEL_CONFIG
  if not config_path.is_dir():
    raise FileNotFoundError(f"{step_dir} has no {MODEL_CONFIG} item")
  try:
    record = ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(config_path)
  except Exception as e:  # pylint: disable=broad-except
    raise _read_error(step_dir, MODEL_CONFIG, e) from e
  return _config_from_record(record, str(config_path))


def _params_metadata(path: fs.PathLike) -> tuple[epath.Path, str, Any, Any]:
  """(step directory, model_name, config, params metadata tree) of a checkpoint."""
  step_dir = step_directory(path)
  model_name, config = checkpoint_model_config(step_dir)
  check_items(step_dir, read_integrity(step_dir), (PARAMS,))
  try:
    metadata = ocp.StandardCheckpointer().metadata(
        step_dir / PARAMS).item_metadata.tree
  except Exception as e:  # pylint: disable=broad-except
    raise _read_error(step_dir, PARAMS, e) from e
  return step_dir, model_name, config, metadata


def restore_params(path: fs.PathLike, shardings: Any = None,
                   layout_config: Any = None) -> tuple[str, Any, Any]:
  """(model_name, config, params) from a MODEL_DIR or one step's directory.

  A MODEL_DIR restores its latest step. The params come back in the layout
  of the returned config (the recorded one: scanned stacks stacked when it
  has `scan_layers`), or of `layout_config` when given (a run that starts
  from this checkpoint with its own config). They land on `shardings` (a
  tree matching them) when given, else on the first local device.
  """
  step_dir, model_name, config, metadata = _params_metadata(path)
  layout_config = config if layout_config is None else layout_config
  family = families.of(layout_config)
  on_disk = jax.tree_util.tree_map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype),
                                   metadata)
  in_layout = family.to_layout(layout_config, on_disk)
  if shardings is None:
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    shardings = jax.tree_util.tree_map(lambda _: device, in_layout)
  target = jax.tree_util.tree_map(
      lambda m, s: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=s),
      in_layout, shardings)
  try:
    params = ocp.StandardCheckpointer().restore(
        step_dir / PARAMS, family.to_canonical(layout_config, target))
  except Exception as e:  # pylint: disable=broad-except
    raise _read_error(step_dir, PARAMS, e) from e
  verify_arrays(step_dir, PARAMS, params, read_integrity(step_dir))
  params = _to_layout(layout_config, params, target)
  logging.info("restored params of %s from %s", model_name, step_dir)
  return model_name, config, params


def restore_params_subset(path: fs.PathLike, target: Any,
                          max_host_bytes: int = 1 << 30) -> tuple[Any, int]:
  """Only the parameters `target` names, each put straight into its sharding.

  `target` is a nested dict of `jax.ShapeDtypeStruct`s with shardings in
  the on-disk (canonical) layout, naming some of the checkpoint's
  parameters: an encoder's, say, out of a whole model. The others are not
  read at all (`ocp.PLACEHOLDER`). Each named one is read once, whole, into
  host memory, cast to the target's dtype and put from there into its
  sharding, so every device receives only its shards; a group of at most
  `max_host_bytes` (or one larger tensor) is read at a time. A MODEL_DIR
  restores its latest step.

  Why not Orbax's own sharded restore: it reads, for every distinct shard,
  each stored chunk the shard overlaps, and converted checkpoints store each
  tensor as one chunk, so a tensor split N ways was read and decompressed up
  to N times (4 to 7 times for 8 ways, measured). Here each process reads
  each tensor once; with the embedding's meshes, each process's devices
  hold every part of it anyway.

  Returns (`target`'s tree of `jax.Array`s, the number of parameters the
  checkpoint holds). Raises ValueError naming a parameter of `target` that
  the checkpoint lacks or holds with another shape.
  """
  step_dir, _, _, metadata = _params_metadata(path)

  def check_on_disk(key_path, leaf):
    name = "/".join(str(key.key) for key in key_path)
    node = metadata
    for key in key_path:
      if not isinstance(node, dict) or key.key not in node:
        raise ValueError(f"checkpoint {step_dir} lacks parameter {name}")
      node = node[key.key]
    if isinstance(node, dict) or tuple(node.shape) != tuple(leaf.shape):
      found = "a group" if isinstance(node, dict) else f"shape {tuple(node.shape)}"
      raise ValueError(f"checkpoint {step_dir} holds parameter {name} as "
                       f"{found}; expected shape {tuple(leaf.shape)}")

  jax.tree_util.tree_map_with_path(check_on_disk, target)
  saved = (read_integrity(step_dir) or {"arrays": {}})["arrays"].get(PARAMS)
  placeholders = jax.tree_util.tree_map(lambda _: ocp.PLACEHOLDER, metadata)
  # Reads of this process alone: no barrier with other processes, which
  # may load at other times (each embedding process works on its own).
  this_process = ocp.options.MultiprocessingOptions(
      primary_host=jax.process_index(), active_processes={jax.process_index()})
  checkpointer = ocp.Checkpointer(
      ocp.PyTreeCheckpointHandler(multiprocessing_options=this_process),
      multiprocessing_options=this_process)
  placed = {}
  for group in _groups_of_bytes(
      jax.tree_util.tree_flatten_with_path(target)[0], max_host_bytes):
    item, restore_args = placeholders, placeholders
    for key_path, leaf in group:
      item = _replace_at(item, key_path, 0)
      # Read as stored (checksummed so), cast after the check.
      restore_args = _replace_at(restore_args, key_path, ocp.RestoreArgs(
          restore_type=np.ndarray))
    try:
      restored = checkpointer.restore(step_dir / PARAMS, args=ocp.args.PyTreeRestore(
          item=item, restore_args=restore_args))
    except Exception as e:  # pylint: disable=broad-except
      raise _read_error(step_dir, PARAMS, e) from e
    for key_path, leaf in group:
      array = _value_at(restored, key_path)
      _verify_leaf(step_dir, saved, jax.tree_util.keystr(key_path), array)
      placed[key_path] = jax.device_put(
          np.asarray(array, dtype=leaf.dtype), leaf.sharding)
    del restored  # The host copies; the devices hold their shards.
  params = jax.tree_util.tree_map_with_path(
      lambda key_path, _: placed[key_path], target)
  num_params = len(jax.tree_util.tree_leaves(metadata))
  logging.info("restored %d of the %d params in %s", len(placed), num_params,
               step_dir)
  return params, num_params


def verify_params(path: fs.PathLike, max_host_bytes: int = 1 << 30
                  ) -> epath.Path:
  """Reads every parameter of a checkpoint (a MODEL_DIR: its latest step)
  on the host, a group of at most `max_host_bytes` at a time, and checks
  each against the checksum recorded at save. Returns the step directory;
  raises DamagedCheckpointError naming the step (and the array) otherwise.
  A step written before checksums were recorded is read through (so an
  unreadable file is still found) and logged as unchecked."""
  step_dir, _, _, metadata = _params_metadata(path)
  record = read_integrity(step_dir)
  if record is None:
    logging.warning("%s has no %s record (written by an older version): "
                    "its parameters are read but not checked", step_dir,
                    INTEGRITY)
  target = jax.tree_util.tree_map(
      lambda m: jax.ShapeDtypeStruct(
          m.shape, m.dtype, sharding=jax.sharding.SingleDeviceSharding(
              jax.local_devices(backend="cpu")[0])), metadata)
  # restore_params_subset checks each array as it reads it; the device
  # copies it makes are on the host CPU and dropped at once, group by group.
  for group in _groups_of_bytes(
      jax.tree_util.tree_flatten_with_path(target)[0], max_host_bytes):
    subset = {}
    for key_path, leaf in group:
      subset = _set_at(subset, key_path, leaf)
    restore_params_subset(step_dir, subset, max_host_bytes)
  return step_dir


def _set_at(tree: dict, key_path, value: Any) -> dict:
  """Nested dict `tree` with `value` added at `key_path` (made as needed)."""
  if not key_path:
    return value
  key = key_path[0].key
  return {**tree, key: _set_at(tree.get(key, {}), key_path[1:], value)}


def _groups_of_bytes(leaves: list[tuple[Any, Any]], max_bytes: int
                     ) -> list[list[tuple[Any, Any]]]:
  """(key path, leaf) pairs in consecutive groups of at most `max_bytes`
  (a larger leaf alone)."""
  groups, size = [], 0
  for key_path, leaf in leaves:
    nbytes = int(np.prod(leaf.shape)) * np.dtype(leaf.dtype).itemsize
    if not groups or size + nbytes > max_bytes:
      groups.append([])
      size = 0
    groups[-1].append((key_path, leaf))
    size += nbytes
  return groups


def lazy_params(path: fs.PathLike) -> tuple[str, Any, Any]:
  """(model_name, config, params) with `LazyArray` leaves, read on `load()`.

  The params are what the disk holds: the canonical layout, whatever the
  config's `scan_layers` (converters always see `layers_<i>` names).

  Each load restores that one leaf to host memory (numpy), so a converter
  can walk a checkpoint larger than memory tensor by tensor.
  """
  step_dir, model_name, config, metadata = _params_metadata(path)
  params_dir = step_dir / PARAMS
  saved = (read_integrity(step_dir) or {"arrays": {}})["arrays"].get(PARAMS)
  placeholders = jax.tree_util.tree_map(lambda _: ocp.PLACEHOLDER, metadata)
  checkpointer = ocp.PyTreeCheckpointer()

  def load_leaf(key_path) -> np.ndarray:
    item = _replace_at(placeholders, key_path, 0)
    restore_args = _replace_at(placeholders, key_path,
                               ocp.RestoreArgs(restore_type=np.ndarray))
    try:
      restored = checkpointer.restore(params_dir, args=ocp.args.PyTreeRestore(
          item=item, restore_args=restore_args))
    except Exception as e:  # pylint: disable=broad-except
      raise _read_error(step_dir, PARAMS, e) from e
    array = _value_at(restored, key_path)
    _verify_leaf(step_dir, saved, jax.tree_util.keystr(key_path), array)
    return array

  params = jax.tree_util.tree_map_with_path(
      lambda key_path, m: LazyArray(tuple(m.shape), np.dtype(m.dtype),
                                    lambda: load_leaf(key_path)),
      metadata)
  return model_name, config, params


def _value_at(tree: Any, key_path) -> Any:
  for key in key_path:
    tree = tree[key.key]
  return tree


def _replace_at(tree: Any, key_path, value: Any) -> Any:
  """A copy of nested dict `tree` with the leaf at `key_path` set to `value`."""
  if not key_path:
    return value
  key = key_path[0].key
  return {**tree, key: _replace_at(tree[key], key_path[1:], value)}
