"""The sharded embedding output: atomic chunks, markers, merge, reader."""

import json
import os
import pathlib
import signal
import subprocess
import sys

import h5py
import numpy as np
import pytest

from prottrans_jax.inference import h5_writer
from prottrans_jax.inference import read_embeddings
from prottrans_jax.inference import shards

REPO = pathlib.Path(__file__).resolve().parents[1]
KEYS = ["per_residue/layer_-1", "per_protein/layer_-1"]
SETTINGS = {"model": "m", "max_tokens": 64, "shard": {"input": "x"}}


def _proteins(count, seed=0):
  rng = np.random.default_rng(seed)
  return [(f"p{i}", f"p{i} protein {i}",
           rng.normal(size=(3 + i % 7, 4)).astype(np.float32))
          for i in range(count)]


def _write_shards(output, proteins, num_shards, batch=2, complete=True):
  """Splits `proteins` into `num_shards` contiguous shards of chunks."""
  per_shard = -(-len(proteins) // num_shards)
  for index in range(num_shards):
    mine = proteins[index * per_shard:(index + 1) * per_shard]
    writer = shards.ShardWriter(output, index, num_shards, SETTINGS, KEYS)
    for b in range(0, len(mine), batch):
      part = mine[b:b + batch]
      writer.write_chunk(b // batch, [p[0] for p in part],
                         [p[1] for p in part],
                         {KEYS[0]: [p[2] for p in part],
                          KEYS[1]: [p[2].mean(0) for p in part]})
    if complete:
      writer.complete({"proteins": len(mine)})


def _contents(path):
  with h5py.File(path) as f:
    return (dict(f.attrs), {name: (f[name].attrs["original_id"], f[name][()])
                            for name in f})


def _assert_same(a, b):
  assert a[0] == b[0] and sorted(a[1]) == sorted(b[1])
  for name, (original_id, array) in a[1].items():
    assert b[1][name][0] == original_id
    np.testing.assert_array_equal(b[1][name][1], array)


def test_merged_paths_name_one_file_per_output():
  one = shards.merged_paths("out.h5", ["per_protein/layer_-1"])
  assert [p.name for p in one.values()] == ["out.h5"]
  both = shards.merged_paths("gs://b/out.h5", KEYS + ["per_protein/layer_-4"])
  assert [os.fspath(p) for p in both.values()] == [
      "gs://b/out.per_residue.layer-1.h5", "gs://b/out.per_protein.layer-1.h5",
      "gs://b/out.per_protein.layer-4.h5"]


def test_shards_merge_to_what_one_shard_merges(tmp_path, monkeypatch):
  proteins = _proteins(11)
  _write_shards(tmp_path / "one.h5", proteins, 1)
  _write_shards(tmp_path / "three.h5", proteins, 3)
  for output in ("one.h5", "three.h5"):
    merged = shards.merge(tmp_path / output, progress=False)
    assert [p.name for p in merged.values()] == [
        output.replace(".h5", ".per_residue.h5"),
        output.replace(".h5", ".per_protein.h5")]
  for kind in ("per_residue", "per_protein"):
    one = _contents(tmp_path / f"one.{kind}.h5")
    _assert_same(one, _contents(tmp_path / f"three.{kind}.h5"))
    assert json.loads(one[0][h5_writer.SETTINGS_ATTRIBUTE]) == {
        "model": "m", "max_tokens": 64, "per_protein": kind == "per_protein"}
  np.testing.assert_array_equal(one[1]["p4"][1], proteins[4][2].mean(0))
  # The reader streams the shards in merge order, without a merge.
  streamed = list(read_embeddings(tmp_path / "three.h5", KEYS[0]))
  assert [name for name, _, _ in streamed] == [p[0] for p in proteins]
  for (_, original_id, array), protein in zip(streamed, proteins):
    assert original_id == protein[1]
    np.testing.assert_array_equal(array, protein[2])
  with pytest.raises(ValueError, match="choose output_key"):
    next(read_embeddings(tmp_path / "three.h5"))
  # Links: virtual datasets over the chunks, read from elsewhere.
  shards.merge(tmp_path / "three.h5", links=True, overwrite=True,
               progress=False)
  monkeypatch.chdir("/")
  with h5py.File(tmp_path / "three.per_residue.h5") as f:
    assert f["p9"].is_virtual
  _assert_same(_contents(tmp_path / "one.per_residue.h5"),
               _contents(tmp_path / "three.per_residue.h5"))
  shards.remove_parts(tmp_path / "one.h5")
  assert not (tmp_path / "one.h5.parts").exists()
  assert [n for n, _, _ in read_embeddings(tmp_path / "one.per_protein.h5")
          ] == sorted(p[0] for p in proteins)


def test_merge_refuses_missing_and_unfinished_shards_and_repeated_ids(
    tmp_path):
  proteins = _proteins(9)
  _write_shards(tmp_path / "o.h5", proteins, 3, complete=False)
  with pytest.raises(h5_writer.OutputError) as error:
    shards.merge(tmp_path / "o.h5", progress=False)
  assert "shard 0 of 3 is not complete" in str(error.value)
  assert "--shard_index 2 --num_shards 3" in str(error.value)
  (tmp_path / "o.h5.parts" / "shard-00001-of-00003" / "settings.json").unlink()
  for chunk in (tmp_path / "o.h5.parts" / "shard-00001-of-00003").iterdir():
    chunk.unlink()
  (tmp_path / "o.h5.parts" / "shard-00001-of-00003").rmdir()
  with pytest.raises(h5_writer.OutputError, match="shard 1 of 3 is missing"):
    shards.merge(tmp_path / "o.h5", progress=False)

  _write_shards(tmp_path / "dup.h5", proteins[:4] + proteins[3:7], 2)
  with pytest.raises(h5_writer.OutputError,
                     match="'p3' is in shard-00000-of-00002 and in "
                           "shard-00001-of-00002"):
    shards.merge(tmp_path / "dup.h5", progress=False)
  with pytest.raises(h5_writer.OutputError, match="parts does not exist"):
    shards.merge(tmp_path / "none.h5", progress=False)


def test_a_shard_with_other_settings_or_split_is_refused(tmp_path):
  _write_shards(tmp_path / "o.h5", _proteins(4), 2)
  with pytest.raises(h5_writer.OutputError, match="settings.max_tokens: 64 there, 32 now"):
    shards.ShardWriter(tmp_path / "o.h5", 0, 2, dict(SETTINGS, max_tokens=32),
                       KEYS)
  with pytest.raises(h5_writer.OutputError, match="another split"):
    shards.ShardWriter(tmp_path / "o.h5", 0, 3, SETTINGS, KEYS)
  writer = shards.ShardWriter(tmp_path / "o.h5", 0, 2,
                              dict(SETTINGS, max_tokens=32), KEYS,
                              overwrite=True)
  assert writer.committed() == set() and not writer.completed


def test_a_shard_that_holds_no_chunk_never_blocks_a_rerun(tmp_path, caplog):
  """A run that stopped before its first chunk (killed, or failed) left
  only settings: a rerun with corrected settings starts afresh, and a
  failed run removes even those."""
  output = tmp_path / "o.h5"
  shards.ShardWriter(output, 0, 1, SETTINGS, KEYS)  # Killed here.
  with caplog.at_level("INFO"):
    writer = shards.ShardWriter(output, 0, 1, dict(SETTINGS, max_tokens=32),
                                KEYS)
  assert "holds no chunk yet; starting it with the new settings " \
      "(settings.max_tokens: 64 there, 32 now)" in caplog.text
  writer.remove_if_empty()  # What a failed run does.
  assert list(tmp_path.iterdir()) == []
  # A shard with a chunk is kept, and other settings refused.
  _write_shards(output, _proteins(2), 1, complete=False)
  writer = shards.ShardWriter(output, 0, 1, SETTINGS, KEYS)
  writer.remove_if_empty()
  assert writer.committed() == {0}
  with pytest.raises(h5_writer.OutputError, match="other settings"):
    shards.ShardWriter(output, 0, 1, dict(SETTINGS, max_tokens=32), KEYS)


def test_extending_a_merged_file_keeps_it_and_adds_the_rest(tmp_path):
  proteins = _proteins(8)
  keys = KEYS[1:]
  def shard(records):
    writer = shards.ShardWriter(tmp_path / "o.h5", 0, 1, SETTINGS, keys)
    writer.write_chunk(0, [p[0] for p in records], [p[1] for p in records],
                       {keys[0]: [p[2].mean(0) for p in records]})
    writer.complete({})
    merged = shards.merge(tmp_path / "o.h5", extend_existing=True,
                          progress=False)
    shards.remove_parts(tmp_path / "o.h5")
    return merged[keys[0]]
  path = shard(proteins[:5])
  first = _contents(path)
  path = shard(proteins[3:])  # 3 already there, 3 new.
  both = _contents(path)
  assert sorted(both[1]) == sorted(p[0] for p in proteins)
  _assert_same(first, (both[0], {n: both[1][n] for n in first[1]}))
  modified = os.stat(path).st_mtime_ns
  shard(proteins[:2])  # Nothing new: the file is left as it is.
  assert os.stat(path).st_mtime_ns == modified
  # A plain merge never replaces a file.
  _write_shards(tmp_path / "x.h5", proteins, 1)
  (tmp_path / "x.per_protein.h5").write_text("precious")
  with pytest.raises(h5_writer.OutputError, match="exists; pass --overwrite"):
    shards.merge(tmp_path / "x.h5", progress=False)
  assert (tmp_path / "x.per_protein.h5").read_text() == "precious"


_WRITE_CHUNKS = """
import sys
import numpy as np
from prottrans_jax.inference import shards
writer = shards.ShardWriter(sys.argv[1], 0, 1, {}, ["per_protein/layer_-1"])
for batch in range(3):
  writer.write_chunk(batch, ["p%d" % batch], ["p"],
                     {"per_protein/layer_-1": [np.ones(4)]})
"""


def test_killed_inside_a_commit_leaves_no_partial_chunk(tmp_path):
  output = tmp_path / "o.h5"
  env = dict(os.environ, PROTTRANS_JAX_PAUSE_AT="chunk_written:2",
             PYTHONPATH=str(REPO))
  process = subprocess.Popen([sys.executable, "-c", _WRITE_CHUNKS, str(output)],
                             env=env, stdout=subprocess.PIPE, text=True)
  paused = process.stdout.readline()
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert paused.startswith("PROTTRANS_JAX_PAUSED point=chunk_written n=2")
  directory = tmp_path / "o.h5.parts" / "shard-00000-of-00001"
  names = sorted(p.name for p in directory.iterdir())
  # Batch 1 is written aside, fsynced, not under its name.
  assert names[:2] == [".chunk-0000001.h5.tmp-%d" % process.pid,
                       "chunk-0000000.h5"] and len(names) == 3
  writer = shards.ShardWriter(output, 0, 1, {}, ["per_protein/layer_-1"])
  assert writer.committed() == {0}
  assert sorted(p.name for p in directory.iterdir()) == [
      "chunk-0000000.h5", "settings.json"]


def test_bad_pause_value_and_merge_script_errors(tmp_path, monkeypatch):
  monkeypatch.setenv(shards.PAUSE_AT_ENV, "chunk_written:0")
  with pytest.raises(ValueError, match="PROTTRANS_JAX_PAUSE_AT='chunk_written:0'"):
    shards.pause_point("merged")
  monkeypatch.delenv(shards.PAUSE_AT_ENV)
  _write_shards(tmp_path / "o.h5", _proteins(4), 2, complete=False)
  result = subprocess.run(
      [sys.executable, str(REPO / "scripts" / "merge_embeddings.py"),
       f"--output={tmp_path / 'o.h5'}", "--noprogress"],
      capture_output=True, text=True, timeout=300)
  assert result.returncode != 0
  assert "merge_embeddings.py: error: shard 0 of 2 is not complete" in (
      result.stderr)
