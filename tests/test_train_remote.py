"""A `gs://` MODEL_DIR stays a URL: the trainer's path handling, end to end.

`tests/fake_gcs.py` serves `gs://` from a local directory (in this process);
the code under test is the same that runs against Cloud Storage. Array data
is written by TensorStore's own GCS driver, which the fake does not serve, so
the checks stop short of saving parameters: everything else the trainer
writes at start-up and at a checkpoint goes through here.
"""

import pathlib

import orbax.checkpoint as ocp
import pytest
import tensorflow as tf

import fake_gcs

from prottrans_jax import checkpoints
from prottrans_jax import fs
from prottrans_jax import partitioning
import prottrans_jax.tasks  # pylint: disable=unused-import  (registers tasks)
from prottrans_jax.models import t5
from prottrans_jax.training import inputs
from prottrans_jax.training import loop
from prottrans_jax.training import optimizers
from prottrans_jax.training import summaries
from prottrans_jax.training import trainer

TASK = "swissprot_sample_prott5_denoise"
LENGTHS = {"inputs": 32, "targets": 32}


def _relative_files(root: pathlib.Path) -> list[str]:
  """Files under `root`, event files' time-and-host suffix left out."""
  return sorted(str(p.relative_to(root)).split(".tfevents.")[0]
                for p in root.rglob("*") if p.is_file())


def _write_run_files(model_dir: str) -> None:
  """What a run writes besides parameters: config, a checkpoint's JSON and
  data-state items, summaries; then reads them back through the same URL."""
  model_dir = loop.prepare_model_dir(model_dir, lambda: "TRAIN_STEPS = 3\n")
  assert (model_dir / loop.CONFIG_FILE).read_text() == "TRAIN_STEPS = 3\n"
  train_input = inputs.TrainInput(TASK, LENGTHS, inputs.InputShard.whole(2),
                                  seed=0)
  next(train_input)
  manager = checkpoints.checkpoint_manager(model_dir, async_save=False)
  manager.save(1, args=ocp.args.Composite(**{
      checkpoints.TRAIN_INFO: ocp.args.JsonSave({"step": 1}),
      checkpoints.DATASET: inputs.DataStateSave(train_input)}))
  expected = next(train_input)
  assert manager.latest_step() == 1
  resumed = inputs.TrainInput(TASK, LENGTHS, inputs.InputShard.whole(2),
                              seed=0)
  manager.restore(1, args=ocp.args.Composite(**{
      checkpoints.DATASET: inputs.DataStateRestore(resumed)}))
  got = next(resumed)
  for name in expected:
    assert (got[name] == expected[name]).all()
  manager.close()
  writer = summaries.SummaryWriter(model_dir / "train")
  writer.write(1, {"loss": 2.5})
  writer.close()


def test_gs_model_dir_is_never_a_local_path(tmp_path, monkeypatch):
  cwd, bucket_root, local_run = (tmp_path / "cwd", tmp_path / "bucket_root",
                                 tmp_path / "local" / "run")
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  with fake_gcs.serve(bucket_root):
    assert str(fs.path("gs://bucket/run")) == "gs://bucket/run"
    _write_run_files("gs://bucket/run")
    remote_run = fake_gcs.local_path_of("gs://bucket/run")
  assert not any(cwd.iterdir()), list(cwd.rglob("*"))
  # A local run goes through the same layer and writes the same files.
  _write_run_files(str(local_run))
  remote_files = _relative_files(remote_run)
  assert remote_files == _relative_files(local_run)
  assert "config.gin" in remote_files
  assert any(f.startswith("checkpoints/1/dataset/process_0-of-1/")
             for f in remote_files), remote_files
  event_file, = remote_run.glob("train/events.out.tfevents.*")
  losses = [(e.step, float(tf.make_ndarray(v.tensor)))
            for e in tf.compat.v1.train.summary_iterator(str(event_file))
            for v in e.summary.value]
  assert losses == [(1, 2.5)]


def test_trainer_starts_up_on_a_gs_model_dir(tmp_path, monkeypatch):
  """train() up to its first step (train_steps=0: nothing to save yet)."""
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  config = t5.T5_CONFIGS["tiny"]
  with fake_gcs.serve(tmp_path / "bucket_root"):
    trainer.train(
        model_dir="gs://bucket/run", model_config=config, task_name=TASK,
        task_feature_lengths=LENGTHS, batch_size=2, train_steps=0,
        learning_rate=optimizers.inverse_sqrt_schedule(0.01, 10),
        optimizer=optimizers.adafactor(),
        partition=partitioning.PartitionConfig(mesh_shape=(1, 1)),
        describe_config=lambda: "# tiny\n")
    run = fake_gcs.local_path_of("gs://bucket/run")
  assert not any(cwd.iterdir()), list(cwd.rglob("*"))
  assert (run / "config.gin").read_text() == "# tiny\n"
  assert (run / "checkpoints").is_dir()
  assert list(run.glob("train/events.out.tfevents.*"))


@pytest.mark.parametrize("settings, message", [
    ({"train_steps": -5}, "train_steps"),
    ({"train_steps": 3, "profile_first_step": 0}, "profile_first_step"),
    ({"train_steps": 3, "profile_first_step": 2, "profile_steps": 0},
     "profile_steps"),
])
def test_bad_step_settings_are_errors_before_any_work(tmp_path, settings,
                                                      message):
  with pytest.raises(ValueError, match=message):
    trainer.train(
        model_dir=str(tmp_path), model_config=t5.T5_CONFIGS["tiny"],
        task_name=TASK, task_feature_lengths=LENGTHS, batch_size=2,
        learning_rate=optimizers.inverse_sqrt_schedule(0.01, 10),
        optimizer=optimizers.adafactor(), **settings)
  assert not any(tmp_path.iterdir())


def test_tfrecord_framing_uses_crc32c():
  # The standard CRC-32C check value.
  assert summaries.crc32c(b"123456789") == 0xE3069283
