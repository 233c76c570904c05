"""The FASTA validation policy: one error or logged repair per kind of bad input."""

import gzip
import logging

import pytest

from prottrans_jax.data import fasta


def _write(tmp_path, text, name="in.fasta"):
  path = tmp_path / name
  path.write_bytes(text.encode() if isinstance(text, str) else text)
  return path


def test_reads_multiline_crlf_lowercase_and_terminal_stop(tmp_path):
  path = _write(tmp_path, ">sp|P1|A desc here\r\nmkta\r\nYIAK*\r\n"
                          "; a comment line\r\n>P2\r\nGGG\r\n")
  records = list(fasta.read_fasta(path))
  assert [(r.id, r.sequence, r.line) for r in records] == [
      ("sp|P1|A", "MKTAYIAK", 1), ("P2", "GGG", 5)]
  assert records[0].description == "sp|P1|A desc here"


def test_reads_gzip_by_content_not_name(tmp_path):
  path = _write(tmp_path, gzip.compress(b">a\nMKT\n>b\nAAA\n"), "plain.fa")
  assert [r.sequence for r in fasta.read_fasta(path)] == ["MKT", "AAA"]


def test_real_shared_files_parse(shared_data):
  records = list(fasta.read_fasta(
      shared_data / "sequences" / "prottrans_example_seqs.fasta"))
  assert len(records) == 2 and all(r.sequence.isalpha() for r in records)
  assert len(list(fasta.read_fasta(
      shared_data / "sequences" / "globins45.fasta"))) == 45


def test_no_records_is_an_error(tmp_path):
  with pytest.raises(fasta.FastaError, match="no FASTA records"):
    list(fasta.read_fasta(_write(tmp_path, "\n\n")))


def test_missing_file_is_an_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.fasta"):
    list(fasta.read_fasta(tmp_path / "nope.fasta"))


def test_sequence_before_header_names_the_line(tmp_path):
  with pytest.raises(fasta.FastaError, match=r"in.fasta:2: sequence data"):
    list(fasta.read_fasta(_write(tmp_path, "\nMKT\n>a\nMKT\n")))


def test_empty_record_errors_or_is_skipped_with_a_log(tmp_path, caplog):
  path = _write(tmp_path, ">a\nMKT\n>empty one\n>c\nAAA\n")
  with pytest.raises(fasta.FastaError, match=r"in.fasta:3: record 'empty'"):
    list(fasta.read_fasta(path))
  policy = fasta.FastaPolicy(empty_records="skip")
  with caplog.at_level(logging.WARNING):
    ids = [r.id for r in fasta.read_fasta(path, policy)]
  assert ids == ["a", "c"]
  assert "skipped record 'empty'" in caplog.text


def test_invalid_characters_error_or_are_repaired_with_a_log(tmp_path, caplog):
  path = _write(tmp_path, ">a\nMKT\n>gappy\nMK-T.A@é\n")
  with pytest.raises(fasta.FastaError,
                     match=r"record 'gappy' has characters outside"):
    list(fasta.read_fasta(path))
  with caplog.at_level(logging.WARNING):
    removed = list(fasta.read_fasta(
        path, fasta.FastaPolicy(invalid_characters="remove")))
    replaced = list(fasta.read_fasta(
        path, fasta.FastaPolicy(invalid_characters="replace_with_x")))
  assert removed[1].sequence == "MKTA"
  assert replaced[1].sequence == "MKXTXAXX"
  assert caplog.text.count("'gappy'") == 2


def test_digits_are_invalid_and_removable(tmp_path):
  path = _write(tmp_path, ">numbered\n1 MKTAY 6\n7 IAKQR\n")
  with pytest.raises(fasta.FastaError, match=r"'1', '6', '7'"):
    list(fasta.read_fasta(path))
  policy = fasta.FastaPolicy(invalid_characters="remove")
  assert next(fasta.read_fasta(path, policy)).sequence == "MKTAYIAKQR"


def test_duplicate_ids_error_rename_or_skip(tmp_path, caplog):
  path = _write(tmp_path, ">a first\nMKT\n>a second\nAAA\n>a third\nGGG\n")
  with pytest.raises(fasta.FastaError, match=r"in.fasta:3: duplicate id 'a'"):
    list(fasta.read_fasta(path))
  with caplog.at_level(logging.WARNING):
    renamed = list(fasta.read_fasta(
        path, fasta.FastaPolicy(duplicate_ids="rename")))
    kept = list(fasta.read_fasta(path, fasta.FastaPolicy(duplicate_ids="skip")))
  assert [r.id for r in renamed] == ["a", "a_2", "a_3"]
  assert [r.sequence for r in kept] == ["MKT"]
  assert "duplicate id 'a' renamed to 'a_2'" in caplog.text


def test_truncated_gzip_is_an_error_naming_the_file(tmp_path):
  data = gzip.compress(b"".join(b">p%d\n%s\n" % (i, b"MKTAYIAKQR" * 50)
                                for i in range(200)))
  path = _write(tmp_path, data[:len(data) // 2], "cut.fasta.gz")
  with pytest.raises(fasta.FastaError, match=r"cut.fasta.gz: truncated"):
    list(fasta.read_fasta(path))


def test_bad_policy_value_is_rejected():
  with pytest.raises(ValueError, match="duplicate_ids='drop'"):
    fasta.FastaPolicy(duplicate_ids="drop")
