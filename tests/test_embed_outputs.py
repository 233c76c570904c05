"""Several outputs in one pass: per residue and per protein, any hidden
layer; float16 compute; batches out of device memory retried in parts;
outputs tied to their weights; non-finite values and proteins too long
refused."""

import dataclasses
import functools
import logging
import shutil

import flax.linen as nn
import h5py
import jax
import numpy as np
import pytest
import torch
import transformers

from prottrans_jax import checkpoints
from prottrans_jax import families
from prottrans_jax.convert import mapping
from prottrans_jax.data import fasta
from prottrans_jax.inference import engine
from prottrans_jax.inference import fingerprint
from prottrans_jax.inference import h5_writer
from prottrans_jax.inference import loading
from prottrans_jax.inference import run
from prottrans_jax.models import albert
from prottrans_jax.models import bert
from prottrans_jax.models import t5

RESIDUES = "ACDEFGHIKLMNPQRSTVWY"
# Four layers, so that -4 and 1 name the same hidden state and 0..4 exist.
T5_CONFIG = dataclasses.replace(t5.T5_CONFIGS["tiny"], num_encoder_layers=4,
                                dtype="float32")


def _records(lengths, seed=0):
  rng = np.random.default_rng(seed)
  return [fasta.FastaRecord(id=f"p{i}", description=f"p{i}",
                            sequence="".join(rng.choice(list(RESIDUES), n)),
                            line=i + 1)
          for i, n in enumerate(lengths)]


def _random_hf_encoder(config, seed=0):
  """A random transformers encoder of `config`'s architecture and our params
  of the same weights (norm scales and biases randomised too, so a swapped
  or skipped norm shows)."""
  torch.manual_seed(seed)
  converter = families.of(config).hf_converter
  architecture = converter.architecture_for(config, ())
  model = getattr(transformers, architecture)(transformers.AutoConfig.for_model(
      **converter.hf_config(config, architecture, "float32"))).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name.lower() or name.endswith("bias"):
        p.uniform_(0.5, 1.5) if name.endswith("weight") else p.uniform_(-0.5, 0.5)
  state = {n: t.detach().numpy() for n, t in model.state_dict().items()}
  return model, mapping.state_dict_to_params(state, converter, config, architecture,
                                             encoder_only=True)


@pytest.fixture(scope="module")
def t5_model():
  return _random_hf_encoder(T5_CONFIG)


def _hf_hidden_states(model, family, sequence):
  """transformers' `output_hidden_states` for one protein, residue rows only."""
  with torch.no_grad():
    states = model(input_ids=torch.tensor([family.tokenize(sequence)]),
                   output_hidden_states=True).hidden_states
  first = family.first_residue_row
  return [s[0, first:first + len(sequence)].numpy() for s in states]


@pytest.mark.parametrize("config", [
    bert.BERT_CONFIGS["tiny"],
    # Three calls of one shared layer: one hidden state per call.
    albert.ALBERT_CONFIGS["tiny"]], ids=["bert", "albert"])
def test_every_hidden_state_equals_transformers(config):
  config = config.with_dtype("float32")
  family = families.of(config)
  model, params = _random_hf_encoder(config)
  sequence = _records([40])[0].sequence
  tokens = np.array([family.tokenize(sequence)], np.int32)
  ours = jax.jit(functools.partial(
      family.module(config).apply, method=family.encode,
      output_hidden_states=True))({"params": params}, tokens)
  expected = _hf_hidden_states(model, family, sequence)
  assert len(ours) == len(expected) == family.num_hidden_states(config)
  for layer, (mine, theirs) in enumerate(zip(ours, expected)):
    np.testing.assert_allclose(np.asarray(mine)[0, 1:-1], theirs, atol=1e-5, rtol=0,
                               err_msg=f"hidden state {layer}")


def test_engine_outputs_equal_transformers_hidden_states(t5_model):
  # T5: hidden state 0 is the embedding, i < 4 layer i's output, 4 (= -1)
  # the output after the final norm (layer 4 before it has no entry).
  model, params = t5_model
  family = families.of(T5_CONFIG)
  records = _records([55, 48])  # One bucket (56 tokens): one compilation.
  settings = engine.EmbedSettings(per_protein=True, per_residue=True,
                                  layers=(-1, 0, 2), max_tokens=256)
  embedder = engine.Embedder(T5_CONFIG, params, settings, jax.devices()[:2])
  [batch] = embedder.embed_batches(records)
  assert [o.key for o in settings.outputs] == [
      "per_residue/layer_-1", "per_residue/layer_0", "per_residue/layer_2",
      "per_protein/layer_-1", "per_protein/layer_0", "per_protein/layer_2"]
  for row, record in enumerate(batch.records):
    expected = _hf_hidden_states(model, family, record.sequence)
    for layer, index in ((-1, 4), (0, 0), (2, 2)):
      per_residue = batch.outputs[f"per_residue/layer_{layer}"][row]
      # T5's residual stream grows with depth: compare relative to its scale.
      scale = np.abs(expected[index]).max()
      np.testing.assert_allclose(per_residue, expected[index], atol=1e-5 * scale, rtol=0)
      np.testing.assert_allclose(batch.outputs[f"per_protein/layer_{layer}"][row],
                                 expected[index].mean(axis=0), atol=1e-5 * scale, rtol=0)


@pytest.fixture(scope="module")
def one_pass(t5_model):
  """Six outputs of one Embedder: per residue and per protein, three layers."""
  settings = engine.EmbedSettings(per_residue=True, per_protein=True,
                                  layers=(-1, -4, 0), max_tokens=256)
  records = _records([63, 61, 59, 58, 56])  # One bucket: one compilation.
  embedder = engine.Embedder(T5_CONFIG, t5_model[1], settings, jax.devices()[:2])
  return records, settings, list(embedder.embed_batches(records))


def test_all_outputs_in_one_pass_equal_each_output_alone(t5_model, one_pass):
  records, settings, batches = one_pass
  assert len(batches) == 1
  [batch] = batches
  assert [r.id for r in batch.records] == [r.id for r in records]
  for spec in settings.outputs:
    alone = engine.Embedder(
        T5_CONFIG, t5_model[1],
        engine.EmbedSettings(per_protein=spec.kind == engine.PER_PROTEIN,
                             layers=(spec.layer,), max_tokens=256),
        jax.devices()[:2])
    # The single-output API yields (record, array) pairs as before.
    [pairs] = list(alone.embed(records))
    for (record, expected), ours in zip(pairs, batch.outputs[spec.key]):
      shape = ((len(record.sequence), T5_CONFIG.d_model)
               if spec.kind == engine.PER_RESIDUE else (T5_CONFIG.d_model,))
      assert ours.shape == expected.shape == shape
      np.testing.assert_array_equal(ours, expected, err_msg=spec.key)


# float16 keeps 11 significant bits: each rounding is off by up to 2^-11
# (5e-4) of the value. Norm statistics and the softmax run in float32
# (layers.py), so what remains are the roundings of matmul inputs, outputs
# and residual sums, a few per layer, partly cancelling: measured, the
# error grows by about 3e-4 of a hidden state's largest magnitude per layer
# (1.6e-3 after the T5's 4 layers, 1.0e-3 after the BERT's 2). We allow
# 4e-3 of the scale, per hidden state (T5's residual stream grows with
# depth). bfloat16 (8 bits) is off by 6e-3 to 1.3e-2 on the same models, so
# the bound also tells float16 from bfloat16, and a lost float32 norm or
# softmax, or an overflow, is far beyond it.
FLOAT16_TOLERANCE = 4e-3


def test_float16_compute_is_float32_within_its_precision(t5_model, one_pass):
  records, settings, [expected] = one_pass
  embedder = engine.Embedder(T5_CONFIG, t5_model[1],
                             dataclasses.replace(settings, dtype="float16"),
                             jax.devices()[:2])
  assert embedder.config.dtype == "float16"
  [half] = embedder.embed_batches(records)
  for key, arrays in expected.outputs.items():
    for ours, reference in zip(half.outputs[key], arrays):
      assert ours.dtype == np.float32 and np.isfinite(ours).all()
      scale = np.abs(reference).max()
      np.testing.assert_allclose(ours, reference, atol=FLOAT16_TOLERANCE * scale,
                                 rtol=0, err_msg=key)
      # ... and not by chance: float16 changes the numbers.
      assert not np.array_equal(ours, reference)


def test_float16_bert_hidden_states_within_its_precision():
  config = bert.BERT_CONFIGS["tiny"]
  family = families.of(config)
  _, params = _random_hf_encoder(config)
  tokens = np.array([family.tokenize(r.sequence) for r in _records([60, 60])],
                    np.int32)

  def hidden_states(dtype):
    return jax.jit(functools.partial(
        family.module(config.with_dtype(dtype)).apply, method=family.encode,
        output_hidden_states=True))({"params": params}, tokens)

  for half, full in zip(hidden_states("float16"), hidden_states("float32")):
    assert half.dtype == np.float16
    full = np.asarray(full)
    np.testing.assert_allclose(np.asarray(half, np.float32), full,
                               atol=FLOAT16_TOLERANCE * np.abs(full).max(), rtol=0)


def test_settings_outputs_and_their_former_meaning():
  assert engine.EmbedSettings().outputs == (
      engine.OutputSpec("per_residue", -1),)
  assert [o.key for o in engine.EmbedSettings(per_protein=True).outputs] == [
      "per_protein/layer_-1"]
  both = engine.EmbedSettings(per_protein=True, per_residue=True, layers=[3, -2])
  assert both.layers == (3, -2)  # A list (flags, gin) is kept as a tuple.
  assert [o.key for o in both.outputs] == [
      "per_residue/layer_3", "per_residue/layer_-2", "per_protein/layer_3",
      "per_protein/layer_-2"]
  with pytest.raises(ValueError, match="nothing to compute"):
    engine.EmbedSettings(per_residue=False)
  with pytest.raises(ValueError, match="'float8'"):
    engine.EmbedSettings(dtype="float8")
  with pytest.raises(ValueError, match=r"\(-1, -1\) name a layer twice"):
    engine.EmbedSettings(layers=(-1, -1))
  with pytest.raises(ValueError, match="one or more ints"):
    engine.EmbedSettings(layers=())


@pytest.mark.parametrize("layers, message", [
    ((5,), r"layer 5 does not exist: this model has hidden states 0\.\.4 .*-1\.\.-5"),
    ((-6,), r"layer -6 does not exist: this model has hidden states 0\.\.4"),
    ((4, -1), r"layers 4 and -1 are the same hidden state \(4 of 0\.\.4\)"),
    ((1, -4), r"layers 1 and -4 are the same hidden state \(1 of 0\.\.4\)"),
])
def test_layers_out_of_range_or_repeated_are_errors(t5_model, layers, message):
  with pytest.raises(ValueError, match=message):
    engine.Embedder(T5_CONFIG, t5_model[1], engine.EmbedSettings(layers=layers))


def test_embed_with_several_outputs_points_to_embed_batches(t5_model):
  embedder = engine.Embedder(T5_CONFIG, t5_model[1],
                             engine.EmbedSettings(layers=(0, -1)),
                             jax.devices()[:1])
  with pytest.raises(ValueError, match="2 outputs .*use embed_batches"):
    embedder.embed(_records([5]))


# Chunks of 32 queries, so that the blockwise retry is a different
# computation at the test's lengths (it is at any length above one chunk).
OOM_CONFIG = dataclasses.replace(T5_CONFIG, attention_chunk_size=32)
# Five 100-residue proteins (a batch of 6 rows x 101 tokens on two devices)
# and six of 20 (6 rows x 21 tokens).
OOM_LENGTHS = [100] * 5 + [20] * 6


def test_batches_out_of_memory_are_split_then_blockwise(t5_model, monkeypatch,
                                                        caplog):
  devices = jax.devices()[:2]
  records = _records(OOM_LENGTHS)
  settings = engine.EmbedSettings(per_protein=True, per_residue=True,
                                  max_tokens=512)
  straight = engine.Embedder(OOM_CONFIG, t5_model[1], settings, devices)
  assert [(b.rows, b.length) for b in straight.plan(records)] == [(6, 101), (6, 21)]
  expected = list(straight.embed_batches(records))
  # 100 tokens at once fit: 4 x 21 and 2 x 21 do, 6 x 21 does not; 101
  # tokens per row never fit, so the long batch goes 6 -> 4 + 2 -> (2 + 2) + 2
  # rows, and one row per device fits with 32 queries at a time (2 x 32).
  monkeypatch.setenv(engine.TEST_OOM_ENV, "100")
  retrying = engine.Embedder(OOM_CONFIG, t5_model[1], settings, devices)
  with caplog.at_level(logging.WARNING, logger=engine.__name__):
    retried = list(retrying.embed_batches(records))
  assert [b.index for b in retried] == [0, 1]
  for ours, reference in zip(retried, expected):
    assert [r.id for r in ours.records] == [r.id for r in reference.records]
    for key, arrays in reference.outputs.items():
      # Other batch shapes and attention blocks: other rounding, not bits.
      for mine, theirs in zip(ours.outputs[key], arrays):
        np.testing.assert_allclose(mine, theirs, atol=1e-5, rtol=0, err_msg=key)
  log = caplog.text
  assert "batch 0: 6 rows x 101 tokens ran out of device memory" in log
  assert "batch 0: retrying 6 rows x 101 tokens as 4 + 2 rows" in log
  assert "batch 0: retrying 4 rows x 101 tokens as 2 + 2 rows" in log
  assert "batch 0: retrying 2 row(s) x 101 tokens with attention 32 queries at a time" in log
  assert "batch 1: retrying 6 rows x 21 tokens as 4 + 2 rows" in log
  # A shape that ran out of memory once is not tried again: the second and
  # third 2-row parts go straight to blockwise attention.
  assert log.count("batch 0: 2 rows x 101 tokens ran out") == 1
  assert log.count("with attention 32 queries at a time") == 3


def test_a_batch_that_never_fits_is_a_clear_error(t5_model, monkeypatch):
  monkeypatch.setenv(engine.TEST_OOM_ENV, "50")  # Not even 2 x 32 fits.
  embedder = engine.Embedder(OOM_CONFIG, t5_model[1], engine.EmbedSettings(),
                             jax.devices()[:2])
  with pytest.raises(engine.OutOfDeviceMemoryError,
                     match=r"batch 0: 2 row\(s\) x 101 tokens .*attention 32 "
                     r"queries at a time.*'p0', 'p1'.*--num_partitions"):
    list(embedder.embed_batches(_records(OOM_LENGTHS)))


# --- Nothing silently wrong: outputs tied to their weights, bad values and
# impossible inputs refused before they are written ------------------------


def _random_params(config, seed=0):
  """Random weights of `config`'s whole network, drawn in numpy (no
  compiled initialiser: these tests are about what the run does with
  them)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda a: (rng.normal(0, 0.2, a.shape)).astype(a.dtype),
      nn.unbox(families.abstract_params(families.of(config), config)))


def _write_fasta(path, records):
  path.write_text("".join(f">{r.id}\n{r.sequence}\n" for r in records))
  return str(path)


def test_weights_swapped_at_the_same_path_are_refused(tmp_path):
  settings = engine.EmbedSettings(max_tokens=64)
  input_path = _write_fasta(tmp_path / "in.fasta", _records([20, 10]))
  output = str(tmp_path / "out.h5")
  model_dir = tmp_path / "model"
  config = t5.T5_CONFIGS["tiny"]
  checkpoints.write_params_checkpoint(model_dir, _random_params(config),
                                      step=7, config=config)
  first = loading.from_checkpoint(str(model_dir), settings)
  run.embed_fasta(input_path, output, first, settings, progress=False)
  # The same files loaded again: the same fingerprint (what lets it resume).
  assert loading.from_checkpoint(str(model_dir), settings).fingerprint == (
      first.fingerprint)
  # Retrained to the same step: same path, same source, other weights of
  # the same shapes.
  shutil.rmtree(model_dir)
  checkpoints.write_params_checkpoint(model_dir, _random_params(config, 1),
                                      step=7, config=config)
  other = loading.from_checkpoint(str(model_dir), settings)
  assert other.source == first.source
  assert other.fingerprint != first.fingerprint
  with pytest.raises(h5_writer.OutputError,
                     match=r"out.h5 exists with other settings "
                     r"\(weights_fingerprint: .*--overwrite.*--output"):
    run.embed_fasta(input_path, output, other, settings, progress=False)


def test_hugging_face_weights_of_one_architecture_differ_by_fingerprint(
    tmp_path):
  """Two trainings of one architecture have the same safetensors headers
  and sizes: the fingerprint's content samples tell them apart; a copy of
  the same files, or a README added, does not change it."""
  def save(seed, directory):
    torch.manual_seed(seed)
    config = transformers.T5Config(
        vocab_size=128, d_model=128, d_kv=16, d_ff=512, num_layers=2,
        num_heads=8, feed_forward_proj="relu")
    transformers.T5EncoderModel(config).save_pretrained(directory)
    return str(directory)

  first = save(0, tmp_path / "a")
  loaded = loading.from_hf(first)
  assert loaded.fingerprint == fingerprint.of_hf_directory(first)
  # Above the size read whole: sampled.
  assert (tmp_path / "a" / "model.safetensors").stat().st_size > 1 << 20
  copy = shutil.copytree(first, tmp_path / "copy")
  (copy / "README.md").write_text("notes")
  assert fingerprint.of_hf_directory(copy) == loaded.fingerprint
  assert fingerprint.of_hf_directory(save(1, tmp_path / "b")) != (
      loaded.fingerprint)


def test_a_non_finite_embedding_is_refused_naming_the_protein(tmp_path):
  """NaN in the weights of one residue ('W'): proteins with a W get NaN
  embeddings, the others not. The first batch (no W) is committed, the
  run fails on the second naming its protein, and nothing is merged."""
  config = dataclasses.replace(t5.T5_CONFIGS["tiny"], dtype="float32")
  params = _random_params(config)
  [w_token] = families.of(config).tokenize("W")[:-1]
  table = np.array(params["token_embedder"]["embedding"])
  table[w_token] = np.nan
  params["token_embedder"]["embedding"] = table
  model = loading.LoadedModel("t5", config, params, "random")
  records = [fasta.FastaRecord("long", "long", "MKTAYIAKQR" * 6, 1),
             fasta.FastaRecord("longer", "longer", "MKTAYIAKQR" * 5, 2),
             fasta.FastaRecord("short_w", "short_w", "MKTWAYIAKQ", 3)]
  output = tmp_path / "out.h5"
  with pytest.raises(engine.NonFiniteEmbeddingError,
                     match=r"per_residue/layer_-1 of protein\(s\) 'short_w' "
                     r"is not finite.*not written"):
    run.embed_fasta(_write_fasta(tmp_path / "in.fasta", records), str(output),
                    model, engine.EmbedSettings(max_tokens=64),
                    progress=False)
  assert not output.exists()
  committed = []
  for chunk in (tmp_path / "out.h5.parts").glob("shard-*/chunk-*.h5"):
    with h5py.File(chunk) as f:
      committed += list(f["ids"].asstr()[()])
      assert np.isfinite(f["per_residue/layer_-1"][()]).all()
  assert sorted(committed) == ["long", "longer"]


def test_proteins_over_bert_positions_are_all_named_before_any_work(
    tmp_path):
  config = bert.BERT_CONFIGS["tiny"].with_dtype("float32")
  family = families.of(config)
  model = loading.LoadedModel(family.name, config, _random_params(config),
                              "random")
  records = [fasta.FastaRecord("fits", "fits", "M" * 1022, 1),
             fasta.FastaRecord("one_over", "one_over", "M" * 1023, 2),
             fasta.FastaRecord("huge", "huge", "M" * 200_000, 3)]
  output = tmp_path / "out.h5"
  with pytest.raises(engine.ProteinTooLongError,
                     match=r"2 protein\(s\) longer than this model's 1024 "
                     r"positions \(1022 residues plus 2 special tokens\): "
                     r"'one_over' \(1023 residues\); 'huge' \(200000 "
                     r"residues\)\. Nothing was embedded"):
    run.embed_fasta(_write_fasta(tmp_path / "in.fasta", records),
                    str(output), model, progress=False)
  assert sorted(tmp_path.iterdir()) == [tmp_path / "in.fasta"]


def test_an_output_under_a_file_is_refused_naming_it(tmp_path):
  (tmp_path / "afile").write_text("not a directory")
  with pytest.raises(h5_writer.OutputError,
                     match=r"--output .*afile/x.h5: .*afile is a file, not "
                     "a directory"):
    run.embed_fasta(str(tmp_path / "none.fasta"), str(tmp_path / "afile" /
                                                      "x.h5"),
                    loading.LoadedModel("t5", T5_CONFIG, {}, "random"))
