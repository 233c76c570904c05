"""ProtXLNet: our XLNet equals transformers' `XLNetLMHeadModel` (both
streams), its Hugging Face conversion is exact both ways, and
`embed_fasta --hf_model_dir` gives transformers' hidden states under the
released pipeline's conventions (left padding, `<sep><cls>` last)."""
import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers

from prottrans_jax import families
from prottrans_jax import vocab as vocab_lib
from prottrans_jax.convert import formats
from prottrans_jax.convert import hf_io
from prottrans_jax.convert import mapping
from prottrans_jax.data import fasta
from prottrans_jax.inference import engine
from prottrans_jax.inference import loading
from prottrans_jax.inference import run
from prottrans_jax.models import xlnet

VOCAB = vocab_lib.ProtXLNetVocabulary()


def _random_hf_model(architecture):
  """A tiny random transformers XLNet; norms and biases random too, so a
  mis-mapped one cannot pass. clamp_len 6 < the lengths used: clamped
  distances are exercised."""
  torch.manual_seed(0)
  config = transformers.XLNetConfig(vocab_size=VOCAB.vocab_size, d_model=32, n_layer=2,
                                    n_head=4, d_inner=64, clamp_len=6, dropout=0.0)
  model = getattr(transformers, architecture)(config).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("layer_norm.weight"):
        p.uniform_(0.5, 1.5)
      else:
        p.normal_(0.0, 0.2)
  return model


@pytest.fixture(scope="module")
def hf_lm(tmp_path_factory):
  """(directory, model) of a saved random XLNetLMHeadModel."""
  model = _random_hf_model("XLNetLMHeadModel")
  path = tmp_path_factory.mktemp("xlnet") / "lm"
  model.save_pretrained(path)
  return path, model


def _left_padded(sequences):
  """The released pipeline's batch: ids, `<sep><cls>`, `<pad>` on the left."""
  ids = [VOCAB.encode(s) + [VOCAB.sep_id, VOCAB.cls_id] for s in sequences]
  length = max(map(len, ids))
  tokens = np.full((len(ids), length), VOCAB.pad_id, np.int64)
  for row, row_ids in enumerate(ids):
    tokens[row, length - len(row_ids):] = row_ids
  return tokens, (tokens != VOCAB.pad_id).astype(np.int64)


def test_tokenize_frames_like_the_released_pipeline():
  family = families.get("xlnet")
  assert VOCAB.special_tokens[:6] == ("<unk>", "<s>", "</s>", "<cls>", "<sep>", "<pad>")
  assert family.tokenize("MXUa") == [VOCAB.residue_ids["M"], 0, 0,
                                     VOCAB.residue_ids["A"], 4, 3]
  assert family.pad_id == VOCAB.pad_id == 5 and family.first_residue_row == 0


@pytest.mark.parametrize("field, value, message", [
    ("n_head", 0, "n_head must be an integer >= 1"),
    ("d_head", 8, "d_head 8 x n_head 4 != d_model 64"),
    ("attn_type", "uni", "attn_type 'uni' is not supported"),
    ("bi_data", True, "bi_data=True"),
    ("ff_activation", "swish", "ff_activation 'swish' is not one of"),
])
def test_config_json_the_model_does_not_compute_is_refused(field, value, message):
  hf_config = {"architectures": ["XLNetModel"], "model_type": "xlnet", "d_model": 64,
               "n_layer": 2, "n_head": 4, "d_inner": 128, field: value}
  with pytest.raises(mapping.ConversionError, match=f"config.json: XLNetConfig.*{message}"):
    families.get("xlnet").hf_converter.config_from_hf(hf_config)


def test_matches_xlnet_lm_head_model(hf_lm):
  """Logits and every content-stream hidden state, with and without an
  attention mask (left-padded batch), and the query stream's logits with a
  permutation mask, target mapping and segment ids."""
  path, hf = hf_lm
  config, loaders, encoder_only = formats.read_hf_checkpoint(path, dtype="float32")
  assert not encoder_only and config.clamp_len == 6
  params = mapping.unflatten({name: load() for name, load in loaders.items()})
  model = xlnet.XLNet(config)
  rng = np.random.default_rng(1)
  tokens, attention_mask = _left_padded(["MKTAYIAKQRQISFVKSHF", "GLSDGEWQQ"])
  batch, length = tokens.shape
  unpadded = tokens[:1]
  perm_mask = (rng.random((batch, length, length)) < 0.5).astype(np.float32)
  target_mapping = np.zeros((batch, 3, length), np.float32)
  for b in range(batch):
    target_mapping[b, np.arange(3), rng.choice(np.arange(length - 9, length), 3, False)] = 1

  cases = [
      dict(input_ids=unpadded),
      dict(input_ids=tokens, attention_mask=attention_mask),
      # Segments too: their scores reach the query stream through every
      # content-stream layer and through its own.
      dict(input_ids=tokens, attention_mask=attention_mask, perm_mask=perm_mask,
           target_mapping=target_mapping, token_type_ids=rng.integers(0, 2, tokens.shape)),
  ]
  # Compiled: running a new network op by op compiles every op on its own
  # (ten times slower here); results compared in numpy for the same reason.
  logits_of = jax.jit(lambda inputs: model.apply({"params": params}, **inputs))
  hidden_of = jax.jit(lambda inputs: model.apply(
      {"params": params}, **inputs, output_hidden_states=True, method=xlnet.XLNet.encode))
  for inputs in cases:
    with torch.no_grad():
      theirs = hf(**{k: torch.tensor(v) for k, v in inputs.items()},
                  output_hidden_states=True)
    ours = {k: jnp.asarray(v) for k, v in inputs.items()}
    logits = np.asarray(logits_of(ours))
    assert logits.shape == theirs.logits.shape
    np.testing.assert_array_less(np.abs(logits - theirs.logits.numpy()), 1e-5,
                                 err_msg=str(sorted(inputs)))
    if "target_mapping" in inputs:
      continue
    hidden = hidden_of(ours)
    assert len(hidden) == config.n_layer + 1 == len(theirs.hidden_states)
    for a, b in zip(hidden, theirs.hidden_states):
      np.testing.assert_array_less(np.abs(np.asarray(a) - b.numpy()), 1e-5,
                                   err_msg=str(sorted(inputs)))


@pytest.mark.parametrize("architecture", ["XLNetLMHeadModel", "XLNetModel"])
def test_hf_to_ours_to_hf_is_byte_identical(architecture, tmp_path):
  model = _random_hf_model(architecture)
  model.save_pretrained(tmp_path / "hf")
  config, loaders, encoder_only = formats.read_hf_checkpoint(tmp_path / "hf")
  assert encoder_only == (architecture == "XLNetModel")
  assert ("lm_loss/bias" in loaders) != encoder_only
  formats.write_hf_checkpoint(tmp_path / "back", loaders, config)
  assert hf_io.load_hf_config(tmp_path / "back")["architectures"] == [architecture]
  original = safetensors.numpy.load_file(tmp_path / "hf" / "model.safetensors")
  back = safetensors.numpy.load_file(tmp_path / "back" / "model.safetensors")
  # A tied LM head is never written (transformers re-ties it on load).
  assert set(original) - {"lm_loss.weight"} == set(back)
  for name, array in back.items():
    assert array.dtype == original[name].dtype and array.shape == original[name].shape
    assert array.tobytes() == original[name].tobytes(), name
  reloaded = getattr(transformers, architecture).from_pretrained(tmp_path / "back")
  assert formats.read_hf_checkpoint(tmp_path / "back")[0] == config
  with torch.no_grad():
    ids = torch.tensor(_left_padded(["MKTAYIAKQR"])[0])
    np.testing.assert_array_equal(reloaded(ids)[0].numpy(), model(ids)[0].numpy())


def test_embed_fasta_matches_transformers_left_padded(hf_lm, shared_data, tmp_path):
  """Our engine pads on the right; relative attention with masked padding
  gives the residues exactly the states of the released left-padded batch."""
  path, hf = hf_lm
  records = list(fasta.read_fasta(shared_data / "sequences" / "globins45.fasta"))[:5]
  # X and the rare residues are `<unk>` in the released pipeline.
  records.append(fasta.FastaRecord("rare", "rare", "MKXAUBZOVLS", len(records) + 1))
  input_fasta = tmp_path / "in.fasta"
  input_fasta.write_text("".join(f">{r.id}\n{r.sequence}\n" for r in records))
  output = tmp_path / "out.h5"
  model = loading.from_hf(str(path))
  run.embed_fasta(str(input_fasta), str(output), model, engine.EmbedSettings(),
                  progress=False)

  tokens, attention_mask = _left_padded([r.sequence for r in records])
  with torch.no_grad():
    theirs = hf.transformer(input_ids=torch.tensor(tokens),
                            attention_mask=torch.tensor(attention_mask)).last_hidden_state
  with h5py.File(output) as f:
    for row, record in enumerate(records):
      start = tokens.shape[1] - len(record.sequence) - 2
      ours = f[record.id][()]
      assert ours.shape == (len(record.sequence), 32)
      np.testing.assert_array_less(
          np.abs(ours - theirs[row, start:start + len(record.sequence)].numpy()), 1e-5,
          err_msg=record.id)
