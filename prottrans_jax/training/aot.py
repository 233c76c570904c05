"""Ahead-of-time compilation of the train step for a TPU pod slice, on a
machine without TPUs (MaxText's train_compile.py is the precedent).

libtpu, the TPU runtime and compiler from PyPI, describes the devices of a
slice that is not attached (`jax.experimental.topologies`). The train step
that `trainer.train` runs for a configuration (`trainer.build_train_step`,
the same builder) is laid over a mesh of those devices and compiled; XLA's
memory analysis then says whether it fits in HBM, and its cost analysis how
many FLOPs a step does, before a pod is rented.

Topology names (`parse_topology`): a Cloud TPU slice name counts TensorCores
(`v3-1024`, `v4-128`, `v5p-256`; two per chip on all three), or a jax
topology string counts chips (`v4:2x2x1`). JAX devices differ by generation:
a v3 chip is two devices (one per core, 16 GiB each); a v4 or v5p chip is one
device (both cores as one "megacore": 32 and 95 GiB).

libtpu is kept out of the runtime environment (with it installed, every JAX
start-up without JAX_PLATFORMS=cpu tries to start a TPU backend): it is pinned
in requirements-aot.txt and installed into `.libtpu/` by
`scripts/setup_env.sh --aot` (and `--test`), where `libtpu_path` finds it.
"""

import contextlib
import dataclasses
import importlib.util
import inspect
import math
import os
import pathlib
import re
import time
from typing import Any, Iterator, Mapping, Sequence

from absl import logging
import jax

from prottrans_jax import families
from prottrans_jax.training import mfu
from prottrans_jax.training import train_state as train_state_lib
from prottrans_jax.training import trainer

GIB = 2**30
# A configuration ships only if its step needs less than this share of HBM.
HBM_LIMIT = 0.9
LIBTPU_DIR_ENV = "PROTTRANS_JAX_LIBTPU_DIR"
# Where `scripts/setup_env.sh --aot` installs requirements-aot.txt.
DEFAULT_LIBTPU_DIR = pathlib.Path(__file__).resolve().parents[2] / ".libtpu"
INSTALL_HINT = (
    "install it with `bash scripts/setup_env.sh --aot` (pip installs the "
    "pinned requirements-aot.txt into .libtpu/), or `pip install --target DIR "
    f"-r requirements-aot.txt` and set {LIBTPU_DIR_ENV}=DIR")
# `trainer.train`'s arguments that its train step is built from.
STEP_ARGUMENTS = tuple(
    name for name in inspect.signature(trainer.build_train_step).parameters
    if name != "devices")
# Run-file macros the compiled step does not depend on, and the value each
# takes where a file leaves it %gin.REQUIRED rather than demanding it on the
# command line: there is no model directory, and the number of steps only
# sets constants of a learning-rate schedule (a linear decay needs one), not
# the program's shapes, memory or FLOPs.
UNUSED_MACROS = {"MODEL_DIR": "None", "TRAIN_STEPS": "1"}
# libtpu's start-up probes the host it runs on (GCE metadata, accelerator
# type, worker hostnames; errors on stderr where it finds none) and takes a
# lock (/tmp/libtpu_lockfile) that fails a second libtpu process. Nothing
# here runs on the host's TPUs, so neither is needed: the host is described
# as a v4-8 (which does not change the topology compiled for) and several
# compiles may run at once.
_LIBTPU_ENVIRONMENT = {
    "TPU_SKIP_MDS_QUERY": "1",
    "TPU_ACCELERATOR_TYPE": "v4-8",
    "TPU_WORKER_HOSTNAMES": "localhost",
    "ALLOW_MULTIPLE_LIBTPU_LOAD": "1",
}


class AotError(ValueError):
  """A configuration that cannot be compiled for its topology, or no libtpu."""


@dataclasses.dataclass(frozen=True)
class Generation:
  """A TPU generation as JAX sees it.

  Attributes:
    name: "v3", "v4", "v5p" (the prefix of slice names and jax topologies).
    chip_config_name: libtpu's chip configuration: "default" (one device per
      TensorCore) or "megacore" (one device per chip).
    devices_per_chip: JAX devices a chip appears as.
    hbm_gib_per_device: HBM of one JAX device.
    chip_shapes: chips in a slice -> the slice's shape in chips.
  """
  name: str
  chip_config_name: str
  devices_per_chip: int
  hbm_gib_per_device: float
  chip_shapes: Mapping[int, str]


_3D_SHAPES = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4",
              128: "4x4x8", 256: "4x8x8", 512: "8x8x8", 1024: "8x8x16",
              2048: "8x16x16"}
GENERATIONS = {
    # Two cores per chip, each its own JAX device with 16 GiB.
    "v3": Generation("v3", "default", 2, 16.0,
                     {4: "2x2", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16",
                      256: "16x16", 512: "16x32", 1024: "32x32"}),
    # Megacore: a chip (2 cores, 32 GiB) is one JAX device, as on a v4 VM.
    "v4": Generation("v4", "megacore", 1, 32.0, _3D_SHAPES),
    "v5p": Generation("v5p", "megacore", 1, 95.0,
                      {**_3D_SHAPES, 4096: "16x16x16"}),
}
_CORES_PER_CHIP = 2  # v3, v4, v5p


@dataclasses.dataclass(frozen=True)
class Topology:
  """A TPU slice: its name as given, generation and jax topology."""
  name: str
  generation: Generation
  shape: str  # in chips, e.g. "4x4x4"

  @property
  def jax_name(self) -> str:
    return f"{self.generation.name}:{self.shape}"

  @property
  def chips(self) -> int:
    return math.prod(int(n) for n in self.shape.split("x"))

  @property
  def num_devices(self) -> int:
    return self.chips * self.generation.devices_per_chip

  @property
  def hbm_bytes_per_device(self) -> int:
    return int(self.generation.hbm_gib_per_device * GIB)

  def describe(self) -> str:
    per = ("one per chip" if self.generation.devices_per_chip == 1
           else f"{self.generation.devices_per_chip} per chip")
    return (f"TPU {self.name} (jax topology {self.jax_name}, "
            f"{self.generation.chip_config_name}: {self.chips} chips, "
            f"{self.num_devices} devices, {per}, "
            f"{self.generation.hbm_gib_per_device:g} GiB HBM each)")


def _known_names() -> str:
  names = [f"{g.name}-{chips * _CORES_PER_CHIP}"
           for g in GENERATIONS.values() for chips in g.chip_shapes]
  return ", ".join(names)


def parse_topology(name: str) -> Topology:
  """A slice name (`v4-128`: TensorCores) or jax topology (`v4:4x4x4`)."""
  slice_name = re.fullmatch(r"(v\w+)-(\d+)", name)
  jax_name = re.fullmatch(r"(v\w+):(\d+(?:x\d+)+)", name)
  match = slice_name or jax_name
  generation = GENERATIONS.get(match.group(1)) if match else None
  if generation is None:
    raise AotError(
        f"unknown TPU topology {name!r}: give a slice name (TensorCores, as "
        "Cloud TPU names them: v3-1024, v4-128, v5p-256) or a jax topology "
        f"(chips: v4:2x2x1); generations known: {', '.join(GENERATIONS)}")
  if slice_name:
    cores = int(slice_name.group(2))
    shape = generation.chip_shapes.get(cores // _CORES_PER_CHIP)
    if shape is None or cores % _CORES_PER_CHIP:
      raise AotError(f"unknown TPU slice {name!r}; slices known: "
                     f"{_known_names()} (or give a jax topology such as "
                     f"{generation.name}:{generation.chip_shapes[4]})")
    return Topology(name, generation, shape)
  shape = jax_name.group(2)
  dims = 2 if generation.name == "v3" else 3
  if len(shape.split("x")) != dims:
    raise AotError(f"TPU topology {name!r}: {generation.name} slices have "
                   f"{dims} dimensions of chips, e.g. "
                   f"{generation.name}:{generation.chip_shapes[4]}")
  return Topology(name, generation, shape)


def libtpu_path() -> str:
  """libtpu.so: the file TPU_LIBRARY_PATH names, or the one in the directory
  PROTTRANS_JAX_LIBTPU_DIR names; with neither set, an importable `libtpu`
  or .libtpu/. A setting that names no libtpu is an error, not a reason to
  use another one."""
  from_env = os.environ.get("TPU_LIBRARY_PATH")
  if from_env:
    if os.path.isfile(from_env):
      return from_env
    raise AotError(f"TPU_LIBRARY_PATH={from_env} is not a file; "
                   f"{INSTALL_HINT}")
  named_dir = os.environ.get(LIBTPU_DIR_ENV)
  if named_dir:
    path = pathlib.Path(named_dir) / "libtpu" / "libtpu.so"
    if path.is_file():
      return str(path)
    raise AotError(f"libtpu (the TPU compiler) is not installed in "
                   f"{LIBTPU_DIR_ENV}={named_dir}: no {path}; {INSTALL_HINT}")
  spec = importlib.util.find_spec("libtpu")
  if spec is not None and spec.origin:
    path = os.path.join(os.path.dirname(spec.origin), "libtpu.so")
    if os.path.isfile(path):
      return path
  path = DEFAULT_LIBTPU_DIR / "libtpu" / "libtpu.so"
  if path.is_file():
    return str(path)
  raise AotError(
      "libtpu (the TPU compiler) is not installed: no TPU_LIBRARY_PATH, no "
      f"importable libtpu module, no {path}; {INSTALL_HINT}")


@contextlib.contextmanager
def _environment(defaults: Mapping[str, str],
                 overrides: Mapping[str, str]) -> Iterator[None]:
  """`defaults` (where unset) and `overrides` in os.environ for the block
  only, so that nothing leaks into the rest of the process."""
  saved = {name: os.environ.get(name) for name in {**defaults, **overrides}}
  for name, value in defaults.items():
    os.environ.setdefault(name, value)
  os.environ.update(overrides)
  try:
    yield
  finally:
    for name, value in saved.items():
      if value is None:
        os.environ.pop(name, None)
      else:
        os.environ[name] = value


def topology_devices(topology: Topology) -> list[jax.Device]:
  """The slice's devices, described by libtpu (compile-only: no hardware)."""
  path = libtpu_path()
  # Once libtpu is loaded, JAX would also try it as the default backend
  # (and find no TPU): keep the attached backend on CPU unless chosen.
  if jax.config.jax_platforms is None:
    jax.config.update("jax_platforms", "cpu")
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  with _environment(_LIBTPU_ENVIRONMENT, {"TPU_LIBRARY_PATH": path}):
    devices = topologies.get_topology_desc(
        topology_name=topology.jax_name, platform="tpu",
        chip_config_name=topology.generation.chip_config_name).devices
  if len(devices) != topology.num_devices:
    raise AotError(f"libtpu ({path}) describes {len(devices)} devices for "
                   f"{topology.jax_name}, expected {topology.num_devices}")
  return list(devices)


@dataclasses.dataclass(frozen=True)
class Report:
  """What compiling one train step for a topology found (per device)."""
  topology: Topology
  device_kind: str
  family: str
  parameters: int
  mesh_shape: Mapping[str, int]
  parameter_partitioning_dims: int
  batch_size: int
  num_microbatches: int
  task_feature_lengths: Mapping[str, int]
  memory: Mapping[str, int]  # CompiledMemoryStats fields, bytes per device
  state_bytes: int  # params + optimizer state per device, from shardings
  hbm_bytes_per_device: int
  hbm_limit: float
  # XLA's cost analysis of the whole step (None: absent; -1 or below: not
  # reported), counted as `cost_method` says (`_counted_cost`).
  xla_flops: float | None
  xla_optimal_seconds: float | None
  cost_method: str
  # XLA's FLOPs for the step as compiled (one layer and one microbatch where
  # those loop), before `_counted_cost`.
  xla_flops_as_compiled: float | None
  model_flops_per_device: float
  peak_tflops_per_device: float | None
  compile_seconds: float

  @property
  def total_bytes(self) -> int:
    """HBM the step needs per device: arguments, outputs not aliased to
    (donated) arguments, temporaries and the program itself."""
    m = self.memory
    return (m["argument_size_in_bytes"] + m["output_size_in_bytes"]
            - m["alias_size_in_bytes"] + m["temp_size_in_bytes"]
            + m["generated_code_size_in_bytes"])

  @property
  def hbm_fraction(self) -> float:
    return self.total_bytes / self.hbm_bytes_per_device

  @property
  def fits(self) -> bool:
    return self.hbm_fraction < self.hbm_limit

  @property
  def xla_flops_per_device(self) -> float | None:
    """XLA's FLOPs of the partitioned (per-device) step, if reported."""
    return _reported(self.xla_flops)

  @property
  def estimated_step_seconds(self) -> float | None:
    """XLA's `optimal_seconds`, if reported."""
    return _reported(self.xla_optimal_seconds)

  @property
  def estimated_mfu(self) -> float | None:
    """Model FLOPs over the estimated step time, against the device peak."""
    seconds = self.estimated_step_seconds
    if not seconds or not self.peak_tflops_per_device:
      return None
    return (self.model_flops_per_device / seconds
            / (self.peak_tflops_per_device * 1e12))

  def summary(self) -> dict[str, Any]:
    """The report's figures as JSON-able values (aot_compile --json_output)."""
    return {
        "family": self.family, "topology": self.topology.name,
        "jax_topology": self.topology.jax_name,
        "device_kind": self.device_kind, "parameters": self.parameters,
        "mesh_shape": dict(self.mesh_shape),
        "parameter_partitioning_dims": self.parameter_partitioning_dims,
        "batch_size": self.batch_size,
        "num_microbatches": self.num_microbatches,
        "task_feature_lengths": dict(self.task_feature_lengths),
        "memory": dict(self.memory), "state_bytes": self.state_bytes,
        "total_bytes": self.total_bytes,
        "hbm_bytes_per_device": self.hbm_bytes_per_device,
        "hbm_fraction": self.hbm_fraction, "fits": self.fits,
        "xla_flops_per_device": self.xla_flops_per_device,
        "model_flops_per_device": self.model_flops_per_device,
        "estimated_step_seconds": self.estimated_step_seconds,
        "estimated_mfu": self.estimated_mfu,
        "peak_tflops_per_device": self.peak_tflops_per_device,
        "cost_method": self.cost_method,
        "xla_flops_as_compiled": self.xla_flops_as_compiled,
        "compile_seconds": self.compile_seconds,
    }

  def text(self) -> str:
    """The printout of scripts/aot_compile.py."""
    m = self.memory
    limit_bytes = self.hbm_limit * self.hbm_bytes_per_device
    unit, name = (GIB, "GiB") if self.total_bytes >= GIB else (2**20, "MiB")

    def size(n, width=10):
      return f"{n / unit:{width}.3f} {name}"

    lengths = ", ".join(f"{k} {v}" for k, v in
                        self.task_feature_lengths.items())
    mesh = " x ".join(f"{k} {v}" for k, v in self.mesh_shape.items())
    params = (f"{self.parameters / 1e9:.3f}B" if self.parameters >= 1e8
              else f"{self.parameters / 1e6:.3f}M")
    lines = [
        f"{self.family} train step, {params} parameters, compiled ahead of "
        f"time in {self.compile_seconds:.0f} s for",
        f"  {self.topology.describe()}",
        f"  mesh {mesh} ({self.parameter_partitioning_dims}-D parameter "
        f"partitioning); batch {self.batch_size} in "
        f"{self.num_microbatches} microbatch(es); lengths {lengths}",
        "HBM per device (compiled.memory_analysis()):",
        f"  arguments      {size(m['argument_size_in_bytes'])}  (params + "
        f"optimizer state by shapes and shardings: "
        f"{size(self.state_bytes, 0)})",
        f"  outputs        {size(m['output_size_in_bytes'])}",
        f"  aliased        {size(-m['alias_size_in_bytes'])}  (outputs "
        "written into the donated state)",
        f"  temporaries    {size(m['temp_size_in_bytes'])}",
        f"  generated code {size(m['generated_code_size_in_bytes'])}",
        f"  total          {size(self.total_bytes)} = "
        f"{100 * self.hbm_fraction:.1f}% of "
        f"{self.hbm_bytes_per_device / GIB:g} GiB HBM",
    ]
    host = {k: v for k, v in m.items() if k.startswith("host_") and v}
    if host:
      lines.append("  host memory (not HBM): " + ", ".join(
          f"{k} {size(v, 0)}" for k, v in host.items()))
    lines.append(
        f"  limit {100 * self.hbm_limit:.0f}% of HBM: " +
        ("fits" if self.fits else
         f"DOES NOT FIT: {size(self.total_bytes, 0)} is at or above "
         f"{size(limit_bytes, 0)}, over by "
         f"{size(self.total_bytes - limit_bytes, 0)}"))
    xla, model = self.xla_flops_per_device, self.model_flops_per_device
    lines += [
        f"FLOPs per step per device (XLA's cost analysis {self.cost_method}):",
        "  XLA cost analysis     " + (
            f"{xla:.4g}  (XLA / formula {xla / model:.3f})" if xla
            else f"not reported ({_raw(self.xla_flops)})"),
        f"  model formula         {model:.4g}  (the family's training_flops "
        "x batch / devices: matmuls, 3x forward)",
    ]
    seconds, mfu_value = self.estimated_step_seconds, self.estimated_mfu
    lines.append("  estimated step time   " + (
        f"{seconds:.4g} s (XLA's optimal_seconds)" if seconds else
        f"not reported (optimal_seconds {_raw(self.xla_optimal_seconds)})"))
    lines.append("  estimated MFU         " + (
        f"{100 * mfu_value:.1f}% of {self.peak_tflops_per_device:g} TFLOP/s "
        f"per {self.device_kind} device at that step time"
        if mfu_value is not None else "not reported"))
    return "\n".join(lines)


def _reported(value: float | None) -> float | None:
  """A cost-analysis figure, None where XLA does not report it (-1)."""
  if value is None or value < 0:
    return None
  return value


def _raw(value: float | None) -> str:
  return "absent" if value is None else f"{value:.4g}"


def _float_or_none(value: Any) -> float | None:
  return None if value is None else float(value)


def _step_arguments(train_arguments: Mapping[str, Any]) -> dict[str, Any]:
  """`train`'s arguments for the step, its defaults filling what is unset."""
  signature = inspect.signature(trainer.train)
  unknown = set(train_arguments) - set(signature.parameters)
  if unknown:
    raise AotError(f"trainer.train has no argument(s) {sorted(unknown)}")
  arguments = {}
  for name in STEP_ARGUMENTS:
    if name in train_arguments:
      arguments[name] = train_arguments[name]
    elif signature.parameters[name].default is not inspect.Parameter.empty:
      arguments[name] = signature.parameters[name].default
    else:
      raise AotError(f"trainer.train.{name} is not configured: the gin "
                     "files must bind it, as for training")
  return arguments


class DoesNotFit(AotError):
  """libtpu refused to compile the step: its buffers exceed the chip's HBM."""


@dataclasses.dataclass(frozen=True)
class _Compiled:
  memory: Mapping[str, int]
  flops: float | None
  optimal_seconds: float | None
  seconds: float


def _compile(step: trainer.TrainStep, target: Topology) -> _Compiled:
  """Compiles `step`; its memory and cost analyses as reported."""
  logging.info("compiling the train step for %s, mesh %s", target.jax_name,
               dict(step.mesh.shape))
  start = time.perf_counter()
  try:
    compiled = step.lower().compile()
  except jax.errors.JaxRuntimeError as e:
    # TPU compilation assigns HBM and stops where it runs out.
    if "RESOURCE_EXHAUSTED" in str(e):
      raise DoesNotFit(f"{target.describe()}: libtpu could not fit the step "
                       f"in HBM: {str(e).splitlines()[0]}") from e
    raise
  seconds = time.perf_counter() - start
  stats = compiled.memory_analysis()
  if stats is None:
    raise AotError(f"libtpu reported no memory analysis for {target.jax_name}")
  cost = compiled.cost_analysis() or {}
  if isinstance(cost, (list, tuple)):  # older jax: one dict per program
    cost = cost[0] if cost else {}
  return _Compiled(
      memory={f: int(getattr(stats, f)) for f in dir(stats)
              if f.endswith("_in_bytes")},
      flops=_float_or_none(cost.get("flops")),
      optimal_seconds=_float_or_none(cost.get("optimal_seconds")),
      seconds=seconds)


def _layer_loop_trips(config: Any) -> int | None:
  """Iterations of the scanned layer loops, if all the same (else None).

  T5's two stacks loop as often (24 and 24 at every ProtT5 size); a family
  whose stacks differ, or that shares weight sets (ALBERT's inner loop per
  set), is not counted by `_counted_cost`'s extrapolation."""
  trips = set(families.of(config).scanned_stacks(config).values())
  if len(trips) != 1:
    return None
  (count,) = trips
  if getattr(config, "num_hidden_layers", count) != count:
    return None
  return count


def _counted_cost(arguments: Mapping[str, Any], devices: Sequence[jax.Device],
                  target: Topology, compiled: _Compiled
                  ) -> tuple[float | None, float | None, str]:
  """XLA's FLOPs and optimal seconds for the whole step; how they were got.

  XLA's cost analysis counts a loop body once, whatever its trip count. A
  scanned step loops over layers (and over microbatches), so its figures
  are those of one layer and one microbatch. The step is compiled again for
  one microbatch (batch / k, where k > 1) with the layer loops unrolled 1
  and 2 layers per iteration: one layer costs c2 - c1, and the step
  k * (c1 + (L - 1) * (c2 - c1)) for L layers per stack. That counts the
  optimizer update k times (negligible next to k microbatches' forward and
  backward passes at these sizes).
  """
  config = arguments["model_config"]
  k = arguments["num_microbatches"]
  trips = _layer_loop_trips(config)
  if trips is None and k == 1:
    return compiled.flops, compiled.optimal_seconds, "as compiled"
  if trips is None:
    return None, None, ("not counted: a microbatch loop around layer loops "
                        "this count does not model")
  one_microbatch = dict(arguments, batch_size=arguments["batch_size"] // k,
                        num_microbatches=1)
  costs = {}
  for unroll in (1, 2):
    if unroll == 1 and k == 1:
      costs[unroll] = compiled
      continue
    variant = dict(one_microbatch, model_config=config.with_layer_options(
        scan_unroll=unroll))
    costs[unroll] = _compile(
        trainer.build_train_step(**variant, devices=devices), target)

  def extrapolate(c1, c2):
    if _reported(c1) is None or _reported(c2) is None:
      # Not reported for these programs: pass on what XLA gave (None or
      # negative), which the printout shows.
      return c1 if _reported(c1) is None else c2
    if c2 <= c1:
      return -1.0  # a second layer that costs nothing: nothing to count
    return k * (c1 + (trips - 1) * (c2 - c1))

  method = (f"counted from the step compiled with 1 and 2 of the {trips} "
            "layers per scanned loop iteration" +
            (f", x {k} microbatches" if k > 1 else ""))
  return (extrapolate(costs[1].flops, costs[2].flops),
          extrapolate(costs[1].optimal_seconds, costs[2].optimal_seconds),
          method)


def compile_train_step(*, topology: str | None = None,
                       train_arguments: Mapping[str, Any],
                       hbm_gib_per_device: float | None = None,
                       hbm_limit: float = HBM_LIMIT,
                       count_loops: bool = True) -> Report:
  """Compiles `trainer.train`'s step for `topology`; sizes and FLOPs.

  Args:
    topology: slice name or jax topology (`parse_topology`).
    train_arguments: keyword arguments of `trainer.train` (what gin binds to
      it); the step is built from those it depends on, `train`'s defaults
      filling the rest.
    hbm_gib_per_device: HBM budget per device instead of the chip's.
    hbm_limit: the share of HBM under which the step fits.
    count_loops: for a scanned or microbatched step, compile it again to
      count every layer and microbatch in the FLOPs and step time
      (`_counted_cost`); else report XLA's figures as they come.

  Raises:
    DoesNotFit: libtpu found no way to place the step in HBM.
    AotError: unknown topology, libtpu not installed, a mesh that does not
      lay over every device of the topology, a batch it cannot shard.
  """
  if not topology:
    raise AotError("no TPU topology: bind aot.compile_train_step.topology in "
                   "the pod gin file (or pass --topology)")
  target = parse_topology(topology)
  arguments = _step_arguments(train_arguments)
  devices = topology_devices(target)
  try:
    step = trainer.build_train_step(**arguments, devices=devices)
  except ValueError as e:
    raise AotError(f"{target.describe()}: {e}") from e
  mesh_shape = dict(step.mesh.shape)
  if step.mesh.devices.size != len(devices):
    raise AotError(
        f"the mesh {mesh_shape} lays over {step.mesh.devices.size} of the "
        f"{len(devices)} devices of {target.describe()}: a pod run uses "
        "every device; set partitioning.PartitionConfig.mesh_shape (or "
        "NUM_PARTITIONS) to cover them all")
  compiled = _compile(step, target)
  if count_loops:
    flops, optimal_seconds, cost_method = _counted_cost(
        arguments, devices, target, compiled)
  else:
    flops, optimal_seconds, cost_method = (
        compiled.flops, compiled.optimal_seconds, "as compiled")
  config = arguments["model_config"]
  model_flops = (step.family.training_flops(config, step.trained_lengths)
                 * arguments["batch_size"] / len(devices))
  hbm = (target.hbm_bytes_per_device if hbm_gib_per_device is None
         else int(hbm_gib_per_device * GIB))
  return Report(
      topology=target, device_kind=devices[0].device_kind,
      family=step.family.name,
      parameters=sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(
          step.layout.abstract_state.params)),
      mesh_shape=mesh_shape,
      parameter_partitioning_dims=arguments["partition"]
      .parameter_partitioning_dims,
      batch_size=arguments["batch_size"],
      num_microbatches=arguments["num_microbatches"],
      task_feature_lengths=dict(arguments["task_feature_lengths"]),
      memory=compiled.memory,
      state_bytes=sum(train_state_lib.state_bytes_per_device(
          step.layout).values()),
      hbm_bytes_per_device=hbm, hbm_limit=hbm_limit,
      xla_flops=flops, xla_optimal_seconds=optimal_seconds,
      cost_method=cost_method, xla_flops_as_compiled=compiled.flops,
      model_flops_per_device=model_flops,
      peak_tflops_per_device=mfu.published_peak_tflops(devices[0].device_kind),
      compile_seconds=compiled.seconds)
