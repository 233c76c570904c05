"""Hugging Face XLNet (`XLNetModel`, `XLNetLMHeadModel`) <-> `xlnet.XLNet`.

Pure numpy, one tensor at a time (the generic loaders of mapping.py). The
attention weights have the same [d_model, n_head, d_head] layout on both
sides, as do the r biases, `seg_embed` and `mask_emb`; only the
feed-forward `Linear` weights ((out, in) there, kernels (in, out) here)
are transposed.

| our tree       | architecture      |
| -------------- | ----------------- |
| encoder only   | XLNetModel        |
| + lm_loss      | XLNetLMHeadModel  |

`lm_loss.weight` is tied to the word embedding: a checkpoint that stores
it has it checked equal and skipped; it is never written (`transformers`
re-ties it on load).
"""
from typing import Any, Mapping, Sequence

import numpy as np

from prottrans_jax import vocab as vocab_lib
from prottrans_jax.convert import mapping
from prottrans_jax.models import xlnet

ConversionError = mapping.ConversionError
TensorMapping = mapping.TensorMapping

HEADS = ("lm_loss",)
_ARCHITECTURES = {"XLNetModel": None, "XLNetLMHeadModel": "lm_loss"}
# Every config.json field our config shares, with Hugging Face's XLNetConfig
# default for a config.json that omits it (`untie_r`: XLNet's original
# default; transformers no longer reads it), and the pre-2020 name of
# vocab_size (transformers still maps it).
_FIELDS = mapping.ConfigFields(
    {"vocab_size": 32000, "d_model": 1024, "n_layer": 24, "n_head": 16, "d_head": None,
     "d_inner": 4096, "ff_activation": "gelu", "untie_r": True, "attn_type": "bi",
     "bi_data": False, "clamp_len": -1, "layer_norm_eps": 1e-12, "dropout": 0.1,
     "initializer_range": 0.02, "pad_token_id": 5},
    old_names={"n_token": "vocab_size"})

_TOKENIZER_NOTE = "TOKENIZER.md"


def _tokenizer_text() -> str:
  vocabulary = vocab_lib.ProtXLNetVocabulary()
  specials = ", ".join(f"`{p}` {i}" for i, p in enumerate(vocabulary.special_tokens))
  first = len(vocabulary.special_tokens)
  return f"""# Tokenizer

This model was trained with prottrans_jax's ProtXLNet ids
(`prottrans_jax.vocab.ProtXLNetVocabulary`): {specials}, residues
`{''.join(vocabulary.residue_ids)}` at {first}..{vocabulary.base_vocab_size - 1}.
Input is the residues then `<sep>` `<cls>`, padded on either side with
`<pad>` (masked by the attention mask); X, U, Z, O, B and J are `<unk>`.
These are not known to be the released `Rostlab/prot_xlnet` sentencepiece
ids: tokenize released weights with their own `spiece.model`.
"""


class XLNetConverter(mapping.HfConverter):
  """Hugging Face's XLNet model type."""
  model_type = "xlnet"
  parts = HEADS

  def architecture(self, hf_config: Mapping[str, Any]) -> str:
    return mapping.architecture_of(hf_config, _ARCHITECTURES, "XLNetLMHeadModel")

  def config_from_hf(self, hf_config: Mapping[str, Any], **overrides: Any) -> xlnet.XLNetConfig:
    self.architecture(hf_config)
    return mapping.config_from_fields(xlnet.XLNetConfig,
                                      {**_FIELDS.read(hf_config), **overrides})

  def hf_config(self, config: xlnet.XLNetConfig, architecture: str,
                torch_dtype: str = "float32") -> dict[str, Any]:
    if not isinstance(config, xlnet.XLNetConfig):
      raise ConversionError(f"A {type(config).__name__} is not an xlnet model")
    return {**mapping.hf_config_head(self.model_type, architecture, _ARCHITECTURES),
            **_FIELDS.write(config), "torch_dtype": torch_dtype}

  def parts_in_checkpoint(self, names: set[str], config: xlnet.XLNetConfig,
                          architecture: str) -> tuple[str, ...]:
    del names, config
    head = _ARCHITECTURES[architecture]
    return (head,) if head else ()

  def architecture_for(self, config: xlnet.XLNetConfig, parts: Sequence[str]) -> str:
    unknown = sorted(set(parts) - set(HEADS))
    if unknown:
      raise ConversionError(f"No xlnet architecture has {unknown}")
    return "XLNetLMHeadModel" if "lm_loss" in parts else "XLNetModel"

  def tensor_plan(self, config: xlnet.XLNetConfig, architecture: str,
                  parts: Sequence[str]) -> list[TensorMapping]:
    """Every tensor of a model with heads `parts`; `XLNetLMHeadModel`'s
    encoder names start with "transformer."."""
    p = "transformer." if _ARCHITECTURES[architecture] else ""
    out = [TensorMapping(f"{p}word_embedding.weight", "word_embedding/embedding", False),
           TensorMapping(f"{p}mask_emb", "mask_emb", False)]

    def same(hf, ours):
      out.append(TensorMapping(hf, ours, False))

    def norm(hf, ours):
      same(f"{hf}.weight", f"{ours}/scale")
      same(f"{hf}.bias", f"{ours}/bias")

    for i in range(config.n_layer):
      hf, ours = f"{p}layer.{i}", f"encoder/layers_{i}"
      for name in ("q", "k", "v", "o", "r", "r_r_bias", "r_s_bias", "r_w_bias", "seg_embed"):
        same(f"{hf}.rel_attn.{name}", f"{ours}/rel_attn/{name}")
      norm(f"{hf}.rel_attn.layer_norm", f"{ours}/rel_attn/layer_norm")
      norm(f"{hf}.ff.layer_norm", f"{ours}/ff_layer_norm")
      for theirs, name in (("layer_1", "wi"), ("layer_2", "wo")):
        out.append(TensorMapping(f"{hf}.ff.{theirs}.weight", f"{ours}/ff/{name}/kernel", True))
        same(f"{hf}.ff.{theirs}.bias", f"{ours}/ff/{name}/bias")
    if "lm_loss" in parts:
      same("lm_loss.bias", "lm_loss/bias")
    return out

  def expected_shapes(self, config: xlnet.XLNetConfig,
                      parts: Sequence[str]) -> dict[str, tuple[int, ...]]:
    # Canonical names (`layers_<i>`) whatever `config.scan_layers` says.
    model = xlnet.XLNet(config.with_layer_options(scan_layers=False))
    method = xlnet.XLNet.__call__ if "lm_loss" in parts else xlnet.XLNet.encode
    tokens = np.ones((1, 1), np.int32)
    return mapping.abstract_shapes(
        lambda rng: model.init(rng, tokens, method=method)["params"])

  def tied_copies(self, config: xlnet.XLNetConfig, parts: Sequence[str]) -> dict[str, str]:
    del config
    return ({"lm_loss.weight": "transformer.word_embedding.weight"}
            if "lm_loss" in parts else {})

  def untied_copy_hint(self, copy: str) -> str:
    del copy
    return "but the LM head of this model is tied to the word embedding"

  def tokenizer_files(self, config: xlnet.XLNetConfig) -> dict[str, str | bytes]:
    """A note of the ids (no sentencepiece model of ours yet)."""
    del config
    return {_TOKENIZER_NOTE: _tokenizer_text()}


CONVERTER = XLNetConverter()
