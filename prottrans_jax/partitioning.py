"""Device mesh, logical-axis rules and shardings, T5X conventions.

Every array carries logical axis names (`embed`, `mlp`, `batch`, ...). A rule
set maps logical names onto the two mesh axes, `data` and `model`. Rules are
applied in priority order: for each array the first rule whose logical name
occurs in the array and whose mesh axis is still free wins, so a later rule
can never take a mesh axis that an earlier one already used for that array.
That is what lets the 2-D set shard `embed` over `data` for parameters while
activations, which carry `batch` first, keep `data` for the batch.

Each process feeds only the rows of a global batch its devices hold
(`global_batch_from_process_rows`): training input is read per process
(training/inputs.py). `make_global_batch` is the global-first form, for
callers where every process holds the whole batch anyway (the embedding
engine).
"""

import contextlib
import dataclasses
import glob
import importlib.util
import os
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
from jax.experimental import mesh_utils
import numpy as np

DATA_AXIS = "data"
MODEL_AXIS = "model"
MESH_AXES = (DATA_AXIS, MODEL_AXIS)

LogicalRules = tuple[tuple[str, str | None], ...]

# Model parallelism: the wide dimensions of every weight go on `model`, the
# batch on `data`; `embed` stays whole so the residual stream needs no
# collectives between layers (Megatron/T5X 1-D layout).
RULES_1D: LogicalRules = (
    ("batch", DATA_AXIS),
    ("vocab", MODEL_AXIS),
    ("embed", None),
    ("mlp", MODEL_AXIS),
    ("heads", MODEL_AXIS),
    ("kv", None),
    ("joined_kv", MODEL_AXIS),
)

# As 1-D, and parameters are also sharded over `data` along `embed` (FSDP /
# ZeRO-3): `batch` comes first, so activations keep `data` for the batch and
# only weights, which have no `batch` dimension, get `embed` on `data`.
RULES_2D: LogicalRules = (
    ("batch", DATA_AXIS),
    ("vocab", MODEL_AXIS),
    ("embed", DATA_AXIS),
    ("mlp", MODEL_AXIS),
    ("heads", MODEL_AXIS),
    ("kv", None),
    ("joined_kv", MODEL_AXIS),
)

# Dimensions that are never sharded, named so that every logical axis the
# models use has an explicit decision.
REPLICATED_RULES: LogicalRules = (
    ("length", None),
    # The leading axis of scanned layer stacks (models/layers.py,
    # `scan_layers`): every device holds its shard of every layer, as
    # unscanned. Removed once as dead code; scan-over-layers is its user.
    ("layers", None),
    ("relpos_buckets", None),
    # Transformer-XL's fused projection: which of q, k, v (3 entries).
    ("qkv", None),
    # BERT family: the embedding tables' width, learned positions, token
    # types and the discriminator's single output (small next to the layers).
    ("token_embed", None),
    ("abspos_buckets", None),
    ("token_types", None),
    ("classes", None),
    # LoRA adapters' inner dimension (models/lora.py): a handful of columns,
    # so A and B shard only along their kernel's own axes.
    ("lora_rank", None),
)


def logical_axis_rules(parameter_partitioning_dims: int = 1,
                       additional_rules: LogicalRules = ()) -> LogicalRules:
  """The standard rule set; `additional_rules` take priority over it."""
  standard = {1: RULES_1D, 2: RULES_2D}.get(parameter_partitioning_dims)
  if standard is None:
    raise ValueError("parameter_partitioning_dims must be 1 or 2, got "
                     f"{parameter_partitioning_dims}")
  return tuple(additional_rules) + standard + REPLICATED_RULES


def create_mesh(num_partitions: int = 1,
                mesh_shape: Sequence[int] | None = None,
                devices: Sequence[jax.Device] | None = None
                ) -> jax.sharding.Mesh:
  """A `data` x `model` mesh over `devices` (default: all devices).

  Args:
    num_partitions: size of the `model` axis; `data` takes the rest.
    mesh_shape: explicit (data, model) shape; overrides `num_partitions` and
      may use fewer devices than are available (the first ones).
    devices: devices to lay out; defaults to `jax.devices()`.
  """
  devices = list(jax.devices() if devices is None else devices)
  if mesh_shape is None:
    if num_partitions < 1 or len(devices) % num_partitions:
      raise ValueError(f"num_partitions={num_partitions} does not divide the "
                       f"{len(devices)} devices")
    mesh_shape = (len(devices) // num_partitions, num_partitions)
  mesh_shape = tuple(mesh_shape)
  size = int(np.prod(mesh_shape))
  if len(mesh_shape) != 2 or size > len(devices):
    raise ValueError(f"mesh_shape {mesh_shape} needs (data, model) with at "
                     f"most {len(devices)} devices")
  # create_device_mesh orders devices so that `model` neighbours are
  # physically close on TPU, where model-parallel collectives are frequent.
  device_array = mesh_utils.create_device_mesh(mesh_shape, devices[:size])
  return jax.sharding.Mesh(
      device_array, MESH_AXES,
      axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


@dataclasses.dataclass(frozen=True)
class PartitionConfig:
  """How to lay a model out on devices (what gin binds for the partitioner).

  Attributes:
    num_partitions: model-parallel ways (size of the `model` mesh axis).
    mesh_shape: explicit (data, model) shape instead of `num_partitions`.
    parameter_partitioning_dims: 1 (model parallel) or 2 (also FSDP over
      `data`).
    additional_rules: rules that take priority over the standard set.
  """
  num_partitions: int = 1
  mesh_shape: tuple[int, int] | None = None
  parameter_partitioning_dims: int = 1
  additional_rules: LogicalRules = ()

  def mesh(self, devices: Sequence[jax.Device] | None = None
           ) -> jax.sharding.Mesh:
    return create_mesh(self.num_partitions, self.mesh_shape, devices)

  def rules(self) -> LogicalRules:
    return logical_axis_rules(self.parameter_partitioning_dims,
                              tuple(map(tuple, self.additional_rules)))


@contextlib.contextmanager
def activate(mesh: jax.sharding.Mesh, rules: LogicalRules):
  """Mesh and rules in effect while model code is traced.

  The models constrain activations by logical name
  (`nn.with_logical_constraint`); those names resolve against this mesh and
  these rules.
  """
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield


def logical_shardings(logical_specs: Any, mesh: jax.sharding.Mesh,
                      rules: LogicalRules) -> Any:
  """NamedShardings for a tree of logical PartitionSpecs.

  `mesh` may be a `jax.sharding.AbstractMesh`, to size a layout for hardware
  that is not present.
  """
  return nn.logical_to_mesh_sharding(logical_specs, mesh, rules)


def params_shardings(boxed_params: Any, mesh: jax.sharding.Mesh,
                     rules: LogicalRules) -> Any:
  """Shardings of the unboxed parameter tree, from the boxed (abstract) one.

  `boxed_params` is what `model.init` (or `jax.eval_shape` of it) returns:
  leaves wrapped in `nn.LogicallyPartitioned`. Unannotated leaves replicate.
  """
  return logical_shardings(nn.get_partition_spec(boxed_params), mesh, rules)


def _drop_one_dim(spec: jax.sharding.PartitionSpec, full_shape: tuple,
                  shape: tuple) -> jax.sharding.PartitionSpec | None:
  """The spec of a leaf that is `full_shape` with one dimension removed.

  Factored second moments (Adafactor's row/column statistics) are the
  parameter's shape less one dimension; they keep the sharding of the
  dimensions they kept. For a square matrix either dimension matches: both
  choices are valid (same sizes), so the first is taken.
  """
  entries = tuple(spec) + (None,) * (len(full_shape) - len(spec))
  for i in range(len(full_shape)):
    if full_shape[:i] + full_shape[i + 1:] == shape:
      return jax.sharding.PartitionSpec(*(entries[:i] + entries[i + 1:]))
  return None


def optimizer_state_shardings(abstract_opt_state: Any, abstract_params: Any,
                              param_shardings: Any,
                              mesh: jax.sharding.Mesh) -> Any:
  """Shardings for an optax state, derived from the parameters' shardings.

  optax states hold trees that mirror the parameters (moments, factored
  statistics). A state leaf whose path ends with a parameter's path follows
  that parameter: the same spec for the same shape, the kept dimensions' spec
  for a factored statistic. Everything else (step counts, placeholders,
  hyperparameters) is small and replicated.
  """
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  params_by_path = {
      tuple(path): (leaf.shape, sharding.spec)
      for (path, leaf), sharding in zip(
          jax.tree_util.tree_flatten_with_path(abstract_params)[0],
          jax.tree_util.tree_leaves(param_shardings))
  }

  def sharding_of(path, leaf):
    shape = tuple(getattr(leaf, "shape", ()))
    for start in range(len(path)):  # Longest suffix first.
      match = params_by_path.get(tuple(path[start:]))
      if match is None:
        continue
      full_shape, spec = match
      if shape == tuple(full_shape):
        return jax.sharding.NamedSharding(mesh, spec)
      reduced = _drop_one_dim(spec, tuple(full_shape), shape)
      if reduced is not None:
        return jax.sharding.NamedSharding(mesh, reduced)
      return replicated
    return replicated

  return jax.tree_util.tree_map_with_path(sharding_of, abstract_opt_state)


def batch_sharding(mesh: jax.sharding.Mesh,
                   rules: LogicalRules) -> jax.sharding.NamedSharding:
  """Sharding of a [batch, length] input feature."""
  return logical_shardings(
      jax.sharding.PartitionSpec("batch", "length"), mesh, rules)


def _contiguous(index_rows: list[slice], global_batch_size: int) -> slice:
  starts, stops = [], []
  for rows in index_rows:
    start, stop, _ = rows.indices(global_batch_size)
    starts.append(start)
    stops.append(stop)
  block = slice(min(starts), max(stops))
  held = sum(stop - start for start, stop in set(zip(starts, stops)))
  if held != block.stop - block.start:
    raise ValueError("a process's devices hold non-contiguous batch rows; "
                     "order the mesh so each process owns a block of `data`")
  return block


def batch_rows_by_process(sharding: jax.sharding.Sharding,
                          global_batch_size: int) -> dict[int, slice]:
  """process index -> the contiguous rows of the global batch it holds
  (every process's, not only this one's: no communication needed)."""
  by_process: dict[int, list[slice]] = {}
  for device, index in sharding.devices_indices_map(
      (global_batch_size,)).items():
    by_process.setdefault(device.process_index, []).append(
        index[0] if index else slice(None))
  return {process: _contiguous(rows, global_batch_size)
          for process, rows in by_process.items()}


def process_batch_rows(sharding: jax.sharding.Sharding,
                       global_batch_size: int) -> slice:
  """The contiguous rows of the global batch this process's devices hold."""
  return batch_rows_by_process(sharding, global_batch_size)[
      jax.process_index()]


def global_batch_from_process_rows(
    process_rows: Mapping[str, np.ndarray], sharding: jax.sharding.Sharding,
    global_batch_size: int) -> dict[str, jax.Array]:
  """Global arrays of `global_batch_size` rows from the rows this process
  holds (`process_batch_rows`), through
  `jax.make_array_from_process_local_data`."""
  return {name: jax.make_array_from_process_local_data(
              sharding, np.asarray(value),
              (global_batch_size,) + np.shape(value)[1:])
          for name, value in process_rows.items()}


def make_global_batch(global_batch: Mapping[str, np.ndarray],
                      sharding: jax.sharding.Sharding) -> dict[str, jax.Array]:
  """Global arrays from a host batch that every process holds whole; each
  process contributes just the rows its devices hold."""
  global_batch = {name: np.asarray(v) for name, v in global_batch.items()}
  # Every feature of a batch has its rows: the block is computed once.
  num_rows = len(next(iter(global_batch.values())))
  rows = process_batch_rows(sharding, num_rows)
  return global_batch_from_process_rows(
      {name: value[rows] for name, value in global_batch.items()},
      sharding, num_rows)


_SLURM_VARIABLES = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS",
                    "SLURM_PROCID", "SLURM_LOCALID")


def platform_cluster() -> str | None:
  """The multi-process job the platform describes, if any: a SLURM job step
  of several tasks, an Open MPI launch, or a Cloud TPU VM (whose metadata
  names the pod's hosts). These are the environments
  `jax.distributed.initialize()` finds its coordinator, process count and
  index in without arguments."""
  env = os.environ
  if all(name in env for name in _SLURM_VARIABLES) and int(
      env["SLURM_NTASKS"]) > 1:
    return "SLURM"
  if "OMPI_MCA_orte_hnp_uri" in env:
    return "Open MPI"
  if "TPU_WORKER_HOSTNAMES" in env or glob.glob("/dev/accel[0-9]*") or (
      glob.glob("/dev/vfio/[0-9]*") and importlib.util.find_spec("libtpu")):
    return "Cloud TPU VM"
  return None


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None) -> None:
  """Joins this process to a multi-process run (`jax.distributed`).

  With a coordinator address, as given; without one, the job the platform
  describes (`platform_cluster`), with no arguments. CPU devices need gloo
  for cross-process collectives; the setting only concerns the CPU backend,
  so TPU and GPU runs are unaffected.
  """
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if coordinator_address is None:
    jax.distributed.initialize()
  else:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes,
                               process_id=process_id)
