"""`prottrans-embed --hf_model_dir` equals transformers' T5EncoderModel, and
embeds (and converts) without importing TensorFlow, seqio, TFDS, Beam or gin."""

import json

import os
import pathlib
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
import transformers

from prottrans_jax import vocab as vocab_lib
from prottrans_jax.data import fasta

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def hf_encoder_dir(tmp_path_factory):
  """A random tiny ProtT5-architecture encoder saved by transformers."""
  torch.manual_seed(0)
  config = transformers.T5Config(
      vocab_size=128, d_model=64, d_kv=16, num_heads=4, d_ff=128,
      num_layers=2, num_decoder_layers=2, feed_forward_proj="relu",
      relative_attention_num_buckets=32, relative_attention_max_distance=128,
      is_encoder_decoder=True, tie_word_embeddings=True, pad_token_id=0,
      eos_token_id=1, decoder_start_token_id=0)
  model = transformers.T5EncoderModel(config).eval()
  path = tmp_path_factory.mktemp("hf") / "tiny_prot_t5_enc"
  model.save_pretrained(path)
  return path, model


def test_embed_command_matches_t5_encoder_model_without_tensorflow(
    hf_encoder_dir, shared_data, tmp_path):
  path, model = hf_encoder_dir
  records = (list(fasta.read_fasta(
      shared_data / "sequences" / "prottrans_example_seqs.fasta")) +
             list(fasta.read_fasta(
                 shared_data / "sequences" / "globins45.fasta"))[:6])
  input_fasta = tmp_path / "in.fasta"
  input_fasta.write_text("".join(f">{r.description}\n{r.sequence}\n"
                                 for r in records))
  output = tmp_path / "out.h5"
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=2")
  probe = subprocess.run(
      [sys.executable, str(REPO / "tests" / "light_core_probe.py"), str(path),
       str(input_fasta), str(output), str(tmp_path / "native")],
      env=env, check=True, capture_output=True, text=True, timeout=600)
  # The core imported no training-only package, embedding and converting.
  assert json.loads(probe.stdout.strip().splitlines()[-1]) == []
  assert (tmp_path / "native" / "checkpoints").is_dir()

  vocab = vocab_lib.ProtT5Vocabulary()
  with h5py.File(output) as f, torch.no_grad():
    assert len(f) == len(records)
    for record in records:
      ids = torch.tensor([vocab.encode(record.sequence) + [vocab.eos_id]])
      expected = model(input_ids=ids).last_hidden_state[0, :-1].numpy()
      ours = f[record.id][()]
      assert ours.shape == (len(record.sequence), 64)
      np.testing.assert_allclose(ours, expected, atol=1e-4, rtol=0)
