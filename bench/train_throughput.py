"""Training throughput on this machine, and whether ProtT5-XL/XXL fit on TPUs.

  python bench/train_throughput.py

1. Measures the peak of a dense float32 matmul on one device, then trains
   the tiny and the ~100M-parameter T5 for a few steps on one device and
   prints tokens/s, TFLOP/s and MFU against that measured peak.
2. From `jax.eval_shape` and shardings over an abstract mesh alone (nothing
   allocated), prints the per-device bytes of parameters + Adafactor state of
   ProtT5-XL and ProtT5-XXL on TPU v3-1024 (the paper's pod) and v4-128
   (64 chips), and whether they fit in HBM.
"""

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from prottrans_jax import families
from prottrans_jax import partitioning
from prottrans_jax.models import t5
from prottrans_jax.training import mfu
from prottrans_jax.training import objectives
from prottrans_jax.training import optimizers
from prottrans_jax.training import steps
from prottrans_jax.training import train_state as train_state_lib
from prottrans_jax.training import trainer

GIB = 2**30
# (name, model, (data, model) mesh, parameter_partitioning_dims, HBM bytes
# per JAX device). A v3 device is one core (16 GiB); a v4 device is a chip
# (32 GiB); v4-128 is 64 chips.
TPU_LAYOUTS = (
    ("TPU v3-1024", "prott5_xl", (128, 8), 1, 16 * GIB),
    ("TPU v3-1024", "prott5_xxl", (64, 16), 1, 16 * GIB),
    ("TPU v4-128", "prott5_xl", (16, 4), 2, 32 * GIB),
    ("TPU v4-128", "prott5_xxl", (16, 4), 2, 32 * GIB),
)
THROUGHPUT_RUNS = (  # (config, batch size, length of inputs and targets)
    ("tiny", 32, 128),
    ("base100m", 4, 128),
)
TIMED_STEPS = 3


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


def tpu_memory(pod, name, mesh_shape, dims, hbm):
  config = t5.T5_CONFIGS[name]
  mesh = jax.sharding.AbstractMesh(mesh_shape, partitioning.MESH_AXES)
  rules = partitioning.logical_axis_rules(dims)
  init = trainer.init_fn(families.get("t5"), t5.T5(config))
  layout = train_state_lib.state_layout(init, optimizers.adafactor(), mesh,
                                        rules)
  sizes = train_state_lib.state_bytes_per_device(layout)
  total = sizes["params"] + sizes["opt_state"]
  params = sum(x.size for x in jax.tree_util.tree_leaves(
      layout.abstract_state.params))
  print(f"{pod:12s} {name:10s} {params / 1e9:5.2f}B params  mesh data "
        f"{mesh_shape[0]:3d} x model {mesh_shape[1]:2d} ({dims}-D)  "
        f"params {sizes['params'] / GIB:5.2f} GiB + Adafactor "
        f"{sizes['opt_state'] / 2**20:5.1f} MiB = {total / GIB:5.2f} GiB of "
        f"{hbm / GIB:.0f} GiB per device: "
        f"{'fits' if total < hbm else 'DOES NOT FIT'} "
        f"({hbm / total:.1f}x headroom for activations)")


def main():
  peak = mfu.measure_matmul_tflops(size=2048)
  device = jax.local_devices()[0]
  print(f"device: {device.device_kind} ({jax.device_count()} devices); "
        f"measured dense float32 matmul peak {peak:.4f} TFLOP/s")
  for name, batch_size, length in THROUGHPUT_RUNS:
    throughput(name, batch_size, length, peak)
  print("parameters + Adafactor state per device (float32 params):")
  for layout in TPU_LAYOUTS:
    tpu_memory(*layout)


if __name__ == "__main__":
  main()
