"""T5X checkpoints of the T5 1.1 variants: read, run, convert on to HF.

T5X cannot run here, so the checkpoints are written at test time
(tests/t5x_writer.py) from random transformers T5 models with an untied
output layer (ReLU) and with gated-GELU + untied (T5 1.1), in both T5X
layouts. The first tests show the writer reproduces what T5X itself wrote
(the shared fixture), so the rest do not just read back our own format.
"""
from functools import partial
import json
import pathlib

import flax.serialization
import jax
import numpy as np
import pytest
import tensorstore as ts
import transformers

from prottrans_jax.convert import formats
from prottrans_jax.convert import hf_io
from prottrans_jax.convert import mapping
from prottrans_jax.convert import t5x
from prottrans_jax.data import fasta
from prottrans_jax.models import t5
import t5x_writer
from t5_variants import VARIANTS, hf_encoder_output, hf_logits, padded_batch, random_hf_t5
from t5_variants import teacher_forcing

LAYOUTS = {"classic": t5x_writer.write_classic, "orbax": t5x_writer.write_orbax}
T5X_VARIANTS = ("untied_relu", "t5_1_1")
STEP = 1234
LENGTHS = (140, 61, 25)  # real globin fragments; > 128 reaches the far buckets


def _real(shared_data) -> pathlib.Path:
  return shared_data / "t5x_checkpoint"


def _real_params(shared_data) -> dict[str, np.ndarray]:
  values = np.load(_real(shared_data) / "params.npz")
  return {name[len("target/"):]: values[name] for name in values.files}


def _msgpack_leaves(directory: pathlib.Path) -> list[tuple[str, object]]:
  """(path, leaf) of a classic checkpoint's msgpack tree, in file order."""
  tree = flax.serialization.msgpack_restore((directory / "checkpoint").read_bytes())
  out = []

  def walk(node, prefix):
    for key, child in node.items():
      if isinstance(child, dict) and "driver" not in child:
        walk(child, f"{prefix}/{key}")
      else:
        out.append((f"{prefix}/{key}", child))
  walk(tree, "")
  return out


def _ocdbt(state_dir: pathlib.Path):
  return ts.KvStore.open({"driver": "ocdbt",
                          "base": f"file://{state_dir.absolute()}/"}).result()


# ----------------------------------------------- the writer is T5X's layout


def test_writer_reproduces_t5x_classic_layout(shared_data, tmp_path):
  real = _real(shared_data) / "t5x_msgpack_zarr" / "checkpoint_20"
  ours = t5x_writer.write_classic(tmp_path, _real_params(shared_data), 20)
  assert ours.name == real.name

  # The same msgpack tree, in the same order, with the same leaves: zarr
  # specs equal, inline arrays of the same shape and dtype.
  real_leaves, our_leaves = _msgpack_leaves(real), _msgpack_leaves(ours)
  assert [p for p, _ in our_leaves] == [p for p, _ in real_leaves]
  assert real_leaves[0] == ("/version", 3) == our_leaves[0]
  for (path, theirs), (_, mine) in zip(real_leaves[1:], our_leaves[1:]):
    if isinstance(theirs, dict):
      assert mine == theirs, path
    else:
      assert (mine.shape, mine.dtype) == (theirs.shape, theirs.dtype), path
  assert sum(isinstance(leaf, dict) for _, leaf in real_leaves) == 47 + 47  # params, v

  # The same zarr folders, each with the same .zarray and chunk files.
  folders = sorted(p.name for p in real.iterdir() if p.is_dir())
  assert sorted(p.name for p in ours.iterdir() if p.is_dir()) == folders
  assert sorted(p.name for p in ours.iterdir() if p.is_file()) == ["checkpoint"]
  for folder in folders:
    assert (json.loads((ours / folder / ".zarray").read_text())
            == json.loads((real / folder / ".zarray").read_text())), folder
    assert sorted(f.name for f in (ours / folder).iterdir()) == sorted(
        f.name for f in (real / folder).iterdir()), folder

  config, loaders, step = t5x.read_t5x_checkpoint(ours)
  assert step == 20 and config.tie_word_embeddings and not config.is_gated_act
  reference = _real_params(shared_data)
  for name, load in loaders.items():
    np.testing.assert_array_equal(load(), reference[name])


def test_writer_reproduces_t5x_orbax_layout(shared_data, tmp_path):
  real = _real(shared_data) / "t5x_orbax" / "checkpoint_20"
  ours = t5x_writer.write_orbax(tmp_path, _real_params(shared_data), 20)
  assert ours.name == real.name

  real_keys = sorted(_ocdbt(real / "state").list().result())
  our_keys = sorted(_ocdbt(ours / "state").list().result())
  assert our_keys == real_keys and len(real_keys) == 472
  # The same arrays: every .zarray (Orbax's own compression) is the same.
  real_store, our_store = _ocdbt(real / "state"), _ocdbt(ours / "state")
  for key in real_keys:
    if key.endswith(b"/.zarray"):
      assert (json.loads(our_store.read(key).result().value)
              == json.loads(real_store.read(key).result().value)), key
  tree_keys = [set(json.loads((d / "state" / "_METADATA").read_text())["tree_metadata"])
               for d in (real, ours)]
  assert tree_keys[0] == tree_keys[1]

  config, loaders, step = t5x.read_t5x_checkpoint(tmp_path)  # the model dir
  assert step == 20 and config.d_ff == 64
  reference = _real_params(shared_data)
  for name, load in loaders.items():
    np.testing.assert_array_equal(load(), reference[name])


# ------------------------------------------------- the variant checkpoints


@pytest.fixture(scope="module")
def proteins(shared_data) -> list[str]:
  records = list(fasta.read_fasta(shared_data / "sequences" / "globins45.fasta"))
  return [r.sequence[:n] for r, n in zip(records[3:], LENGTHS)]


@pytest.fixture(scope="module", params=T5X_VARIANTS)
def hf_model(request) -> tuple[str, transformers.T5ForConditionalGeneration]:
  return request.param, random_hf_t5(*VARIANTS[request.param])


@pytest.fixture(scope="module", params=list(LAYOUTS))
def t5x_checkpoint(request, hf_model, tmp_path_factory):
  """(variant, HF model, T5X model dir) written in one layout."""
  variant, model = hf_model
  feed_forward_proj, tied = VARIANTS[variant]
  params = t5x_writer.hf_to_t5x_params(
      {k: v.numpy() for k, v in model.state_dict().items()}, num_layers=2,
      num_decoder_layers=2, gated=feed_forward_proj.startswith("gated-"), tied=tied)
  model_dir = tmp_path_factory.mktemp(f"t5x_{variant}_{request.param}")
  LAYOUTS[request.param](model_dir, params, STEP)
  return variant, model, model_dir


def test_t5x_variant_reproduces_transformers(t5x_checkpoint, proteins):
  variant, hf, model_dir = t5x_checkpoint
  config, loaders, step = t5x.read_t5x_checkpoint(model_dir, dtype="float32")
  assert step == STEP
  assert (config.feed_forward_proj, config.tie_word_embeddings) == VARIANTS[variant]
  assert "decoder/logits_dense/kernel" in loaders
  assert ("encoder/layers_1/mlp/wi_1/kernel" in loaders) == (variant == "t5_1_1")
  params = mapping.unflatten({n: load() for n, load in loaders.items()})

  inputs = padded_batch(proteins)
  decoder_inputs, targets = teacher_forcing(proteins, 24)
  model = t5.T5(config)
  encoded = jax.jit(partial(model.apply, method=t5.T5.encode))({"params": params}, inputs)
  np.testing.assert_array_less(
      np.abs(np.asarray(encoded) - hf_encoder_output(hf, inputs))[inputs > 0], 1e-5)
  logits = jax.jit(model.apply)({"params": params}, inputs, decoder_inputs, targets)
  expected = hf_logits(hf, inputs, decoder_inputs, targets)
  np.testing.assert_array_less(np.abs(np.asarray(logits) - expected)[targets > 0], 1e-5)


def test_t5x_variant_converts_to_hf(t5x_checkpoint, proteins, tmp_path):
  variant, hf, model_dir = t5x_checkpoint
  formats.convert_checkpoint("t5x", "hf", model_dir, tmp_path / "hf", progress=False)
  exported = json.loads((tmp_path / "hf" / hf_io.CONFIG_FILE).read_text())
  feed_forward_proj, tied = VARIANTS[variant]
  assert (exported["feed_forward_proj"], exported["tie_word_embeddings"]) == (
      feed_forward_proj, tied)

  loaded, info = transformers.T5ForConditionalGeneration.from_pretrained(
      tmp_path / "hf", output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  assert loaded.lm_head.weight is not loaded.shared.weight  # untied
  # Every tensor is the original's, byte for byte, so the model is too.
  original = hf.state_dict()
  state = hf_io.LazyStateDict(tmp_path / "hf")
  assert "lm_head.weight" in state
  for name, array in state.items():
    assert array.tobytes() == original[name].numpy().tobytes(), name
  inputs = padded_batch(proteins)
  decoder_inputs, targets = teacher_forcing(proteins, 24)
  np.testing.assert_array_equal(hf_logits(loaded.eval(), inputs, decoder_inputs, targets),
                                hf_logits(hf, inputs, decoder_inputs, targets))


def test_t5x_variant_encoder_only_and_override(t5x_checkpoint):
  variant, _, model_dir = t5x_checkpoint
  # The variant is read off the whole tree even when the decoder is dropped.
  config, loaders, _ = t5x.read_t5x_checkpoint(model_dir, encoder_only=True)
  assert (config.feed_forward_proj, config.tie_word_embeddings) == VARIANTS[variant]
  assert not any(n.startswith("decoder/") for n in loaders)
  if variant == "t5_1_1":
    # Gin, not the checkpoint, holds the activation: another can be named.
    config, _, _ = t5x.read_t5x_checkpoint(model_dir, feed_forward_proj="gated-relu")
    assert (config.is_gated_act, config.dense_act_fn) == (True, "relu")


# ------------------------------------------------------------------ errors


def test_t5x_shapes_that_fit_no_variant_name_the_tensor(tmp_path):
  model = random_hf_t5("gated-gelu", tie_word_embeddings=False)
  good = t5x_writer.hf_to_t5x_params({k: v.numpy() for k, v in model.state_dict().items()},
                                     num_layers=2, num_decoder_layers=2, gated=True, tied=False)

  def read(name, edit):
    params = dict(good)
    edit(params)
    t5x_writer.write_classic(tmp_path / name, params, STEP)
    return t5x.read_t5x_checkpoint(tmp_path / name)

  logits = "decoder/logits_dense/kernel"
  with pytest.raises(mapping.ConversionError,
                     match=rf"target/{logits}: checkpoint has \(128, 32\), "
                           r"the model expects \(32, 128\)"):
    read("transposed_logits", lambda p: p.update({logits: np.ascontiguousarray(p[logits].T)}))
  with pytest.raises(mapping.ConversionError,
                     match="missing from the T5X checkpoint.*encoder/layers_1/mlp/wi_1/kernel"):
    read("half_gated", lambda p: p.pop("encoder/layers_1/mlp/wi_1/kernel"))
  with pytest.raises(mapping.ConversionError,
                     match="target/decoder/layers_0/mlp/wi_0/kernel.*\\(32, 65\\)"):
    read("wrong_d_ff", lambda p: p.update(
        {"decoder/layers_0/mlp/wi_0/kernel": np.zeros((32, 65), np.float32)}))
  with pytest.raises(mapping.ConversionError,
                     match="encoder/layers_0/mlp/wi/kernel.*encoder/layers_0/mlp/wi_0/kernel"):
    read("gated_and_not", lambda p: p.update(
        {"encoder/layers_0/mlp/wi/kernel": p["encoder/layers_0/mlp/wi_0/kernel"]}))
  with pytest.raises(mapping.ConversionError,
                     match="not mapped to the model.*encoder/layers_0/mlp/wi_2/kernel"):
    read("three_inputs", lambda p: p.update(
        {"encoder/layers_0/mlp/wi_2/kernel": p["encoder/layers_0/mlp/wi_0/kernel"]}))
