"""Checkpoint conversion: Hugging Face and native T5X in, Hugging Face and native out."""
from functools import partial
import json
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers

from prottrans_jax.convert import formats
from prottrans_jax.convert import hf_io
from prottrans_jax.convert import mapping
from prottrans_jax.convert import t5x
from t5_variants import VARIANTS, random_hf_t5  # a test helper (tests/)
from prottrans_jax import checkpoints
from prottrans_jax.models import t5

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
# A real protein fragment + eos, and a shorter one padded (ProtT5 ids).
TOKENS = np.array([[19, 4, 7, 9, 5, 9, 14, 3, 3, 6, 4, 3, 4, 21, 5, 14, 6, 1],
                   [19, 6, 4, 7, 13, 3, 10, 14, 11, 17, 1, 0, 0, 0, 0, 0, 0, 0]])


def tiny_prott5_hf_config() -> transformers.T5Config:
  """A tiny ProtT5-architecture config (T5 1.0, ProtT5's vocabulary size)."""
  return transformers.T5Config(
      vocab_size=128, d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2,
      num_decoder_layers=2, feed_forward_proj="relu", dropout_rate=0.0,
      decoder_start_token_id=0)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> pathlib.Path:
  """A tiny random ProtT5-architecture model saved by transformers."""
  torch.manual_seed(0)
  model = transformers.T5ForConditionalGeneration(tiny_prott5_hf_config()).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "layer_norm" in name:
        p.uniform_(0.5, 1.5)
  path = tmp_path_factory.mktemp("hf")
  model.save_pretrained(path)
  return path


def hf_outputs(model_dir, encoder_class=transformers.T5EncoderModel):
  """HF encoder output and teacher-forced logits of a saved model (float32)."""
  with torch.no_grad():
    ids, mask = torch.tensor(TOKENS), torch.tensor(TOKENS > 0)
    encoder, info = encoder_class.from_pretrained(model_dir, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    encoded = encoder.float().eval()(input_ids=ids, attention_mask=mask).last_hidden_state
    if encoder_class is not transformers.T5EncoderModel:
      return encoded.numpy(), None
    full = transformers.T5ForConditionalGeneration.from_pretrained(model_dir).eval()
    logits = full(input_ids=ids, attention_mask=mask,
                  decoder_input_ids=ids[:, :6] * 0 + 3).logits
  return encoded.numpy(), logits.numpy()


def our_outputs(config, params):
  model = t5.T5(config)
  encoded = jax.jit(partial(model.apply, method=t5.T5.encode))({"params": params}, TOKENS)
  logits = None
  if "decoder" in params:
    logits = jax.jit(model.apply)({"params": params}, TOKENS, TOKENS[:, :6] * 0 + 3)
  return np.asarray(encoded, np.float32), None if logits is None else np.asarray(logits)


def test_hf_to_native_to_hf_round_trip(hf_dir, tmp_path):
  expected_encoded, expected_logits = hf_outputs(hf_dir)
  formats.convert_checkpoint("hf", "native", hf_dir, tmp_path / "native", progress=False)
  model_name, config, params = checkpoints.restore_params(tmp_path / "native")
  assert model_name == "t5" and config.d_model == 32
  config = t5.T5Config.from_dict({**config.to_dict(), "dtype": "float32"})
  encoded, logits = our_outputs(config, params)
  valid = TOKENS > 0
  np.testing.assert_array_less(np.abs(encoded - expected_encoded)[valid], 1e-5)
  np.testing.assert_array_less(np.abs(logits - expected_logits), 1e-5)

  # Back to HF, sharded: from_pretrained finds every weight and nothing else.
  written = formats.convert_checkpoint("native", "hf", tmp_path / "native", tmp_path / "hf",
                                       max_shard_bytes=40_000, progress=False)
  assert (tmp_path / "hf" / hf_io.SAFETENSORS_INDEX) in map(pathlib.Path, written)
  encoded_back, logits_back = hf_outputs(tmp_path / "hf")
  np.testing.assert_array_equal(encoded_back, expected_encoded)
  np.testing.assert_array_equal(logits_back, expected_logits)
  # The sharded layout reads back tensor for tensor.
  original = hf_io.LazyStateDict(hf_dir)
  for name, array in hf_io.LazyStateDict(tmp_path / "hf").items():
    assert array.tobytes() == original[name].tobytes(), name


def test_half_precision_encoder_only_export(hf_dir, tmp_path):
  formats.convert_checkpoint("hf", "hf", hf_dir, tmp_path / "enc", encoder_only=True,
                             dtype="float16", progress=False)
  exported = json.loads((tmp_path / "enc" / "config.json").read_text())
  assert exported["architectures"] == ["T5EncoderModel"]
  state = hf_io.LazyStateDict(tmp_path / "enc")
  assert all(state[n].dtype == np.float16 for n in state)
  assert not any(n.startswith("decoder.") for n in state)

  with torch.no_grad():
    encoder, info = transformers.T5EncoderModel.from_pretrained(
        tmp_path / "enc", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert encoder.dtype == torch.float16
    theirs = encoder.eval()(input_ids=torch.tensor(TOKENS),
                            attention_mask=torch.tensor(TOKENS > 0)).last_hidden_state
  config, loaders, encoder_only, _ = formats.read_checkpoint("hf", tmp_path / "enc")
  assert encoder_only
  config = t5.T5Config.from_dict({**config.to_dict(), "dtype": "float16"})
  ours, _ = our_outputs(config, mapping.unflatten({n: f() for n, f in loaders.items()}))
  valid = TOKENS > 0
  np.testing.assert_allclose(ours[valid], theirs.float().numpy()[valid], atol=2e-2, rtol=2e-2)


def test_pytorch_bin_input(hf_dir, tmp_path):
  state = {n: torch.from_numpy(a.copy()) for n, a in hf_io.LazyStateDict(hf_dir).items()}
  torch.save(state, tmp_path / hf_io.TORCH_FILE)
  (tmp_path / hf_io.CONFIG_FILE).write_text((hf_dir / hf_io.CONFIG_FILE).read_text())
  _, from_bin, _ = formats.read_hf_checkpoint(tmp_path)
  _, from_safetensors, _ = formats.read_hf_checkpoint(hf_dir)
  for name, load in from_safetensors.items():
    np.testing.assert_array_equal(from_bin[name](), load())


@pytest.mark.parametrize("layout", ["t5x_msgpack_zarr", "t5x_orbax"])
def test_t5x_checkpoint_reproduces_its_encoder_output(shared_data, layout):
  root = shared_data / "t5x_checkpoint"
  config, loaders, step = t5x.read_t5x_checkpoint(root / layout, dtype="float32")
  assert step == 20
  assert (config.d_model, config.num_heads, config.d_kv, config.d_ff) == (32, 4, 8, 64)
  params = mapping.unflatten({n: f() for n, f in loaders.items()})
  reference = np.load(root / "params.npz")
  for name, array in mapping.flatten(params).items():
    np.testing.assert_array_equal(array, reference[f"target/{name}"])

  io = np.load(root / "encoder_io.npz")
  model = t5.T5(config)
  encoded = jax.jit(partial(model.apply, method=t5.T5.encode))(
      {"params": params}, io["input_ids"])
  np.testing.assert_array_less(np.abs(encoded - io["encoder_last_hidden_state"]), 1e-5)
  logits = jax.jit(model.apply)({"params": params}, io["input_ids"], io["decoder_input_ids"],
                                io["decoder_target_ids"])
  np.testing.assert_array_less(np.abs(logits - io["logits"]), 1e-4)


def test_t5x_to_native_keeps_the_step(shared_data, tmp_path):
  written = formats.convert_checkpoint(
      "t5x", "native", shared_data / "t5x_checkpoint" / "t5x_msgpack_zarr",
      tmp_path / "native", progress=False)
  assert pathlib.Path(written[0]).name == "20"


def _rewrite(hf_dir, out, edit_state=None, edit_config=None):
  out.mkdir()
  state = dict(hf_io.LazyStateDict(hf_dir))
  if edit_state:
    edit_state(state)
  safetensors.numpy.save_file(state, out / hf_io.SAFETENSORS_FILE, metadata={"format": "pt"})
  config = json.loads((hf_dir / hf_io.CONFIG_FILE).read_text())
  if edit_config:
    edit_config(config)
  (out / hf_io.CONFIG_FILE).write_text(json.dumps(config))
  return out


def test_clear_errors(hf_dir, tmp_path):
  bad_shape = _rewrite(hf_dir, tmp_path / "shape", lambda s: s.update(
      {"encoder.block.1.layer.1.DenseReluDense.wi.weight": np.zeros((65, 32), np.float32)}))
  with pytest.raises(mapping.ConversionError,
                     match=r"encoder.block.1.layer.1.DenseReluDense.wi.weight.*\(65, 32\).*\(64, 32\)"):
    formats.convert_checkpoint("hf", "native", bad_shape, tmp_path / "o1", progress=False)
  # Nothing left that would block the rerun (no output, no hidden partial).
  assert sorted(p.name for p in tmp_path.iterdir()) == ["shape"]

  # Damaged files are named.
  truncated = shutil.copytree(hf_dir, tmp_path / "truncated")
  weights = truncated / hf_io.SAFETENSORS_FILE
  weights.write_bytes(weights.read_bytes()[:-1000])
  with pytest.raises(ValueError, match=rf"{weights} is not a readable "
                     r"safetensors file \(truncated or damaged\?"):
    formats.convert_checkpoint("hf", "hf", truncated, tmp_path / "o5", dry_run=True)
  not_json = shutil.copytree(hf_dir, tmp_path / "not_json")
  (not_json / hf_io.CONFIG_FILE).write_text("<html>rate limited</html>")
  with pytest.raises(ValueError, match=rf"{not_json / hf_io.CONFIG_FILE} is "
                     "not valid JSON"):
    formats.convert_checkpoint("hf", "hf", not_json, tmp_path / "o6", dry_run=True)

  missing = _rewrite(hf_dir, tmp_path / "missing", lambda s: s.pop(
      "decoder.block.0.layer.0.SelfAttention.k.weight"))
  with pytest.raises(mapping.ConversionError,
                     match="missing.*decoder.block.0.layer.0.SelfAttention.k.weight"):
    formats.convert_checkpoint("hf", "hf", missing, tmp_path / "o2", dry_run=True)

  unknown = _rewrite(hf_dir, tmp_path / "arch", edit_config=lambda c: c.update(
      architectures=["T5ForSequenceClassification"]))
  with pytest.raises(mapping.ConversionError, match="T5ForSequenceClassification"):
    formats.convert_checkpoint("hf", "native", unknown, tmp_path / "o3")

  with pytest.raises(FileNotFoundError, match="does not exist"):
    formats.convert_checkpoint("hf", "native", tmp_path / "nowhere", tmp_path / "o4")

  (tmp_path / "taken").mkdir()
  (tmp_path / "taken" / "keep.txt").write_text("mine")
  with pytest.raises(FileExistsError, match="--overwrite"):
    formats.convert_checkpoint("hf", "hf", hf_dir, tmp_path / "taken", progress=False)
  assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"


@pytest.fixture(scope="module", params=[v for v in VARIANTS if v != "t5_1_0"])
def variant_hf_dir(request, tmp_path_factory) -> tuple[str, pathlib.Path]:
  """A tiny random T5 1.1-variant model saved by transformers."""
  path = tmp_path_factory.mktemp(request.param)
  random_hf_t5(*VARIANTS[request.param]).save_pretrained(path)
  return request.param, path


def test_hf_variant_round_trip_through_native(variant_hf_dir, tmp_path):
  variant, hf_dir = variant_hf_dir
  feed_forward_proj, tied = VARIANTS[variant]
  config, _, _, _ = formats.read_checkpoint("hf", hf_dir)
  assert (config.feed_forward_proj, config.tie_word_embeddings) == (feed_forward_proj, tied)
  formats.convert_checkpoint("hf", "native", hf_dir, tmp_path / "native", progress=False)
  _, restored, _ = checkpoints.restore_params(tmp_path / "native")
  assert restored == config  # the variant is recorded with the checkpoint
  formats.convert_checkpoint("native", "hf", tmp_path / "native", tmp_path / "hf",
                             progress=False)
  exported = json.loads((tmp_path / "hf" / hf_io.CONFIG_FILE).read_text())
  assert (exported["feed_forward_proj"], exported["tie_word_embeddings"]) == (
      feed_forward_proj, tied)

  # The same tensors as transformers saved, byte for byte (untied, lm_head
  # is one of them), and from_pretrained finds every weight and nothing else.
  original, back = hf_io.LazyStateDict(hf_dir), hf_io.LazyStateDict(tmp_path / "hf")
  assert set(back) == set(original) and ("lm_head.weight" in back) == (not tied)
  for name, array in back.items():
    assert array.dtype == original[name].dtype and array.tobytes() == original[name].tobytes()
  models = []
  for directory in (hf_dir, tmp_path / "hf"):
    model, info = transformers.T5ForConditionalGeneration.from_pretrained(
        directory, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    models.append(model.eval())
  with torch.no_grad():
    ids, mask = torch.tensor(TOKENS), torch.tensor(TOKENS > 0)
    logits = [m(input_ids=ids, attention_mask=mask, decoder_input_ids=ids[:, :6] * 0 + 3).logits
              for m in models]
  np.testing.assert_array_equal(logits[1].numpy(), logits[0].numpy())


def test_hf_variant_mismatch_errors_name_the_tensor(hf_dir, tmp_path):
  def config_edit(**fields):
    return lambda c: c.update(fields)

  gated_config = _rewrite(hf_dir, tmp_path / "gated", edit_config=config_edit(
      feed_forward_proj="gated-gelu"))
  with pytest.raises(mapping.ConversionError,
                     match=r"missing.*encoder.block.0.layer.1.DenseReluDense.wi_0.weight.*"
                           r"not mapped.*encoder.block.0.layer.1.DenseReluDense.wi.weight.*"
                           r"ungated MLP \(wi\) but feed_forward_proj is 'gated-gelu'"):
    formats.convert_checkpoint("hf", "hf", gated_config, tmp_path / "o1", dry_run=True)

  # As transformers 4 writes T5 1.1 (5 writes scale_decoder_outputs too).
  untied_config = _rewrite(hf_dir, tmp_path / "untied", edit_config=lambda c: (
      c.pop("scale_decoder_outputs", None), c.update(tie_word_embeddings=False)))
  with pytest.raises(mapping.ConversionError,
                     match=r"missing.*lm_head.weight.*untied \(T5 1.1\) but the checkpoint "
                           r"has no lm_head.weight"):
    formats.convert_checkpoint("hf", "hf", untied_config, tmp_path / "o2", dry_run=True)

  t5_1_1 = tmp_path / "t5_1_1"
  random_hf_t5("gated-gelu", tie_word_embeddings=False).save_pretrained(t5_1_1)
  relu_config = _rewrite(t5_1_1, tmp_path / "relu", edit_config=config_edit(
      feed_forward_proj="relu"))
  with pytest.raises(mapping.ConversionError,
                     match=r"not mapped.*decoder.block.0.layer.2.DenseReluDense.wi_0.weight.*"
                           r"gated MLP \(wi_0, wi_1\) but feed_forward_proj is 'relu'"):
    formats.convert_checkpoint("hf", "hf", relu_config, tmp_path / "o3", dry_run=True)

  tied_config = _rewrite(t5_1_1, tmp_path / "tied", edit_config=lambda c: (
      c.pop("scale_decoder_outputs", None), c.update(tie_word_embeddings=True)))
  with pytest.raises(mapping.ConversionError,
                     match="lm_head.weight differs from shared.weight.*tie_word_embeddings false"):
    formats.convert_checkpoint("hf", "native", tied_config, tmp_path / "o4", progress=False)

  bad_head = _rewrite(t5_1_1, tmp_path / "head", lambda s: s.update(
      {"lm_head.weight": np.zeros((127, 32), np.float32)}))
  with pytest.raises(mapping.ConversionError,
                     match=r"lm_head.weight.*\(127, 32\).*\(128, 32\)"):
    formats.convert_checkpoint("hf", "native", bad_head, tmp_path / "o5", progress=False)


def test_script_dry_run_and_error(hf_dir, tmp_path):
  script = [sys.executable, str(REPO_ROOT / "scripts" / "convert_checkpoint.py")]
  env = {"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"}
  ok = subprocess.run(script + ["--from=hf", "--to=hf", f"--input={hf_dir}",
                                f"--output={tmp_path / 'out'}", "--dry_run"],
                      capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=300)
  assert ok.returncode == 0, ok.stderr
  assert ("encoder.block.0.layer.0.SelfAttention.q.weight -> encoder/layers_0/attention/"
          "query/kernel -> encoder.block.0.layer.0.SelfAttention.q.weight (32, 32)") in ok.stdout
  assert not (tmp_path / "out").exists()

  bad = subprocess.run(script + ["--from=t5x", "--to=native", f"--input={tmp_path / 'none'}",
                                 f"--output={tmp_path / 'out'}"],
                       capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=300)
  assert bad.returncode != 0
  assert "does not exist" in bad.stderr and "Traceback" not in bad.stderr
