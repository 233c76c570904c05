"""Train steps on 8 host devices: mesh invariance, microbatching, checkpoints,
fine-tuning from a params-only checkpoint, and learning on the bundled corpus.
"""

import dataclasses
import itertools
import weakref

from absl import logging
import flax.linen as nn
import jax
import numpy as np
import pytest

from prottrans_jax import checkpoints
from prottrans_jax import families
from prottrans_jax import partitioning
from prottrans_jax.models import t5
import prottrans_jax.tasks  # pylint: disable=unused-import  (registers the seqio tasks)
from prottrans_jax.training import inputs
from prottrans_jax.training import objectives
from prottrans_jax.training import optimizers
from prottrans_jax.training import steps
from prottrans_jax.training import train_state as train_state_lib
from prottrans_jax.training import trainer

TASK = "swissprot_sample_prott5_denoise"
LENGTHS = {"inputs": 64, "targets": 64}
BATCH_SIZE = 8
# Dropout off, so that microbatches can equal a full batch exactly (dropout
# masks across meshes and processes are checked by test_train_script.py).
TINY = dataclasses.replace(t5.T5_CONFIGS["tiny"], dtype="float32",
                           dropout_rate=0.0)
# One layer per stack: the same partitioning, half the compile time.
ONE_LAYER = dataclasses.replace(TINY, num_encoder_layers=1,
                                num_decoder_layers=1)


@pytest.fixture(scope="module")
def run_steps():
  """Memoised `_run_steps` of ONE_LAYER on the first 3 training batches."""
  batches = list(itertools.islice(
      inputs.TrainInput(TASK, LENGTHS, inputs.InputShard.whole(BATCH_SIZE), seed=0), 3))
  runs = {}

  def run(mesh_shape, num_microbatches=1, num_steps=3):
    key = (mesh_shape, num_microbatches, num_steps)
    if key not in runs:
      runs[key] = _run_steps(ONE_LAYER, batches[:num_steps], mesh_shape,
                             num_microbatches)
    return runs[key]

  return run


def _init_params(config):
  init = trainer.init_fn(families.get("t5"), t5.T5(config))
  return jax.jit(lambda key: nn.meta.unbox(init(key)))(jax.random.key(1))


def _run_steps(config, batches, mesh_shape, num_microbatches=1):
  """Losses and final state of a few steps on a (data, model) mesh."""
  partition = partitioning.PartitionConfig(mesh_shape=mesh_shape)
  mesh, rules = partition.mesh(), partition.rules()
  model = t5.T5(config)
  tx = optimizers.adafactor()
  init = trainer.init_fn(families.get("t5"), model)
  with partitioning.activate(mesh, rules):
    layout = train_state_lib.state_layout(init, tx, mesh, rules)
    state = train_state_lib.init_state(init, tx, layout, jax.random.key(0))
    sharding = partitioning.batch_sharding(mesh, rules)
    step = steps.make_train_step(
        model=model, objective=objectives.ENCODER_DECODER, tx=tx,
        schedule=optimizers.inverse_sqrt_schedule(0.01, 100),
        loss_config=steps.LossConfig(), dropout_seed=0,
        num_microbatches=num_microbatches, layout=layout,
        batch_sharding=sharding)
    losses = []
    for batch in batches:
      state, metrics = step(state, partitioning.make_global_batch(batch,
                                                                  sharding))
      losses.append(float(metrics["loss"]))
  return losses, state


def test_same_losses_on_every_mesh_and_params_sharded_by_rules(run_steps):
  reference, _ = run_steps((1, 1))
  for mesh_shape in [(8, 1), (4, 2), (2, 4)]:
    losses, state = run_steps(mesh_shape)
    np.testing.assert_allclose(losses, reference, rtol=1e-5,
                               err_msg=f"mesh {mesh_shape}")
    kernel = state.params["encoder"]["layers_0"]["mlp"]["wi"]["kernel"]
    if mesh_shape[1] > 1:
      assert kernel.sharding.spec[1] == "model"  # ("embed", "mlp")
      assert kernel.addressable_shards[0].data.shape == (
          TINY.d_model, TINY.d_ff // mesh_shape[1])


def test_microbatches_equal_one_full_batch(run_steps):
  full_losses, full = run_steps((4, 2))
  micro_losses, micro = run_steps((4, 2), num_microbatches=4)
  np.testing.assert_allclose(micro_losses, full_losses, rtol=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves(micro.params),
                  jax.tree_util.tree_leaves(full.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5,
                               atol=1e-6)


def test_params_checkpoint_round_trip(tmp_path):
  params = _init_params(TINY)
  step_dir = checkpoints.write_params_checkpoint(
      tmp_path, params, TINY, step=7)
  assert step_dir == tmp_path / "checkpoints" / "7"
  assert checkpoints.checkpoint_model_config(tmp_path) == ("t5", TINY)
  for path in (tmp_path, step_dir):
    name, config, restored = checkpoints.restore_params(path)
    assert (name, config) == ("t5", TINY)
    jax.tree_util.tree_map(np.testing.assert_array_equal, restored, params)
  with pytest.raises(FileNotFoundError, match="no checkpoint"):
    checkpoints.restore_params(tmp_path / "missing")


def test_lazy_params_stream_one_tensor_at_a_time(tmp_path):
  """LazyArray leaves are written one at a time, and lazy_params reads back
  one leaf per load: what the converters rely on for checkpoints larger than
  memory."""
  params = jax.tree_util.tree_map(np.asarray, nn.meta.unbox(_init_params(TINY)))
  alive = []  # weak references to every array handed to the writer so far

  def load(array):
    # Streaming means every earlier tensor is gone before the next is read.
    assert all(ref() is None for ref in alive), "two loaded tensors alive at once"
    copy = array.copy()
    alive.append(weakref.ref(copy))
    return copy

  lazy = jax.tree_util.tree_map(
      lambda a: checkpoints.LazyArray(a.shape, a.dtype, lambda a=a: load(a)), params)
  checkpoints.write_params_checkpoint(tmp_path, lazy, step=3, config=TINY)
  assert len(alive) == len(jax.tree_util.tree_leaves(params))
  _, _, restored = checkpoints.restore_params(tmp_path)
  jax.tree_util.tree_map(np.testing.assert_array_equal, restored, params)

  name, config, read_back = checkpoints.lazy_params(tmp_path)
  assert (name, config) == ("t5", TINY)
  leaves = jax.tree_util.tree_leaves(read_back)
  assert all(isinstance(leaf, checkpoints.LazyArray) for leaf in leaves)
  for leaf, expected in zip(leaves, jax.tree_util.tree_leaves(params)):
    assert (leaf.shape, leaf.dtype) == (expected.shape, expected.dtype)
    np.testing.assert_array_equal(leaf.load(), expected)

  wrong = checkpoints.LazyArray((2, 3), np.dtype(np.float32), lambda: np.zeros((3, 2)))
  with pytest.raises(ValueError, match="loaded shape"):
    checkpoints.write_params_checkpoint(tmp_path / "bad", {"w": wrong}, config=TINY)


def test_finetune_from_params_only_checkpoint(tmp_path, caplog):
  """A converter's params-only checkpoint is not resumed as if it were a
  training step; asked for (initial_checkpoint), it fine-tunes with a fresh
  optimizer."""
  params = _init_params(TINY)
  step_dir = checkpoints.write_params_checkpoint(tmp_path, params, step=5,
                                                 config=TINY)
  run = lambda **extra: trainer.train(
      model_dir=str(tmp_path), model_config=TINY, task_name=TASK,
      task_feature_lengths=LENGTHS, batch_size=BATCH_SIZE, train_steps=6,
      learning_rate=optimizers.constant_schedule(1e-3),
      optimizer=optimizers.adafactor(),
      partition=partitioning.PartitionConfig(mesh_shape=(1, 1)),
      log_period=1, **extra)
  with pytest.raises(ValueError, match=r"step 5 .* is params-only .*fresh "
                     r"optimizer.*initial_checkpoint"):
    run()
  logging.set_verbosity(logging.INFO)
  with caplog.at_level("INFO"):
    run(initial_checkpoint=str(step_dir))
  assert "fine-tuning from the params-only checkpoint at step 5" in caplog.text
  manager = checkpoints.checkpoint_manager(tmp_path)
  assert manager.latest_step() == 6
  assert checkpoints.has_optimizer_state(manager, 6)
  _, _, tuned = checkpoints.restore_params(tmp_path)
  changed = [not np.array_equal(a, b) for a, b in zip(
      jax.tree_util.tree_leaves(tuned), jax.tree_util.tree_leaves(params))]
  assert all(changed)


def test_tiny_model_beats_most_common_residue_on_validation(tmp_path):
  """A few hundred steps on the bundled corpus learn more than frequencies.

  Masked positions are predicted from the residues around them; the
  baseline predicts the most common residue at masked positions of the
  validation split itself (a baseline that has seen the answers' counts).
  """
  trainer.train(
      model_dir=str(tmp_path), model_config=TINY, task_name=TASK,
      task_feature_lengths={"inputs": 128, "targets": 128}, batch_size=16,
      train_steps=300,
      learning_rate=optimizers.constant_schedule(0.01),
      optimizer=optimizers.adafactor(),
      partition=partitioning.PartitionConfig(mesh_shape=(1, 1)),
      log_period=100, checkpoint_period=1000)
  # Whole validation proteins (up to 512 residues): more masked positions.
  metrics = trainer.evaluate(
      model_dir=str(tmp_path), task_name=TASK,
      task_feature_lengths={"inputs": 512, "targets": 512}, batch_size=16,
      partition=partitioning.PartitionConfig(mesh_shape=(1, 1)))
  logging.info("tiny ProtT5 after 300 steps: %s", metrics)
  assert metrics["masked_residues"] > 300
  assert metrics["masked_residue_accuracy"] > (
      1.3 * metrics["most_common_residue_baseline"])
