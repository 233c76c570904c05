"""Variant scores from the models' own probabilities (inference/variants.py)
equal a brute-force computation with `transformers` on the same weights;
scans equal the single-variant scores; bad variant lines are errors naming
the file and line; the command scores end to end."""
import dataclasses
import functools
import os
import subprocess
import sys

import flax.linen as nn
import h5py
import jax
import numpy as np
import pytest
import torch
import transformers

from prottrans_jax import checkpoints
from prottrans_jax import families
from prottrans_jax.convert import formats
from prottrans_jax.convert import mapping
from prottrans_jax.data import fasta
from prottrans_jax.inference import engine
from prottrans_jax.inference import h5_writer
from prottrans_jax.inference import loading
from prottrans_jax.inference import variants
from prottrans_jax.models import bert
from prottrans_jax.models import electra
from prottrans_jax.models import t5

# 45 and 42 residues: one length bucket for both families (46/43 tokens
# for ProtT5, 47/44 for ProtBert, padded to 48), so with one row per device
# (MAX_TOKENS) every batch here has one shape and each model compiles once.
PROTEINS = {"globin": "MVLSPADKTNVKAAWGKVGAHAGEYGAEALERMFLSFPTTKTYFP",
            "short": "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDG"[:42]}
MAX_TOKENS = 48
VARIANTS = """protein_id\tvariant
globin\tV2A
globin\tK8R:W15F
short\tM1W
short\tQ22E:K2A:A4G
globin\tK8E
globin\tA13C:V11I
"""
RECORDS = [fasta.FastaRecord(name, name, sequence, 1)
           for name, sequence in PROTEINS.items()]
# Attention block by block above 16 tokens (the long-protein path), in
# blocks of 8 queries: every protein here is "long" for these models.
# One layer (each for ProtT5's encoder and decoder): what scoring adds is
# outside the layers, and each layer costs compile time.
CHUNKED = {"long_sequence_threshold": 16, "attention_chunk_size": 8}
CONFIGS = {"t5": dataclasses.replace(t5.T5_CONFIGS["tiny"].with_dtype("float32"),
                                     num_encoder_layers=1, num_decoder_layers=1,
                                     **CHUNKED),
           "bert": dataclasses.replace(bert.BERT_CONFIGS["tiny"].with_dtype("float32"),
                                       num_hidden_layers=1, **CHUNKED)}


def _random_params(config):
  """Random weights of the whole network, made on the host from the
  abstract tree (no initialiser to compile); norm scales and biases away
  from 1 and 0, so that nothing mis-mapped passes unnoticed."""
  family = families.of(config)
  rng = np.random.default_rng(1)
  return jax.tree_util.tree_map_with_path(
      lambda path, x: (rng.uniform(0.5, 1.5, x.shape) if path[-1].key in ("scale", "bias")
                       else rng.normal(0.0, 0.15, x.shape)).astype(x.dtype),
      nn.unbox(families.abstract_params(family, config)))


def _build(name, directory):
  """(Scorer on 8 devices, the Hugging Face model with the same random
  weights, the directory holding them as our checkpoint ("ours") and as a
  Hugging Face export ("hf")). ProtT5 is loaded from our checkpoint,
  ProtBert from the export: both loaders' whole-model paths."""
  config = CONFIGS[name]
  params = _random_params(config)
  formats.write_hf_checkpoint(directory / "hf", mapping.loaders_of(params), config)
  checkpoints.write_params_checkpoint(directory / "ours", params, config, step=3)
  settings = engine.EmbedSettings(max_tokens=MAX_TOKENS)
  if name == "t5":
    loaded = loading.from_checkpoint(str(directory / "ours"), settings, whole_model=True)
  else:
    loaded = loading.from_hf(str(directory / "hf"), settings, whole_model=True)
  # Block-by-block attention sizes are ours, not in Hugging Face's config.
  config = dataclasses.replace(loaded.config, **CHUNKED)
  architecture = "T5ForConditionalGeneration" if name == "t5" else "BertForMaskedLM"
  hf = getattr(transformers, architecture).from_pretrained(directory / "hf").eval()
  scorer = variants.Scorer(config, loaded.params, settings)
  assert scorer.data_parallel == 8
  return scorer, hf, directory


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  """name -> `_build(name)`, each built once, when first asked for."""
  cache = {}

  def get(name):
    if name not in cache:
      cache[name] = _build(name, tmp_path_factory.mktemp(name))
    return cache[name]
  return get


@pytest.fixture(params=sorted(CONFIGS))
def model(request, built):
  """(Scorer, Hugging Face model, family name)."""
  scorer, hf, _ = built(request.param)
  return scorer, hf, request.param


@functools.cache
def _hf_log_probs(hf, name, sequence, masked):
  """[L, vocab] log-probabilities at the residues, computed by transformers."""
  family = families.get(name)
  tokens = family.tokenize(sequence)
  inputs = list(tokens)
  mask = variants._mask_id(family)  # pylint: disable=protected-access
  for position in masked:
    inputs[family.first_residue_row + position] = mask
  with torch.no_grad():
    if name == "t5":
      logits = hf(input_ids=torch.tensor([inputs]),
                  labels=torch.tensor([tokens])).logits
    else:
      logits = hf(input_ids=torch.tensor([inputs])).logits
  log_probs = torch.log_softmax(logits[0].double(), -1).numpy()
  first = family.first_residue_row
  return log_probs[first:first + len(sequence)]


def _hf_score(hf, name, variant, method):
  """ESM's definition, from transformers' probabilities, one pass each."""
  family = families.get(name)
  ids = variants._residue_ids(family)  # pylint: disable=protected-access
  log_probs = _hf_log_probs(hf, name, PROTEINS[variant.protein_id],
                            variant.positions if method == variants.MASKED_MARGINAL
                            else ())
  index = {r: ids[i] for i, r in enumerate(variants.RESIDUES)}
  return sum(log_probs[s.position, index[s.mutant]]
             - log_probs[s.position, index[s.wild_type]]
             for s in variant.substitutions)


@pytest.mark.parametrize("method", variants.METHODS)
def test_scores_equal_transformers(model, method, tmp_path):
  scorer, hf, name = model
  path = tmp_path / "variants.tsv"
  path.write_text(VARIANTS)
  to_score = variants.read_variants(path, PROTEINS)
  assert [len(v.substitutions) for v in to_score] == [1, 2, 1, 3, 1, 2]
  ours = scorer.score(RECORDS, to_score, method)
  theirs = [_hf_score(hf, name, v, method) for v in to_score]
  np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)
  # Not a trivially equal pair: the variants' scores differ.
  assert np.ptp(ours) > 0.01


@pytest.mark.parametrize("method", variants.METHODS)
def test_scan_equals_single_variant_scores(model, method, tmp_path):
  scorer, _, _ = model
  singles = [variants.Variant(r.id, f"{wt}{i + 1}{mutant}",
                              (variants.Substitution(i, wt, mutant),), 0)
             for r in RECORDS for i, wt in enumerate(r.sequence)
             for mutant in variants.RESIDUES]
  expected = scorer.score(RECORDS, singles, method)
  path = tmp_path / "scan.h5"
  assert variants.write_scan(path, scorer.scan(RECORDS, method), method) == 2
  with h5py.File(path, "r") as h5:
    assert h5.attrs["method"] == method
    tables = {}
    for record in RECORDS:
      dataset = h5[record.id]
      assert dataset.attrs["wild_type"] == record.sequence
      assert dataset.attrs["residues"] == variants.RESIDUES
      assert dataset.shape == (len(record.sequence), 20)
      tables[record.id] = dataset[...]
      wild_type = [variants.RESIDUES.index(r) for r in record.sequence]
      assert not tables[record.id][np.arange(len(record.sequence)), wild_type].any()
  np.testing.assert_allclose(
      np.concatenate([tables[r.id].ravel() for r in RECORDS]), expected,
      atol=1e-5, rtol=0)


BAD_LINES = {
    "wrong wild type": ("short\tK1A", "wrong wild-type residue in 'K1A': position 1 "
                        "of the protein is 'M'"),
    "past the end": ("short\tQ43A", "position 43 of 'Q43A' is outside the protein "
                     r"\(1..42\)"),
    "position zero": ("short\tM0A", "position 0 of 'M0A' is outside"),
    "unknown mutant": ("short\tM1B", "unknown mutant residue 'B'"),
    "unknown wild type": ("short\tZ1A", "unknown wild-type residue 'Z'"),
    "malformed": ("short\tM1", "malformed substitution 'M1'"),
    "malformed in a multiple": ("short\tM1A::K2A", "malformed substitution ''"),
    "one field": ("short", "expected 2 fields"),
    "three fields": ("short\tM1A\textra", "expected 2 fields"),
    "unknown protein": ("long\tM1A", "unknown protein id 'long'"),
    "duplicate": ("short\tK2A:M1W", "duplicate of line 1"),
    "position twice": ("short\tM1A:M1W", "position 1 is substituted twice"),
}


@pytest.mark.parametrize("kind", sorted(BAD_LINES))
def test_each_bad_line_is_an_error_naming_file_and_line(kind, tmp_path):
  line, message = BAD_LINES[kind]
  path = tmp_path / "variants.tsv"
  path.write_text(f"short\tM1W:K2A\n\nshort\tK2A\n{line}\n")
  with pytest.raises(variants.VariantError,
                     match=f"{path}, line 4: {message}"):
    variants.read_variants(path, PROTEINS)


def test_command_end_to_end(built, tmp_path):
  """prottrans-score-variants on a checkpoint of ours writes the scores the
  library computes from the same weights (on other devices, other batches)."""
  scorer, _, directory = built("bert")
  proteins, variant_file = tmp_path / "p.fasta", tmp_path / "v.tsv"
  proteins.write_text("".join(f">{k} a protein\n{v}\n" for k, v in PROTEINS.items()))
  variant_file.write_text(VARIANTS)
  output = tmp_path / "scores.tsv"
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  result = subprocess.run(
      [sys.executable, os.path.join(repo, "scripts", "score_variants.py"),
       f"--input={proteins}", f"--variants={variant_file}", f"--output={output}",
       f"--checkpoint_dir={directory / 'ours'}", "--noprogress"],
      capture_output=True, text=True, check=False,
      env={**os.environ, "PYTHONPATH": repo, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=1"})
  assert result.returncode == 0, result.stderr[-3000:]
  assert "6 variants scored, masked_marginal" in result.stdout
  lines = [line.split("\t") for line in output.read_text().splitlines()]
  assert lines[0] == list(variants.OUTPUT_COLUMNS)
  to_score = variants.read_variants(variant_file, PROTEINS)
  assert [row[:2] for row in lines[1:]] == [[v.protein_id, v.name] for v in to_score]
  assert [row[3:] for row in lines[1:]] == [
      [str(len(v.substitutions)), "masked_marginal"] for v in to_score]
  np.testing.assert_allclose([float(row[2]) for row in lines[1:]],
                             scorer.score(RECORDS, to_score), rtol=1e-5, atol=1e-5)


def test_a_model_without_its_prediction_head_is_a_clear_error(tmp_path):
  """An encoder-only export (like Rostlab's `-enc` releases) cannot score:
  the loader names the decoder weights it lacks; ELECTRA's joint pre-training
  model is refused with the way to score (its generator)."""
  config = CONFIGS["t5"]
  formats.write_hf_checkpoint(tmp_path, mapping.loaders_of(_random_params(config)),
                              config, encoder_only=True)
  with pytest.raises(ValueError, match="lacks parameter.*decoder/"):
    loading.from_hf(str(tmp_path), engine.EmbedSettings(), whole_model=True)
  pretraining = electra.ElectraPretrainingConfig(
      generator=electra.ELECTRA_CONFIGS["tiny_generator"],
      discriminator=electra.ELECTRA_CONFIGS["tiny_discriminator"])
  with pytest.raises(ValueError, match="score with its generator"):
    variants.Scorer(pretraining, {})


# Bad input for prottrans-score-variants: each refused before the model is
# loaded (or, for a protein too long, before any forward pass), naming the
# file, line, protein or flag.


def _fasta_file(path, proteins=PROTEINS):
  path.write_text("".join(f">{k}\n{v}\n" for k, v in proteins.items()))
  return path


def test_an_empty_fasta_file_is_an_error_naming_it(tmp_path):
  proteins = tmp_path / "empty.fasta"
  proteins.write_text("")
  with pytest.raises(fasta.FastaError, match=f"{proteins}: no FASTA records"):
    variants.read_inputs(str(proteins), None, scan=True)


def test_a_variants_file_without_variants_is_an_error_naming_it(tmp_path):
  """An empty table of scores is never what was asked for: a header and
  empty lines alone are refused, not written as a header-only TSV."""
  path = tmp_path / "variants.tsv"
  path.write_text("protein_id\tvariant\n\n")
  with pytest.raises(variants.VariantError, match=f"{path}: no variants"):
    variants.read_inputs(str(_fasta_file(tmp_path / "p.fasta")), str(path), scan=False)


def test_a_variant_of_a_protein_missing_from_the_fasta_names_both_files(tmp_path):
  proteins = _fasta_file(tmp_path / "p.fasta")
  path = tmp_path / "variants.tsv"
  path.write_text("short\tM1W\nabsent\tM1W\n")
  with pytest.raises(variants.VariantError,
                     match=f"{path}, line 2: unknown protein id 'absent' "
                     rf"\(not in {proteins}\)"):
    variants.read_inputs(str(proteins), str(path), scan=False)


def test_scan_and_variants_together_or_neither_name_the_flags(tmp_path):
  proteins = str(_fasta_file(tmp_path / "p.fasta"))
  with pytest.raises(ValueError, match="give --variants .* or --scan .*, not both"):
    variants.read_inputs(proteins, str(tmp_path / "variants.tsv"), scan=True)
  with pytest.raises(ValueError, match="give --variants .* or --scan .*one of them$"):
    variants.read_inputs(proteins, None, scan=False)


def test_an_existing_output_is_refused_without_overwrite(tmp_path):
  """As prottrans-embed: an existing --output is replaced only when asked;
  a scan that fails part way leaves no file that would then be refused."""
  output = tmp_path / "scores.tsv"
  variants.check_output(output, overwrite=False)  # Nothing there yet.
  output.write_text("earlier scores\n")
  with pytest.raises(h5_writer.OutputError,
                     match=f"--output {output} exists: pass --overwrite"):
    variants.check_output(output, overwrite=False)
  variants.check_output(output, overwrite=True)
  with pytest.raises(h5_writer.OutputError, match="is a directory"):
    variants.check_output(tmp_path, overwrite=True)

  def failing_scan():
    yield RECORDS[0], np.zeros((len(RECORDS[0].sequence), 20), np.float32)
    raise RuntimeError("device out of memory")
  scan = tmp_path / "scan.h5"
  with pytest.raises(RuntimeError, match="out of memory"):
    variants.write_scan(scan, failing_scan(), variants.MASKED_MARGINAL)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.tsv"]
  variants.check_output(scan, overwrite=False)


def test_a_protein_longer_than_learned_positions_is_named_before_any_pass(built):
  """ProtBert's learned positions end (here at the tiny config's 1024 tokens,
  [CLS] and [SEP] included): the protein is named and nothing is computed,
  by `score` and by `scan` before its output is opened. ProtT5's relative
  positions have no end: the same protein is planned."""
  scorer, _, _ = built("bert")
  limit = scorer.config.max_position_embeddings
  long = fasta.FastaRecord("long", "long", "M" * (limit - 1), 1)
  variant = variants.Variant("long", "M1A", (variants.Substitution(0, "M", "A"),), 1)
  with pytest.raises(engine.ProteinTooLongError,
                     match=r"'long' \(1023 residues\). Nothing was scored"):
    scorer.score(RECORDS + [long], [variant])
  with pytest.raises(engine.ProteinTooLongError, match="'long'.*Nothing was scanned"):
    scorer.scan(RECORDS + [long])
  t5_scorer, _, _ = built("t5")
  assert t5_scorer.plan([variants.Pass(long, ())])
