"""Hugging Face Transformer-XL (transformers 4.x `transfo-xl`) <-> this
project's `transfo_xl.TransfoXL`.

transformers removed Transformer-XL in 5.x; this reads and writes the
layout of its last release (4.46): the state dicts of `TransfoXLModel` and
`TransfoXLLMHeadModel` (whose base model is under `transformer.`). Pure
numpy, one tensor at a time (the generic loaders of mapping.py). Linear
weights are (out, in), our kernels (in, out); the fused q/k/v weight
(3 x heads x head_dim, d_model) is our (d_model, 3, heads x head_dim).

The output layer is tied to the word embedding (`crit.out_layers.0.weight`:
a copy some writers store, checked equal and never written) and
`pos_emb.inv_freq`, a buffer, follows from d_model (written, checked).
Supported: what ProtTXL needs, no adaptive softmax (cutoffs) and untied r
biases (`untie_r`); anything else is refused naming the field.
"""
from typing import Any, Mapping, Sequence

import numpy as np

from prottrans_jax.convert import mapping
from prottrans_jax.models import transfo_xl

ConversionError = mapping.ConversionError
TensorMapping = mapping.TensorMapping

LM_HEAD = "lm_head"
_ARCHITECTURES = {"TransfoXLModel": None, "TransfoXLLMHeadModel": LM_HEAD}
# config.json fields our config shares, and transformers' defaults for them.
_FIELDS = mapping.ConfigFields(
    {"vocab_size": 267735, "d_model": 1024, "d_embed": 1024, "n_head": 16, "d_head": 64,
     "d_inner": 4096, "n_layer": 18, "mem_len": 1600, "clamp_len": 1000,
     "same_length": True, "untie_r": True, "pre_lnorm": False, "div_val": 4,
     "cutoffs": [20000, 40000, 200000], "layer_norm_epsilon": 1e-5, "dropout": 0.1,
     "dropatt": 0.0, "init_std": 0.02, "proj_init_std": 0.01})

# Ours, not transformers' (which keeps unknown fields as attributes): the
# segment length embedding and training use.
_SEGMENT_LENGTH = "segment_length"

_TOKENIZER_NOTE = "TOKENIZER.md"
_TOKENIZER_TEXT = """# Tokenizer

This model uses ProtBert's ids (`[PAD]` 0, `[UNK]` 1, `[CLS]` 2, `[SEP]` 3,
`[MASK]` 4, residues `LAGVESIKRDTPNQFYMHCWXUBZO` at 5..29) and reads the
residues alone, no special tokens (prottrans_jax's `transfo_xl` family).
transformers 5.x has no Transformer-XL tokenizer or model.
"""


class TransfoXLConverter(mapping.HfConverter):
  """transformers 4.x `transfo-xl` <-> `transfo_xl.TransfoXL`."""
  model_type = "transfo-xl"
  parts = (LM_HEAD,)

  def architecture(self, hf_config: Mapping[str, Any]) -> str:
    return mapping.architecture_of(hf_config, _ARCHITECTURES, "TransfoXLLMHeadModel")

  def config_from_hf(self, hf_config: Mapping[str, Any],
                     **overrides: Any) -> transfo_xl.TransfoXLConfig:
    self.architecture(hf_config)
    for name, supported in (("attn_type", 0), ("sample_softmax", -1),
                            ("tie_word_embeddings", True)):
      if hf_config.get(name, supported) != supported:
        raise ConversionError(f"config.json {name}={hf_config[name]!r} is not supported "
                              f"(only {supported!r})")
    if not hf_config.get("untie_r", True):
      raise ConversionError("config.json untie_r=false (r biases shared by all layers) "
                            "is not supported")
    fields = _FIELDS.read(hf_config)
    if _SEGMENT_LENGTH in hf_config:
      fields[_SEGMENT_LENGTH] = hf_config[_SEGMENT_LENGTH]
    if fields["d_embed"] != fields["d_model"] and any(hf_config.get("tie_projs", [False])):
      raise ConversionError("config.json tie_projs=true with d_embed != d_model (the "
                            "output projection tied to the input's) is not supported")
    return mapping.config_from_fields(transfo_xl.TransfoXLConfig, {**fields, **overrides})

  def hf_config(self, config: transfo_xl.TransfoXLConfig, architecture: str,
                torch_dtype: str = "float32") -> dict[str, Any]:
    if not isinstance(config, transfo_xl.TransfoXLConfig):
      raise ConversionError(f"A {type(config).__name__} is not a transfo-xl model")
    out = mapping.hf_config_head(self.model_type, architecture, _ARCHITECTURES)
    if not config.untie_r:
      raise ConversionError("untie_r=False has no supported Hugging Face layout")
    out.update(_FIELDS.write(config))
    out["cutoffs"] = list(config.cutoffs)
    # What transformers 4.46 writes for a plain softmax and relative
    # attention; eos is ProtBert's [SEP].
    out.update(adaptive=True, attn_type=0, sample_softmax=-1, tie_projs=[False],
               init="normal", init_range=0.01, pad_token_id=0, eos_token_id=3,
               torch_dtype=torch_dtype)
    out[_SEGMENT_LENGTH] = config.segment_length
    return out

  def parts_in_checkpoint(self, names: set[str], config: Any,
                          architecture: str) -> tuple[str, ...]:
    del names, config
    return (LM_HEAD,) if _ARCHITECTURES[architecture] else ()

  def architecture_for(self, config: Any, parts: Sequence[str]) -> str:
    del config
    return "TransfoXLLMHeadModel" if LM_HEAD in parts else "TransfoXLModel"

  def tensor_plan(self, config: transfo_xl.TransfoXLConfig, architecture: str,
                  parts: Sequence[str]) -> list[TensorMapping]:
    p = "transformer." if _ARCHITECTURES[architecture] else ""
    out = [TensorMapping(f"{p}word_emb.emb_layers.0.weight", "embedder/embedding", False)]
    if config.d_embed != config.d_model:
      out.append(TensorMapping(f"{p}word_emb.emb_projs.0", "embedding_projection", True))
    for i in range(config.n_layer):
      hf, ours = f"{p}layers.{i}", f"decoder/layers_{i}"
      for name, mine in (("qkv_net", "qkv"), ("r_net", "r_net/kernel"),
                         ("o_net", "out/kernel")):
        out.append(TensorMapping(f"{hf}.dec_attn.{name}.weight", f"{ours}/attention/{mine}",
                                 True))
      for name in ("r_w_bias", "r_r_bias"):
        out.append(TensorMapping(f"{hf}.dec_attn.{name}", f"{ours}/attention/{name}", False))
      for block, mine in (("dec_attn", "attention"), ("pos_ff", "mlp")):
        out.append(TensorMapping(f"{hf}.{block}.layer_norm.weight",
                                 f"{ours}/{mine}/layer_norm/scale", False))
        out.append(TensorMapping(f"{hf}.{block}.layer_norm.bias",
                                 f"{ours}/{mine}/layer_norm/bias", False))
      for index, mine in ((0, "wi"), (3, "wo")):
        out.append(TensorMapping(f"{hf}.pos_ff.CoreNet.{index}.weight",
                                 f"{ours}/mlp/{mine}/kernel", True))
        out.append(TensorMapping(f"{hf}.pos_ff.CoreNet.{index}.bias",
                                 f"{ours}/mlp/{mine}/bias", False))
    if LM_HEAD in parts:
      out.append(TensorMapping("crit.out_layers.0.bias", "lm_head/bias", False))
      if config.d_embed != config.d_model:
        # Applied as hidden @ proj: already our (d_model, d_embed) layout.
        out.append(TensorMapping("crit.out_projs.0", "lm_head/projection", False))
    return out

  def expected_shapes(self, config: transfo_xl.TransfoXLConfig,
                      parts: Sequence[str]) -> dict[str, tuple[int, ...]]:
    model = transfo_xl.TransfoXL(config.with_layer_options(scan_layers=False))

    def build(module, tokens):
      hidden = module.encode(tokens)
      if LM_HEAD in parts:
        module.log_probs(hidden)

    tokens = np.ones((1, 1), np.int32)
    return mapping.abstract_shapes(
        lambda rng: model.init(rng, tokens, method=build)["params"])

  def tied_copies(self, config: Any, parts: Sequence[str]) -> dict[str, str]:
    del config
    if LM_HEAD not in parts:
      return {}
    return {"crit.out_layers.0.weight": "transformer.word_emb.emb_layers.0.weight"}

  def untied_copy_hint(self, copy: str) -> str:
    del copy
    return "but the output layer of this model is tied to the embedding"

  def constant_tensors(self, config: transfo_xl.TransfoXLConfig,
                       architecture: str) -> dict[str, np.ndarray]:
    """`pos_emb.inv_freq`: the sinusoids' inverse frequencies (float32, as
    torch computes them)."""
    p = "transformer." if _ARCHITECTURES[architecture] else ""
    d = config.d_model
    inv_freq = 1 / (10000 ** (np.arange(0.0, d, 2.0, dtype=np.float32) / np.float32(d)))
    return {f"{p}pos_emb.inv_freq": inv_freq.astype(np.float32)}

  def tokenizer_files(self, config: Any) -> dict[str, str | bytes]:
    del config
    return {_TOKENIZER_NOTE: _TOKENIZER_TEXT}


CONVERTER = TransfoXLConverter()
