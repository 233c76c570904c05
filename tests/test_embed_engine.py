"""The embedding engine: one row per residue, padding-invariant, device-invariant."""

import dataclasses
import itertools

import flax.linen as nn
import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prottrans_jax.data import fasta
from prottrans_jax.inference import batching
from prottrans_jax.inference import engine
from prottrans_jax.inference import loading
from prottrans_jax.inference import run
from prottrans_jax.models import t5

CONFIG = dataclasses.replace(t5.T5_CONFIGS["tiny"], dtype="float32")
RESIDUES = "ACDEFGHIKLMNPQRSTVWY"


@pytest.fixture(scope="module")
def model():
  variables = t5.T5(CONFIG).init(jax.random.key(0), jnp.ones((1, 8), jnp.int32),
                                 method=t5.T5.encode)
  return loading.LoadedModel("t5", CONFIG, nn.unbox(variables)["params"], "random")


def _records(lengths, seed=0):
  rng = np.random.default_rng(seed)
  return [fasta.FastaRecord(id=f"p{i}_{n}", description=f"p{i}_{n} test",
                            sequence="".join(rng.choice(list(RESIDUES), n)),
                            line=i + 1)
          for i, n in enumerate(lengths)]


def _embed(model, records, **settings):
  embedder = engine.Embedder(model.config, model.params,
                             engine.EmbedSettings(**settings))
  return {r.id: e for results in embedder.embed(records) for r, e in results}


def test_bucket_lengths_and_batches_respect_the_budget():
  assert [batching.bucket_length(n) for n in (
      1, 16, 17, 25, 32, 151, 513, 769, 2048, 2049, 35001)] == [
          16, 16, 20, 28, 32, 160, 640, 896, 2048, 4096, 36864]
  batches = list(batching.plan_batches([5, 700, 30, 1000, 31], 2048, 2))
  # Four grid buckets (16, 32, 768, 1024), fitted to the longest of each.
  assert [b.length for b in batches] == [1000, 700, 31, 5]
  assert [b.indices for b in batches] == [(3,), (1,), (4, 2), (0,)]
  assert all(b.rows == 2 for b in batches)  # Padded to the 2 devices.
  assert sorted(i for b in batches for i in b.indices) == [0, 1, 2, 3, 4]
  # Beyond 2048 tokens (chunked attention): multiples of 2048.
  assert batching.fit_buckets([35001, 5, 2049, 100]) == [5, 100, 4096, 36864]


def test_max_tokens_counts_special_tokens_and_padding(model):
  # Four 30-residue proteins are 31 tokens with T5's </s>: a budget of 60
  # tokens holds one row (two rows would be 62 tokens), though two rows of
  # residues alone (60) would fit.
  records = _records([30, 30, 30, 30])
  embedder = engine.Embedder(model.config, model.params,
                             engine.EmbedSettings(max_tokens=60),
                             devices=jax.devices()[:1])
  assert [len(batch) for batch in embedder.embed(records)] == [1, 1, 1, 1]
  embedder = engine.Embedder(model.config, model.params,
                             engine.EmbedSettings(max_tokens=62),
                             devices=jax.devices()[:1])
  assert [len(batch) for batch in embedder.embed(records)] == [2, 2]
  # The budget is per data-parallel device: two devices hold 2 x 62 tokens.
  two_devices = engine.Embedder(model.config, model.params,
                                engine.EmbedSettings(max_tokens=62),
                                devices=jax.devices()[:2])
  assert [(b.rows, b.length) for b in two_devices.plan(records)] == [(4, 31)]


def test_former_name_max_residues_still_works_with_a_warning():
  with pytest.warns(DeprecationWarning, match=r"max_residues.*max_tokens"):
    old = engine.EmbedSettings(max_residues=4096, per_protein=True)
  assert old == engine.EmbedSettings(max_tokens=4096, per_protein=True)
  assert [f.name for f in dataclasses.fields(old)] == [
      "per_protein", "per_residue", "layers", "dtype", "max_tokens",
      "num_partitions"]
  with pytest.warns(DeprecationWarning, match=r"\.max_tokens"):
    assert old.max_residues == 4096
  assert dataclasses.replace(old, dtype="bfloat16").max_tokens == 4096
  with pytest.raises(TypeError, match="pass max_tokens= only"):
    engine.EmbedSettings(max_tokens=1, max_residues=2)
  with pytest.raises(dataclasses.FrozenInstanceError):
    old.max_tokens = 1  # type: ignore[misc]

  lengths = [5, 700, 30, 1000, 31]
  with pytest.warns(DeprecationWarning, match=r"max_residues.*max_tokens"):
    old_plan = list(batching.plan_batches(lengths, max_residues=2048))
  assert old_plan == list(batching.plan_batches(lengths, max_tokens=2048))
  with pytest.raises(TypeError, match="pass max_tokens= only"):
    batching.plan_batches(lengths, 2048, max_residues=2048)


def _padded_tokens(lengths, buckets):
  return sum(min(b for b in buckets if b >= n) for n in lengths)


def test_fitted_buckets_pad_least_and_compile_no_more_than_the_grid():
  rng = np.random.default_rng(0)
  for _ in range(100):
    lengths = [int(n) for n in rng.integers(1, 300, rng.integers(1, 9))]
    grid = {batching.bucket_length(n) for n in lengths}
    fitted = batching.fit_buckets(lengths)
    assert len(fitted) <= len(grid)
    # Exhaustive search over every set of at most len(grid) buckets ending at
    # a length present (an optimal bucket always does).
    distinct = sorted(set(lengths))
    best = min(
        _padded_tokens(lengths, list(ends) + [distinct[-1]])
        for k in range(min(len(grid), len(distinct)))
        for ends in itertools.combinations(distinct[:-1], k))
    assert _padded_tokens(lengths, fitted) == best
    assert best <= _padded_tokens(lengths, grid)


def test_fitted_buckets_on_real_proteins(shared_data):
  # Real proteins: the 45 globins (142-154 tokens) share one grid bucket, so
  # one compilation, padded to the longest globin instead of the grid's 160.
  lengths = [len(r.sequence) + 1 for r in fasta.read_fasta(
      shared_data / "sequences" / "globins45.fasta")]
  assert batching.fit_buckets(lengths) == [max(lengths)] == [154]


def test_one_row_per_residue_and_per_protein_is_the_mean(model):
  lengths = [1, 2, 511, 512, 513, 1000]
  records = _records(lengths)
  per_residue = _embed(model, records, max_tokens=4096)
  per_protein = _embed(model, records, max_tokens=4096, per_protein=True)
  for record, n in zip(records, lengths):
    assert per_residue[record.id].shape == (n, CONFIG.d_model)
    np.testing.assert_allclose(per_protein[record.id],
                               per_residue[record.id].mean(axis=0),
                               atol=1e-5, rtol=1e-5)


def test_embedding_alone_equals_embedding_in_a_padded_batch(model):
  records = _records([37, 200, 90, 150, 12])
  together = _embed(model, records, max_tokens=4096)
  for record in records:
    alone = _embed(model, [record], max_tokens=4096)
    np.testing.assert_allclose(alone[record.id], together[record.id],
                               atol=1e-5, rtol=0)


def test_eight_devices_give_the_embeddings_of_one(model):
  records = _records([300, 45, 120, 260, 80, 33, 150, 99, 10])
  eight = engine.Embedder(model.config, model.params,
                          engine.EmbedSettings(max_tokens=4096))
  one = engine.Embedder(model.config, model.params,
                        engine.EmbedSettings(max_tokens=4096),
                        devices=jax.devices()[:1])
  model_parallel = engine.Embedder(
      model.config, model.params,
      engine.EmbedSettings(max_tokens=4096, num_partitions=2))
  assert eight.data_parallel == 8 and one.data_parallel == 1
  results = [{r.id: e for batch in embedder.embed(records) for r, e in batch}
             for embedder in (eight, one, model_parallel)]
  for record in records:
    np.testing.assert_allclose(results[0][record.id], results[1][record.id],
                               atol=1e-5, rtol=0)
    np.testing.assert_allclose(results[2][record.id], results[1][record.id],
                               atol=1e-5, rtol=0)


def test_chunked_attention_equals_full_attention(model):
  records = _records([700, 333])
  full = _embed(model, records, max_tokens=4096)
  chunked_model = dataclasses.replace(
      model, config=dataclasses.replace(CONFIG, long_sequence_threshold=256,
                                        attention_chunk_size=128))
  chunked = _embed(chunked_model, records, max_tokens=4096)
  for record in records:
    np.testing.assert_allclose(chunked[record.id], full[record.id],
                               atol=1e-5, rtol=0)


def test_output_file_layout_and_ids_hdf5_cannot_hold(model, tmp_path):
  fasta_path = tmp_path / "in.fasta"
  fasta_path.write_text(">sp|P1/2 first protein\nMKTAYIAKQR\n"
                        ">v1.2 second\nGSHMLEDPVD\n")
  output = tmp_path / "out.h5"
  summary = run.embed_fasta(str(fasta_path), str(output), model,
                            progress=False)
  assert summary.embedded == 2
  with h5py.File(output) as f:
    assert sorted(f) == ["sp|P1_2", "v1.2"]
    assert f["sp|P1_2"].attrs["original_id"] == "sp|P1/2 first protein"
    assert f["v1.2"].shape == (10, CONFIG.d_model)
    assert f["v1.2"].dtype == np.float32


def test_ids_that_collide_after_sanitizing_are_an_error(model, tmp_path):
  fasta_path = tmp_path / "in.fasta"
  fasta_path.write_text(">a/b\nMKT\n>a_b\nMKT\n")
  with pytest.raises(fasta.FastaError, match="'a/b' and 'a_b'"):
    run.embed_fasta(str(fasta_path), str(tmp_path / "o.h5"), model,
                    progress=False)


def test_existing_output_is_never_overwritten_without_asking(model, tmp_path):
  fasta_path = tmp_path / "in.fasta"
  fasta_path.write_text(">a\nMKTAYIAKQR\n")
  output = tmp_path / "out.h5"
  with h5py.File(output, "w") as f:
    f["precious"] = np.arange(3)
  with pytest.raises(run.h5_writer.OutputError, match="--overwrite"):
    run.embed_fasta(str(fasta_path), str(output), model, progress=False)
  with h5py.File(output) as f:
    assert list(f) == ["precious"]
  run.embed_fasta(str(fasta_path), str(output), model, progress=False,
                  overwrite=True)
  with h5py.File(output) as f:
    assert list(f) == ["a"]
  # Other settings on the same file are refused rather than mixed in.
  with pytest.raises(run.h5_writer.OutputError, match="other settings"):
    run.embed_fasta(str(fasta_path), str(output), model, progress=False,
                    settings=engine.EmbedSettings(per_protein=True))
