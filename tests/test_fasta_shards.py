"""Shards of a FASTA input: disjoint, complete, balanced, read in part."""

import gzip
import os

import pytest

from prottrans_jax.data import fasta


def _key(records):
  return [(r.id, r.description, r.sequence) for r in records]


def _shards(inputs, num_shards, **kwargs):
  """Each shard's records and stats."""
  out = []
  for index in range(num_shards):
    stats = fasta.ShardReadStats()
    records = list(fasta.read_fasta_shard(inputs, index, num_shards,
                                          stats=stats, **kwargs))
    out.append((records, stats))
  return out


@pytest.fixture(scope="module")
def deeploc(shared_data):
  return str(shared_data / "localization" / "deeploc_test_set.fasta")


@pytest.mark.parametrize("num_shards", [1, 2, 3, 7])
def test_shards_in_order_are_the_whole_file(deeploc, num_shards):
  whole = list(fasta.read_fasta(deeploc))
  shards = _shards([deeploc], num_shards)
  assert sum((_key(r) for r, _ in shards), []) == _key(whole)
  if num_shards == 1:
    assert shards[0][0] == whole  # Line numbers too.


def test_shards_balance_residues_and_read_only_their_bytes(deeploc):
  size = os.path.getsize(deeploc)
  for num_shards, tolerance in ((3, 0.05), (8, 0.05)):
    shards = _shards([deeploc], num_shards)
    residues = [stats.residues for _, stats in shards]
    mean = sum(residues) / num_shards
    assert (max(residues) - min(residues)) / mean < tolerance, residues
    for records, stats in shards:
      # Its share of the bytes, the last record's tail and one line before.
      longest = max(len(r.description) + len(r.sequence) * 1.1 + 64
                    for r in records)
      assert stats.bytes_read < size / num_shards + 2 * longest
      assert stats.records == len(records)


def test_many_files_plain_and_gzip_crlf_and_multiline(tmp_path, deeploc):
  records = list(fasta.read_fasta(deeploc))[:60]
  def text(rs, newline="\n"):
    return "".join(f">{r.description}{newline}" + newline.join(
        r.sequence[i:i + 60] for i in range(0, len(r.sequence), 60)) + newline
                   for r in rs)
  (tmp_path / "a.fasta").write_text(text(records[:25]))
  (tmp_path / "b.fasta").write_bytes(text(records[25:40], "\r\n").encode())
  (tmp_path / "c.fasta").write_bytes(gzip.compress(text(records[40:]).encode()))
  (tmp_path / "notes.txt").write_text("not matched")
  inputs = fasta.expand_inputs(f"{tmp_path}/*.fasta")
  assert [os.path.basename(p) for p in inputs] == ["a.fasta", "b.fasta",
                                                   "c.fasta"]
  for num_shards in (1, 2, 3, 5, 100):
    shards = _shards(inputs, num_shards)
    assert sum((_key(r) for r, _ in shards), []) == _key(records)
  # A list keeps its order; a repeat is dropped.
  listed = fasta.expand_inputs(f"{tmp_path}/c.fasta,{tmp_path}/*.fasta")
  assert [os.path.basename(p) for p in listed] == ["c.fasta", "a.fasta",
                                                   "b.fasta"]


def test_policy_errors_name_the_byte_offset_mid_file(tmp_path):
  path = tmp_path / "bad.fasta"
  good = "".join(f">p{i}\n{'MKTAYIAKQR' * 5}\n" for i in range(20))
  path.write_text(good + good.replace(">p", ">r") + ">bad\nMK1T\n"
                  + good.replace(">p", ">q"))
  offset = 2 * len(good)  # In the second half.
  with pytest.raises(fasta.FastaError, match=f"bad.fasta:81: record 'bad'"):
    _shards([str(path)], 1)
  with pytest.raises(fasta.FastaError,
                     match=rf"bad.fasta \(byte {offset}\): record 'bad'"):
    list(fasta.read_fasta_shard([str(path)], 1, 2))
  # Repairs apply the same way; duplicates are found within a shard.
  path.write_text(good + good)
  policy = fasta.FastaPolicy(duplicate_ids="rename")
  assert len(_shards([str(path)], 1, policy=policy)[0][0]) == 40
  halves = _shards([str(path)], 2, policy=policy)
  assert [r.id for r in halves[1][0]][:1] == ["p0"]  # Its own first p0.


def test_bad_arguments_and_inputs_are_clear_errors(tmp_path):
  path = tmp_path / "one.fasta"
  path.write_text(">a\nMKT\n")
  for index, count in ((1, 1), (-1, 2), (0, 0)):
    with pytest.raises(ValueError, match="shard_index"):
      list(fasta.read_fasta_shard([str(path)], index, count))
  with pytest.raises(FileNotFoundError, match="no FASTA file matches"):
    fasta.expand_inputs(f"{tmp_path}/*.fa")
  with pytest.raises(FileNotFoundError, match="missing.fasta"):
    fasta.expand_inputs(f"{path},{tmp_path}/missing.fasta")
  # More shards than records: empty shards are fine; no records at all not.
  assert sum(len(r) for r, _ in _shards([str(path)], 4)) == 1
  (tmp_path / "empty.fasta").write_text("")
  with pytest.raises(fasta.FastaError, match="no FASTA records"):
    _shards([str(tmp_path / "empty.fasta")], 1)
