r"""Builds tests/fixtures/prott5_tiny_pretrained: a small pre-trained ProtT5
encoder that tests/test_finetune_q3.py fine-tunes on CB513 and scores on
TS115 (issue 19's LoRA / full / frozen-CNN comparison).

  python bench/build_finetune_fixture.py   # the committed fixture's command

Pre-training corpus: the bundled Swiss-Prot sample and ../shared/data's
Swiss-Prot AFDB and globin FASTA files, less every protein that shares a
20-residue stretch with a CB513 or TS115 sequence (those sets are what the
fixture is evaluated on; the filter is why ../shared/data is needed here).
A tiny ProtT5 (models/t5.py "tiny" unless --d_model etc. say otherwise) is
pre-trained on it with the span-denoising objective by trainer.train, and
its encoder alone (token embedding, encoder layers, final norm: what
fine-tuning restores) is written as a params-only checkpoint, float32, so
the fixture stays a few hundred KB.
"""

import os
import shutil
import tempfile

from absl import app
from absl import flags
import jax

from prottrans_jax import checkpoints
from prottrans_jax.data import fasta
from prottrans_jax.data import sample_corpus
from prottrans_jax.downstream import finetune
from prottrans_jax.downstream import readers
from prottrans_jax.models import t5
from prottrans_jax.tasks import protein
from prottrans_jax.training import finetune as finetune_training
from prottrans_jax.training import optimizers
from prottrans_jax.training import steps
from prottrans_jax.training import trainer

_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
_SHARED = os.path.join(_ROOT, "..", "shared", "data")

_OUTPUT = flags.DEFINE_string(
    "output", os.path.join(_ROOT, "tests", "fixtures", "prott5_tiny_pretrained"),
    "MODEL_DIR written (replaced).")
_STEPS = flags.DEFINE_integer("steps", 100, "Pre-training steps.")
_LEARNING_RATE = flags.DEFINE_float("learning_rate", 3e-3,
                                    "Adafactor's constant learning rate.")
_BATCH = flags.DEFINE_integer("batch", 16, "Pre-training batch (examples).")
_LENGTH = flags.DEFINE_integer("length", 128, "Input and target tokens.")
_SEED = flags.DEFINE_integer("seed", 0, "Init, data order and dropout.")
_D_MODEL = flags.DEFINE_integer("d_model", 64, "Width.")
_D_FF = flags.DEFINE_integer("d_ff", 128, "Feed-forward width.")
_LAYERS = flags.DEFINE_integer("layers", 2, "Encoder (and decoder) layers.")
_CORPUS = ("sequences/swissprot_afdb_30_aa.fasta", "sequences/globins45.fasta")
_HELD_OUT = ("secondary_structure/CB513_HHblits.csv",
             "secondary_structure/TS115_HHblits.csv")
_STRETCH = 20  # Residues two sequences must share to count as overlapping.


def _stretches(sequence: str) -> set[str]:
  return {sequence[i:i + _STRETCH]
          for i in range(len(sequence) - _STRETCH + 1)}


def write_corpus(path: str) -> tuple[int, list[str]]:
  """The pre-training FASTA at `path`; (proteins written, ids left out)."""
  held_out = set()
  for name in _HELD_OUT:
    for p in readers.read_labels(os.path.join(_SHARED, name), "netsurfp"):
      held_out |= _stretches(p.sequence)
  written, dropped, seen = 0, [], set()
  with open(path, "w") as out:
    for source in (sample_corpus.FASTA_PATH,) + tuple(
        os.path.join(_SHARED, c) for c in _CORPUS):
      for record in fasta.read_fasta(source):
        if _stretches(record.sequence) & held_out:
          dropped.append(record.id)
        elif record.id not in seen:
          seen.add(record.id)
          out.write(f">{record.id}\n{record.sequence}\n")
          written += 1
  return written, dropped


def main(argv):
  del argv
  work = tempfile.mkdtemp(prefix="finetune_fixture_")
  corpus = os.path.join(work, "corpus.fasta")
  written, dropped = write_corpus(corpus)
  print(f"pre-training corpus: {written} proteins; left out for sharing "
        f"{_STRETCH} residues with CB513/TS115: {', '.join(dropped)}")
  protein.register_objectives("finetune_fixture",
                              protein.fasta_source(corpus, 0.0))
  config = t5.T5_CONFIGS["tiny"].with_dtype("float32")
  config = t5.T5Config(**{**config.to_dict(), "d_model": _D_MODEL.value,
                          "d_ff": _D_FF.value,
                          "num_encoder_layers": _LAYERS.value,
                          "num_decoder_layers": _LAYERS.value})
  pretrained = os.path.join(work, "pretrained")
  metrics = trainer.train(
      model_dir=pretrained, model_config=config,
      task_name="finetune_fixture_prott5_denoise",
      task_feature_lengths={"inputs": _LENGTH.value, "targets": _LENGTH.value},
      batch_size=_BATCH.value, train_steps=_STEPS.value,
      learning_rate=optimizers.constant_schedule(_LEARNING_RATE.value),
      optimizer=optimizers.adafactor(), loss=steps.LossConfig(),
      seed=_SEED.value, checkpoint_period=_STEPS.value, log_period=100)
  print(f"pre-trained {_STEPS.value} steps: loss {metrics['loss']:.4f}")
  # The encoder's canonical parameters, as fine-tuning restores them.
  model = finetune.FinetuneModel(finetune_training.make_config(config))
  abstract = finetune_training._unbox(jax.eval_shape(  # pylint: disable=protected-access
      lambda: model.init(jax.random.key(0))))[finetune.ENCODER]
  target = model.family.to_canonical(config, abstract)
  encoder, _ = checkpoints.restore_params_subset(
      checkpoints.step_directory(pretrained), target)
  shutil.rmtree(_OUTPUT.value, ignore_errors=True)
  step_dir = checkpoints.write_params_checkpoint(
      _OUTPUT.value, jax.device_get(encoder), config, step=_STEPS.value)
  shutil.rmtree(work)
  print(f"wrote {step_dir}")


if __name__ == "__main__":
  app.run(main)
