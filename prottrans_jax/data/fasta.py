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
import logging
import os
import zlib
from typing import Iterator, Literal, TextIO

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


@contextlib.contextmanager
def _open_text(path: str) -> Iterator[TextIO]:
  """Opens plain or gzip FASTA by content, so a mis-named file still reads."""
  with fs.open_read(path) as f:
    magic = f.read(2)
  with fs.open_read(path) as raw:
    stream = gzip.GzipFile(fileobj=raw, mode="rb") if magic == GZIP_MAGIC else raw
    with io.TextIOWrapper(stream, encoding="utf-8", errors="replace",
                          newline="") as text:
      yield text


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
  if not fs.path(path).exists():
    raise FileNotFoundError(f"FASTA file not found: {path}")
  seen = _IdRegistry()
  count = 0
  header, header_line, chunks = None, 0, []
  line_number = 0

  def finish():
    """Validates the record collected so far; returns it, or None if skipped."""
    record_id = header.split(maxsplit=1)[0] if header.strip() else ""
    where = f"{path}:{header_line}"
    if not record_id:
      raise FastaError(f"{where}: header has no id ('>' followed by nothing)")
    sequence = clean_sequence("".join(chunks), record_id, where, policy)
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
                       sequence=sequence, line=header_line)

  try:
    with _open_text(path) as handle:
      for line_number, line in enumerate(handle, start=1):
        line = line.rstrip("\r\n")
        if line.startswith(">"):
          if header is not None:
            record = finish()
            if record is not None:
              count += 1
              yield record
          header, header_line, chunks = line[1:], line_number, []
        elif line.strip() and not line.startswith(";"):
          if header is None:
            raise FastaError(
                f"{path}:{line_number}: sequence data before the first "
                f"header line: {line[:40]!r}")
          chunks.append(line)
  except (EOFError, zlib.error, gzip.BadGzipFile) as e:
    last = f" after record starting at line {header_line}" if header else ""
    raise FastaError(f"{path}: truncated or corrupt gzip stream near line "
                     f"{line_number}{last}: {e}") from e
  if header is not None:
    record = finish()
    if record is not None:
      count += 1
      yield record
  if count == 0:
    raise FastaError(f"{path}: no FASTA records found (expected lines starting "
                     "with '>')")
