"""Nothing silently wrong (issue 16, the training side): one writer per run
directory, damaged checkpoints detected and skipped, no silent params-only
resume, non-finite steps stopped without losing good checkpoints, and
settings that would do nothing refused.

One short training run (steps 1 and 2 saved) is shared; each test damages
its own copy of it. Runs are in-process (scripts/train.py only binds these
arguments with gin and lets the exceptions end the process non-zero).
"""

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from prottrans_jax import checkpoints
from prottrans_jax import partitioning
from prottrans_jax import run_lock
from prottrans_jax.inference import run as embed_run
from prottrans_jax.models import bert
from prottrans_jax.models import t5
import prottrans_jax.tasks  # pylint: disable=unused-import  (registers the seqio tasks)
from prottrans_jax.training import loop
from prottrans_jax.training import optimizers
from prottrans_jax.training import steps
from prottrans_jax.training import trainer

TASK = "swissprot_sample_prott5_denoise"
LENGTHS = {"inputs": 32, "targets": 32}
CONFIG = dataclasses.replace(t5.T5_CONFIGS["tiny"], dtype="float32",
                             dropout_rate=0.0, num_encoder_layers=1,
                             num_decoder_layers=1)


def _train(model_dir, train_steps, **extra):
  return trainer.train(**{
      "model_dir": str(model_dir), "model_config": CONFIG,
      "task_name": TASK, "task_feature_lengths": LENGTHS, "batch_size": 8,
      "train_steps": train_steps,
      "learning_rate": optimizers.constant_schedule(1e-3),
      "optimizer": optimizers.adafactor(),
      "partition": partitioning.PartitionConfig(mesh_shape=(1, 1)),
      "checkpoint_period": 1, "log_period": 1, **extra})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  model_dir = tmp_path_factory.mktemp("trained")
  _train(model_dir, 2)
  return model_dir


@pytest.fixture
def run_dir(trained, tmp_path):
  """A copy of the trained MODEL_DIR (steps 1 and 2) to damage."""
  copy = tmp_path / "run"
  shutil.copytree(trained, copy)
  return copy


def _listing(model_dir):
  """{relative path: (size, content hash)} of every file under MODEL_DIR's
  checkpoints."""
  root = model_dir / "checkpoints"
  return {str(p.relative_to(root)): (p.stat().st_size, hash(p.read_bytes()))
          for p in sorted(root.rglob("*")) if p.is_file()}


def _largest_params_file(step_dir):
  return max((p for p in (step_dir / "params").rglob("*") if p.is_file()),
             key=lambda p: p.stat().st_size)


# --- the lock -------------------------------------------------------------


def test_second_training_run_fails_naming_the_holder(run_dir):
  before = _listing(run_dir)
  with run_lock.RunLock(run_dir / loop.LOCK_FILE, "training run"):
    with pytest.raises(run_lock.LockHeldError) as raised:
      _train(run_dir, 4)
  message = str(raised.value)
  assert str(run_dir) in message and f"pid {os.getpid()}" in message
  assert socket.gethostname() in message and "running since" in message
  assert _listing(run_dir) == before  # The first run's checkpoints intact.
  assert not (run_dir / loop.LOCK_FILE).exists()  # Released.
  _, _, params = checkpoints.restore_params(run_dir)
  assert jax.tree_util.tree_leaves(params)


def test_stale_locks_are_reclaimed_with_a_log_line(tmp_path, caplog):
  path = tmp_path / "run.lock"
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  now = time.time()
  for holder, reason in [
      ({"host": socket.gethostname(), "pid": dead.pid}, "is gone"),
      ({"host": "elsewhere", "pid": 1, "heartbeat": now - 60},
       "no heartbeat for")]:
    path.write_text(json.dumps({"what": "training run", "started": now - 99,
                                "heartbeat": now, **holder}))
    lock = run_lock.RunLock(path, "training run", heartbeat_s=0.05,
                            stale_after_s=30)
    with caplog.at_level("WARNING"), lock:
      assert json.loads(path.read_text())["pid"] == os.getpid()
      time.sleep(0.2)  # A few heartbeats.
      assert json.loads(path.read_text())["heartbeat"] > now
    assert f"reclaiming the stale lock {path}" in caplog.text
    assert reason in caplog.text
    assert not path.exists()
  # A live holder elsewhere is not stale, and an exception releases.
  with pytest.raises(KeyError), run_lock.RunLock(path, "x"):
    with pytest.raises(run_lock.LockHeldError, match="host"):
      run_lock.RunLock(path, "y").acquire()
    raise KeyError
  assert not path.exists()


def test_embedding_output_is_locked(tmp_path):
  output = tmp_path / "out.h5"
  with run_lock.RunLock(tmp_path / "out.h5.lock", "embedding"):
    # Refused before anything is read (the model is not even looked at).
    with pytest.raises(run_lock.LockHeldError, match="embedding"):
      embed_run.embed_fasta(str(tmp_path / "missing.fasta"), str(output),
                            model=None)
  with run_lock.RunLock(
      tmp_path / "out.h5.shard-00001-of-00002.lock", "embedding"):
    with pytest.raises(run_lock.LockHeldError):
      embed_run.embed_fasta(str(tmp_path / "missing.fasta"), str(output),
                            model=None, shard_index=1, num_shards=2)
  assert not output.exists()


# --- damage -----------------------------------------------------------------


def test_overwritten_bytes_fall_back_to_the_newest_intact_step(run_dir, caplog):
  step_2 = run_dir / "checkpoints" / "2"
  target = _largest_params_file(step_2)
  with open(target, "r+b") as f:
    f.seek(target.stat().st_size // 2)
    f.write(np.random.default_rng(0).bytes(4096))
  with pytest.raises(checkpoints.DamagedCheckpointError,
                     match="step 2 is damaged"):
    checkpoints.verify_params(step_2)
  with caplog.at_level("WARNING"):
    _train(run_dir, 2)
  assert "checkpoint step 2 is damaged" in caplog.text
  assert "moved damaged checkpoint step 2 aside" in caplog.text
  assert "restored step 1" in caplog.text or (run_dir / "checkpoints" / "1").exists()
  assert (run_dir / "checkpoints" / "2.damaged").is_dir()
  # Step 2 trained again from step 1, intact.
  assert checkpoints.verify_params(step_2) == step_2


def test_truncated_file_names_the_step(run_dir):
  step_2 = run_dir / "checkpoints" / "2"
  target = _largest_params_file(step_2)
  with open(target, "r+b") as f:
    f.truncate(target.stat().st_size // 3)
  for read in (checkpoints.verify_params, checkpoints.restore_params,
               lambda p: [leaf.load() for leaf in jax.tree_util.tree_leaves(
                   checkpoints.lazy_params(p)[2])]):
    with pytest.raises(checkpoints.DamagedCheckpointError,
                       match=f"step 2 is damaged \\({step_2}\\)"):
      read(run_dir)


def test_missing_items_fail_naming_the_step_when_nothing_is_intact(run_dir):
  for step in ("1", "2"):
    shutil.rmtree(run_dir / "checkpoints" / step / "train_info")
  before = _listing(run_dir)
  with pytest.raises(checkpoints.DamagedCheckpointError,
                     match=r"step 2 is damaged .*missing train_info/.*no "
                     r"older step .* intact \(damaged: 2, 1\)"):
    _train(run_dir, 3)
  assert _listing(run_dir) == before  # Nothing moved or written.


def test_step_without_optimizer_state_is_not_resumed_silently(run_dir):
  # An older step without the integrity record: its damage cannot be told
  # from another format, so nothing falls back; the error says why.
  step_2 = run_dir / "checkpoints" / "2"
  shutil.rmtree(step_2 / "opt_state")
  shutil.rmtree(step_2 / "integrity")
  with pytest.raises(checkpoints.DamagedCheckpointError,
                     match=r"step 2 is damaged .*missing opt_state/"):
    _train(run_dir, 3)


# --- non-finite values --------------------------------------------------------


def test_nan_parameters_stop_the_run_keeping_every_checkpoint(run_dir, caplog):
  """A good checkpoint (step 3, checksums and all) whose params hold a NaN:
  the next step's loss is NaN, the run stops naming it, nothing is saved and
  keep-N (3) deletes none of steps 1-3."""
  built = trainer.build_train_step(
      model_config=CONFIG, optimizer=optimizers.adafactor(),
      learning_rate=optimizers.constant_schedule(1e-3),
      loss=steps.LossConfig(),
      partition=partitioning.PartitionConfig(mesh_shape=(1, 1)),
      batch_size=8, task_feature_lengths=LENGTHS, num_microbatches=1, seed=0)
  manager = checkpoints.checkpoint_manager(run_dir, async_save=False)
  restored = checkpoints.restore_train_items(
      manager, 2, config=CONFIG,
      abstract_params=built.abstract_state.params,
      abstract_opt_state=built.abstract_state.opt_state)
  leaves, tree = jax.tree_util.tree_flatten(restored["params"])
  leaves[0] = leaves[0].at[(0,) * leaves[0].ndim].set(np.nan)
  params = jax.tree_util.tree_unflatten(tree, leaves)
  checkpoints.save(manager, 3, params=params, config=CONFIG,
                   opt_state=restored["opt_state"],
                   train_info={"step": 3, "batches_consumed": 3})
  manager.wait_until_finished()
  manager.close()
  before = _listing(run_dir)

  with caplog.at_level("INFO"), pytest.raises(
      loop.NonFiniteError,
      match=r"step 4: the loss \(nan\).*not finite.*without saving.*last "
      r"checkpoint is step 3"):
    _train(run_dir, 6, keep_checkpoints=3)
  assert _listing(run_dir) == before
  for step in (1, 2):
    _, _, good = checkpoints.restore_params(run_dir / "checkpoints" / str(step))
    assert all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(good))
  assert not (run_dir / loop.LOCK_FILE).exists()


# --- settings that would do nothing -------------------------------------------


@pytest.mark.parametrize("setting, message", [
    ({"train_steps": -5}, r"TRAIN_STEPS \(trainer.train.train_steps\) must "
     r"be an integer >= 0, got -5"),
    ({"batch_size": 0}, r"BATCH_SIZE \(trainer.train.batch_size\) .* got 0"),
    ({"checkpoint_period": 0}, r"trainer.train.checkpoint_period .* got 0"),
])
def test_settings_that_would_do_nothing_are_refused(tmp_path, setting,
                                                    message):
  with pytest.raises(ValueError, match=message):
    _train(tmp_path / "run", **{"train_steps": 2, **setting})
  assert not (tmp_path / "run").exists()  # Refused before any work.


def test_model_dimensions_must_be_positive():
  with pytest.raises(ValueError, match=r"T5Config.d_model must be an integer "
                     r">= 1, got -4"):
    dataclasses.replace(CONFIG, d_model=-4)
  with pytest.raises(ValueError, match=r"T5Config.num_heads .* got 0"):
    dataclasses.replace(CONFIG, num_heads=0)
  with pytest.raises(ValueError, match=r"BertConfig.hidden_size .* got 0"):
    bert.BertConfig(hidden_size=0, num_hidden_layers=1,
                    num_attention_heads=1, intermediate_size=4)
