"""The TFDS builder: the sample through both paths, custom files, errors."""

import gzip
import os
import pathlib
import subprocess
import sys

import pytest
import tensorflow_datasets as tfds

from prottrans_jax.data import fasta
from prottrans_jax.data import sample_corpus
from prottrans_jax.data import splits
from prottrans_jax.data import tfds_builder

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "scripts" / (
    "prepare_corpus.py")

# Beam's in-process runner: DirectRunner first tries to fetch the Prism
# binary from the internet, and the tests must not download anything.
BEAM = dict(use_beam=True, beam_runner="FnApiRunner",
            beam_options=["direct_num_workers=1"])
SAMPLE = "swissprot_sample"


def _records(builder) -> dict[str, dict[str, tuple[str, str, int]]]:
  """{split: {id: (id, sequence, length)}} read back from the built files."""
  return {
      split: {
          ex["id"].decode(): (ex["id"].decode(), ex["sequence"].decode(),
                              int(ex["length"]))
          for ex in tfds.as_numpy(builder.as_dataset(split=split))
      } for split in (splits.TRAIN, splits.VALIDATION)
  }


def _write_fasta(path, records, compress=False):
  text = "".join(f">{rid} test protein\n{seq}\n" for rid, seq in records)
  opener = gzip.open if compress else open
  with opener(path, "wt") as f:
    f.write(text)
  return str(path)


def _proteins(prefix: str = "p") -> list[tuple[str, str]]:
  """100 records; with prefix "p", 2 of their ids hash into a 1% validation."""
  residues = "ACDEFGHIKLMNPQRSTVWY"
  return [(f"{prefix}{i}", residues[i % 20:] + residues[:i % 20])
          for i in range(100)]


@pytest.fixture(scope="module")
def sample_built(tmp_path_factory):
  """The sample corpus built by the generator path and by Beam."""
  root = tmp_path_factory.mktemp("sample")
  return {
      "generator": _records(
          tfds_builder.build_corpus(SAMPLE, str(root / "generator"))),
      "beam": _records(
          tfds_builder.build_corpus(SAMPLE, str(root / "beam"), **BEAM)),
  }


@pytest.mark.parametrize("path", ["generator", "beam"])
def test_sample_has_every_record_of_the_fasta(sample_built, path):
  built = sample_built[path]
  expected = {r.id: r.sequence
              for r in fasta.read_fasta(sample_corpus.FASTA_PATH)}
  got = {**built[splits.TRAIN], **built[splits.VALIDATION]}
  assert len(expected) == 100
  assert len(built[splits.TRAIN]) + len(built[splits.VALIDATION]) == 100
  assert {rid: seq for rid, seq, _ in got.values()} == expected
  assert all(length == len(seq) for _, seq, length in got.values())


def test_sample_split_is_by_hash_of_the_id(sample_built):
  fraction = tfds_builder.CONFIGS[SAMPLE].validation_fraction
  for split, records in sample_built["generator"].items():
    assert records, f"empty {split} split"
    assert all(splits.split_of(rid, fraction) == split for rid in records)


def test_beam_and_generator_build_the_same_splits(sample_built):
  assert sample_built["beam"] == sample_built["generator"]


def test_split_does_not_depend_on_file_order_or_files(tmp_path, sample_built):
  records = [(r.id, r.sequence)
             for r in fasta.read_fasta(sample_corpus.FASTA_PATH)][::-1]
  first = _write_fasta(tmp_path / "part1.fasta", records[:40])
  _write_fasta(tmp_path / "part2.fasta.gz", records[40:], compress=True)
  config = tfds_builder.ProteinFastaConfig(
      name="reordered_sample",
      validation_fraction=tfds_builder.CONFIGS[SAMPLE].validation_fraction)
  rebuilt = _records(tfds_builder.build_corpus(
      config, str(tmp_path / "data"), [first, str(tmp_path / "part2.*")]))
  assert rebuilt == sample_built["generator"]


def test_custom_fasta_paths(tmp_path):
  records = _proteins()
  # Lower case and a stop codon are normalised by the FASTA policy.
  records[0] = ("p0", "mktayiakqr*")
  path = _write_fasta(tmp_path / "mine.fasta", records)
  built = _records(tfds_builder.build_corpus(
      "custom", str(tmp_path / "data"), [path]))
  got = {**built[splits.TRAIN], **built[splits.VALIDATION]}
  expected = {rid: (rid, seq, len(seq)) for rid, seq in records}
  expected["p0"] = ("p0", "MKTAYIAKQR", 10)
  assert got == expected
  # 1% of 100 ids by hash: p-ids happen to put 2 in validation.
  assert sorted(built[splits.VALIDATION]) == sorted(
      rid for rid, _ in records if splits.split_of(rid, 0.01) == "validation")
  assert len(built[splits.VALIDATION]) == 2


def test_corpus_too_small_for_a_split_is_explained(tmp_path):
  path = _write_fasta(tmp_path / "tiny.fasta", [("p1", "MKTAYIAKQR")])
  with pytest.raises(ValueError, match="'validation' split .* too small"):
    tfds_builder.build_corpus("custom", str(tmp_path / "data"), [path])


def test_custom_needs_fasta_paths(tmp_path):
  with pytest.raises(ValueError, match="pass fasta_paths"):
    tfds_builder.build_corpus("custom", str(tmp_path))


def test_other_files_in_a_built_data_dir_are_refused(tmp_path):
  first = _write_fasta(tmp_path / "a.fasta", _proteins())
  second = _write_fasta(tmp_path / "b.fasta", _proteins()[1:])
  tfds_builder.build_corpus("custom", str(tmp_path / "data"), [first])
  with pytest.raises(ValueError, match="built from .*a.fasta.*use another"):
    tfds_builder.build_corpus("custom", str(tmp_path / "data"), [second])


@pytest.mark.parametrize("manual_dir_exists", [False, True])
def test_missing_public_file_names_the_expected_path(tmp_path,
                                                     manual_dir_exists):
  manual_dir = tmp_path / "manual"
  if manual_dir_exists:
    manual_dir.mkdir()
    (manual_dir / "notes.txt").write_text("not the corpus")
  with pytest.raises(FileNotFoundError, match=r"uniref50\.fasta\.gz"):
    tfds_builder.build_corpus("uniref50", str(tmp_path / "data"),
                              manual_dir=str(manual_dir))


def test_missing_custom_file_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="nothing_here"):
    tfds_builder.build_corpus("custom", str(tmp_path / "data"),
                              [str(tmp_path / "nothing_here*.fasta")])


def test_public_file_in_manual_dir_is_read(tmp_path):
  manual_dir = tmp_path / "manual"
  manual_dir.mkdir()
  _write_fasta(manual_dir / "uniref50.fasta.gz", _proteins(), compress=True)
  builder = tfds_builder.build_corpus("uniref50", str(tmp_path / "data"),
                                      manual_dir=str(manual_dir))
  assert builder.info.splits[splits.TRAIN].num_examples == 98
  assert builder.info.splits[splits.VALIDATION].num_examples == 2


@pytest.mark.parametrize("beam", [False, True])
def test_duplicate_id_across_files_is_named(tmp_path, beam):
  first = _write_fasta(tmp_path / "a.fasta",
                       [("P1", "MKTAYIAKQR"), ("DUP7", "MKVLAAGIVG")])
  second = _write_fasta(tmp_path / "b.fasta", [("DUP7", "ACDEFGHIKL")])
  with pytest.raises(fasta.FastaError, match=r"duplicate id 'DUP7' in "
                     r".*a\.fasta:3 and .*b\.fasta:1"):
    tfds_builder.build_corpus("custom", str(tmp_path / "data"),
                              [first, second], **(BEAM if beam else {}))


def test_duplicate_id_within_a_file_follows_the_policy(tmp_path):
  path = _write_fasta(tmp_path / "a.fasta",
                      _proteins() + [("p7", "MKTAYIAKQR")])
  with pytest.raises(fasta.FastaError,
                     match=r"a\.fasta:201: duplicate id 'p7'"):
    tfds_builder.build_corpus("custom", str(tmp_path / "data"), [path])
  built = _records(tfds_builder.build_corpus(
      "custom", str(tmp_path / "renamed"), [path],
      policy=fasta.FastaPolicy(duplicate_ids="rename")))
  got = {**built[splits.TRAIN], **built[splits.VALIDATION]}
  assert len(got) == 101
  assert got["p7_2"] == ("p7_2", "MKTAYIAKQR", 10)


def test_prepare_corpus_script_prints_split_sizes(tmp_path):
  # The script's directory, not the repository root, starts its sys.path, and
  # an editable install may point at another checkout: test this one's code.
  env = {**os.environ, "PYTHONPATH": os.pathsep.join(
      filter(None, [str(SCRIPT.parents[1]), os.environ.get("PYTHONPATH")]))}
  result = subprocess.run(
      [sys.executable, str(SCRIPT),
       "--corpus=swissprot_sample", f"--data_dir={tmp_path}"],
      capture_output=True, text=True, check=True, timeout=300, env=env)
  assert "train: 88" in result.stdout
  assert "validation: 12" in result.stdout
  assert tfds_builder.tfds_name(SAMPLE) in result.stdout
