"""Streaming FASTA reader with the one validation policy every entry point uses.

Accepted as is (documented normalisations, not repairs): plain or gzip files
(detected from the magic bytes, not the name), local or at a URL
(`gs://bucket/proteins.fasta.gz`, streamed through `prottrans_jax.fs`),
multi-line records, CRLF line ends, lower-case letters (upper-cased),
whitespace inside sequence lines, and a single terminal `*` (stop codon) at
the end of a record. Any Latin letter is an amino-acid code (IUPAC: the 20
standard residues, X, B/Z/J ambiguity codes, U and O); the vocabularies map
the rare ones to X.

Everything else is bad input and gets, according to `FastaPolicy`, either a
`FastaError` naming the file, the record and the line, or a repair that is
logged with the record id. Nothing is dropped silently:

| bad input                         | default  | repairs                      |
| --------------------------------- | -------- | ---------------------------- |
| no records at all                 | error    | none                         |
| sequence before any header        | error    | none                         |
| header without sequence (empty)   | error    | "skip" (logged)              |
| non-letter characters, digits     | error    | "remove", "replace_with_x"   |
| duplicate id                      | error    | "rename" (id_2, ...), "skip" |
| truncated gzip                    | error    | none                         |
"""

import contextlib
import dataclasses
import gzip
import hashlib
import io
import itertools
import logging
import math
import os
import stat
import sys
import zlib
from typing import Iterator, Literal, Sequence, TextIO

from prottrans_jax import fs

logger = logging.getLogger(__name__)

GZIP_MAGIC = b"\x1f\x8b"


class FastaError(ValueError):
  """Bad FASTA input; the message names the file, record and line."""


@dataclasses.dataclass(frozen=True)
class FastaRecord:
  """One protein: `id` is the header up to the first whitespace."""
  id: str
  description: str  # The whole header line without ">".
  sequence: str  # Upper-case residue letters, normalised and validated.
  line: int  # 1-based line number of the header.


@dataclasses.dataclass(frozen=True)
class FastaPolicy:
  """What to do with each kind of bad input (see the module docstring)."""
  empty_records: Literal["error", "skip"] = "error"
  invalid_characters: Literal["error", "remove", "replace_with_x"] = "error"
  duplicate_ids: Literal["error", "rename", "skip"] = "error"

  def __post_init__(self):
    for field, allowed in (("empty_records", ("error", "skip")),
                           ("invalid_characters",
                            ("error", "remove", "replace_with_x")),
                           ("duplicate_ids", ("error", "rename", "skip"))):
      value = getattr(self, field)
      if value not in allowed:
        raise ValueError(
            f"FastaPolicy.{field}={value!r}: expected one of {allowed}")


STDIN = "-"  # The input path that means standard input.


def is_stream(path: str) -> bool:
  """Whether `path` can only be read once, front to back: standard input
  (`-`, `/dev/stdin` on a pipe), a named pipe, a character device."""
  if path == STDIN:
    return True
  if fs.is_remote(path):
    return False
  try:
    return not stat.S_ISREG(os.stat(path).st_mode)
  except OSError:
    return False


def _display(path: str) -> str:
  return "<stdin>" if path == STDIN else path


@contextlib.contextmanager
def _open_binary(path: str) -> Iterator[io.BufferedReader]:
  """`path` opened once for reading bytes (standard input for `-`, left
  open for whoever reads it next)."""
  if path == STDIN:
    yield sys.stdin.buffer
    return
  with fs.open_read(path) as f:
    yield f


def _decompressed(raw: io.BufferedReader):
  """`raw`, or its gzip stream when it starts with gzip's magic bytes (by
  content, so a mis-named file still reads). `peek` looks without
  consuming, so a pipe is read once (it sees at least the writer's first
  write, in practice far more than the two bytes it needs)."""
  return (gzip.GzipFile(fileobj=raw, mode="rb")
          if raw.peek(2)[:2] == GZIP_MAGIC else raw)


@contextlib.contextmanager
def _open_text(path: str) -> Iterator[TextIO]:
  """Opens plain or gzip FASTA, once (see `_decompressed`)."""
  with _open_binary(path) as raw:
    stream = _decompressed(raw)
    text = io.TextIOWrapper(stream, encoding="utf-8", errors="replace",
                            newline="")
    try:
      yield text
    finally:
      text.detach()  # `_open_binary` closes the file (not standard input).
      if stream is not raw:
        stream.close()  # Leaves `raw` open.


class _IdRegistry:
  """Remembers ids seen so far, as 8-byte digests to stay small at scale."""

  def __init__(self):
    self._seen: set[bytes] = set()

  def _key(self, record_id: str) -> bytes:
    return hashlib.blake2b(record_id.encode(), digest_size=8).digest()

  def __contains__(self, record_id: str) -> bool:
    return self._key(record_id) in self._seen

  def add(self, record_id: str) -> None:
    self._seen.add(self._key(record_id))


def clean_sequence(raw: str, record_id: str, where: str,
                   policy: FastaPolicy) -> str:
  """Upper-cases, strips whitespace and one terminal `*`, applies the policy."""
  sequence = "".join(raw.split()).upper()
  if sequence.endswith("*"):
    sequence = sequence[:-1]
  bad = sorted({c for c in sequence if not ("A" <= c <= "Z")})
  if not bad:
    return sequence
  positions = [i + 1 for i, c in enumerate(sequence) if not ("A" <= c <= "Z")]
  shown = ", ".join(repr(c) for c in bad)
  if policy.invalid_characters == "error":
    raise FastaError(
        f"{where}: record {record_id!r} has characters outside the amino-acid "
        f"alphabet: {shown} (first at residue {positions[0]}). Letters A-Z "
        "are residues; use invalid_characters='remove' or 'replace_with_x' "
        "to repair.")
  replacement = "" if policy.invalid_characters == "remove" else "X"
  logger.warning("%s: record %r: %s %d invalid character(s) %s", where,
                 record_id, "removed" if not replacement else "replaced by X in",
                 len(positions), shown)
  return "".join(c if "A" <= c <= "Z" else replacement for c in sequence)


class _RecordParser:
  """FASTA lines in, validated records out: the one parser `read_fasta` and
  `read_fasta_shard` share.

  `feed` takes each line with its byte offset in the file and its line
  number (None where unknown: a shard that starts mid-file names byte
  offsets instead) and returns the record that line completes, if any.
  """

  def __init__(self, path: str, policy: FastaPolicy, seen: _IdRegistry):
    self.path = path
    self.policy = policy
    self.seen = seen
    self.header = None
    self.header_where = ""
    self.header_line = 0
    self.chunks: list[str] = []
    self.line_number = 0  # Of the last line fed (for gzip errors).

  def _where(self, offset: int, line_number: int | None) -> str:
    if line_number is None:
      return f"{self.path} (byte {offset})"
    return f"{self.path}:{line_number}"

  def feed(self, offset: int, line_number: int | None,
           line: str) -> FastaRecord | None:
    self.line_number = line_number or 0
    line = line.rstrip("\r\n")
    if line.startswith(">"):
      record = self.finish()
      self.header, self.chunks = line[1:], []
      self.header_line = line_number or 0
      self.header_where = self._where(offset, line_number)
      return record
    if line.strip() and not line.startswith(";"):
      if self.header is None:
        raise FastaError(
            f"{self._where(offset, line_number)}: sequence data before the "
            f"first header line: {line[:40]!r}")
      self.chunks.append(line)
    return None

  def finish(self) -> FastaRecord | None:
    """Validates the record collected so far; returns it, or None if there
    is none or the policy skips it."""
    if self.header is None:
      return None
    header, where, policy, seen = (self.header, self.header_where,
                                   self.policy, self.seen)
    self.header = None
    record_id = header.split(maxsplit=1)[0] if header.strip() else ""
    if not record_id:
      raise FastaError(f"{where}: header has no id ('>' followed by nothing)")
    sequence = clean_sequence("".join(self.chunks), record_id, where, policy)
    if not sequence:
      if policy.empty_records == "error":
        raise FastaError(f"{where}: record {record_id!r} has no sequence")
      logger.warning("%s: skipped record %r: it has no sequence", where,
                     record_id)
      return None
    if record_id in seen:
      if policy.duplicate_ids == "error":
        raise FastaError(f"{where}: duplicate id {record_id!r}")
      if policy.duplicate_ids == "skip":
        logger.warning("%s: skipped record %r: duplicate id (first kept)",
                       where, record_id)
        return None
      suffix = 2
      while f"{record_id}_{suffix}" in seen:
        suffix += 1
      renamed = f"{record_id}_{suffix}"
      logger.warning("%s: duplicate id %r renamed to %r", where, record_id,
                     renamed)
      record_id = renamed
    seen.add(record_id)
    return FastaRecord(id=record_id, description=header.strip(),
                       sequence=sequence, line=self.header_line)

  def corrupt_gzip(self, error: Exception) -> FastaError:
    last = (f" after record starting at line {self.header_line}"
            if self.header is not None else "")
    return FastaError(f"{self.path}: truncated or corrupt gzip stream near "
                      f"line {self.line_number}{last}: {error}")


_GZIP_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile)


def read_fasta(path: str | os.PathLike,
               policy: FastaPolicy = FastaPolicy()) -> Iterator[FastaRecord]:
  """Streams validated records from a plain or gzip FASTA file (a local
  path or a URL).

  Memory stays constant in the file size, apart from 8 bytes per id kept to
  detect duplicates.

  Raises:
    FileNotFoundError: the file does not exist.
    FastaError: bad input the policy does not repair (see module docstring).
  """
  path = os.fspath(path)
  if path != STDIN and not fs.path(path).exists():
    raise FileNotFoundError(f"FASTA file not found: {path}")
  parser = _RecordParser(_display(path), policy, _IdRegistry())
  count = 0
  try:
    with _open_text(path) as handle:
      for line_number, line in enumerate(handle, start=1):
        record = parser.feed(0, line_number, line)
        if record is not None:
          count += 1
          yield record
  except _GZIP_ERRORS as e:
    raise parser.corrupt_gzip(e) from e
  record = parser.finish()
  if record is not None:
    count += 1
    yield record
  if count == 0:
    raise FastaError(f"{_display(path)}: no FASTA records found (expected "
                     "lines starting with '>')")


# --- Shards of a large input ------------------------------------------------
#
# N independent processes each embed a share of one input: a FASTA file, a
# glob or a list of files, read as one stream (the files in order). Record r
# belongs to shard k when the byte offset o of its header's '>' in that
# stream satisfies floor(o * N / S) == k, S the stream's size: the same
# command always gives a shard the same records, the shards in order give
# exactly what reading the files in order gives, and equal byte shares are
# equal residue shares to within header sizes and one record. A plain file
# is seeked to the shard's range, so a shard reads about S / N bytes. A
# gzip stream cannot be seeked: its offsets are decompressed bytes, and
# every shard decompresses it in full, twice (once to learn its size), so
# split or decompress large gzip inputs. Duplicate ids are found within a
# shard; across shards, where no shard sees the others, the merge finds them.
# A single shard needs no offsets: it reads each input once, front to back,
# which is all a stream (stdin, a pipe) allows; a stream cannot be sharded.


@dataclasses.dataclass
class ShardReadStats:
  """What one shard read (for logs and tests)."""
  bytes_read: int = 0  # Bytes of FASTA text this shard read or scanned.
  records: int = 0
  residues: int = 0


def _has_magic(path: str) -> bool:
  with fs.open_read(path) as f:
    return f.read(2) == GZIP_MAGIC


def _glob(pattern: str) -> list[str]:
  parts = pattern.split("/")
  first = next(i for i, part in enumerate(parts)
               if any(c in part for c in "*?["))
  root = "/".join(parts[:first]) or "."
  return sorted(os.fspath(p) for p in fs.path(root).glob("/".join(parts[first:]))
                if not p.is_dir())


def expand_inputs(spec: str | os.PathLike) -> list[str]:
  """The FASTA files of `spec`: a path, a glob (`data/*.fasta`,
  `gs://bucket/uniref/*.fa.gz`) or a comma-separated list of them; each
  glob's matches sorted, the list's order kept, repeats dropped. `-` is
  standard input.

  Raises:
    FileNotFoundError: a path that does not exist or a glob matching nothing.
  """
  files = []
  for part in (p.strip() for p in os.fspath(spec).split(",")):
    if not part:
      continue
    if part == STDIN:
      matches = [part]
    elif any(c in part for c in "*?["):
      matches = _glob(part)
      if not matches:
        raise FileNotFoundError(f"no FASTA file matches {part}")
    elif not fs.path(part).exists():
      raise FileNotFoundError(f"FASTA file not found: {part}")
    else:
      matches = [part]
    files += [m for m in matches if m not in files]
  if not files:
    raise FileNotFoundError(f"no FASTA input in {os.fspath(spec)!r}")
  return files


def _binary_lines(stream, offset: int, stats: ShardReadStats,
                  count_lines: bool) -> Iterator[tuple[int, int | None, str]]:
  """(byte offset, line number or None, text) of each line from `offset`."""
  for number, raw in enumerate(stream, start=1):
    stats.bytes_read += len(raw)
    yield offset, number if count_lines else None, raw.decode(
        "utf-8", errors="replace")
    offset += len(raw)


def _stream_size(path: str, gzipped: bool, stats: ShardReadStats) -> int:
  if not gzipped:
    return fs.path(path).stat().length
  size = 0
  try:
    with fs.open_read(path) as raw, gzip.GzipFile(fileobj=raw) as stream:
      while block := stream.read(1 << 20):
        size += len(block)
  except _GZIP_ERRORS as e:
    raise FastaError(f"{path}: truncated or corrupt gzip stream: {e}") from e
  stats.bytes_read += size
  return size


def _read_range(path: str, start: int, end: float, parser: _RecordParser,
                stats: ShardReadStats) -> Iterator[FastaRecord]:
  """Records of `path` whose headers start at offsets in [start, end),
  `path` opened once."""
  with _open_binary(path) as raw:
    stream = _decompressed(raw)
    if stream is not raw or start == 0 or not raw.seekable():
      lines = _binary_lines(stream, 0, stats, count_lines=True)
    else:
      raw.seek(start - 1)  # The line holding byte start - 1 ends before
      skipped = raw.readline()  # the first line that may start our range.
      stats.bytes_read += len(skipped)
      lines = _binary_lines(raw, start - 1 + len(skipped), stats,
                            count_lines=False)
    try:
      for offset, line_number, line in lines:
        is_header = line.startswith(">")
        if is_header and offset >= end:
          break
        if offset < start or (parser.header is None and start > 0
                              and not is_header):
          continue  # Before the range, or the tail of a record before it.
        record = parser.feed(offset, line_number, line)
        if record is not None:
          yield record
    except _GZIP_ERRORS as e:
      raise parser.corrupt_gzip(e) from e
  record = parser.finish()
  if record is not None:
    yield record


def read_fasta_shard(inputs: Sequence[str], shard_index: int, num_shards: int,
                     policy: FastaPolicy = FastaPolicy(),
                     stats: ShardReadStats | None = None
                     ) -> Iterator[FastaRecord]:
  """Streams the records of shard `shard_index` of `num_shards` of the FASTA
  files `inputs` read as one stream (see the comment above); one shard
  gives exactly `read_fasta`'s records of each file in turn.

  A shard may be empty (more shards than records); the whole input having
  no record is an error for a single shard, as for `read_fasta`. `stats`,
  if given, is filled as the shard is read.
  """
  if num_shards < 1 or not 0 <= shard_index < num_shards:
    raise ValueError(f"shard_index={shard_index}, num_shards={num_shards}: "
                     "expected num_shards >= 1 and 0 <= shard_index < "
                     "num_shards")
  stats = ShardReadStats() if stats is None else stats
  paths = [os.fspath(path) for path in inputs]
  for path in paths:
    if path != STDIN and not fs.path(path).exists():
      raise FileNotFoundError(f"FASTA file not found: {path}")
    if num_shards > 1 and is_stream(path):
      raise FastaError(
          f"{_display(path)} is a stream (standard input or a pipe), which "
          f"can be read only once, front to back: it cannot be split into "
          f"{num_shards} shards by byte ranges. Write it to a file first, "
          "or run one shard")
  if num_shards == 1:  # Everything, in one pass per input.
    ranges = [(path, 0, math.inf) for path in paths]
  else:
    sizes = [_stream_size(path, _has_magic(path), stats) for path in paths]
    total = sum(sizes)
    begin = -(-shard_index * total // num_shards)
    end = -(-(shard_index + 1) * total // num_shards)
    bases = [0, *itertools.accumulate(sizes)]
    ranges = [(path, max(begin - base, 0), end - base)
              for path, base, size in zip(paths, bases, sizes)
              if base < end and begin < base + size]
  seen = _IdRegistry()
  for path, start, stop in ranges:
    parser = _RecordParser(_display(path), policy, seen)
    for record in _read_range(path, start, stop, parser, stats):
      stats.records += 1
      stats.residues += len(record.sequence)
      yield record
  if num_shards == 1 and stats.records == 0:
    raise FastaError(f"{', '.join(map(_display, paths))}: no FASTA records "
                     "found (expected lines starting with '>')")
