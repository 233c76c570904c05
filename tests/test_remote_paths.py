"""Embedding, conversion and downstream with `gs://` paths.

Every path goes through prottrans_jax.fs (etils epath), so a `gs://` URL
stays a URL: tests/fake_gcs.py serves the bucket from a local directory, and
each test runs from an empty working directory, which must stay empty (no
local `gs:/bucket/...` made by pathlib). Only array checkpoints (Orbax
writes them through TensorStore, whose GCS driver the fake does not cover)
stay local here; everything else is read from and written to the bucket.
"""

import gzip
import io
import json
import os
import pathlib

import h5py
import numpy as np
import pytest

import fake_gcs  # a test helper (tests/)
import t5x_writer  # a test helper (tests/)
from t5_variants import random_hf_t5  # a test helper (tests/)
from prottrans_jax import checkpoints
from prottrans_jax import fs
from prottrans_jax.convert import formats
from prottrans_jax.convert import hf_io
from prottrans_jax.convert import mapping
from prottrans_jax.convert import t5x
from prottrans_jax.data import fasta
from prottrans_jax.downstream import features
from prottrans_jax.downstream import maps
from prottrans_jax.downstream import predict
from prottrans_jax.downstream import readers
from prottrans_jax.inference import engine
from prottrans_jax.inference import h5_writer
from prottrans_jax.inference import loading
from prottrans_jax.inference import run
from prottrans_jax.inference import shards
from prottrans_jax.models import t5

CONFIG = t5.T5_CONFIGS["tiny"]
PROTEINS = {"P1": "MKTAYIAKQRQISFVKSHFSRQ", "P2": "MENFQKVEKIGEGTYGVVYKAR",
            "P3/x": "MSDNGPQNQRNAPRITFGGPSDSTGSNQNGERSGARSKQRRPQGLPNNTAS",
            "P4": "ACDEFGHIKLMNPQRSTVWY"}


@pytest.fixture(scope="module")
def model_dir(tiny_prott5_model_dir):
  return tiny_prott5_model_dir


@pytest.fixture
def bucket(tmp_path, monkeypatch):
  """The fake bucket's root; the test runs in an empty working directory,
  checked to be still empty afterwards."""
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  with fake_gcs.serve(tmp_path / "bucket_root") as root:
    yield root
  assert not (cwd / "gs:").exists()
  assert sorted(os.listdir(cwd)) == []


def _put(url: str, data: bytes | str) -> pathlib.Path:
  """Puts an object in the fake bucket (as someone else would upload it)."""
  local = fake_gcs.local_path_of(url)
  local.parent.mkdir(parents=True, exist_ok=True)
  if isinstance(data, str):
    data = data.encode()
  local.write_bytes(data)
  return local


def _fasta(proteins) -> str:
  return "".join(f">{name} test\n{seq}\n" for name, seq in proteins.items())


# --- the layer ---------------------------------------------------------------


def test_open_read_streams_urls_and_file_objects_with_read_only(bucket):
  _put("gs://bucket/x.fasta.gz", gzip.compress(b">a\r\nMKV\r\n"))
  with fs.open_read("gs://bucket/x.fasta.gz") as raw, io.TextIOWrapper(
      gzip.GzipFile(fileobj=raw), newline="") as text:
    assert text.read() == ">a\r\nMKV\r\n"

  class OnlyRead:  # What epath's TensorFlow backend hands out: read(n), no io.
    def __init__(self, data):
      self._data = io.BytesIO(data)

    def read(self, n=-1):
      return self._data.read(n)

  stream = io.BufferedReader(fs._RawReader(OnlyRead(b"line 1\nline 2\n" * 5000)))
  assert io.TextIOWrapper(stream, encoding="utf-8").read() == "line 1\nline 2\n" * 5000

  with pytest.raises(FileNotFoundError, match="gs://bucket/none"):
    with fs.local_copy("gs://bucket/none"):
      pass

  # copy_existing: the local file starts as the bucket's and replaces it.
  _put("gs://bucket/log.txt", "one\n")
  with fs.staged_output("gs://bucket/log.txt", copy_existing=True) as local:
    with open(local, "a") as f:
      f.write("two\n")
  assert fake_gcs.local_path_of("gs://bucket/log.txt").read_text() == "one\ntwo\n"


def test_fasta_reads_plain_and_gzip_from_a_url(bucket):
  _put("gs://bucket/in.fasta", _fasta(PROTEINS))
  _put("gs://bucket/in.fasta.gz", gzip.compress(_fasta(PROTEINS).encode()))
  for url in ("gs://bucket/in.fasta", "gs://bucket/in.fasta.gz"):
    records = list(fasta.read_fasta(url))
    assert {r.id: r.sequence for r in records} == PROTEINS
  _put("gs://bucket/bad.fasta", ">a\nMK1\n")
  with pytest.raises(fasta.FastaError, match=r"gs://bucket/bad.fasta:1: record 'a'"):
    list(fasta.read_fasta("gs://bucket/bad.fasta"))
  with pytest.raises(FileNotFoundError, match="gs://bucket/none.fasta"):
    list(fasta.read_fasta("gs://bucket/none.fasta"))


# --- embedding ---------------------------------------------------------------


def _datasets(path: pathlib.Path) -> dict[str, np.ndarray]:
  with h5py.File(path, "r") as f:
    return {name: np.asarray(f[name]) for name in f}


def test_embed_from_and_to_a_bucket_resumes_from_the_bucket(
    bucket, model_dir, tmp_path, monkeypatch):
  _put("gs://bucket/in.fasta", _fasta(PROTEINS))
  model = loading.from_checkpoint(model_dir)
  settings = engine.EmbedSettings(max_tokens=8)  # One bucket per batch.

  # A run that stops part-way has uploaded the batches it committed (one
  # chunk file each, under emb.h5.parts/), and the rerun resumes from them.
  # Batches (longest first): P3/x; P1 and P2; P4.
  write_chunk = shards.ShardWriter.write_chunk
  def stop_at_the_second_batch(writer, batch_index, *args, **kwargs):
    if batch_index == 1:
      raise RuntimeError("stopped")
    return write_chunk(writer, batch_index, *args, **kwargs)
  with monkeypatch.context() as patch:
    patch.setattr(shards.ShardWriter, "write_chunk", stop_at_the_second_batch)
    with pytest.raises(RuntimeError, match="stopped"):
      run.embed_fasta("gs://bucket/in.fasta", "gs://bucket/out/emb.h5", model,
                      settings, progress=False)
  assert not fake_gcs.local_path_of("gs://bucket/out/emb.h5").exists()
  assert [p.name for p in fake_gcs.local_path_of(
      "gs://bucket/out/emb.h5.parts").glob("*/chunk-*")] == ["chunk-0000000.h5"]

  summary = run.embed_fasta("gs://bucket/in.fasta", "gs://bucket/out/emb.h5",
                            model, settings, progress=False)
  assert (summary.proteins, summary.embedded, summary.already_done) == (4, 3, 1)
  assert not fake_gcs.local_path_of("gs://bucket/out/emb.h5.parts").exists()
  uploaded = fake_gcs.local_path_of("gs://bucket/out/emb.h5")
  remote = _datasets(uploaded)
  assert sorted(remote) == ["P1", "P2", "P3_x", "P4"]
  assert remote["P3_x"].shape == (len(PROTEINS["P3/x"]), CONFIG.d_model)

  # The same as a local run, byte for byte in the arrays.
  local = tmp_path / "local.h5"
  run.embed_fasta("gs://bucket/in.fasta", str(local), model, settings, progress=False)
  for name, array in _datasets(local).items():
    np.testing.assert_array_equal(remote[name], array)

  # A rerun finds everything in the bucket's file; a longer input adds one.
  again = run.embed_fasta("gs://bucket/in.fasta", "gs://bucket/out/emb.h5", model,
                          settings, progress=False)
  assert (again.embedded, again.already_done) == (0, 4)
  _put("gs://bucket/more.fasta", _fasta({**PROTEINS, "P5": "MGSSHHHHHH"}))
  more = run.embed_fasta("gs://bucket/more.fasta", "gs://bucket/out/emb.h5", model,
                         settings, progress=False)
  assert (more.embedded, more.already_done) == (1, 4)
  assert sorted(_datasets(uploaded)) == ["P1", "P2", "P3_x", "P4", "P5"]

  # Other settings are refused with the URL's name; --overwrite replaces.
  with pytest.raises(h5_writer.OutputError,
                     match=r"gs://bucket/out/emb.h5 exists with other settings"):
    run.embed_fasta("gs://bucket/in.fasta", "gs://bucket/out/emb.h5", model,
                    engine.EmbedSettings(per_protein=True, max_tokens=8),
                    progress=False)
  run.embed_fasta("gs://bucket/in.fasta", "gs://bucket/out/emb.h5", model,
                  engine.EmbedSettings(per_protein=True, max_tokens=8),
                  overwrite=True, progress=False)
  per_protein = _datasets(uploaded)
  assert sorted(per_protein) == ["P1", "P2", "P3_x", "P4"]
  assert per_protein["P1"].shape == (CONFIG.d_model,)

  # Downstream features read the bucket's file (copied for h5py).
  labels = {"q3": np.zeros(len(PROTEINS["P1"]), np.int32)}
  protein = readers.LabeledProtein("P1", PROTEINS["P1"], labels)
  np.testing.assert_array_equal(
      features.load_features([protein], "gs://bucket/out/emb.h5", per_protein=True)[0],
      per_protein["P1"])
  with pytest.raises(FileNotFoundError, match="gs://bucket/none.h5"):
    features.load_features([protein], "gs://bucket/none.h5", per_protein=True)


# --- conversion --------------------------------------------------------------


def test_hf_export_to_a_bucket_reads_back_from_it(bucket, model_dir, tmp_path):
  written = formats.convert_checkpoint("native", "hf", model_dir, "gs://bucket/hf",
                                       dtype="float32", progress=False)
  exported = fake_gcs.local_path_of("gs://bucket/hf")
  names = sorted(p.name for p in exported.iterdir())
  assert {hf_io.CONFIG_FILE, hf_io.SAFETENSORS_FILE} <= set(names)
  assert sorted(written) == [f"gs://bucket/hf/{name}" for name in names]
  assert json.loads((exported / hf_io.CONFIG_FILE).read_text())["d_model"] == CONFIG.d_model

  # A non-empty output is refused by its URL; --overwrite replaces it.
  with pytest.raises(FileExistsError, match="gs://bucket/hf exists"):
    formats.convert_checkpoint("native", "hf", model_dir, "gs://bucket/hf", progress=False)
  formats.convert_checkpoint("native", "hf", model_dir, "gs://bucket/hf", overwrite=True,
                             encoder_only=True, progress=False)
  assert "decoder.final_layer_norm.weight" not in hf_io.LazyStateDict(exported)
  formats.convert_checkpoint("native", "hf", model_dir, "gs://bucket/hf", overwrite=True,
                             progress=False)

  # Read back from the bucket: the mapping, a re-export, the embedding loader.
  lines = formats.convert_checkpoint("hf", "native", "gs://bucket/hf", tmp_path / "unused",
                                     dry_run=True)
  assert any(line.startswith("shared.weight -> token_embedder/embedding") for line in lines)
  formats.convert_checkpoint("hf", "hf", "gs://bucket/hf", "gs://bucket/hf_again",
                             progress=False)
  again = hf_io.LazyStateDict(fake_gcs.local_path_of("gs://bucket/hf_again"))
  original = hf_io.LazyStateDict(exported)
  assert sorted(again) == sorted(original)
  for name in original:
    assert again[name].tobytes() == original[name].tobytes(), name

  _, _, lazy = checkpoints.lazy_params(model_dir)
  loaded = loading.from_hf("gs://bucket/hf")
  assert loaded.source == "gs://bucket/hf" and loaded.name == "t5"
  ours = mapping.flatten(lazy)
  for name, array in mapping.flatten(loaded.params).items():
    np.testing.assert_array_equal(array, ours[name].load(), err_msg=name)

  # hf_io itself takes local directories only, and says so for a URL.
  with pytest.raises(ValueError, match="gs://bucket/hf: Hugging Face files"):
    hf_io.LazyStateDict("gs://bucket/hf")
  with pytest.raises(FileNotFoundError, match="gs://bucket/none"):
    formats.convert_checkpoint("hf", "hf", "gs://bucket/none", "gs://bucket/out")


def test_t5x_model_dir_in_a_bucket_converts_its_latest_checkpoint(bucket, tmp_path):
  model = random_hf_t5()
  state = {k: v.numpy() for k, v in model.state_dict().items()}
  params = t5x_writer.hf_to_t5x_params(state, num_layers=2, num_decoder_layers=2,
                                       gated=False, tied=True)
  model_dir = fake_gcs.local_path_of("gs://bucket/t5x")
  t5x_writer.write_classic(model_dir, {n: a * 0 for n, a in params.items()}, 10)
  t5x_writer.write_classic(model_dir, params, 20)
  assert t5x.checkpoint_directory("gs://bucket/t5x") == fs.path(
      "gs://bucket/t5x/checkpoint_20")
  formats.convert_checkpoint("t5x", "hf", "gs://bucket/t5x", "gs://bucket/t5x_hf",
                             progress=False)
  exported = hf_io.LazyStateDict(fake_gcs.local_path_of("gs://bucket/t5x_hf"))
  for name, array in exported.items():
    assert array.tobytes() == state[name].tobytes(), name
  with pytest.raises(ValueError, match="T5X checkpoints are read from local disk"):
    t5x.read_t5x_checkpoint("gs://bucket/t5x")


# --- downstream --------------------------------------------------------------


def test_downstream_files_in_a_bucket(bucket):
  _put("gs://bucket/sets/x_HHblits.csv",
       "input, dssp3, dssp8, disorder, test_mask\n"
       "M K V,H H E,H G E,1.0 1.0 0.0,1.0 1.0 1.0\n")
  [netsurfp] = readers.read_netsurfp("gs://bucket/sets/x_HHblits.csv")
  assert netsurfp.id == "x_0001" and netsurfp.sequence == "MKV"
  assert list(netsurfp.labels["q3"]) == [0, 0, readers.IGNORE]

  locations = ["Nucleus", "Cytoplasm", "Nucleus", "Mitochondrion", "Cytoplasm"]
  _put("gs://bucket/sets/loc.fasta", "".join(
      f">Q{i} {loc}-S\n{seq}\n" for i, (loc, seq) in enumerate(
          zip(locations, list(PROTEINS.values()) + ["MGSSHHHHHH"]))))
  proteins = readers.read_deeploc("gs://bucket/sets/loc.fasta")
  assert [p.id for p in proteins] == ["Q0", "Q1", "Q2", "Q3", "Q4"]

  readers.write_fasta(proteins, "gs://bucket/out/loc_copy.fasta")
  assert [r.id for r in fasta.read_fasta("gs://bucket/out/loc_copy.fasta")] == [
      p.id for p in proteins]

  coords = maps.embedding_map(proteins, features.ONEHOT, "localization",
                              "gs://bucket/maps/loc.png")
  assert coords.shape == (5, 2)
  assert fake_gcs.local_path_of("gs://bucket/maps/loc.png").read_bytes()[:4] == b"\x89PNG"
  rows = fake_gcs.local_path_of("gs://bucket/maps/loc.tsv").read_text().splitlines()
  assert rows[0] == "id\tx\ty\tlocalization" and len(rows) == 6

  predictions = [predict.Prediction(id="Q0", length=3, q3="HHE", q3_probability=0.9)]
  assert predict.write_predictions(predictions, "gs://bucket/out/pred") == (
      "gs://bucket/out/pred.tsv", "gs://bucket/out/pred.json")
  assert fake_gcs.local_path_of("gs://bucket/out/pred.tsv").read_text() == (
      "id\tlength\tq3\tq3_probability\nQ0\t3\tHHE\t0.9\n")
  assert json.loads(fake_gcs.local_path_of("gs://bucket/out/pred.json").read_text()) == [
      {"id": "Q0", "length": 3, "q3": "HHE", "q3_probability": 0.9}]
