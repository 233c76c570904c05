"""scripts/embed.py --hf_model_dir with ProtBert / ProtAlbert / ProtElectra
equals transformers on real proteins, one row per residue."""

import dataclasses
import os
import pathlib
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

from prottrans_jax import vocab as vocab_lib
from prottrans_jax.data import fasta
from prottrans_jax.inference import engine
from prottrans_jax.inference import loading

from test_bert_models import random_hf_model

REPO = pathlib.Path(__file__).resolve().parents[1]


def _records(shared_data):
  # Real proteins of different lengths (position table: 64 in the tiny models).
  records = list(fasta.read_fasta(shared_data / "sequences" / "prottrans_example_seqs.fasta"))
  records += list(fasta.read_fasta(shared_data / "sequences" / "globins45.fasta"))
  return [_crop(r, 62) for r in records[:8]]


def _crop(record, length):
  return dataclasses.replace(record, sequence=record.sequence[:length])


def _expected(model, sequence):
  vocab = vocab_lib.ProtBertVocabulary()
  ids = torch.tensor([[vocab.cls_id] + vocab.encode(sequence) + [vocab.eos_id]])
  with torch.no_grad():
    out = model(input_ids=ids, output_hidden_states=True)
  return out.hidden_states[-1][0, 1:-1].numpy()  # drop [CLS] and [SEP]


@pytest.mark.parametrize("case", ["bert_mlm", "albert_mlm", "electra_discriminator"])
def test_embed_script_matches_transformers(case, shared_data, tmp_path):
  model = random_hf_model(case, seed=4)
  model.save_pretrained(tmp_path / "hf")
  records = _records(shared_data)
  input_fasta = tmp_path / "in.fasta"
  input_fasta.write_text("".join(f">{r.description}\n{r.sequence}\n" for r in records))
  output = tmp_path / "out.h5"
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=2")
  subprocess.run([sys.executable, str(REPO / "scripts" / "embed.py"),
                  f"--input={input_fasta}", f"--output={output}",
                  f"--hf_model_dir={tmp_path / 'hf'}", "--max_tokens=256", "--noprogress"],
                 env=env, check=True, capture_output=True, timeout=600)
  with h5py.File(output) as f:
    assert len(f) == len(records)
    for record in records:
      ours = f[record.id][()]
      assert ours.shape == (len(record.sequence), 32)
      np.testing.assert_allclose(ours, _expected(model, record.sequence), atol=1e-5, rtol=0)


def test_per_protein_mean_is_over_residues_only(shared_data, tmp_path):
  model = random_hf_model("bert_model", seed=5)
  model.save_pretrained(tmp_path / "hf")
  loaded = loading.from_hf(str(tmp_path / "hf"))
  assert loaded.name == "bert"
  records = _records(shared_data)[:3]
  per_protein = engine.Embedder(loaded.config, loaded.params,
                                engine.EmbedSettings(per_protein=True))
  means = {r.id: v for batch in per_protein.embed(records) for r, v in batch}
  for record in records:
    np.testing.assert_allclose(means[record.id], _expected(model, record.sequence).mean(0),
                               atol=1e-5, rtol=0)
