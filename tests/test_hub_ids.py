"""Hugging Face model ids wherever a Hugging Face directory is accepted.

The Hub cache here is built in huggingface_hub's own layout (refs/main
naming a commit, snapshots/<commit>/ files linked to blobs/), as a download
leaves it, and read offline: nothing here touches the network.
"""

import hashlib
import json
import os
import pathlib

import h5py
import numpy as np
import pytest
import torch
import transformers

from prottrans_jax.convert import formats
from prottrans_jax.convert import hf_io
from prottrans_jax.convert import mapping
from prottrans_jax.inference import engine
from prottrans_jax.inference import h5_writer
from prottrans_jax.inference import loading
from prottrans_jax.inference import run

MODEL_ID = "Rostlab/tiny_prot_t5-enc"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _cache_like_the_hub(cache: pathlib.Path, model_id: str, commit: str,
                        files: pathlib.Path) -> pathlib.Path:
  """`files` cached as the Hub caches `model_id` at `commit`: each file a
  blob named by its hash, linked from the snapshot by a relative link."""
  repo = cache / f"models--{model_id.replace('/', '--')}"
  snapshot = repo / "snapshots" / commit
  (repo / "blobs").mkdir(parents=True)
  snapshot.mkdir(parents=True)
  (repo / "refs").mkdir()
  (repo / "refs" / "main").write_text(commit)  # No newline, as the Hub writes it.
  for file in files.iterdir():
    data = file.read_bytes()
    blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
    blob.write_bytes(data)
    (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))
  return snapshot


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
  """(local directory, Hub cache holding it as MODEL_ID, its snapshot)."""
  torch.manual_seed(0)
  config = transformers.T5Config(
      vocab_size=128, d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2,
      feed_forward_proj="relu", relative_attention_num_buckets=32,
      relative_attention_max_distance=128, pad_token_id=0, eos_token_id=1,
      decoder_start_token_id=0)
  root = tmp_path_factory.mktemp("hub")
  local = root / "tiny_prot_t5-enc"
  transformers.T5EncoderModel(config).save_pretrained(local)
  snapshot = _cache_like_the_hub(root / "cache", MODEL_ID, COMMIT, local)
  return local, root / "cache", snapshot


@pytest.fixture
def offline_cache(hub, monkeypatch):
  """The Hub cache of `hub` as this process's, offline. huggingface_hub
  reads these variables when imported; the resolver reads them per call."""
  monkeypatch.setenv("HF_HUB_CACHE", str(hub[1]))
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  return hub


def test_an_id_resolves_to_its_cached_snapshot(offline_cache):
  _, cache, snapshot = offline_cache
  location = hf_io.resolve_model(MODEL_ID)
  assert pathlib.Path(location.directory) == snapshot.resolve()
  assert location.source == f"{MODEL_ID}@{COMMIT}"
  assert hf_io.resolve_model(f"{MODEL_ID}@{COMMIT}") == location
  assert hf_io.hub_cache_dir() == str(cache)


def test_an_existing_path_or_a_url_is_never_an_id(offline_cache, tmp_path,
                                                  monkeypatch):
  local, _, _ = offline_cache
  # An id-shaped relative path that exists is that directory.
  (tmp_path / "Rostlab").mkdir()
  (tmp_path / MODEL_ID).symlink_to(local)
  monkeypatch.chdir(tmp_path)
  assert hf_io.resolve_model(MODEL_ID) == (MODEL_ID, MODEL_ID)
  assert hf_io.resolve_model("gs://bucket/model") == (
      "gs://bucket/model", "gs://bucket/model")
  # Path objects are paths, even id-shaped and missing.
  assert hf_io.resolve_model(pathlib.Path("no/such")).directory == "no/such"


def test_an_id_loads_what_its_directory_loads(offline_cache):
  local, _, _ = offline_cache
  by_id, by_dir = loading.from_hf(MODEL_ID), loading.from_hf(str(local))
  assert by_id.source == f"{MODEL_ID}@{COMMIT}"
  assert by_id.config == by_dir.config
  ours, theirs = mapping.flatten(by_id.params), mapping.flatten(by_dir.params)
  assert ours.keys() == theirs.keys() and ours
  for name, array in ours.items():
    np.testing.assert_array_equal(array, theirs[name], err_msg=name)


def test_an_unknown_id_offline_names_the_id_and_the_cache(offline_cache):
  _, cache, _ = offline_cache
  with pytest.raises(FileNotFoundError) as error:
    loading.from_hf("Rostlab/prot_t5_xl_nowhere")
  message = str(error.value)
  assert "Rostlab/prot_t5_xl_nowhere" in message
  assert str(cache) in message
  assert "HF_HUB_OFFLINE" in message and "local directory" in message
  # A revision the cache does not hold is missing too, named.
  with pytest.raises(FileNotFoundError, match="revision v2"):
    hf_io.resolve_model(f"{MODEL_ID}@v2")


def test_without_the_hub_a_cached_id_resolves_and_a_missing_one_says_why(
    offline_cache, monkeypatch):
  """Online mode with the Hub unreachable: a closed local port, so nothing
  leaves this machine."""
  import huggingface_hub.constants  # pylint: disable=g-import-not-at-top
  monkeypatch.delenv("HF_HUB_OFFLINE")
  for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
                "all_proxy"):
    monkeypatch.delenv(proxy, raising=False)  # Straight to the closed port.
  monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
  _, cache, snapshot = offline_cache
  assert pathlib.Path(hf_io.resolve_model(MODEL_ID).directory) == snapshot.resolve()
  with pytest.raises(FileNotFoundError,
                     match=r"Rostlab/prot_t5_xl_nowhere .*could not be reached") as error:
    hf_io.resolve_model("Rostlab/prot_t5_xl_nowhere")
  assert str(cache) in str(error.value)


def test_convert_checkpoint_reads_an_id(offline_cache, tmp_path):
  local, _, snapshot = offline_cache
  assert formats.convert_checkpoint("hf", "native", MODEL_ID, tmp_path / "native",
                                    dry_run=True, progress=False) == (
      formats.convert_checkpoint("hf", "native", str(local), tmp_path / "native",
                                 dry_run=True, progress=False))
  config, loaders, encoder_only, _ = formats.read_checkpoint("hf", MODEL_ID)
  assert encoder_only and loaders
  with pytest.raises(ValueError, match="must differ"):
    formats.convert_checkpoint("hf", "hf", MODEL_ID, snapshot, progress=False)


def test_embed_with_an_id_as_hf_model_dir(offline_cache, tmp_path):
  """What scripts/embed.py --hf_model_dir runs, given an id."""
  local, _, _ = offline_cache
  fasta_path = tmp_path / "in.fasta"
  fasta_path.write_text(">a\nMKTAYIAKQR\n>b\nGSHMLEDPVAGKW\n")
  settings = engine.EmbedSettings(num_partitions=2)
  outputs = {}
  for name, spec in (("id", MODEL_ID), ("dir", str(local))):
    outputs[name] = tmp_path / f"{name}.h5"
    run.embed_fasta(str(fasta_path), str(outputs[name]),
                    loading.from_hf(spec, settings), settings, progress=False)
  with h5py.File(outputs["id"]) as by_id, h5py.File(outputs["dir"]) as by_dir:
    recorded = json.loads(by_id.attrs[h5_writer.SETTINGS_ATTRIBUTE])
    assert recorded["model"] == f"{MODEL_ID}@{COMMIT}"
    assert sorted(by_id) == sorted(by_dir) == ["a", "b"]
    for key in by_id:
      np.testing.assert_array_equal(by_id[key][()], by_dir[key][()])
