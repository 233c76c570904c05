"""Shards of a FASTA input: disjoint, complete, balanced, read in part."""

import gzip
import os
import sys
import threading

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


# --- Streams: standard input and named pipes, read once --------------------

STREAM_TEXT = ">a first\nMKTAYIAKQR\nQISF\n>b\nGSHMLEDPVD\n>c\nMKV*\n"


def _feed(fd_or_path, data):
  """Writes `data` into a pipe from a thread, as another process would: a
  reader that opens a named pipe twice hangs, one that reads standard
  input twice loses its first bytes."""
  def write():
    with open(fd_or_path, "wb") as f:
      f.write(data)
  thread = threading.Thread(target=write, daemon=True)
  thread.start()
  return thread


def _expected(tmp_path):
  path = tmp_path / "plain.fasta"
  path.write_text(STREAM_TEXT)
  return _key(fasta.read_fasta(path))


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_a_named_pipe_is_read_once_whole(tmp_path, compress):
  expected = _expected(tmp_path)
  fifo = str(tmp_path / "in.fifo")
  data = STREAM_TEXT.encode()
  data = gzip.compress(data) if compress else data
  for read in (lambda p: list(fasta.read_fasta(p)),
               lambda p: list(fasta.read_fasta_shard(
                   fasta.expand_inputs(p), 0, 1))):
    os.mkfifo(fifo)
    writer = _feed(fifo, data)
    assert _key(read(fifo)) == expected
    writer.join(timeout=10)
    assert not writer.is_alive()
    os.remove(fifo)


def test_standard_input_as_dash_and_dev_stdin(tmp_path, monkeypatch):
  expected = _expected(tmp_path)
  # `-`: sys.stdin, here a real pipe.
  read_end, write_end = os.pipe()
  monkeypatch.setattr(sys, "stdin", os.fdopen(read_end))
  writer = _feed(write_end, STREAM_TEXT.encode())
  assert fasta.expand_inputs("-") == ["-"]
  assert _key(fasta.read_fasta_shard(["-"], 0, 1)) == expected
  writer.join(timeout=10)
  # /dev/stdin: the process's descriptor 0, a pipe for the time of the test.
  read_end, write_end = os.pipe()
  saved = os.dup(0)
  try:
    os.dup2(read_end, 0)
    os.close(read_end)
    writer = _feed(write_end, gzip.compress(STREAM_TEXT.encode()))
    assert _key(fasta.read_fasta_shard(
        fasta.expand_inputs("/dev/stdin"), 0, 1)) == expected
    writer.join(timeout=10)
  finally:
    os.dup2(saved, 0)
    os.close(saved)


def test_a_stream_cannot_be_sharded(tmp_path):
  fifo = str(tmp_path / "in.fifo")
  os.mkfifo(fifo)  # Never opened: refused before any read.
  with pytest.raises(fasta.FastaError,
                     match=r"in.fifo is a stream.*cannot be split into 2"):
    list(fasta.read_fasta_shard([fifo], 0, 2))
  with pytest.raises(fasta.FastaError, match=r"<stdin> is a stream"):
    list(fasta.read_fasta_shard(["-"], 1, 3))
