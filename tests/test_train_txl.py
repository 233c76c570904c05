"""ProtTXL trains with the partitioned trainer from its gin files (8 host
devices, num_partitions = 2, the bundled corpus; packed rows run segment by
segment with the memory) and resumes exactly; its next-token loss on a
hand-made packed batch."""
import shutil

import gin
import jax
import numpy as np

from prottrans_jax import checkpoints
from prottrans_jax import families
from prottrans_jax import gin_utils
from prottrans_jax.models import transfo_xl
from prottrans_jax.training import objectives
from prottrans_jax.training import trainer

from test_train_bert import _logged


def _train(model_dir, steps):
  gin.clear_config()
  gin_utils.parse(
      ["models/prottxl_tiny.gin", "runs/pretrain_txl.gin"],
      [f"MODEL_DIR = '{model_dir}'", f"TRAIN_STEPS = {steps}", "BATCH_SIZE = 8",
       "TASK_FEATURE_LENGTHS = {'targets': 64}", "NUM_PARTITIONS = 2",
       "LEARNING_RATE = 0.02", "WARMUP_STEPS = 5", "trainer.train.log_period = 1",
       "trainer.train.eval_period = None", "trainer.train.checkpoint_period = 8",
       # Rows of 64 tokens train as 2 segments, the memory carried between.
       "transfo_xl.TransfoXLConfig.segment_length = 32"])
  try:
    return gin.get_configurable(trainer.train)()
  finally:
    gin.clear_config()


def test_loss_falls_and_a_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path):
  straight = tmp_path / "straight"
  _train(straight, 16)
  loss = _logged(straight)["loss"]
  assert len(loss) == 16
  # From uniform over 30 tokens (3.4) towards the residue frequencies
  # (about 3.1 after 16 steps).
  assert np.mean(loss[-4:]) < np.mean(loss[:4]) - 0.1, loss
  model_name, config = checkpoints.checkpoint_model_config(straight)
  assert model_name == "transfo_xl" and config.segment_length == 32

  # Resume from step 8 (its parameters, optimizer and data position).
  resumed = tmp_path / "resumed"
  shutil.copytree(straight, resumed)
  shutil.rmtree(resumed / "checkpoints" / "16")
  _train(resumed, 16)
  _, _, a = checkpoints.restore_params(straight)
  _, _, b = checkpoints.restore_params(resumed)
  jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)


def test_next_token_loss_stays_within_each_packed_protein():
  """A row packing two proteins: each position predicts the next residue
  of its own protein; the last residue of a protein predicts nothing; the
  second protein's log-probabilities are those of it alone."""
  config = transfo_xl.TRANSFO_XL_CONFIGS["tiny"].with_dtype("float32")
  model = transfo_xl.TransfoXL(config)
  params = jax.tree_util.tree_map(
      lambda x: getattr(x, "value", x),
      families.get("transfo_xl").init(model, jax.random.key(0)),
      is_leaf=lambda x: hasattr(x, "value"))
  first, second = [5, 6, 7, 8, 9], [10, 11, 12] * 7  # the second spans 2 segments
  targets = np.zeros((1, 32), np.int32)
  ids = np.zeros((1, 32), np.int32)
  targets[0, :5], targets[0, 5:26] = first, second
  ids[0, :5], ids[0, 5:26] = 1, 2
  batch = {"decoder_target_tokens": targets, "decoder_segment_ids": ids,
           "decoder_loss_weights": (targets > 0).astype(np.int32)}
  next_tokens, weights = (np.asarray(x) for x in objectives._next_token(batch))  # pylint: disable=protected-access
  assert weights.sum() == 4 + 20 and weights[0, 4] == weights[0, 25] == 0
  np.testing.assert_array_equal(next_tokens[0, :4], first[1:])

  def run(p, b, alone):
    lm = lambda t, i: model.apply({"params": p}, t, i, method="lm")
    return (lm(b["decoder_target_tokens"], b["decoder_segment_ids"]),
            lm(alone, jax.numpy.ones_like(alone)),
            objectives.causal_lm_sums(model, p, b, None, 0.0))

  log_probs, alone, sums = jax.tree.map(np.asarray, jax.jit(run)(
      params, batch, np.array([second], np.int32)))
  np.testing.assert_allclose(log_probs[0, 5:26], alone[0], atol=1e-5, rtol=0)
  expected = -np.take_along_axis(log_probs[0], next_tokens[0][:, None], -1)[:, 0] @ weights[0]
  np.testing.assert_allclose(sums["cross_entropy"], expected, rtol=1e-5)
  assert sums["weight"] == 24
