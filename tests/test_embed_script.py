"""scripts/embed.py end to end: checkpoints in, HDF5 out, killed anywhere
and rerun, sharded over processes and merged.

The script runs in children of a warm forkserver (tests/forked_embed.py):
real processes, killed with SIGKILL, without paying the TensorFlow import
each time."""

import gzip
import json
import os
import pathlib
import socket
import subprocess
import sys

import h5py
import numpy as np
import pytest

from prottrans_jax.data import fasta
from prottrans_jax.data import sample_corpus
from prottrans_jax.inference import engine
from prottrans_jax.inference import h5_writer
from prottrans_jax.inference import loading
from prottrans_jax.inference import run
from prottrans_jax.inference import shards
from prottrans_jax.models import t5

import forked_embed

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG = t5.T5_CONFIGS["tiny"]


@pytest.fixture(scope="module")
def model_dir(tiny_prott5_model_dir):
  return tiny_prott5_model_dir


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
  return forked_embed.ForkedRunner(tmp_path_factory.mktemp("forked"),
                                   devices=DEVICES)


@pytest.fixture(scope="module")
def crash_fasta(tmp_path_factory):
  """40 real proteins of 60-250 residues: about 30 batches of one protein
  per device at MAX_TOKENS per device, over a few buckets."""
  records = [r for r in fasta.read_fasta(sample_corpus.FASTA_PATH)
             if 60 <= len(r.sequence) <= 250][:40]
  path = tmp_path_factory.mktemp("fasta") / "forty.fasta"
  path.write_text("".join(f">{r.description}\n{r.sequence}\n"
                          for r in records))
  return path, records


def _embed_args(fasta_path, output, model_dir, *extra):
  return [f"--input={fasta_path}", f"--output={output}",
          f"--checkpoint_dir={model_dir}", f"--max_tokens={MAX_TOKENS}",
          "--noprogress", *extra]


MAX_TOKENS = 128  # Per device.
DEVICES = 2  # The forked runs' host devices.
BOTH = ("--per_residue", "--per_protein")  # Two outputs, two files.


def _outputs(output):
  """The two files a --per_residue --per_protein run writes."""
  stem = str(output)[:-len(".h5")]
  return [pathlib.Path(f"{stem}.per_residue.h5"),
          pathlib.Path(f"{stem}.per_protein.h5")]


def _assert_same_file(expected, actual, atol=None):
  """Same datasets, attributes and (bit for bit, unless `atol`) values."""
  with h5py.File(expected) as a, h5py.File(actual) as b:
    assert dict(a.attrs) == dict(b.attrs)
    assert sorted(a) == sorted(b) and len(a) > 0
    for name in a:
      assert a[name].dtype == b[name].dtype
      assert dict(a[name].attrs) == dict(b[name].attrs)
      if atol is None:
        np.testing.assert_array_equal(a[name][()], b[name][()])
      else:
        np.testing.assert_allclose(a[name][()], b[name][()], atol=atol,
                                   rtol=0)


@pytest.fixture(scope="module")
def straight_outputs(runner, crash_fasta, model_dir, tmp_path_factory):
  """The uninterrupted run's two files."""
  output = tmp_path_factory.mktemp("straight") / "straight.h5"
  runner.run(_embed_args(crash_fasta[0], output, model_dir, *BOTH))
  return _outputs(output)


# Where each killed run stops (the test hook PROTTRANS_JAX_PAUSE_AT: the
# n-th time this run reaches the point): computing a batch, inside a
# chunk's commit (written, not yet renamed into place), just after a
# commit, inside the merge's commit and after it, spread over a whole run.
KILL_POINTS = [("batch_computed", 1), ("chunk_written", 1),
               ("chunk_committed", 1), ("chunk_written", 2),
               ("chunk_committed", 2), ("batch_computed", 3)] * 3 + [
                   ("merge_written", 1), ("merged", 1)]


def _committed_chunks(output):
  return sorted(pathlib.Path(f"{output}.parts").glob("shard-*/chunk-*.h5"))


def test_killed_anywhere_the_rerun_finishes_with_the_uninterrupted_output(
    runner, crash_fasta, model_dir, straight_outputs, tmp_path):
  fasta_path, records = crash_fasta
  output = tmp_path / "killed.h5"
  args = _embed_args(fasta_path, output, model_dir, *BOTH)
  committed = []
  for point, n in KILL_POINTS:
    paused = runner.run_until_paused(args, f"{point}:{n}")
    assert paused is not None, f"the run ended before reaching {point}:{n}"
    assert f"point={point} n={n}" in paused
    # Committed chunks are never lost or rewritten by a kill.
    now = _committed_chunks(output)
    assert set(committed) <= set(now)
    committed = now
    if point == "merged":
      assert all(p.exists() for p in _outputs(output))
  _, log = runner.run(args)
  # Killed after the merge, the rerun finds every protein in the files.
  assert f"0 proteins embedded (0 residues), {len(records)} already there" in log
  assert not pathlib.Path(f"{output}.parts").exists()
  for expected, actual in zip(straight_outputs, _outputs(output)):
    _assert_same_file(expected, actual)


def test_a_rerun_redoes_only_the_batch_in_flight(runner, crash_fasta,
                                                  model_dir, tmp_path):
  fasta_path, records = crash_fasta
  output = tmp_path / "o.h5"
  args = _embed_args(fasta_path, output, model_dir, "--per_protein")
  assert runner.run_until_paused(args, "chunk_written:4")
  chunks = _committed_chunks(output)
  assert len(chunks) == 3  # The fourth was in flight: not under its name.
  committed = 0
  for chunk in chunks:
    with h5py.File(chunk) as f:
      committed += len(f["ids"])
  _, log = runner.run(args)
  assert (f"{len(records) - committed} proteins embedded" in log
          and f"{committed} already there" in log), log[-2000:]
  with h5py.File(output) as f:
    assert len(f) == len(records)


def test_pause_hook_rejects_a_bad_value(runner, crash_fasta, model_dir,
                                        tmp_path):
  code, log = runner.run(
      _embed_args(crash_fasta[0], tmp_path / "o.h5", model_dir),
      env={"PROTTRANS_JAX_PAUSE_AT": "chunk_written"}, check=False)
  assert code != 0 and "PROTTRANS_JAX_PAUSE_AT" in log


def test_former_flag_max_residues_works_with_a_warning(runner, model_dir,
                                                       tmp_path):
  fasta_path = tmp_path / "three.fasta"
  fasta_path.write_text(">a\nMKTAYIAKQR\n>b\nMKTAYIAKQRQISFVKSHFSRQ\n"
                        ">c\nGSHMKTAY\n")
  output = tmp_path / "o.h5"
  args = _embed_args(fasta_path, output, model_dir)
  _, log = runner.run([arg.replace("--max_tokens=", "--max_residues=")
                       for arg in args])
  assert ("--max_residues is deprecated and will be removed: use "
          "--max_tokens") in log
  with h5py.File(output) as f:
    recorded = json.loads(f.attrs[h5_writer.SETTINGS_ATTRIBUTE])
    assert len(f) == 3
  assert recorded["max_tokens"] == MAX_TOKENS and "max_residues" not in recorded
  # The new name resumes the file as the same setting; nothing is left to do.
  _, again = runner.run(args)
  assert "0 proteins embedded" in again and "3 already there" in again
  assert "deprecated" not in again


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
    runner, model_dir, tmp_path):
  fasta_path = tmp_path / "dup.fasta"
  fasta_path.write_text(">P1 one\nMKTAYIAKQR\n>P1 again\nMKTAYIAKQR\n")
  output = tmp_path / "o.h5"
  code, log = runner.run(_embed_args(fasta_path, output, model_dir),
                         check=False)
  assert code != 0 and "duplicate id 'P1'" in log
  assert not output.exists() and not pathlib.Path(f"{output}.parts").exists()

  code, log = runner.run(_embed_args(fasta_path, output,
                                     tmp_path / "no_model"), check=False)
  assert code != 0 and "no checkpoint at" in log and "no_model" in log

  code, log = runner.run(_embed_args(fasta_path, output, model_dir,
                                     "--shard_index=3", "--num_shards=3"),
                         check=False)
  assert code != 0 and "--shard_index=3 --num_shards=3" in log


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


def _shard_residues(output):
  """Residues each shard embedded, from the shards' COMPLETED records."""
  return [json.loads(p.read_text())["residues"] for p in sorted(
      pathlib.Path(f"{output}.parts").glob("shard-*/COMPLETED"))]


def test_three_shards_run_alone_merge_to_the_single_process_output(
    runner, crash_fasta, model_dir, straight_outputs, tmp_path):
  fasta_path, records = crash_fasta
  output = tmp_path / "sharded.h5"
  shard = lambda i: _embed_args(fasta_path, output, model_dir, *BOTH,
                                f"--shard_index={i}", "--num_shards=3")
  # Any order; shard 0 is killed mid-run and rerun alone.
  _, log = runner.run(shard(2))
  assert "shard 2 of 3" in log and "merge_embeddings.py" in log
  assert runner.run_until_paused(shard(0), "chunk_committed:2")
  runner.run(shard(1))
  with pytest.raises(h5_writer.OutputError, match="shard 0 of 3"):
    shards.merge(str(output), progress=False)
  runner.run(shard(0))
  residues = _shard_residues(output)
  total = sum(len(r.sequence) for r in records)
  assert len(residues) == 3 and sum(residues) == total
  assert max(residues) - min(residues) < 0.1 * total / 3, residues

  merge = subprocess.run(
      [sys.executable, str(REPO / "scripts" / "merge_embeddings.py"),
       f"--output={output}", "--noprogress"],
      env=dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2"),
      capture_output=True, text=True, timeout=600)
  assert merge.returncode == 0, merge.stderr[-3000:]
  # Other batches than the single run's: equal to float32 rounding.
  for expected, actual in zip(straight_outputs, _outputs(output)):
    _assert_same_file(expected, actual, atol=1e-5)


def test_jax_distributed_processes_default_to_one_shard_each(
    runner, crash_fasta, model_dir, straight_outputs, tmp_path):
  fasta_path, _ = crash_fasta
  output = tmp_path / "multi.h5"
  address = f"127.0.0.1:{_free_port()}"
  processes = [runner.start(_embed_args(
      fasta_path, output, model_dir, *BOTH,
      f"--coordinator_address={address}", "--num_processes=2",
      f"--process_id={i}")) for i in range(2)]
  for process, log in processes:
    process.join(600)
    assert process.exitcode == 0, log.read_text()[-3000:]
  assert len(_shard_residues(output)) == 2
  shards.merge(str(output), progress=False)
  for expected, actual in zip(straight_outputs, _outputs(output)):
    _assert_same_file(expected, actual, atol=1e-5)
