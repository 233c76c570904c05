"""CB513 -> TS115 (issue 19): end-to-end fine-tuning of a small pre-trained
ProtT5, LoRA and full, reaches a higher TS115 Q3 than the frozen-embedding
CNN head trained on the same proteins with the same budget.

The encoder is tests/fixtures/prott5_tiny_pretrained (its README: how it
was built, on what, with which command). The three runs share everything
but what they train: the same CB513 proteins, steps, batch, learning rate,
seed (head initialisation, data order, dropout), head (the per-residue
CNN) and maximum length; the frozen run trains that head on the frozen
encoder's output, the same network and step (`freeze_encoder`).
"""

import pathlib

import pytest

from prottrans_jax import checkpoints
from prottrans_jax import partitioning
from prottrans_jax.models import lora
from prottrans_jax.training import finetune as finetune_training
from prottrans_jax.training import optimizers

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "prott5_tiny_pretrained"
CB513 = pathlib.Path("secondary_structure") / "CB513_HHblits.csv"
TS115 = pathlib.Path("secondary_structure") / "TS115_HHblits.csv"
TRAIN_PROTEINS, TEST_PROTEINS = 200, 60  # the files' first ones
STEPS, BATCH, LEARNING_RATE, MAX_LENGTH, SEED = 100, 8, 1e-3, 128, 0
# Measured on this 2-core CPU with these settings, TS115 Q3 of LoRA / full /
# frozen CNN, seeds 0, 1, 2:
#   0.5636 / 0.6058 / 0.5310,  0.5828 / 0.6156 / 0.5307,  0.5581 / 0.5935 / 0.5252
# (margins over the frozen CNN: LoRA +0.033 to +0.052, full +0.068 to
# +0.085). With the same corpus pre-trained 400 steps instead of 100 the
# frozen embeddings are better and the margins shrink into the noise
# (LoRA +0.007 to +0.030, full +0.022 to +0.041): the comparison holds
# where a tiny encoder's frozen embeddings are weak and fine-tuning adapts
# them, which is what this fixture is.
MARGIN = 0.02


@pytest.fixture(scope="module")
def proteins(shared_data):
  paths = [shared_data / CB513, shared_data / TS115]
  missing = [str(p) for p in paths if not p.is_file()]
  if missing:
    pytest.skip(f"CB513/TS115 not present: {', '.join(missing)}")
  tasks = ("q3", "q8")
  return (finetune_training.read_proteins(str(paths[0]), "netsurfp",
                                          TRAIN_PROTEINS, tasks),
          finetune_training.read_proteins(str(paths[1]), "netsurfp",
                                          TEST_PROTEINS, tasks))


def ts115_q3(tmp_path, proteins, **config):
  train, test = proteins
  _, encoder = checkpoints.checkpoint_model_config(FIXTURE)
  metrics = finetune_training.train(
      model_dir=str(tmp_path), config=finetune_training.make_config(
          encoder, **config),
      train_proteins=train, validation_proteins=test, max_length=MAX_LENGTH,
      batch_size=BATCH, train_steps=STEPS,
      learning_rate=optimizers.constant_schedule(LEARNING_RATE),
      # One device: this is about what is learnt, not about sharding.
      partition=partitioning.PartitionConfig(mesh_shape=(1, 1)), seed=SEED,
      initial_checkpoint=str(FIXTURE), checkpoint_period=STEPS,
      log_period=STEPS, eval_period=STEPS)
  return metrics["eval/q3"]


def test_end_to_end_fine_tuning_beats_the_frozen_cnn(tmp_path, proteins):
  q3 = {name: ts115_q3(tmp_path / name.split()[0], proteins, **config)
        for name, config in (
            ("LoRA", dict(lora=lora.LoraConfig())),
            ("full fine-tuning", dict(lora=None)),
            ("frozen encoder + CNN", dict(lora=None, freeze_encoder=True)))}
  print(f"\nTS115 Q3 ({TEST_PROTEINS} proteins, first {MAX_LENGTH} tokens) "
        f"after {STEPS} steps of {BATCH} CB513 proteins at {LEARNING_RATE}:")
  for name, value in q3.items():
    print(f"  {name:22s} {value:.4f}")
  frozen = q3["frozen encoder + CNN"]
  assert q3["LoRA"] > frozen + MARGIN, q3
  assert q3["full fine-tuning"] > frozen + MARGIN, q3
