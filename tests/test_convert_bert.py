"""ProtBert / ProtAlbert / ProtElectra checkpoints: HF -> ours -> HF."""
import json

import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers

from prottrans_jax import checkpoints
from prottrans_jax.convert import formats
from prottrans_jax.convert import hf_io
from prottrans_jax.convert import mapping
from prottrans_jax.models import bert

from test_bert_models import CASES, TOKENS, random_hf_model


def _outputs(model_class, path):
  with torch.no_grad():
    model, info = model_class.from_pretrained(path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    return model.eval()(input_ids=torch.tensor(TOKENS), attention_mask=torch.tensor(TOKENS > 0),
                        output_hidden_states=True)


@pytest.mark.parametrize("case", sorted(CASES))
def test_hf_to_native_to_hf_round_trip(case, tmp_path):
  model = random_hf_model(case, seed=1)
  model.save_pretrained(tmp_path / "hf")
  expected = _outputs(type(model), tmp_path / "hf")

  formats.convert_checkpoint("hf", "native", tmp_path / "hf", tmp_path / "native",
                             progress=False)
  model_name, config, params = checkpoints.restore_params(tmp_path / "native")
  assert model_name == case.split("_")[0] and config.hidden_size == 32
  net = bert.Bert(config.__class__.from_dict({**config.to_dict(), "dtype": "float32"}))
  valid = TOKENS > 0
  hidden = np.asarray(net.apply({"params": params}, TOKENS, method=bert.Bert.encode))
  np.testing.assert_array_less(np.abs(hidden - expected.hidden_states[-1].numpy())[valid], 1e-5)

  formats.convert_checkpoint("native", "hf", tmp_path / "native", tmp_path / "back",
                             progress=False)
  exported = json.loads((tmp_path / "back" / "config.json").read_text())
  assert exported["architectures"] == [type(model).__name__]
  original = hf_io.LazyStateDict(tmp_path / "hf")
  back = hf_io.LazyStateDict(tmp_path / "back")
  assert sorted(back) == sorted(original)
  for name in original:
    assert back[name].tobytes() == original[name].tobytes(), name
  again = _outputs(type(model), tmp_path / "back")
  for key in ("logits", "pooler_output"):
    if key in expected:
      np.testing.assert_array_equal(again[key].numpy(), expected[key].numpy())


def test_old_checkpoint_with_tied_copies_and_buffers(tmp_path):
  """Checkpoints saved by older transformers store the tied decoder and the
  position_ids buffer: read (copies checked), never written back."""
  model = random_hf_model("bert_mlm", seed=2)
  model.save_pretrained(tmp_path / "hf")
  state = dict(hf_io.LazyStateDict(tmp_path / "hf"))
  state["cls.predictions.decoder.weight"] = state["bert.embeddings.word_embeddings.weight"]
  state["cls.predictions.decoder.bias"] = state["cls.predictions.bias"]
  state["bert.embeddings.position_ids"] = np.arange(64)[None]
  safetensors.numpy.save_file(state, tmp_path / "hf" / hf_io.SAFETENSORS_FILE)
  config, loaders, encoder_only = formats.read_hf_checkpoint(tmp_path / "hf")
  assert not encoder_only and "mlm_head/bias" in loaders
  formats.write_hf_checkpoint(tmp_path / "out", loaders, config)
  assert "cls.predictions.decoder.weight" not in hf_io.LazyStateDict(tmp_path / "out")
  _outputs(transformers.BertForMaskedLM, tmp_path / "out")

  # An untied copy is an error naming it.
  state["cls.predictions.decoder.weight"] = state["cls.predictions.decoder.weight"] + 1
  safetensors.numpy.save_file(state, tmp_path / "hf" / hf_io.SAFETENSORS_FILE)
  _, loaders, _ = formats.read_hf_checkpoint(tmp_path / "hf")
  with pytest.raises(mapping.ConversionError, match="cls.predictions.decoder.weight"):
    loaders["embedder/token_embedder/embedding"]()


def test_encoder_only_export_of_a_masked_lm(tmp_path):
  model = random_hf_model("electra_generator", seed=3)
  model.save_pretrained(tmp_path / "hf")
  formats.convert_checkpoint("hf", "hf", tmp_path / "hf", tmp_path / "enc", encoder_only=True,
                             progress=False)
  exported = json.loads((tmp_path / "enc" / "config.json").read_text())
  assert exported["architectures"] == ["ElectraModel"]
  encoder = _outputs(transformers.ElectraModel, tmp_path / "enc")
  full = _outputs(transformers.ElectraForMaskedLM, tmp_path / "hf")
  np.testing.assert_array_equal(encoder.last_hidden_state.numpy(),
                                full.hidden_states[-1].numpy())
  vocab = (tmp_path / "enc" / "vocab.txt").read_text().split()
  assert vocab[:6] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "L"] and len(vocab) == 30
