r"""Fine-tuning figures (issue 19): throughput of LoRA vs full fine-tuning,
and CB513 -> TS115 Q3 of LoRA, full fine-tuning and the frozen-embedding CNN.

  python bench/finetune.py --part throughput   # tiny and ProtT5-XL width
  python bench/finetune.py --part q3 --pretrain_steps 300 --finetune_steps 300

throughput: one fine-tuning train step (training/finetune.py, the step
prottrans-finetune runs) on one device, timed after compilation, for the
tiny ProtT5 encoder and an encoder of ProtT5-XL's width (d_model 1024,
d_ff 16384, 32 heads of 128; `--xl_layers` layers, 24 in the real one):
tokens/s and MFU against the measured matmul peak. MFU counts the model
FLOPs of full fine-tuning (3 x the encoder's forward pass) for both, so the
two MFU figures compare the same work; LoRA skips the frozen weights'
gradients (about a third of it).

q3: a tiny ProtT5 pre-trained here on the bundled Swiss-Prot sample
(`--pretrain_steps`, trainer.train), then three runs on the same CB513
proteins with the same steps, batch and learning rate, scored on TS115:
LoRA (rank 4 on q/k/v/o, layer norms), full fine-tuning, and the frozen
encoder with the same CNN head trained on its embeddings. Without
NetSurfP-2.0's training set in ../shared/data, CB513 stands in for it (the
two sets are disjoint).
"""

import os
import tempfile
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from prottrans_jax import partitioning
from prottrans_jax.downstream import finetune
from prottrans_jax.downstream import models as heads
from prottrans_jax.downstream import readers
from prottrans_jax.models import lora
from prottrans_jax.models import t5
from prottrans_jax.training import finetune as finetune_training
from prottrans_jax.training import mfu
from prottrans_jax.training import optimizers

import _machine  # bench/: the machine line

_PART = flags.DEFINE_enum("part", "throughput", ["throughput", "q3"],
                          "Which figures.")
_XL_LAYERS = flags.DEFINE_integer("xl_layers", 2, "Layers of the "
                                  "ProtT5-XL-width encoder.")
_LENGTH = flags.DEFINE_integer("length", 128, "Tokens per protein.")
_BATCH = flags.DEFINE_integer("batch", 4, "Proteins per step.")
_STEPS = flags.DEFINE_integer("steps", 3, "Timed steps.")
_PRETRAIN_STEPS = flags.DEFINE_integer("pretrain_steps", 300,
                                       "q3: pre-training steps of the tiny "
                                       "ProtT5.")
_FINETUNE_STEPS = flags.DEFINE_integer("finetune_steps", 300,
                                       "q3: steps of each fine-tuning run.")
_TRAIN_PROTEINS = flags.DEFINE_integer("train_proteins", 511,
                                       "q3: CB513 proteins trained on.")
_TEST_PROTEINS = flags.DEFINE_integer("test_proteins", 115,
                                      "q3: TS115 proteins scored.")
_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                     "secondary_structure")

XL_WIDTH = dict(d_model=1024, d_kv=128, num_heads=32, d_ff=16384)


def _config(encoder, lora_config, freeze_encoder=False):
  return finetune.FinetuneConfig(
      "t5", encoder, heads.HeadConfig("ss_cnn", encoder.d_model), lora_config,
      freeze_encoder)


def _throughput(name, encoder, lora_config, peak):
  model = finetune.FinetuneModel(_config(encoder, lora_config))
  tx = optimizers.adamw()
  mesh = partitioning.PartitionConfig(mesh_shape=(1, 1)).mesh(
      jax.devices()[:1])
  rules = partitioning.logical_axis_rules()
  with partitioning.activate(mesh, rules):
    layout = finetune_training.plan(model, tx, mesh, rules)
    params = jax.jit(lambda k: finetune_training._unbox(model.init(k)),  # pylint: disable=protected-access
                     out_shardings=layout.shardings.params)(jax.random.key(0))
    state = jax.jit(lambda p: finetune_training.TrainState(
        step=jnp.int32(0), params=p,
        opt_state=tx.init(lora.split(p, layout.mask)[0])),
                    out_shardings=layout.shardings)(params)
    step = finetune_training.make_step(
        model, layout, tx, optimizers.constant_schedule(1e-4), 0, mesh)
    rng = np.random.default_rng(0)
    batch = {"tokens": rng.integers(3, 25, (_BATCH.value, _LENGTH.value)).astype(np.int32),
             "mask": np.ones((_BATCH.value, _LENGTH.value), np.int32),
             "q3": rng.integers(0, 3, (_BATCH.value, _LENGTH.value)).astype(np.int32),
             "q8": rng.integers(0, 8, (_BATCH.value, _LENGTH.value)).astype(np.int32)}
    batch = finetune_training._put(batch, mesh, rules)  # pylint: disable=protected-access
    compile_start = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    compiled = time.perf_counter() - compile_start
    start = time.perf_counter()
    for _ in range(_STEPS.value):
      state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    seconds = (time.perf_counter() - start) / _STEPS.value
  tokens = _BATCH.value * _LENGTH.value
  flops = 3 * t5.encoder_forward_flops(encoder, _LENGTH.value) * _BATCH.value
  print(f"{name:28s} {'LoRA' if lora_config else 'full':5s} "
        f"trainable {layout.num_trainable:>12,d} of {layout.num_params:>12,d}  "
        f"{seconds * 1e3:9.1f} ms/step  {tokens / seconds:9.1f} tokens/s  "
        f"MFU {100 * flops / seconds / 1e12 / peak:5.2f}%  "
        f"(first step {compiled:.1f} s)")
  return seconds


def throughput():
  peak = mfu.peak_tflops_per_device()
  print(f"machine: {_machine.describe(('avx2', 'avx512f', 'amx_tile'))}; jax "
        f"{jax.__version__}; measured float32 matmul peak {peak:.3f} TFLOP/s")
  print(f"batch {_BATCH.value} x {_LENGTH.value} tokens, AdamW, one device, "
        f"float32; mean of {_STEPS.value} steps after the first")
  tiny = t5.T5_CONFIGS["tiny"].with_dtype("float32")
  xl = t5.T5Config(**{**tiny.to_dict(), **XL_WIDTH,
                      "num_encoder_layers": _XL_LAYERS.value,
                      "num_decoder_layers": 1})
  for name, encoder in (("tiny ProtT5 encoder", tiny),
                        (f"ProtT5-XL width, {_XL_LAYERS.value} layers", xl)):
    full = _throughput(name, encoder, None, peak)
    low_rank = _throughput(name, encoder, lora.LoraConfig(), peak)
    print(f"{'':28s} LoRA step time / full: {low_rank / full:.2f}")


def _pretrain(model_dir):
  """A tiny ProtT5 pre-trained on the bundled sample (trainer.train)."""
  from prottrans_jax.training import steps  # pylint: disable=g-import-not-at-top
  from prottrans_jax.training import trainer  # pylint: disable=g-import-not-at-top
  import prottrans_jax.tasks  # pylint: disable=g-import-not-at-top,unused-import
  config = t5.T5_CONFIGS["tiny"].with_dtype("float32")
  trainer.train(
      model_dir=model_dir, model_config=config,
      task_name="swissprot_sample_prott5_denoise",
      task_feature_lengths={"inputs": 128, "targets": 128}, batch_size=16,
      train_steps=_PRETRAIN_STEPS.value,
      learning_rate=optimizers.constant_schedule(3e-3),
      optimizer=optimizers.adafactor(), loss=steps.LossConfig(),
      checkpoint_period=_PRETRAIN_STEPS.value, log_period=100)
  return config


def q3():
  work = tempfile.mkdtemp(prefix="finetune_bench_")
  start = time.perf_counter()
  encoder = _pretrain(os.path.join(work, "pretrained"))
  print(f"pre-trained a tiny ProtT5 for {_PRETRAIN_STEPS.value} steps in "
        f"{time.perf_counter() - start:.0f} s")
  cb513 = readers.read_labels(os.path.join(_DATA, "CB513_HHblits.csv"),
                              "netsurfp", limit=_TRAIN_PROTEINS.value)
  ts115 = readers.read_labels(os.path.join(_DATA, "TS115_HHblits.csv"),
                              "netsurfp", limit=_TEST_PROTEINS.value)
  for name, lora_config, frozen in (
      ("LoRA", lora.LoraConfig(), False),
      ("full fine-tuning", None, False),
      ("frozen embeddings + CNN", None, True)):
    start = time.perf_counter()
    metrics = finetune_training.train(
        model_dir=os.path.join(work, name.split()[0]),
        config=_config(encoder, lora_config, frozen), train_proteins=cb513,
        validation_proteins=ts115, max_length=256, batch_size=8,
        train_steps=_FINETUNE_STEPS.value,
        learning_rate=optimizers.constant_schedule(1e-3),
        partition=partitioning.PartitionConfig(mesh_shape=(1, 1)),
        initial_checkpoint=os.path.join(work, "pretrained"),
        checkpoint_period=_FINETUNE_STEPS.value, log_period=100,
        eval_period=_FINETUNE_STEPS.value)
    print(f"{name:26s} TS115 Q3 {metrics['eval/q3']:.4f}  Q8 "
          f"{metrics['eval/q8']:.4f}  trainable {int(metrics['trainable_params']):,d}"
          f"  ({time.perf_counter() - start:.0f} s)")
  print(f"same {len(cb513)} CB513 proteins, {_FINETUNE_STEPS.value} steps of "
        f"8, learning rate 1e-3 for each; scored on {len(ts115)} TS115 "
        "proteins")


def main(argv):
  del argv
  throughput() if _PART.value == "throughput" else q3()


if __name__ == "__main__":
  app.run(main)
