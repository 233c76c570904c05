"""Training input on several processes, and resuming it in constant time.

Two real processes (4 CPU devices each, `jax.distributed`) run
tests/input_probe.py; one process with 8 devices is the reference.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest
import seqio
import tensorflow as tf

from prottrans_jax.data import sample_corpus
from prottrans_jax.data import splits
from prottrans_jax.data import tfds_builder
from prottrans_jax.tasks import protein
from prottrans_jax.training import inputs

REPO = pathlib.Path(__file__).resolve().parents[1]
PROBE = REPO / "tests" / "input_probe.py"
TIMEOUT = 600


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _probe(num_processes: int, devices_per_process: int, meshes,
           slurm_job: bool = False):
  """Runs the probe in `num_processes` processes: joined by flags, or, with
  `slurm_job`, by nothing but a SLURM job step's environment."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=(
      f"--xla_force_host_platform_device_count={devices_per_process}"))
  port = _free_slurm_port() if slurm_job else _free_port()
  commands, envs = [], []
  for i in range(num_processes):
    command = [sys.executable, str(PROBE), *(f"--mesh={m}" for m in meshes)]
    process_env = dict(env)
    if slurm_job:
      # JAX puts a SLURM job's coordinator on the first node, at a port
      # taken from the job id: 61440 + id % 4096.
      process_env.update(
          SLURM_JOB_ID=str(port - 61440), SLURM_STEP_NODELIST="localhost",
          SLURM_NTASKS=str(num_processes), SLURM_PROCID=str(i),
          SLURM_LOCALID=str(i))
    elif num_processes > 1:
      command += [f"--coordinator_address=127.0.0.1:{port}",
                  f"--num_processes={num_processes}", f"--process_id={i}"]
    commands.append(command)
    envs.append(process_env)
  procs = [subprocess.Popen(command, cwd=REPO, env=process_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
           for command, process_env in zip(commands, envs)]
  outputs = [p.communicate(timeout=TIMEOUT) for p in procs]
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-5000:]
  return [json.loads(out.strip().splitlines()[-1])["results"]
          for out, _ in outputs], [err for _, err in outputs]


def _free_slurm_port():
  """A free port in the range JAX derives SLURM coordinator ports from."""
  for port in range(61440 + os.getpid() % 4000, 65536):
    with socket.socket() as s:
      try:
        s.bind(("127.0.0.1", port))
      except OSError:
        continue
      return port
  raise RuntimeError("no free port for the SLURM coordinator")


@pytest.fixture(scope="module")
def probes():
  meshes = ("4,2", "1,8")
  (single,), _ = _probe(1, 8, meshes)
  (first, second), _ = _probe(2, 4, meshes)
  return single, first, second


def test_two_processes_read_disjoint_halves(probes):
  single, first, second = (results[0] for results in probes)  # mesh 4 x 2
  # Each process holds two of the four `data` rows blocks: two shards.
  assert single["shard_count"] == 1
  assert (first["shard_count"], second["shard_count"]) == (2, 2)
  assert {first["shard_index"], second["shard_index"]} == {0, 1}
  # Each process's pipeline makes half of every batch...
  assert single["rows"] == [8, 8, 8]
  assert first["rows"] == second["rows"] == [4, 4, 4]
  # ... from half of the examples: no example read by both, and together
  # what one process reads over the same epoch.
  ids_first, ids_second = first["epoch_ids"], second["epoch_ids"]
  assert not set(ids_first) & set(ids_second)
  assert sorted(ids_first + ids_second) == sorted(single["epoch_ids"])
  total = len(single["epoch_ids"])
  assert sorted([len(ids_first), len(ids_second)]) == [total // 2,
                                                       total - total // 2]
  assert first["digest"] != second["digest"]


def test_processes_holding_the_same_rows_read_the_same_shard(probes):
  single, first, second = (results[1] for results in probes)  # mesh 1 x 8
  # Model parallelism across both processes: both hold every row, so both
  # read the one shard, the same batches as a single process.
  for result in (first, second):
    assert (result["shard_index"], result["shard_count"]) == (0, 1)
    assert result["rows"] == [8, 8, 8]
    assert result["digest"] == single["digest"]
    assert result["epoch_ids"] == single["epoch_ids"]


class _CountingSource:
  """The bundled sample's training split, counting the examples read.

  A test-only task: the count comes from a `tf.py_function` in the source,
  so it sees every example the pipeline pulls, however the iterator got to
  where it is (read from the start, skipped, or restored).
  """

  def __init__(self):
    self.count = 0
    self._lock = threading.Lock()

  def _seen(self, example_id):
    with self._lock:
      self.count += 1
    return example_id

  def dataset_fn(self, split: str, shuffle_files: bool, seed=None):
    del shuffle_files, seed
    validation = tfds_builder.CONFIGS["swissprot_sample"].validation_fraction
    source = protein.fasta_source(sample_corpus.FASTA_PATH, validation)
    ds = source.get_dataset(split=split, shuffle=False)
    ds = ds.map(lambda x: {**x, "id": tf.py_function(
        self._seen, [x["id"]], tf.string)})
    # The counter is outside the iterator's state, on purpose: a restored
    # iterator must not need to replay it.
    options = tf.data.Options()
    options.experimental_external_state_policy = (
        tf.data.experimental.ExternalStatePolicy.IGNORE)
    return ds.with_options(options)


@pytest.fixture(scope="module")
def counted_task():
  counter = _CountingSource()
  name = "counted_swissprot_sample_prott5_denoise"
  seqio.TaskRegistry.add(
      name, source=seqio.FunctionDataSource(
          counter.dataset_fn, splits=(splits.TRAIN, splits.VALIDATION)),
      preprocessors=protein.PROTT5_PREPROCESSORS,
      output_features=protein.PROTT5_OUTPUT_FEATURES)
  yield name, counter
  seqio.TaskRegistry.remove(name)


LENGTHS = {"inputs": 64, "targets": 64}


def _next_batches(train_input, n):
  return [next(train_input) for _ in range(n)]


def test_resume_reads_the_same_few_examples_at_any_step(counted_task,
                                                        tmp_path):
  task, counter = counted_task
  shard = inputs.InputShard.whole(4)
  run = inputs.TrainInput(task, LENGTHS, shard, seed=0)
  expected = {}
  for step in range(1, 1001):
    next(run)
    if step in (10, 1000):
      run.save_state(tmp_path / str(step))
      expected[step] = _next_batches(run, 2)

  read_to_first_batch = {}
  for step in (10, 1000):
    resumed = inputs.TrainInput(task, LENGTHS, shard, seed=0)
    counter.count = 0
    assert resumed.has_state(tmp_path / str(step))
    resumed.restore_state(tmp_path / str(step))
    got = _next_batches(resumed, 2)
    read_to_first_batch[step] = counter.count
    # The continuation is the uninterrupted run's.
    for want_batch, got_batch in zip(expected[step], got):
      for name in want_batch:
        np.testing.assert_array_equal(got_batch[name], want_batch[name])

  # What skipping would cost, for scale: every batch up to the step again.
  skipping = inputs.TrainInput(task, LENGTHS, shard, seed=0)
  counter.count = 0
  skipping.skip(1000)
  next(skipping)
  read_by_skipping = counter.count

  print("examples read to the first batch after restoring:",
        read_to_first_batch, "by skipping 1000 batches:", read_by_skipping)
  assert read_to_first_batch[1000] <= 1.5 * read_to_first_batch[10] + 1, (
      read_to_first_batch)
  assert read_by_skipping > 10 * read_to_first_batch[1000], (
      read_by_skipping, read_to_first_batch)


def test_slurm_job_step_joins_without_flags():
  """`srun -n 2 scripts/train.py ...`: no --coordinator_address needed."""
  (first, second), errors = _probe(2, 4, ["4,2"], slurm_job=True)
  assert {first[0]["shard_index"], second[0]["shard_index"]} == {0, 1}
  assert all("joining the SLURM job's processes" in err for err in errors)
