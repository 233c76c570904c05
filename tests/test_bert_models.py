"""ProtBert, ProtAlbert and ProtElectra networks against transformers on the
same random tiny weights; packing; logical axes on every parameter."""
import flax.linen as nn
import jax
import numpy as np
import pytest
import torch
import transformers

from prottrans_jax import families
from prottrans_jax import vocab as vocab_lib
from prottrans_jax.convert import mapping
from prottrans_jax.models import albert
from prottrans_jax.models import bert
from prottrans_jax.models import electra

_VOCAB = vocab_lib.ProtBertVocabulary()
# Two real protein fragments framed as BERT inputs: [CLS] residues [SEP],
# the shorter one padded with [PAD] (0).
_SEQUENCES = ("MVLSPADKTNVKAAWGKVGAHAGEYGAEALERMFLSFPTTKTYFPHF", "MKTAYIAKQRQISFVKSHFSRQ")
TOKENS = np.zeros((2, 49), np.int32)
for _row, _seq in enumerate(_SEQUENCES):
  TOKENS[_row, :len(_seq) + 2] = [_VOCAB.cls_id] + _VOCAB.encode(_seq) + [_VOCAB.eos_id]

_SIZES = dict(vocab_size=30, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
              attention_probs_dropout_prob=0.0)
# (HF config, HF model class). ALBERT runs 4 layers on 2 weight sets and a
# factorized embedding; ELECTRA's generator projects a wider embedding.
CASES = {
    "bert_mlm": (lambda: transformers.BertConfig(**_SIZES), transformers.BertForMaskedLM),
    "bert_model": (lambda: transformers.BertConfig(**_SIZES), transformers.BertModel),
    "albert_mlm": (lambda: transformers.AlbertConfig(
        **{**_SIZES, "num_hidden_layers": 4, "num_hidden_groups": 2, "embedding_size": 16,
           "hidden_act": "gelu_new"}), transformers.AlbertForMaskedLM),
    "electra_generator": (lambda: transformers.ElectraConfig(**{**_SIZES, "embedding_size": 48}),
                          transformers.ElectraForMaskedLM),
    "electra_discriminator": (lambda: transformers.ElectraConfig(**{**_SIZES, "embedding_size": 32}),
                              transformers.ElectraForPreTraining),
}


def random_hf_model(case: str, seed: int = 0):
  make_config, model_class = CASES[case]
  torch.manual_seed(seed)
  model = model_class(make_config()).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "LayerNorm" in name or "layer_norm" in name or name.endswith("bias"):
        p.uniform_(-0.5, 0.5) if name.endswith("bias") else p.uniform_(0.5, 1.5)
  return model


def ours_from_hf(model):
  hf_config = model.config.to_dict()
  hf_config["architectures"] = [type(model).__name__]
  converter = families.for_hf_model_type(hf_config["model_type"]).hf_converter
  config = converter.config_from_hf(hf_config, dtype="float32")
  state = {n: t.detach().numpy() for n, t in model.state_dict().items()}
  params = mapping.state_dict_to_params(state, converter, config, type(model).__name__)
  return config, params


@pytest.mark.parametrize("case", sorted(CASES))
def test_parity_with_transformers(case):
  model = random_hf_model(case)
  config, params = ours_from_hf(model)
  with torch.no_grad():
    out = model(input_ids=torch.tensor(TOKENS), attention_mask=torch.tensor(TOKENS > 0),
                output_hidden_states=True)
  net = bert.Bert(config)
  valid = TOKENS > 0
  hidden = np.asarray(net.apply({"params": params}, TOKENS, method=bert.Bert.encode))
  np.testing.assert_array_less(np.abs(hidden - out.hidden_states[-1].numpy())[valid], 1e-5)
  if "mlm_head" in params:
    logits = np.asarray(net.apply({"params": params}, TOKENS))
    np.testing.assert_array_less(np.abs(logits - out.logits.numpy())[valid], 1e-5)
  if "discriminator_head" in params:
    logits = np.asarray(net.apply({"params": params}, TOKENS, method=bert.Bert.discriminate))
    np.testing.assert_array_less(np.abs(logits - out.logits.numpy())[valid], 1e-5)
  if "pooler" in params:
    pooled = np.asarray(net.apply({"params": params}, TOKENS, method=bert.Bert.pool))
    np.testing.assert_array_less(np.abs(pooled - out.pooler_output.numpy()), 1e-5)


def test_packed_rows_equal_separate_rows():
  config, params = ours_from_hf(random_hf_model("albert_mlm"))
  net = bert.Bert(config)
  lengths = (TOKENS > 0).sum(1)
  packed = np.concatenate([TOKENS[0, :lengths[0]], TOKENS[1, :lengths[1]]])[None]
  segments = np.repeat([1, 2], lengths)[None]
  positions = np.concatenate([np.arange(n) for n in lengths])[None]
  together = net.apply({"params": params}, packed, segments, positions)
  apart = net.apply({"params": params}, TOKENS)
  np.testing.assert_allclose(together[0, :lengths[0]], apart[0, :lengths[0]], atol=1e-5)
  np.testing.assert_allclose(together[0, lengths[0]:], apart[1, :lengths[1]], atol=1e-5)


@pytest.mark.parametrize("model", [
    bert.Bert(bert.BERT_CONFIGS["tiny"]),
    bert.Bert(albert.ALBERT_CONFIGS["tiny"]),
    electra.ElectraPretraining(electra.ElectraPretrainingConfig(
        generator=electra.ELECTRA_CONFIGS["tiny_generator"],
        discriminator=electra.ELECTRA_CONFIGS["tiny_discriminator"])),
], ids=["bert", "albert", "electra_pretraining"])
def test_every_parameter_has_distinct_logical_axes(model):
  tokens = jax.ShapeDtypeStruct((1, 8), np.int32)
  if isinstance(model, electra.ElectraPretraining):
    init = lambda x: model.init({"params": jax.random.key(0), "sample": jax.random.key(1)},
                                x, x, x)
  else:
    init = lambda x: model.init(jax.random.key(0), x,
                                method=lambda m, x: (m(x), m.discriminate(x), m.pool(x)))
  boxed = jax.eval_shape(init, tokens)["params"]
  leaves = jax.tree_util.tree_leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert leaves and all(isinstance(x, nn.Partitioned) for x in leaves)
  for leaf in leaves:
    assert None not in leaf.names and len(set(leaf.names)) == len(leaf.names), leaf.names
