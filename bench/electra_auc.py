"""Does ProtElectra's discriminator learn replaced-token detection? Trains
ELECTRA (generator + discriminator) from its gin files on a FASTA corpus
larger than the bundled one and evaluates on held-out proteins every
--eval_every steps: the discriminator's ROC AUC with DeLong's 95% interval,
the generator's masked-residue accuracy beside the most-common-residue
baseline, and the training discriminator loss.

  python bench/electra_auc.py                                  # tiny, 1000 steps
  python bench/electra_auc.py --steps 200 --eval_every 50 --learning_rate 3e-4
  python bench/electra_auc.py --gin 'discriminator/electra.ElectraConfig.hidden_size = 128' \
      --gin 'discriminator/electra.ElectraConfig.num_hidden_layers = 4' ...

Model size: --model names a gin/models file; --gin adds bindings (e.g. the
discriminator's width and depth). The run gin file is runs/pretrain_bert.gin
(LAMB, linear warm-up then linear decay to zero at --steps).
"""

import pathlib
import sys
import tempfile
import time

from absl import app
from absl import flags
import gin
import numpy as np
import tensorflow as tf

from prottrans_jax import gin_utils
from prottrans_jax.tasks import protein
from prottrans_jax.training import trainer

import _machine

_FASTA = pathlib.Path(__file__).resolve().parents[2] / "shared/data/localization/deeploc_test_set.fasta"

flags.DEFINE_string("fasta", str(_FASTA), "Corpus: one FASTA file (read into memory).")
flags.DEFINE_float("validation_fraction", 0.1, "Share of proteins (by id hash) held out.")
flags.DEFINE_string("model", "protelectra_tiny", "gin/models file, without .gin.")
flags.DEFINE_multi_string("gin", [], "Further gin bindings (model size, optimizer, ...).")
flags.DEFINE_integer("steps", 1000, "Training steps.")
flags.DEFINE_integer("eval_every", 100, "Evaluate every this many steps (and at the end).")
flags.DEFINE_integer("eval_batches", None, "Cap on validation batches per evaluation.")
flags.DEFINE_float("learning_rate", 1e-3, "Peak learning rate (LAMB, the preset's optimizer).")
flags.DEFINE_integer("warmup", 100, "Linear warm-up steps.")
flags.DEFINE_integer("batch", 32, "Sequences per step (packed).")
flags.DEFINE_integer("length", 128, "Tokens per sequence.")
flags.DEFINE_integer("seed", 0, "Training seed (initialisation, data order, sampling).")
flags.DEFINE_string("model_dir", None, "Where the run is written (default: a temporary dir).")
FLAGS = flags.FLAGS

CORPUS = "electra_bench"


def _scalars(directory: pathlib.Path) -> dict[str, list[tuple[int, float, float]]]:
  """TensorBoard scalars by name: (step, value, wall time), in step order."""
  scalars = {}
  for path in sorted(directory.glob("events.*")):
    for event in tf.compat.v1.train.summary_iterator(str(path)):
      for value in event.summary.value:
        scalars.setdefault(value.tag, []).append(
            (event.step, float(tf.make_ndarray(value.tensor)), event.wall_time))
  return {k: sorted(v) for k, v in scalars.items()}


def _train(model_dir: pathlib.Path) -> float:
  """Trains with evaluation; returns the wall time in seconds."""
  protein.register_objectives(CORPUS, protein.fasta_source(FLAGS.fasta, FLAGS.validation_fraction))
  gin_utils.parse(
      [f"models/{FLAGS.model}.gin", "runs/pretrain_bert.gin"],
      [f"MODEL_DIR = '{model_dir}'", f"MIXTURE_OR_TASK_NAME = '{CORPUS}_protbert_mlm'",
       f"TRAIN_STEPS = {FLAGS.steps}", f"BATCH_SIZE = {FLAGS.batch}",
       f"LEARNING_RATE = {FLAGS.learning_rate}", f"WARMUP_STEPS = {FLAGS.warmup}",
       f"SEED = {FLAGS.seed}",
       f"TASK_FEATURE_LENGTHS = {{'inputs': {FLAGS.length}, 'targets': {FLAGS.length}}}",
       "trainer.train.log_period = 10", f"trainer.train.checkpoint_period = {FLAGS.steps}",
       f"trainer.train.eval_period = {FLAGS.eval_every}",
       f"trainer.train.eval_batches = {FLAGS.eval_batches}", *FLAGS.gin])
  start = time.time()
  try:
    gin.get_configurable(trainer.train)()
  finally:
    gin.clear_config()
  return time.time() - start


def _report(model_dir: pathlib.Path, wall: float) -> None:
  """The table; a plain masked-LM model (a control: does a BERT learn
  context at this budget?) gets its masked-residue accuracy and '-' for the
  discriminator's columns."""
  evals = _scalars(model_dir / "eval")
  train = _scalars(model_dir / "train")
  col = lambda name: {s: v for s, v, _ in evals.get(name, [])}
  auc, low, high = col("discriminator_auc"), col("discriminator_auc_ci_low"), col("discriminator_auc_ci_high")
  acc, base = col("masked_residue_accuracy"), col("most_common_residue_baseline")
  replaced, original = col("detection_replaced"), col("detection_original")
  if not acc:
    sys.exit(f"no eval/masked_residue_accuracy in {model_dir / 'eval'}: was the model a masked LM?")
  first = min(t for _, _, t in train["loss"])
  at = {s: t - first for s, _, t in evals["masked_residue_accuracy"]}
  print(f"{FLAGS.model} {' '.join(FLAGS.gin)}; LAMB peak {FLAGS.learning_rate}, warm-up "
        f"{FLAGS.warmup}, {FLAGS.batch} x {FLAGS.length} tokens a step, seed {FLAGS.seed}; "
        f"corpus {pathlib.Path(FLAGS.fasta).name}, validation {FLAGS.validation_fraction}")
  print(f"machine: {_machine.describe(['avx2', 'avx512f'])}; wall {wall:.0f} s")
  print("| step | disc. AUC [95% CI] | residues (replaced) | gen. masked acc. | baseline "
        "| disc. loss (train, mean since last eval) | s since start |")
  print("| --- | --- | --- | --- | --- | --- | --- |")
  disc = train.get("discriminator_loss", [])
  for step in sorted(acc):
    window = [v for s, v, _ in disc if step - FLAGS.eval_every < s <= step]
    detection = (f"{auc[step]:.3f} [{low[step]:.3f}, {high[step]:.3f}] "
                 f"| {replaced[step] + original[step]:.0f} ({replaced[step]:.0f}) "
                 if step in auc else "- | - ")
    loss = f"{np.mean(window):.4f}" if window else "-"
    print(f"| {step} | {detection}| {acc[step]:.3f} | {base[step]:.3f} | {loss} "
          f"| {at[step]:.0f} |")


def main(argv):
  del argv
  if FLAGS.model_dir:
    model_dir = pathlib.Path(FLAGS.model_dir)
    _report(model_dir, _train(model_dir))
  else:
    with tempfile.TemporaryDirectory() as tmp:
      _report(pathlib.Path(tmp), _train(pathlib.Path(tmp)))


if __name__ == "__main__":
  app.run(main)
