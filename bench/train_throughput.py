"""Training throughput on this machine, and what the pod files need on TPUs.

  python bench/train_throughput.py                 # both parts (about 1 h)
  python bench/train_throughput.py --noshow_pods   # this machine only
  python bench/train_throughput.py --nomeasure_cpu \
      --pods=pods/prott5_xl_v3-1024.gin           # some pod files only

1. This machine: the peak of a dense float32 matmul on one device, then the
   tiny and the ~100M-parameter T5 trained for a few steps on one device:
   tokens/s, TFLOP/s and MFU against that measured peak.
2. Every `gin/pods/` file (needs libtpu: `scripts/setup_env.sh --aot`):
   `scripts/aot_compile.py` compiles its train step for its TPU topology,
   and its printout is shown (per-device HBM, XLA's FLOPs, estimated step
   time and MFU). The step's model FLOPs are then counted a second way:
   XLA's cost analysis of the same model compiled without rematerialisation
   (which adds a recomputed forward pass to the hardware's FLOPs) and with
   1-D partitioning (XLA's count falls short under 2-D FSDP, README) at one
   sequence per data shard, against the family's formula. A table closes.
"""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
from typing import Any, Mapping, Sequence

from absl import app
from absl import flags
import jax
import numpy as np

from prottrans_jax import families
from prottrans_jax import gin_utils
from prottrans_jax import partitioning
from prottrans_jax.models import t5
from prottrans_jax.training import mfu
from prottrans_jax.training import objectives
from prottrans_jax.training import optimizers
from prottrans_jax.training import steps
from prottrans_jax.training import train_state as train_state_lib
from prottrans_jax.training import trainer

import _machine

GIB = 2**30
REPO = pathlib.Path(__file__).resolve().parents[1]
AOT_COMPILE = REPO / "scripts" / "aot_compile.py"
# XLA's count and the formula agree within this share (the acceptance line).
FLOPS_AGREEMENT = 0.10
THROUGHPUT_RUNS = (  # (config, batch size, length of inputs and targets)
    ("tiny", 32, 128),
    ("base100m", 4, 128),
)
TIMED_STEPS = 3

_MEASURE_CPU = flags.DEFINE_bool(
    "measure_cpu", True, "part 1: train the tiny and base100m T5 here.")
_SHOW_PODS = flags.DEFINE_bool(
    "show_pods", True, "part 2: compile the pod files for their TPUs.")
_PODS = flags.DEFINE_multi_string(
    "pods", [], "pod files (relative to prottrans_jax/gin/) to compile; "
    "default every pods/*.gin.")


def _synthetic_batch(batch_size, length, vocab_size, seed=0):
  rng = np.random.default_rng(seed)
  targets = rng.integers(3, 28, (batch_size, length), dtype=np.int32)
  inputs = np.where(rng.random(targets.shape) < 0.15, vocab_size - 1, targets)
  return {
      "encoder_input_tokens": inputs.astype(np.int32),
      "decoder_target_tokens": targets,
      "decoder_input_tokens": np.pad(targets[:, :-1], ((0, 0), (1, 0))),
      "decoder_loss_weights": np.ones_like(targets),
  }


def throughput(name, batch_size, length, peak):
  config = dataclasses.replace(t5.T5_CONFIGS[name], dtype="float32")
  partition = partitioning.PartitionConfig(mesh_shape=(1, 1))
  mesh, rules = partition.mesh(), partition.rules()
  model, tx = t5.T5(config), optimizers.adafactor()
  init = trainer.init_fn(families.get("t5"), model)
  with partitioning.activate(mesh, rules):
    layout = train_state_lib.state_layout(init, tx, mesh, rules)
    state = train_state_lib.init_state(init, tx, layout, jax.random.key(0))
    sharding = partitioning.batch_sharding(mesh, rules)
    step = steps.make_train_step(
        model=model, objective=objectives.ENCODER_DECODER, tx=tx, schedule=optimizers.inverse_sqrt_schedule(),
        loss_config=steps.LossConfig(), dropout_seed=0, num_microbatches=1,
        layout=layout, batch_sharding=sharding)
    batch = partitioning.make_global_batch(
        _synthetic_batch(batch_size, length, config.vocab_size), sharding)
    state, metrics = step(state, batch)  # compile
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(TIMED_STEPS):
      state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    seconds = (time.perf_counter() - start) / TIMED_STEPS
  params = sum(x.size for x in jax.tree_util.tree_leaves(state.params))
  tokens = batch_size * 2 * length
  tflops = t5.flops_per_token(config, length, length) * tokens / seconds / 1e12
  print(f"{name:9s} params {params / 1e6:7.1f}M  batch {batch_size}x"
        f"({length}+{length})  {tokens / seconds:9.0f} tokens/s  "
        f"{tflops:7.4f} TFLOP/s  MFU {100 * tflops / peak:5.1f}%")


def _aot_compile(pod: str, bindings: Sequence[str], json_path: pathlib.Path
                 ) -> tuple[dict[str, Any], str]:
  """scripts/aot_compile.py on `pod` (its own process: libtpu is loaded
  there only); its figures and its printout."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  result = subprocess.run(
      [sys.executable, str(AOT_COMPILE), f"--gin_file={pod}",
       f"--json_output={json_path}", *(f"--gin.{b}" for b in bindings)],
      cwd=REPO, env=env, capture_output=True, text=True, check=False)
  if result.returncode not in (0, 3):
    raise RuntimeError(f"aot_compile.py {pod} {' '.join(bindings)} failed "
                       f"({result.returncode}):\n{result.stderr[-3000:]}")
  return json.loads(json_path.read_text()), result.stdout


def _model_flops_bindings(figures: Mapping[str, Any]) -> list[str]:
  """The pod's step without remat, 1-D, one sequence per data shard: what
  XLA counts then is the model's FLOPs (plus softmax, norms, the loss, the
  optimizer and the dropout masks: about 1% at these widths)."""
  config_class = families.get(figures["family"]).config_class
  name = f"{config_class.__module__}.{config_class.__qualname__}"
  return [f"{name}.remat_policy = 'none'",
          "prottrans_jax.partitioning.PartitionConfig."
          "parameter_partitioning_dims = 1",
          f"BATCH_SIZE = {figures['mesh_shape']['data']}",
          "NUM_MICROBATCHES = 1"]


def _percent(value: float | None) -> str:
  return "not reported" if value is None else f"{100 * value:.1f}%"


def pod_figures(pod: str, workdir: pathlib.Path) -> dict[str, Any]:
  """Compiles `pod` and its model-FLOPs variant; prints the printout."""
  print(f"\n$ python scripts/aot_compile.py --gin_file={pod}", flush=True)
  figures, printout = _aot_compile(pod, [], workdir / "pod.json")
  print(printout, end="", flush=True)
  if not figures["fits"] or figures.get("does_not_fit"):
    return {"pod": pod, **figures}
  bindings = _model_flops_bindings(figures)
  check, _ = _aot_compile(pod, bindings, workdir / "model_flops.json")
  ratio = None
  if check.get("xla_flops_per_device"):
    ratio = check["xla_flops_per_device"] / check["model_flops_per_device"]
  print(f"model FLOPs check ({', '.join(bindings)}): XLA "
        f"{check.get('xla_flops_per_device') or 0:.4g} / formula "
        f"{check.get('model_flops_per_device') or 0:.4g} per device = "
        f"{ratio if ratio is not None else float('nan'):.3f}", flush=True)
  return {"pod": pod, **figures, "xla_model_flops_ratio": ratio}


def print_pod_table(rows: Sequence[Mapping[str, Any]]) -> None:
  print("\npod file | HBM per device | XLA step time | MFU | model FLOPs "
        "per device: formula | XLA / formula (no remat, 1-D)")
  for row in rows:
    if row.get("does_not_fit"):
      print(f"{row['pod']} | DOES NOT FIT: {row['does_not_fit']}")
      continue
    seconds = row["estimated_step_seconds"]
    ratio = row.get("xla_model_flops_ratio")
    agreement = ("not compared" if ratio is None else
                 f"{ratio:.3f} ({'within' if abs(ratio - 1) < FLOPS_AGREEMENT else 'NOT within'} "
                 f"{100 * FLOPS_AGREEMENT:.0f}%)")
    print(f"{row['pod']} | {row['total_bytes'] / GIB:.2f} GiB = "
          f"{100 * row['hbm_fraction']:.1f}% of "
          f"{row['hbm_bytes_per_device'] / GIB:g} GiB | "
          f"{'not reported' if seconds is None else f'{seconds:.3f} s'} | "
          f"{_percent(row['estimated_mfu'])} | "
          f"{row['model_flops_per_device']:.4g} | {agreement}")


def main(argv):
  del argv
  if _MEASURE_CPU.value:
    peak = mfu.measure_matmul_tflops(size=2048)
    device = jax.local_devices()[0]
    print(f"machine: {_machine.describe()}; "
          f"device {device.device_kind} ({jax.device_count()} devices); "
          f"measured dense float32 matmul peak {peak:.4f} TFLOP/s")
    for name, batch_size, length in THROUGHPUT_RUNS:
      throughput(name, batch_size, length, peak)
  if not _SHOW_PODS.value:
    return
  pods = _PODS.value or sorted(
      p.relative_to(gin_utils.GIN_DIR).as_posix()
      for p in (gin_utils.GIN_DIR / "pods").glob("*.gin"))
  missing = [pod for pod in pods if not (gin_utils.GIN_DIR / pod).is_file()]
  if missing:
    raise app.UsageError(f"--pods: no such file under {gin_utils.GIN_DIR}: "
                         f"{', '.join(missing)}")
  rows = []
  with tempfile.TemporaryDirectory() as workdir:
    for pod in pods:
      rows.append(pod_figures(pod, pathlib.Path(workdir)))
  print_pod_table(rows)


if __name__ == "__main__":
  app.run(main)
