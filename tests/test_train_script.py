"""scripts/train.py in subprocesses: stop and resume, two processes, gin errors.

Runs use the tiny model with dropout on (pretrain.gin's DROPOUT_RATE), so
dropout masks must also be reproduced by a resumed run and by two processes.
"""

import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow as tf

from prottrans_jax import checkpoints

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "train.py"
BASE_ARGS = (
    "--gin_file=models/prott5_tiny.gin",
    "--gin_file=runs/pretrain.gin",
    "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 64}",
    "--gin.BATCH_SIZE=8",
    "--gin.NUM_PARTITIONS=2",
    "--gin.LEARNING_RATE=0.01",
    "--gin.trainer.train.log_period=1",
    "--gin.trainer.train.eval_period=None",
)
TIMEOUT = 600
STRAIGHT_STEPS = 8
# Every run of this module compiles the same few programs: JAX's persistent
# cache (what trainer.train's compilation_cache_dir turns on) shares them
# between the subprocesses, as it would between a job's restarts.
_COMPILATION_CACHE = {}


@pytest.fixture(scope="module", autouse=True)
def _shared_compilation_cache(tmp_path_factory):
  _COMPILATION_CACHE["dir"] = str(tmp_path_factory.mktemp("compilation_cache"))
  yield
  _COMPILATION_CACHE.clear()


def _env(device_count):
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={device_count}"
  env["JAX_PLATFORMS"] = "cpu"
  env["JAX_COMPILATION_CACHE_DIR"] = _COMPILATION_CACHE["dir"]
  env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
  return env


def _train(model_dir, train_steps, *extra, device_count=8, check=True):
  result = subprocess.run(
      [sys.executable, str(SCRIPT), *BASE_ARGS,
       f"--gin.MODEL_DIR='{model_dir}'", f"--gin.TRAIN_STEPS={train_steps}",
       *extra],
      cwd=REPO, env=_env(device_count), capture_output=True, text=True,
      timeout=TIMEOUT, check=False)
  if check and result.returncode:
    raise AssertionError(f"train.py failed:\n{result.stderr[-5000:]}")
  return result


def _losses(model_dir, name="train"):
  """{step: loss} from the TensorBoard summaries, over all event files."""
  losses = {}
  for path in sorted((pathlib.Path(model_dir) / name).glob("events.*")):
    for event in tf.compat.v1.train.summary_iterator(str(path)):
      for value in event.summary.value:
        if value.tag == "loss":
          losses[event.step] = float(tf.make_ndarray(value.tensor))
  return losses


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
  """One uninterrupted run that the resumed and preempted runs must equal."""
  model_dir = tmp_path_factory.mktemp("straight")
  _train(model_dir, STRAIGHT_STEPS)
  return model_dir


def test_resumed_run_equals_uninterrupted_run(straight_run, tmp_path):
  first = _train(tmp_path, 3)
  assert "restored step" not in first.stderr
  second = _train(tmp_path, STRAIGHT_STEPS)
  assert "restored step 3 and its data position" in second.stderr
  straight, resumed = _losses(straight_run), _losses(tmp_path)
  assert sorted(straight) == sorted(resumed) == list(range(1, STRAIGHT_STEPS + 1))
  for step in range(4, STRAIGHT_STEPS + 1):
    assert resumed[step] == straight[step], step
  _, _, straight_params = checkpoints.restore_params(straight_run)
  _, _, resumed_params = checkpoints.restore_params(tmp_path)
  jax.tree_util.tree_map(np.testing.assert_array_equal, resumed_params,
                         straight_params)
  # What the run was configured with is in MODEL_DIR.
  assert f"TRAIN_STEPS = {STRAIGHT_STEPS}" in (tmp_path / "config.gin").read_text()


def test_a_diverging_run_stops_naming_the_step_and_keeps_its_checkpoints(
    straight_run, tmp_path):
  """A learning rate of 1e30 makes the parameters non-finite: the command
  exits non-zero naming the step, saves nothing, and every checkpoint that
  was there restores as before."""
  model_dir = tmp_path / "run"
  shutil.copytree(straight_run, model_dir)
  before = sorted(p.name for p in (model_dir / "checkpoints").iterdir())
  result = _train(model_dir, STRAIGHT_STEPS + 3, "--gin.LEARNING_RATE=1e30",
                  check=False)
  assert result.returncode != 0
  assert "prottrans-train: error: step " in result.stderr
  assert "not finite" in result.stderr
  assert sorted(p.name for p in (model_dir / "checkpoints").iterdir()) == before
  _, _, kept = checkpoints.restore_params(model_dir)
  _, _, original = checkpoints.restore_params(straight_run)
  jax.tree_util.tree_map(np.testing.assert_array_equal, kept, original)


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _train_two_processes(model_dir, train_steps, *extra):
  """2 processes x 4 devices, each reading its own input shard."""
  port = _free_port()
  procs = [
      subprocess.Popen(
          [sys.executable, str(SCRIPT), *BASE_ARGS,
           f"--gin.MODEL_DIR='{model_dir}'",
           f"--gin.TRAIN_STEPS={train_steps}", *extra,
           f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
           f"--process_id={i}"],
          cwd=REPO, env=_env(4), stdout=subprocess.DEVNULL,
          stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  errors = [p.communicate(timeout=TIMEOUT)[1] for p in procs]
  for p, err in zip(procs, errors):
    assert p.returncode == 0, err[-5000:]
  return errors


def test_sigterm_saves_the_step_and_exits_cleanly(straight_run, tmp_path):
  """A preempted run saves where it is, exits 0, and continues exactly."""
  preempted_dir = tmp_path / "preempted"
  proc = subprocess.Popen(
      [sys.executable, str(SCRIPT), *BASE_ARGS,
       f"--gin.MODEL_DIR='{preempted_dir}'", "--gin.TRAIN_STEPS=100000"],
      cwd=REPO, env=_env(8), stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE, text=True)
  log = []
  for line in proc.stderr:
    log.append(line)
    if "step 2 loss" in line:
      proc.send_signal(signal.SIGTERM)
      break
  log.extend(proc.stderr)
  assert proc.wait(timeout=TIMEOUT) == 0, "".join(log)[-5000:]
  log = "".join(log)
  saved = int(log.split("preempted: saved step ")[1].split()[0])
  assert 2 <= saved < 100, saved
  assert checkpoints.step_directory(preempted_dir).name == str(saved)

  # The uninterrupted run is the module's; a signal that came late (a
  # loaded machine) gets one of its own, as long.
  end = max(STRAIGHT_STEPS, saved + 2)
  straight_dir = straight_run if end == STRAIGHT_STEPS else tmp_path / "straight"
  if straight_dir != straight_run:
    _train(straight_dir, end)
  resumed = _train(preempted_dir, end)
  assert f"restored step {saved} and its data position" in resumed.stderr
  straight, continued = _losses(straight_dir), _losses(preempted_dir)
  for step in range(saved + 1, end + 1):
    assert continued[step] == straight[step], step
  _, _, straight_params = checkpoints.restore_params(straight_dir)
  _, _, continued_params = checkpoints.restore_params(preempted_dir)
  jax.tree_util.tree_map(np.testing.assert_array_equal, continued_params,
                         straight_params)


def test_sigterm_to_one_of_two_processes_stops_both_and_they_resume_exactly(
    tmp_path):
  """JAX's preemption service tells every process; all save the same step
  with each process's input position, and two processes resumed from it
  take exactly the steps (losses, evaluation, parameters) of an
  uninterrupted two-process run."""
  preempted_dir, straight_dir = tmp_path / "preempted", tmp_path / "straight"
  port = _free_port()
  procs = [
      subprocess.Popen(
          [sys.executable, str(SCRIPT), *BASE_ARGS,
           f"--gin.MODEL_DIR='{preempted_dir}'", "--gin.TRAIN_STEPS=100000",
           f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
           f"--process_id={i}"],
          cwd=REPO, env=_env(4), stdout=subprocess.DEVNULL,
          stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  log = []
  for line in procs[0].stderr:
    log.append(line)
    if "step 2 loss" in line:
      procs[0].send_signal(signal.SIGTERM)
      break
  logs = ["".join(log) + procs[0].stderr.read(),
          procs[1].communicate(timeout=TIMEOUT)[1]]
  for proc, err in zip(procs, logs):
    assert proc.wait(timeout=TIMEOUT) == 0, err[-5000:]
  saved = {int(err.split("preempted: saved step ")[1].split()[0])
           for err in logs}
  assert len(saved) == 1, saved
  step, = saved
  step_dir = checkpoints.step_directory(preempted_dir)
  assert step_dir.name == str(step)
  assert {"process_0-of-2", "process_1-of-2"} <= {
      p.name for p in (step_dir / "dataset").iterdir()}

  # Evaluation at the end, sharded like training, at most 2 batches.
  end = step + 2
  evaluate = (f"--gin.trainer.train.eval_period={end}",
              "--gin.trainer.train.eval_batches=2")
  errors = _train_two_processes(straight_dir, end, *evaluate)
  assert "'data': 4, 'model': 2" in errors[0]
  for i, err in enumerate(errors):
    assert "input shard %d of 2: 4 of the 8 rows" % i in err
    assert f"eval step {end} loss" in err
  errors = _train_two_processes(preempted_dir, end, *evaluate)
  for err in errors:
    assert f"restored step {step} and its data position" in err
  straight, resumed = _losses(straight_dir), _losses(preempted_dir)
  assert sorted(straight) == list(range(1, end + 1))
  for i in (step + 1, end):
    assert resumed[i] == straight[i], i
  assert (_losses(straight_dir, "eval") == _losses(preempted_dir, "eval")
          and list(_losses(straight_dir, "eval")) == [end])
  _, _, straight_params = checkpoints.restore_params(straight_dir)
  _, _, resumed_params = checkpoints.restore_params(preempted_dir)
  jax.tree_util.tree_map(np.testing.assert_array_equal, resumed_params,
                         straight_params)


def test_profile_window_writes_a_trace_under_model_dir(tmp_path):
  _train(tmp_path, 3, "--gin.trainer.train.profile_first_step=2",
         "--gin.trainer.train.profile_steps=1")
  traces = list((tmp_path / "plugins" / "profile").glob("*/*.xplane.pb"))
  assert traces and all(t.stat().st_size > 0 for t in traces), list(
      tmp_path.rglob("*"))


@pytest.mark.parametrize("binding, message", [
    ("--gin.TRAIN_STEPZ=3", "TRAIN_STEPZ"),
    ("--gin.trainer.train.batch_sise=3", "batch_sise"),
])
def test_gin_typo_exits_nonzero_naming_the_binding(tmp_path, binding,
                                                   message):
  result = _train(tmp_path, 3, binding, check=False)
  assert result.returncode != 0
  assert message in result.stderr


def test_missing_model_dir_exits_nonzero_naming_it():
  result = subprocess.run(
      [sys.executable, str(SCRIPT), *BASE_ARGS, "--gin.TRAIN_STEPS=3"],
      cwd=REPO, env=_env(8), capture_output=True, text=True, timeout=TIMEOUT,
      check=False)
  assert result.returncode != 0
  assert "MODEL_DIR" in result.stderr
