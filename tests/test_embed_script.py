"""scripts/embed.py end to end: checkpoints in, HDF5 out, killed and resumed."""

import gzip
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import threading

import h5py
import numpy as np
import pytest

from prottrans_jax import families
from prottrans_jax.data import fasta
from prottrans_jax.data import sample_corpus
from prottrans_jax.inference import batching
from prottrans_jax.inference import engine
from prottrans_jax.inference import h5_writer
from prottrans_jax.inference import loading
from prottrans_jax.inference import run
from prottrans_jax.models import t5

REPO = pathlib.Path(__file__).resolve().parents[1]
EMBED = REPO / "scripts" / "embed.py"
CONFIG = t5.T5_CONFIGS["tiny"]


@pytest.fixture(scope="module")
def model_dir(tiny_prott5_model_dir):
  return tiny_prott5_model_dir


@pytest.fixture(scope="module")
def mixed_lengths_fasta(tmp_path_factory):
  """Real proteins spanning five length ranges (several buckets, each
  compiled once): 11 proteins in 7 batches of 1 or 2 at --max_tokens=2048
  on 2 devices."""
  records = list(fasta.read_fasta(sample_corpus.FASTA_PATH))
  chosen = []
  for low, high, count in ((1025, 2048, 1), (513, 1024, 3), (257, 512, 3),
                           (129, 256, 3), (1, 128, 3)):
    chosen += [r for r in records if low <= len(r.sequence) <= high][:count]
  path = tmp_path_factory.mktemp("fasta") / "mixed.fasta"
  path.write_text("".join(f">{r.description}\n{r.sequence}\n" for r in chosen))
  return path, len(chosen)


def _embed_command(fasta_path, output, model_dir, *extra):
  return [sys.executable, str(EMBED), f"--input={fasta_path}",
          f"--output={output}", f"--checkpoint_dir={model_dir}",
          "--max_tokens=2048", "--noprogress", *extra]


MAX_TOKENS = 2048  # _embed_command's --max_tokens.
DEVICES = 2  # _env's host devices.


def _env():
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={DEVICES}")
  env.pop(run.PAUSE_AFTER_BATCHES_ENV, None)
  return env


def _first_batches(fasta_path, count):
  """Dataset names of the proteins in the first `count` batches the engine
  plans for `fasta_path` (the plan depends on the lengths alone)."""
  records = list(fasta.read_fasta(fasta_path))
  special = families.of(CONFIG).num_special_tokens
  plan = list(batching.plan_batches(
      [len(r.sequence) + special for r in records], MAX_TOKENS, DEVICES))
  return [h5_writer.dataset_name(records[i].id)
          for batch in plan[:count] for i in batch.indices]


def _run_until_paused(command, after_batches, log_path):
  """Starts `command` with the pause hook of run.py and returns the process,
  blocked after its `after_batches`-th batch is on disk, and the line it
  announced the pause with."""
  env = dict(_env(), **{run.PAUSE_AFTER_BATCHES_ENV: str(after_batches)})
  with open(log_path, "w") as log:
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                               stderr=log, text=True)
  # A run that hangs before pausing is killed, which ends its stdout.
  watchdog = threading.Timer(600, process.kill)
  watchdog.start()
  try:
    paused = next((line for line in process.stdout
                   if line.startswith(run.PAUSED_MARKER)), None)
  finally:
    watchdog.cancel()
  if paused is None:
    process.kill()
    process.wait()
    pytest.fail("the run ended without pausing:\n"
                + pathlib.Path(log_path).read_text()[-3000:])
  return process, paused


def test_killed_run_resumes_to_the_uninterrupted_file(
    model_dir, mixed_lengths_fasta, tmp_path):
  fasta_path, total = mixed_lengths_fasta
  straight = tmp_path / "straight.h5"
  subprocess.run(_embed_command(fasta_path, straight, model_dir), env=_env(),
                 check=True, capture_output=True, timeout=600)

  # The run blocks once its second batch is on disk (run.py's test hook) and
  # is killed there, with 5 of its 7 batches unwritten, however fast the
  # machine.
  resumed = tmp_path / "resumed.h5"
  process, paused = _run_until_paused(
      _embed_command(fasta_path, resumed, model_dir), 2, tmp_path / "log")
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert process.returncode == -signal.SIGKILL
  expected = _first_batches(fasta_path, 2)
  assert len(expected) == 4 and total == 11
  assert f"batches=2 proteins={len(expected)} " in paused
  with h5py.File(resumed) as f:
    assert sorted(f) == sorted(expected)

  result = subprocess.run(_embed_command(fasta_path, resumed, model_dir),
                          env=_env(), check=True, capture_output=True,
                          text=True, timeout=600)
  assert (f"{total - len(expected)} proteins embedded" in result.stdout
          and f"{len(expected)} already there" in result.stdout), result.stdout
  with h5py.File(straight) as a, h5py.File(resumed) as b:
    assert sorted(a) == sorted(b) and len(a) == total
    for name in a:
      np.testing.assert_array_equal(a[name][()], b[name][()])
      assert a[name].attrs["original_id"] == b[name].attrs["original_id"]


def test_pause_hook_rejects_a_bad_value(model_dir, tmp_path, monkeypatch):
  fasta_path = tmp_path / "one.fasta"
  fasta_path.write_text(">a\nMKTAYIAKQR\n")
  monkeypatch.setenv(run.PAUSE_AFTER_BATCHES_ENV, "0")
  model = loading.from_checkpoint(str(model_dir))
  with pytest.raises(ValueError, match=f"{run.PAUSE_AFTER_BATCHES_ENV}='0'"):
    run.embed_fasta(str(fasta_path), str(tmp_path / "o.h5"), model,
                    progress=False)
  assert not (tmp_path / "o.h5").exists()


def test_former_flag_max_residues_works_with_a_warning(model_dir, tmp_path):
  fasta_path = tmp_path / "three.fasta"
  fasta_path.write_text(">a\nMKTAYIAKQR\n>b\nMKTAYIAKQRQISFVKSHFSRQ\n"
                        ">c\nGSHMKTAY\n")
  output = tmp_path / "o.h5"
  command = _embed_command(fasta_path, output, model_dir)
  old = [arg.replace("--max_tokens=", "--max_residues=") for arg in command]
  result = subprocess.run(old, env=_env(), capture_output=True, text=True,
                          timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert ("--max_residues is deprecated and will be removed: use "
          "--max_tokens") in result.stderr
  with h5py.File(output) as f:
    recorded = json.loads(f.attrs[h5_writer.SETTINGS_ATTRIBUTE])
    assert len(f) == 3
  assert recorded["max_tokens"] == MAX_TOKENS and "max_residues" not in recorded
  # The new name resumes the file as the same setting; nothing is left to do.
  again = subprocess.run(command, env=_env(), check=True,
                         capture_output=True, text=True, timeout=600)
  assert "0 proteins embedded" in again.stdout
  assert "3 already there" in again.stdout
  assert "deprecated" not in again.stderr

  both = subprocess.run([*command, f"--max_residues={MAX_TOKENS}"],
                        env=_env(), capture_output=True, text=True,
                        timeout=600)
  assert both.returncode != 0
  assert "give --max_tokens only" in both.stderr


def test_output_of_the_previous_version_resumes(model_dir, shared_data,
                                                tmp_path):
  """Files recorded `max_residues` before the rename to `max_tokens`."""
  records = list(fasta.read_fasta(shared_data / "sequences" /
                                  "globins45.fasta"))[:5]
  fasta_path = tmp_path / "five.fasta"
  fasta_path.write_text("".join(f">{r.description}\n{r.sequence}\n"
                                for r in records))
  model = loading.from_checkpoint(str(model_dir))
  settings = engine.EmbedSettings(max_tokens=MAX_TOKENS)
  straight = tmp_path / "straight.h5"
  run.embed_fasta(str(fasta_path), str(straight), model, settings,
                  progress=False)
  with h5py.File(straight) as f:
    current = json.loads(f.attrs[h5_writer.SETTINGS_ATTRIBUTE])
    first_two = {name: (f[name].attrs["original_id"], f[name][()])
                 for name in sorted(f)[:2]}

  def previous_version_file(path, max_residues):
    """What the previous version wrote before it was killed: the same
    settings with the budget under its former key, two proteins."""
    recorded = dict(current, max_residues=max_residues)
    del recorded["max_tokens"]
    h5_writer.EmbeddingWriter(str(path), recorded).write(first_two)
    with h5py.File(path) as f:
      assert "max_residues" in f.attrs[h5_writer.SETTINGS_ATTRIBUTE]

  old = tmp_path / "old.h5"
  previous_version_file(old, MAX_TOKENS)
  summary = run.embed_fasta(str(fasta_path), str(old), model, settings,
                            progress=False)
  assert (summary.already_done, summary.embedded) == (2, 3)
  with h5py.File(straight) as a, h5py.File(old) as b:
    assert sorted(a) == sorted(b)
    for name in a:
      np.testing.assert_array_equal(a[name][()], b[name][()])

  # Another budget under the former name is still another setting.
  other = tmp_path / "other.h5"
  previous_version_file(other, MAX_TOKENS // 2)
  with pytest.raises(h5_writer.OutputError, match="other settings"):
    run.embed_fasta(str(fasta_path), str(other), model, settings,
                    progress=False)


def test_script_reports_bad_input_by_record_and_exits_nonzero(
    model_dir, tmp_path):
  fasta_path = tmp_path / "dup.fasta"
  fasta_path.write_text(">P1 one\nMKTAYIAKQR\n>P1 again\nMKTAYIAKQR\n")
  result = subprocess.run(
      _embed_command(fasta_path, tmp_path / "o.h5", model_dir), env=_env(),
      capture_output=True, text=True, timeout=600)
  assert result.returncode != 0
  assert "duplicate id 'P1'" in result.stderr
  assert not (tmp_path / "o.h5").exists()

  missing = subprocess.run(
      _embed_command(fasta_path, tmp_path / "o.h5", tmp_path / "no_model"),
      env=_env(), capture_output=True, text=True, timeout=600)
  assert missing.returncode != 0
  assert "no checkpoint at" in missing.stderr and "no_model" in missing.stderr


def test_checkpoint_dir_or_step_dir_load_the_same_model(model_dir):
  from_model_dir = loading.from_checkpoint(str(model_dir))
  from_step_dir = loading.from_checkpoint(str(model_dir / "checkpoints" / "7"))
  assert from_model_dir.config == from_step_dir.config == CONFIG
  assert from_model_dir.source.endswith("checkpoints/7")


@pytest.mark.parametrize("content, message", [
    (">a\n>b\nMKT\n", "record 'a' has no sequence"),
    (">a\nMK1T\n", "record 'a' has characters outside"),
    ("MKT\n>a\nMKT\n", "sequence data before the first header"),
    ("", "no FASTA records"),
])
def test_bad_fasta_kinds_are_errors_naming_the_record(
    model_dir, tmp_path, content, message):
  fasta_path = tmp_path / "bad.fasta"
  fasta_path.write_text(content)
  model = loading.from_checkpoint(str(model_dir))
  with pytest.raises(fasta.FastaError, match=message):
    run.embed_fasta(str(fasta_path), str(tmp_path / "o.h5"), model,
                    progress=False)


def test_repairs_are_applied_and_rare_letters_embed_as_x(model_dir, tmp_path):
  fasta_path = tmp_path / "repair.fasta"
  fasta_path.write_text(">a\n>b\nMKJU-T\n>c\nMKXXT\n")
  model = loading.from_checkpoint(str(model_dir))
  run.embed_fasta(str(fasta_path), str(tmp_path / "o.h5"), model,
                  policy=fasta.FastaPolicy(empty_records="skip",
                                           invalid_characters="remove"),
                  progress=False)
  with h5py.File(tmp_path / "o.h5") as f:
    assert sorted(f) == ["b", "c"]
    np.testing.assert_allclose(f["b"][()], f["c"][()], atol=1e-6)


def test_truncated_gzip_is_an_error(model_dir, tmp_path):
  data = gzip.compress(b"".join(b">p%d\n%s\n" % (i, b"MKTAYIAKQR" * 40)
                                for i in range(300)))
  fasta_path = tmp_path / "cut.fasta.gz"
  fasta_path.write_bytes(data[:len(data) // 2])
  model = loading.from_checkpoint(str(model_dir))
  with pytest.raises(fasta.FastaError, match="truncated"):
    run.embed_fasta(str(fasta_path), str(tmp_path / "o.h5"), model,
                    progress=False)
  assert not (tmp_path / "o.h5").exists()


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_with_jax_distributed_equal_one(model_dir, shared_data,
                                                      tmp_path):
  fasta_path = shared_data / "sequences" / "globins45.fasta"
  single = tmp_path / "single.h5"
  subprocess.run(_embed_command(fasta_path, single, model_dir), env=_env(),
                 check=True, capture_output=True, timeout=600)
  env = dict(_env(), XLA_FLAGS="--xla_force_host_platform_device_count=4")
  address = f"127.0.0.1:{_free_port()}"
  outputs = [tmp_path / "multi.h5", tmp_path / "process1.h5"]
  processes = [
      subprocess.Popen(
          _embed_command(fasta_path, outputs[i], model_dir,
                         f"--coordinator_address={address}",
                         "--num_processes=2", f"--process_id={i}"),
          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  for process in processes:
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-3000:]
  assert not outputs[1].exists()  # Only process 0 writes.
  with h5py.File(single) as a, h5py.File(outputs[0]) as b:
    assert sorted(a) == sorted(b) and len(a) == 45
    for name in a:
      np.testing.assert_allclose(a[name][()], b[name][()], atol=1e-5, rtol=0)
