"""Ahead-of-time compilation of the train step for a TPU topology, on this
CPU machine with libtpu (installed into .libtpu/ by scripts/setup_env.sh
--test from requirements-aot.txt).

Everything that loads libtpu runs in a subprocess (tests/aot_probe.py, the
library call; scripts/aot_compile.py, the tool), so the test session keeps
its 8 host CPU devices and no TPU plugin or environment.

The compiled configuration is the tiny ProtT5 of pods/prott5_tiny_v4-8.gin:
models/prott5_tiny.gin + runs/pretrain.gin (lengths 512 + 512), batch 16,
mesh data 2 x model 2 on a v4-8 slice (jax topology v4:2x2x1: 4 chips, one
device each).
"""

import json
import os
import pathlib
import re
import subprocess
import sys

import gin
import pytest

from prottrans_jax import gin_utils
from prottrans_jax.training import aot
from prottrans_jax.training import trainer

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "aot_compile.py"
PROBE = REPO / "tests" / "aot_probe.py"
POD = "pods/prott5_tiny_v4-8.gin"
GIB = 2**30
TIMEOUT = 900
# Shorter examples for the script runs: a quicker compile; the probe
# compiles the pod file as it is.
SHORT = "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 64}"


def _env():
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)  # the session's 8 host devices play no part
  return env


def _script(*args):
  return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO,
                        env=_env(), capture_output=True, text=True,
                        timeout=TIMEOUT, check=False)


@pytest.fixture(scope="module")
def probe():
  """The probe's JSON for the tiny pod file (one compile, in its process)."""
  result = subprocess.run([sys.executable, str(PROBE), POD], cwd=REPO,
                          env=_env(), capture_output=True, text=True,
                          timeout=TIMEOUT, check=False)
  assert result.returncode == 0, result.stderr[-5000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


def test_library_compile_sizes_the_tiny_step_on_v4_8(probe):
  assert probe["jax_topology"] == "v4:2x2x1"
  assert probe["num_devices"] == 4 and probe["device_kind"] == "TPU v4"
  assert probe["mesh_shape"] == {"data": 2, "model": 2}
  memory = probe["memory"]
  assert memory["argument_size_in_bytes"] > 0
  assert memory["temp_size_in_bytes"] > 0
  # The arguments are the sharded train state and batch: at least the
  # state's bytes by shapes and shardings (TPU tiling pads small arrays).
  assert memory["argument_size_in_bytes"] >= probe["state_bytes"] > 0
  # The state is donated: its outputs reuse the argument buffers.
  assert memory["alias_size_in_bytes"] > 0
  assert probe["total_bytes"] == (
      memory["argument_size_in_bytes"] + memory["output_size_in_bytes"]
      - memory["alias_size_in_bytes"] + memory["temp_size_in_bytes"]
      + memory["generated_code_size_in_bytes"])
  assert probe["hbm_bytes_per_device"] == 32 * GIB
  assert 0 < probe["total_bytes"] < 32 * GIB and probe["fits"]


def test_xla_flops_agree_with_the_model_formula(probe):
  """XLA counts every operation of the partitioned step on one device; the
  formula (families record's `training_flops`, the MFU numerator) counts
  matmuls only, 3x the forward pass. Every matmul is split over the mesh
  (`batch` on data; heads, mlp and vocab on model), so XLA's count is the
  formula's share plus work the formula leaves out: softmax over 512 keys,
  norms, the loss and Adafactor, large next to a d_model=64 model's
  matmuls (measured: 8.7% of them here, about 1% for ProtT5-XL). With
  dropout on XLA would also count the threefry hashing that draws the masks
  (2.7x the formula at 128 positions), which is why the pod file turns it
  off."""
  ratio = probe["xla_flops_per_device"] / probe["model_flops_per_device"]
  assert 1.0 <= ratio < 1.10, ratio


def test_a_scanned_microbatched_step_is_counted_whole(probe):
  """XLA's cost analysis counts a loop body once: the tiny step scanned over
  its 2 layers in 2 microbatches reads about a quarter of its unrolled
  FLOPs as compiled; counted from its 1- and 2-layers-per-iteration
  compiles it reads the unrolled step's (measured: within 0.1%; the
  optimizer update, counted once per microbatch, is the difference)."""
  unrolled = probe["xla_flops_per_device"]
  scanned = probe["scanned"]
  assert probe["cost_method"] == "as compiled"  # nothing loops: as it is
  assert scanned["xla_flops_as_compiled"] < 0.5 * unrolled
  assert scanned["cost_method"] == (
      "counted from the step compiled with 1 and 2 of the 2 layers per "
      "scanned loop iteration, x 2 microbatches")
  assert abs(scanned["xla_flops_per_device"] / unrolled - 1) < 0.01
  # The memory is the scanned step's own (its one compile as configured).
  assert 0 < scanned["total_bytes"] < 32 * GIB


def test_slice_names_map_to_the_devices_libtpu_describes(probe):
  slices = probe["slices"]
  # v3: one JAX device per TensorCore, two per chip; v3-1024 = 512 chips.
  assert slices["v3-8"] == {"devices": 8, "device_kind": "TPU v3", "chips": 4}
  assert slices["v3-1024"] == {"devices": 1024, "device_kind": "TPU v3",
                               "chips": 512}
  # v4 and v5p: one (megacore) device per chip; v4-128 = 64 chips.
  assert slices["v4-8"] == {"devices": 4, "device_kind": "TPU v4", "chips": 4}
  assert slices["v4-128"] == {"devices": 64, "device_kind": "TPU v4",
                              "chips": 64}
  assert slices["v4-256"]["devices"] == 128
  assert slices["v5p-8"] == {"devices": 4, "device_kind": "TPU v5", "chips": 4}
  assert slices["v5p-256"]["devices"] == 128


def test_a_mesh_that_does_not_cover_the_slice_is_an_error(probe):
  errors = probe["errors"]
  assert "num_partitions=3 does not divide the 4 devices" in (
      errors["not_dividing"])
  assert "lays over 2 of the 4 devices" in errors["fewer_devices"]


def test_script_prints_hbm_and_flops_and_exits_zero():
  result = _script(f"--gin_file={POD}", SHORT)
  assert result.returncode == 0, result.stderr[-5000:]
  out = result.stdout
  assert "TPU v4-8 (jax topology v4:2x2x1" in out
  # Under a GiB, the table is in MiB.
  assert re.search(r"total +[0-9.]+ MiB = [0-9.]+% of 32 GiB HBM", out), out
  assert "limit 90% of HBM: fits" in out
  assert re.search(r"XLA cost analysis +[0-9.e+]+", out), out
  assert re.search(r"model formula +[0-9.e+]+", out), out
  assert "estimated step time" in out and "estimated MFU" in out


def test_script_exits_nonzero_when_the_step_does_not_fit():
  """A 1 MiB budget: the tiny step (tens of MiB) overflows it."""
  result = _script(f"--gin_file={POD}", SHORT,
                   "--gin.aot.compile_train_step.hbm_gib_per_device=0.0009765625")
  assert result.returncode == 3, result.stderr[-5000:]
  assert re.search(r"DOES NOT FIT: [0-9.]+ MiB is at or above 0.900 MiB, "
                   r"over by [0-9.]+ MiB", result.stdout), result.stdout


def test_script_exits_nonzero_when_libtpu_cannot_place_the_step():
  """Batch 32768: the tiny step's activations alone are tens of GiB, past a
  v4 chip's 32 GiB; TPU compilation itself stops (RESOURCE_EXHAUSTED)."""
  result = _script(f"--gin_file={POD}", "--gin.BATCH_SIZE=32768")
  assert result.returncode == 3, result.stderr[-5000:]
  assert re.search(r"DOES NOT FIT: TPU v4-8 .*: libtpu could not fit the "
                   r"step in HBM: .*RESOURCE_EXHAUSTED", result.stdout), (
                       result.stdout)


def test_script_gin_typo_exits_nonzero_naming_the_binding():
  result = _script(f"--gin_file={POD}", "--gin.BATCH_SIZ=8")
  assert result.returncode != 0
  assert "BATCH_SIZ" in result.stderr


@pytest.mark.parametrize("args, message", [
    (["--gin.BATCH_SIZE=0"], "batch size (0) and num_microbatches (1) must be "
                            "positive"),
    (["--gin.NUM_MICROBATCHES=3"], "batch size 16 is not divisible by "
                                   "num_microbatches=3"),
    (["--gin_file=pods/no_such_pod.gin"], "Unable to open file: "
                                          "pods/no_such_pod.gin"),
    (["--json_output=/no/such/directory/report.json"],
     "--json_output: its directory does not exist"),
], ids=["empty batch", "microbatches", "missing file", "json directory"])
def test_script_bad_input_exits_nonzero_before_compiling(args, message):
  result = _script(f"--gin_file={POD}", *args)
  assert result.returncode == 1, result.stdout
  assert message in result.stderr, result.stderr[-3000:]


def _report(**changes):
  memory = {"argument_size_in_bytes": 4 * GIB, "output_size_in_bytes": 4 * GIB,
            "alias_size_in_bytes": 4 * GIB, "temp_size_in_bytes": 20 * GIB,
            "generated_code_size_in_bytes": GIB // 2,
            "host_temp_size_in_bytes": 0}
  fields = dict(
      topology=aot.parse_topology("v4-128"), device_kind="TPU v4",
      family="t5", parameters=2_820_000_000,
      mesh_shape={"data": 16, "model": 4}, parameter_partitioning_dims=2,
      batch_size=128, num_microbatches=1,
      task_feature_lengths={"inputs": 512, "targets": 512}, memory=memory,
      state_bytes=3 * GIB, hbm_bytes_per_device=32 * GIB, hbm_limit=0.9,
      xla_flops=1.1e14, xla_optimal_seconds=0.5, cost_method="as compiled",
      xla_flops_as_compiled=1.1e14,
      model_flops_per_device=1.0e14, peak_tflops_per_device=275.0,
      compile_seconds=60.0)
  fields.update(changes)
  return aot.Report(**fields)


def test_report_text():
  """24.5 GiB of 32: fits under 90%; MFU = 1e14 / 0.5 s / 275e12."""
  text = _report().text()
  assert "total              24.500 GiB = 76.6% of 32 GiB HBM" in text
  assert "limit 90% of HBM: fits" in text
  assert "XLA cost analysis     1.1e+14  (XLA / formula 1.100)" in text
  assert "estimated step time   0.5 s" in text
  assert "estimated MFU         72.7% of 275 TFLOP/s per TPU v4" in text
  # XLA's -1 (or any negative figure) is "not reported", not a number.
  text = _report(xla_flops=-1.0, xla_optimal_seconds=-1.0).text()
  assert "XLA cost analysis     not reported (-1)" in text
  assert "estimated step time   not reported (optimal_seconds -1)" in text
  assert "estimated MFU         not reported" in text
  # 29 GiB of 32 is 90.6%: at or above the limit.
  memory = dict(_report().memory, temp_size_in_bytes=24 * GIB + GIB // 2)
  over = _report(memory=memory)
  assert not over.fits
  assert ("DOES NOT FIT: 29.000 GiB is at or above 28.800 GiB, over by "
          "0.200 GiB") in over.text()


@pytest.mark.parametrize("name, message", [
    ("v9-8", "unknown TPU topology 'v9-8'"),
    ("tpu-128", "unknown TPU topology 'tpu-128'"),
    ("v4-100", "unknown TPU slice 'v4-100'; slices known: v3-8,"),
    ("v4-127", "unknown TPU slice 'v4-127'"),
    ("v4:2x2", "v4 slices have 3 dimensions of chips"),
])
def test_unknown_topology_is_an_error_naming_it(name, message):
  with pytest.raises(aot.AotError, match=re.escape(message)):
    aot.parse_topology(name)


@pytest.mark.parametrize("name, jax_name, chips, devices, hbm_gib", [
    ("v3-1024", "v3:16x32", 512, 1024, 16),
    ("v4-128", "v4:4x4x4", 64, 64, 32),
    ("v4-256", "v4:4x4x8", 128, 128, 32),
    ("v5p-256", "v5p:4x4x8", 128, 128, 95),
    ("v4:2x2x1", "v4:2x2x1", 4, 4, 32),
])
def test_topology_names(name, jax_name, chips, devices, hbm_gib):
  topology = aot.parse_topology(name)
  assert (topology.jax_name, topology.chips, topology.num_devices,
          topology.hbm_bytes_per_device) == (jax_name, chips, devices,
                                             hbm_gib * GIB)


def test_missing_libtpu_says_how_to_install_it(monkeypatch, tmp_path):
  """A libtpu directory named by the environment wins over any other libtpu
  (also an importable one), so naming an empty one is an error."""
  monkeypatch.delenv("TPU_LIBRARY_PATH", raising=False)
  monkeypatch.setenv(aot.LIBTPU_DIR_ENV, str(tmp_path))
  with pytest.raises(aot.AotError) as error:
    aot.libtpu_path()
  assert "libtpu (the TPU compiler) is not installed" in str(error.value)
  assert aot.LIBTPU_DIR_ENV in str(error.value)
  assert "scripts/setup_env.sh --aot" in str(error.value)
  assert str(tmp_path / "libtpu" / "libtpu.so") in str(error.value)


def test_tpu_library_path_that_names_no_file_is_an_error(monkeypatch, tmp_path):
  monkeypatch.setenv("TPU_LIBRARY_PATH", str(tmp_path / "libtpu.so"))
  with pytest.raises(aot.AotError, match="TPU_LIBRARY_PATH=.* is not a file"):
    aot.libtpu_path()


def test_no_topology_is_an_error():
  """A training configuration names no topology; the tool needs one. The
  run file's MODEL_DIR and TRAIN_STEPS, which the step never reads, are not
  demanded."""
  try:
    gin_utils.parse(["models/prott5_tiny.gin", "runs/pretrain.gin"], [],
                    unused_macros=aot.UNUSED_MACROS)
    assert gin.query_parameter("%MODEL_DIR") is None
    assert gin_utils.configured_arguments(aot.compile_train_step) == {}
    with pytest.raises(aot.AotError, match="no TPU topology"):
      aot.compile_train_step(
          train_arguments=gin_utils.configured_arguments(trainer.train))
  finally:
    gin.clear_config()
