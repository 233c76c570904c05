"""ProtBert / ProtAlbert / ProtElectra train with the partitioned trainer from
their gin files: 8 host devices, num_partitions = 2, the bundled corpus."""

import pathlib

import gin
import numpy as np
import pytest
import tensorflow as tf

from prottrans_jax import gin_utils
from prottrans_jax.training import checkpoints
from prottrans_jax.training import trainer

REPO = pathlib.Path(__file__).resolve().parents[1]
STEPS = 60


def _logged(model_dir: pathlib.Path) -> dict[str, list[float]]:
  """Training scalars by name, in step order, from the TensorBoard files."""
  scalars = {}
  for path in sorted((model_dir / "train").glob("events.*")):
    for event in tf.compat.v1.train.summary_iterator(str(path)):
      for value in event.summary.value:
        scalars.setdefault(value.tag, []).append(
            (event.step, float(tf.make_ndarray(value.tensor))))
  return {k: [v for _, v in sorted(steps)] for k, steps in scalars.items()}


@pytest.mark.parametrize("model,learning_rate", [
    ("protbert_tiny", 0.02), ("protalbert_tiny", 0.02), ("protelectra_tiny", 0.01)])
def test_loss_falls_on_the_bundled_corpus(model, learning_rate, tmp_path):
  gin.clear_config()
  gin_utils.parse(
      [str(REPO / "gin" / "models" / f"{model}.gin"),
       str(REPO / "gin" / "runs" / "pretrain_bert.gin")],
      [f"MODEL_DIR = '{tmp_path}'", f"TRAIN_STEPS = {STEPS}", "BATCH_SIZE = 8",
       "TASK_FEATURE_LENGTHS = {'inputs': 64, 'targets': 64}", "NUM_PARTITIONS = 2",
       f"LEARNING_RATE = {learning_rate}", "WARMUP_STEPS = 5", "trainer.train.log_period = 1",
       "trainer.train.eval_period = None", "trainer.train.checkpoint_period = 1000"])
  try:
    last = gin.get_configurable(trainer.train)()
  finally:
    gin.clear_config()
  logged = _logged(tmp_path)
  loss = logged["loss"]
  assert len(loss) == STEPS
  # Means over 10 steps: single packed batches are noisy. 60 steps take
  # the masked-LM loss from uniform towards the residue frequencies.
  assert np.mean(loss[-10:]) < np.mean(loss[:10]) - 0.1, loss
  model_name, _ = checkpoints.load_model_config(tmp_path)
  assert model_name == {"protbert_tiny": "bert", "protalbert_tiny": "albert",
                        "protelectra_tiny": "electra_pretraining"}[model]
  if model == "protelectra_tiny":
    # Both networks learn: the generator's MLM loss and the discriminator's
    # replaced-token loss fall. (Beating the all-original accuracy baseline
    # takes far more steps than a test affords.)
    for name in ("cross_entropy", "discriminator_loss"):
      assert np.mean(logged[name][-10:]) < 0.95 * np.mean(logged[name][:10]), name
    assert 0 < last["discriminator_all_original_accuracy"] < 1
