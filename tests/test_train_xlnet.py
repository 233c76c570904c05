"""ProtXLNet trains with the partitioned trainer from its gin files: 8 host
devices, num_partitions = 2, the permutation-LM task on the bundled corpus;
a run stopped half way and resumed ends bit-identical to a straight one."""

import gin
import jax
import numpy as np

from prottrans_jax import checkpoints
from prottrans_jax import gin_utils
from prottrans_jax.training import trainer
from test_train_bert import _logged

STEPS = 40


def _train(model_dir, train_steps):
  gin.clear_config()
  gin_utils.parse(
      ["models/protxlnet_tiny.gin", "runs/pretrain_xlnet.gin"],
      [f"MODEL_DIR = '{model_dir}'", f"TRAIN_STEPS = {train_steps}", "BATCH_SIZE = 8",
       # 64 tokens predict at most ceil(62 / 6) = 11 of them.
       "TASK_FEATURE_LENGTHS = {'inputs': 64, 'targets': 11}", "NUM_PARTITIONS = 2",
       "LEARNING_RATE = 0.003", "WARMUP_STEPS = 5", "trainer.train.log_period = 1",
       "trainer.train.eval_period = None",
       # The schedule of the whole run, also for its first half.
       f"optimizers.linear_warmup_decay_schedule.total_steps = {STEPS}",
       f"trainer.train.checkpoint_period = {STEPS // 2}"])
  try:
    return gin.get_configurable(trainer.train)()
  finally:
    gin.clear_config()


def test_loss_falls_and_a_resumed_run_ends_where_a_straight_one_does(tmp_path):
  straight, resumed = tmp_path / "straight", tmp_path / "resumed"
  _train(straight, STEPS)
  loss = _logged(straight)["loss"]
  assert len(loss) == STEPS
  # Means over 10 steps (single batches are noisy): 40 steps take the
  # predicted residues' loss from uniform towards the residue frequencies.
  assert np.mean(loss[-10:]) < np.mean(loss[:10]) - 0.1, loss
  model_name, _ = checkpoints.checkpoint_model_config(straight)
  assert model_name == "xlnet"

  _train(resumed, STEPS // 2)
  _train(resumed, STEPS)
  resumed_loss = _logged(resumed)["loss"]
  assert resumed_loss[STEPS // 2:] == loss[STEPS // 2:]
  _, _, straight_params = checkpoints.restore_params(straight)
  _, _, resumed_params = checkpoints.restore_params(resumed)
  jax.tree_util.tree_map(np.testing.assert_array_equal, resumed_params, straight_params)
