"""The checkpoint format: model config, params-only checkpoints, train state.

Layout of a MODEL_DIR:

  checkpoints/<step>/        one Orbax checkpoint per saved step:
    params/                  the parameter tree (always)
    opt_state/               optimizer state (training checkpoints only)
    train_info/              json: step, batches consumed (training only)
    dataset/                 each process's input iterator state (training
                             only; training/inputs.py writes and reads it)
    model_config/            json: {"model_name": family, "config": {...}}

MODEL_DIR may be a local path or a URL (`gs://bucket/run`): every path here
goes through the filesystem layer (`prottrans_jax.fs`, etils epath).

On disk the parameters (and the optimizer state's mirrors of them) are
always in the canonical, unscanned layout (`encoder/layers_0/...`, the names
the converters map), whatever the config's `scan_layers`: `save` converts a
scanned model's trees to it and the restores convert back to the layout the
target config wants (families.ModelFamily.to_layout / to_canonical), on the
devices, under jit, into the target shardings. A checkpoint written with one
setting therefore resumes, embeds and converts with the other.

Every step directory records its model family and config, so a step
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
ITEM_NAMES = (PARAMS, OPT_STATE, TRAIN_INFO, MODEL_CONFIG, DATASET)


def _config_record(config: Any) -> dict[str, Any]:
  return {"model_name": families.of(config).name, "config": config.to_dict()}


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
  family = families.of(config)
  if tree is None or not family.scanned_stacks(config):
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
  family = families.of(config)
  if not family.scanned_stacks(config):
    return tree
  return jax.jit(functools.partial(family.to_layout, config),
                 out_shardings=_shardings(target))(tree)


def save(manager: ocp.CheckpointManager, step: int, *, params: Any,
         config: Any, opt_state: Any = None,
         train_info: dict[str, Any] | None = None,
         data_state: ocp.args.CheckpointArgs | None = None) -> None:
  """Saves one step (in the background if the manager is asynchronous).

  `config` is the model's config (its family is recorded with it); `params`
  and `opt_state` are in its layout and are written canonical (scanned
  stacks unstacked into `layers_<i>`). Without `opt_state` and `train_info`
  this writes a params-only checkpoint. `data_state` saves the input
  position as the `dataset` item (its handler is the trainer's).
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
  manager = checkpoint_manager(model_dir, async_save=False,
                               item_handlers={PARAMS: _params_handler()})
  manager.save(step, force=True, args=ocp.args.Composite(**{
      PARAMS: ocp.args.PyTreeSave(params),
      MODEL_CONFIG: ocp.args.JsonSave(_config_record(config))}))
  manager.wait_until_finished()
  manager.close()
  return fs.path(model_dir) / CHECKPOINTS_SUBDIR / str(step)


def has_item(manager: ocp.CheckpointManager, step: int, item: str) -> bool:
  return (fs.path(manager.directory) / str(step) / item).exists()


def has_optimizer_state(manager: ocp.CheckpointManager, step: int) -> bool:
  return has_item(manager, step, OPT_STATE)


def restore_train_items(manager: ocp.CheckpointManager, step: int, *,
                        config: Any, abstract_params: Any,
                        abstract_opt_state: Any = None,
                        data_state: ocp.args.CheckpointArgs | None = None
                        ) -> dict[str, Any]:
  """Restores a step's items onto the given abstract (sharded) targets.

  `abstract_*` are trees of `jax.ShapeDtypeStruct` with shardings, in the
  layout `config` (the model being trained) wants; the canonical trees on
  disk are read shard by shard onto the same devices and converted there.
  Pass `abstract_opt_state=None` for a params-only checkpoint, and
  `data_state` (the restore args of the `dataset` item) to restore the
  input position too.
  """
  family = families.of(config)
  on_disk = functools.partial(family.to_canonical, config)
  items = {PARAMS: ocp.args.StandardRestore(on_disk(abstract_params))}
  if abstract_opt_state is not None:
    items[OPT_STATE] = ocp.args.StandardRestore(on_disk(abstract_opt_state))
    items[TRAIN_INFO] = ocp.args.JsonRestore()
  if data_state is not None:
    items[DATASET] = data_state
  restored = manager.restore(step, args=ocp.args.Composite(**items))
  out = {name: restored[name] for name in items}
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
  record = ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(config_path)
  return _config_from_record(record, str(config_path))


def _params_metadata(path: fs.PathLike) -> tuple[epath.Path, str, Any, Any]:
  """(step directory, model_name, config, params metadata tree) of a checkpoint."""
  step_dir = step_directory(path)
  model_name, config = checkpoint_model_config(step_dir)
  metadata = ocp.StandardCheckpointer().metadata(step_dir / PARAMS).item_metadata.tree
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
  params = ocp.StandardCheckpointer().restore(
      step_dir / PARAMS, family.to_canonical(layout_config, target))
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
      restore_args = _replace_at(restore_args, key_path, ocp.RestoreArgs(
          restore_type=np.ndarray, dtype=leaf.dtype))
    restored = checkpointer.restore(step_dir / PARAMS, args=ocp.args.PyTreeRestore(
        item=item, restore_args=restore_args))
    for key_path, leaf in group:
      placed[key_path] = jax.device_put(_value_at(restored, key_path),
                                        leaf.sharding)
    del restored  # The host copies; the devices hold their shards.
  params = jax.tree_util.tree_map_with_path(
      lambda key_path, _: placed[key_path], target)
  num_params = len(jax.tree_util.tree_leaves(metadata))
  logging.info("restored %d of the %d params in %s", len(placed), num_params,
               step_dir)
  return params, num_params


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
  placeholders = jax.tree_util.tree_map(lambda _: ocp.PLACEHOLDER, metadata)
  checkpointer = ocp.PyTreeCheckpointer()

  def load_leaf(key_path) -> np.ndarray:
    item = _replace_at(placeholders, key_path, 0)
    restore_args = _replace_at(placeholders, key_path,
                               ocp.RestoreArgs(restore_type=np.ndarray))
    restored = checkpointer.restore(params_dir, args=ocp.args.PyTreeRestore(
        item=item, restore_args=restore_args))
    return _value_at(restored, key_path)

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
