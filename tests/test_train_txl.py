"""ProtTXL trains with the partitioned trainer from its gin files (8 host
devices, num_partitions = 2, the bundled corpus) as Transformer-XL trains:
one segment of every packed row per step, the memory carried between steps
in the train state; it resumes exactly from inside a row. The carried steps
compute what the in-step path (a whole row per step) computes; its
next-token loss on a hand-made packed batch."""
import dataclasses
import shutil

import gin
import jax
from jax.sharding import PartitionSpec as P
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow as tf

from prottrans_jax import checkpoints
from prottrans_jax import families
from prottrans_jax import gin_utils
from prottrans_jax import partitioning
from prottrans_jax.models import transfo_xl
from prottrans_jax.training import inputs
from prottrans_jax.training import objectives
from prottrans_jax.training import optimizers
from prottrans_jax.training import steps
from prottrans_jax.training import train_state as train_state_lib
from prottrans_jax.training import trainer

from test_train_bert import _logged

# Rows of 64 tokens, 16-token segments (prottxl_tiny.gin's): 4 steps a row.
ROW, SEGMENT = 64, 16


def _train(model_dir, steps_to, *overrides):
  gin.clear_config()
  gin_utils.parse(
      ["models/prottxl_tiny.gin", "runs/pretrain_txl.gin"],
      [f"MODEL_DIR = '{model_dir}'", f"TRAIN_STEPS = {steps_to}", "BATCH_SIZE = 8",
       f"TASK_FEATURE_LENGTHS = {{'targets': {ROW}}}", "NUM_PARTITIONS = 2",
       "LEARNING_RATE = 0.02", "WARMUP_STEPS = 5", "trainer.train.log_period = 1",
       "trainer.train.eval_period = None", "trainer.train.checkpoint_period = 6",
       *overrides])
  try:
    return gin.get_configurable(trainer.train)()
  finally:
    gin.clear_config()


def _saved_memory(model_dir, step):
  return ocp.StandardCheckpointer().restore(
      model_dir / "checkpoints" / str(step) / checkpoints.MEMORY)


def test_loss_falls_and_a_run_resumed_inside_a_row_ends_where_an_uninterrupted_one_does(
    tmp_path):
  straight = tmp_path / "straight"
  # Evaluation runs whole rows in one step (the in-step path).
  metrics = _train(straight, 12, "trainer.train.eval_period = 12",
                   "trainer.train.eval_batches = 1")
  assert 0 < metrics["eval/loss"] < np.log(30) + 0.5 and metrics["eval/accuracy"] > 0
  loss = _logged(straight)["loss"]
  assert len(loss) == 12
  # From uniform over 30 tokens (3.4) towards the residue frequencies.
  assert np.mean(loss[-4:]) < np.mean(loss[:4]) - 0.1, loss
  model_name, config = checkpoints.checkpoint_model_config(straight)
  assert model_name == "transfo_xl" and config.segment_length == SEGMENT
  # The memory is saved with the state: after step 6 (the second segment
  # of the second batch of rows) it holds that row's first two segments.
  memory = _saved_memory(straight, 6)
  assert memory["hidden"].shape == (config.n_layer, 8, config.mem_len, config.d_model)
  assert np.abs(memory["hidden"]).max() > 0 and (memory["ids"] > 0).any()

  # Resumed from step 6 (parameters, optimizer, memory, data position
  # inside the batch of rows): the same losses and the same end.
  resumed = tmp_path / "resumed"
  shutil.copytree(straight, resumed)
  shutil.rmtree(resumed / "checkpoints" / "12")
  shutil.rmtree(resumed / "train")
  _train(resumed, 12)
  assert _logged(resumed)["loss"] == loss[6:]
  _, _, a = checkpoints.restore_params(straight)
  _, _, b = checkpoints.restore_params(resumed)
  jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)
  jax.tree_util.tree_map(np.testing.assert_array_equal, _saved_memory(straight, 12),
                         _saved_memory(resumed, 12))
  # The other mode counts its data position in rows, not windows: refused.
  with pytest.raises(ValueError, match="written by a run with carry_memory_between_steps"):
    _train(resumed, 20, "trainer.train.carry_memory_between_steps = False")


def _packed_rows(rng, rows, length):
  """seqio-style packed rows: proteins numbered from 1, positions from 0,
  some spanning segments, some rows ending in padding."""
  batch = {name: np.zeros((rows, length), np.int32) for name in objectives._DECODER_FEATURES}  # pylint: disable=protected-access
  for row in range(rows):
    start, protein = 0, 1
    while start < length - 8:
      size = min(int(rng.integers(5, 40)), length - start - int(rng.integers(0, 4)))
      window = slice(start, start + size)
      batch["decoder_target_tokens"][row, window] = rng.integers(5, 30, size)
      batch["decoder_segment_ids"][row, window] = protein
      batch["decoder_positions"][row, window] = np.arange(size)
      batch["decoder_loss_weights"][row, window] = 1
      start, protein = start + size, protein + 1
  return batch


def test_carried_memory_steps_equal_the_in_step_path_on_the_same_rows():
  """Learning rate 0 (parameters fixed): the losses of the steps that carry
  the memory, one segment of every row per step, are the in-step path's
  (`TransfoXL.lm` over whole rows) losses of each segment; a step on new
  rows starts from an emptied memory; the memory in the state is sharded
  like activations (rows over `data`)."""
  config = dataclasses.replace(transfo_xl.TRANSFO_XL_CONFIGS["tiny"].with_dtype("float32"),
                               segment_length=SEGMENT)
  optimizer = optimizers.adamw()
  step = trainer.build_train_step(
      model_config=config, optimizer=optimizer,
      learning_rate=optimizers.constant_schedule(0.0), loss=steps.LossConfig(z_loss=0.0),
      partition=partitioning.PartitionConfig(num_partitions=2), batch_size=8,
      task_feature_lengths={"targets": ROW}, num_microbatches=1, seed=0,
      carry_memory_between_steps=True)
  rows = _packed_rows(np.random.default_rng(0), 8, ROW)
  windows = {k: v.numpy() for k, v in inputs.consecutive_windows(
      {k: tf.constant(v) for k, v in rows.items()}, SEGMENT).items()}
  with partitioning.activate(step.mesh, step.rules):
    state = train_state_lib.init_state(step.init, optimizer, step.layout, jax.random.key(0))
    params = jax.device_get(state.params)
    losses = []
    for index in [0, 1, 2, 3, 0]:  # A row's four segments, then a new row.
      batch = jax.device_put({k: v[index] for k, v in windows.items()}, step.batch_sharding)
      state, metrics = step.step_fn(state, batch)
      losses.append(float(metrics["loss"]))
      if index == 0:
        memory = state.memory
        assert memory["hidden"].sharding.spec == P(None, "data", None, None)
        assert memory["ids"].sharding.spec == P("data", None)
        ids = np.asarray(memory["ids"])
        np.testing.assert_array_equal(ids[:, -SEGMENT:], rows["decoder_segment_ids"][:, :SEGMENT])
        assert np.abs(np.asarray(memory["hidden"])).max() > 0
  jax.tree_util.tree_map(np.testing.assert_array_equal, params, jax.device_get(state.params))

  model = transfo_xl.TransfoXL(config)
  log_probs = np.asarray(jax.jit(lambda p, t, i: model.apply({"params": p}, t, i, method="lm"))(
      params, rows["decoder_target_tokens"], rows["decoder_segment_ids"]))
  targets, weights = (np.asarray(x) for x in objectives._next_token(rows))  # pylint: disable=protected-access
  nll = -np.take_along_axis(log_probs, targets[..., None], -1)[..., 0] * weights
  expected = [nll[:, s:s + SEGMENT].sum() / weights[:, s:s + SEGMENT].sum()
              for s in range(0, ROW, SEGMENT)]
  np.testing.assert_allclose(losses[:4], expected, atol=1e-5, rtol=0)
  # Proteins cross segment boundaries: without the memory the losses differ.
  assert (rows["decoder_positions"][:, SEGMENT::SEGMENT] > 0).any()
  assert losses[4] == losses[0]


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
