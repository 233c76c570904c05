"""Hugging Face T5 <-> this project's T5: the T5 `HfConverter`.

Pure numpy, no torch, one tensor at a time (the generic loaders of
mapping.py). Hugging Face stores torch `Linear` weights (out, in) and the
relative-position table (buckets, heads) in block 0 of each stack; we store
kernels (in, out) and the table (heads, buckets) once per stack, so both are
transposes. The token embedding is shared; the stacks' `embed_tokens.weight`
are tied copies of `shared.weight`, and so is `lm_head.weight` in T5 1.0 /
ProtT5.

T5 1.1 variants: a gated MLP (`feed_forward_proj` "gated-ACT") is
`DenseReluDense.wi_0` / `wi_1` / `wo` (Hugging Face keeps the module name);
an untied output layer (`tie_word_embeddings` false) makes `lm_head.weight`
a tensor of its own, our `decoder/logits_dense/kernel` transposed.

The part outside the encoder is the decoder (with the untied output layer):
T5ForConditionalGeneration and T5Model hold it, T5EncoderModel does not.
"""
from typing import Any, Mapping, Sequence

import numpy as np

from prottrans_jax.convert import mapping
from prottrans_jax.convert import tokenizer_files
from prottrans_jax.models import t5

ConversionError = mapping.ConversionError
TensorMapping = mapping.TensorMapping

ARCHITECTURES = ("T5ForConditionalGeneration", "T5Model", "T5EncoderModel")
# Architectures whose checkpoints have no decoder.
ENCODER_ONLY_ARCHITECTURES = ("T5EncoderModel",)
DECODER = "decoder"
SHARED_EMBEDDING = "shared.weight"
LM_HEAD = "lm_head.weight"
# Tied copies of `shared.weight` some writers (torch state_dict()) include.
TIED_COPIES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight", LM_HEAD)
# Present in old checkpoints, never used by Hugging Face's model (it ignores
# it on load): cross-attention has no position bias.
IGNORED = ("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",)

_ATTENTION = (("q", "query"), ("k", "key"), ("v", "value"), ("o", "out"))
_TOKENIZER_TEXT = """# Tokenizer

The tokenizer files here (`spiece.model`, `tokenizer.json`,
`tokenizer_config.json`, `special_tokens_map.json`) give the ids this model
was trained with, the released ProtT5 tokenizer's: `<pad>` 0, `</s>` 1,
`<unk>` 2, residues `ALGVSREDTIPKFQNYMHWCXBOUZ` at 3..27, `<extra_id_k>` at
127 - k:

    from transformers import T5Tokenizer
    tokenizer = T5Tokenizer.from_pretrained("path/to/this/export")

Residues are given space-separated ("M K T ..."), with U, Z, O, B mapped
to X first, as the ProtTrans embedder does.
"""


# The config.json fields T5Config shares, with Hugging Face's T5Config
# defaults for those a config.json may omit (`tie_word_embeddings` is read
# with `scale_decoder_outputs`: ties_word_embeddings).
_FIELDS = mapping.ConfigFields(
    {"vocab_size": 32128, "d_model": mapping.REQUIRED, "d_kv": mapping.REQUIRED,
     "num_heads": mapping.REQUIRED, "d_ff": mapping.REQUIRED, "num_layers": mapping.REQUIRED,
     "num_decoder_layers": None, "relative_attention_num_buckets": 32,
     "relative_attention_max_distance": 128, "dropout_rate": 0.1,
     "layer_norm_epsilon": 1e-6, "feed_forward_proj": "relu", "tie_word_embeddings": True},
    ours={"num_layers": "num_encoder_layers"})


def _mlp_names(config: t5.T5Config) -> tuple[str, ...]:
  return ("wi_0", "wi_1", "wo") if config.is_gated_act else ("wi", "wo")


def ties_word_embeddings(hf_config: Mapping[str, Any]) -> bool:
  """Whether a config.json ties the output layer to the embedding (T5 1.0).

  Older transformers say untied (T5 1.1) with `tie_word_embeddings: false`.
  transformers 5 reads that key once, then always writes
  `tie_word_embeddings: true` and keeps the fact as `scale_decoder_outputs`
  (false: untied, no d_model**-0.5 rescale), so both keys are read.
  """
  tie = hf_config.get("tie_word_embeddings", True)
  scale = hf_config.get("scale_decoder_outputs")
  if scale is None:
    return tie is not False
  if tie is False and scale:
    raise ConversionError(
        "config.json has tie_word_embeddings false but scale_decoder_outputs "
        "true: transformers 4 reads that as untied (T5 1.1), transformers 5 as "
        "rescaled (T5 1.0); remove the key that is wrong")
  return bool(scale)


class T5Converter(mapping.HfConverter):
  """ProtT5 (T5 1.0) and the T5 1.1 variants."""
  model_type = "t5"
  parts = (DECODER,)

  def architecture(self, hf_config: Mapping[str, Any]) -> str:
    return mapping.architecture_of(hf_config, ARCHITECTURES, "T5ForConditionalGeneration")

  def config_from_hf(self, hf_config: Mapping[str, Any], **overrides: Any) -> t5.T5Config:
    """T5 1.0 / ProtT5 and the T5 1.1 variants (`feed_forward_proj`
    "gated-ACT", untied output layer)."""
    self.architecture(hf_config)
    fields = _FIELDS.read(hf_config)
    try:
      t5.parse_feed_forward_proj(fields["feed_forward_proj"])
    except ValueError as e:
      raise ConversionError(f"config.json: {e}") from e
    # Hugging Face's None: as many decoder layers as encoder layers.
    fields["num_decoder_layers"] = (fields["num_decoder_layers"] or
                                    fields["num_encoder_layers"])
    fields["tie_word_embeddings"] = ties_word_embeddings(hf_config)
    return mapping.config_from_fields(t5.T5Config, {**fields, **overrides})

  def hf_config(self, config: t5.T5Config, architecture: str,
                torch_dtype: str = "float32") -> dict[str, Any]:
    """An untied output layer is written as `tie_word_embeddings: false`,
    which every transformers version reads as untied and not rescaled."""
    return {**mapping.hf_config_head(self.model_type, architecture, ARCHITECTURES),
            **_FIELDS.write(config), "is_encoder_decoder": True, "initializer_factor": 1.0,
            "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0,
            "torch_dtype": torch_dtype}

  def parts_in_checkpoint(self, names: set[str], config: t5.T5Config,
                          architecture: str) -> tuple[str, ...]:
    del names, config
    return () if architecture in ENCODER_ONLY_ARCHITECTURES else (DECODER,)

  def architecture_for(self, config: t5.T5Config, parts: Sequence[str]) -> str:
    del config
    return "T5ForConditionalGeneration" if DECODER in parts else "T5EncoderModel"

  def tensor_plan(self, config: t5.T5Config, architecture: str,
                  parts: Sequence[str]) -> list[TensorMapping]:
    del architecture  # The same names in every T5 architecture.
    encoder_only = DECODER not in parts
    out = [TensorMapping(SHARED_EMBEDDING, "token_embedder/embedding", False)]

    def attention(hf_prefix, ours_prefix):
      for hf_name, our_name in _ATTENTION:
        out.append(TensorMapping(f"{hf_prefix}.{hf_name}.weight",
                                 f"{ours_prefix}/{our_name}/kernel", True))

    def mlp(hf_prefix, ours_prefix):
      for name in _mlp_names(config):
        out.append(TensorMapping(f"{hf_prefix}.DenseReluDense.{name}.weight",
                                 f"{ours_prefix}/mlp/{name}/kernel", True))

    def norm(hf_name, ours_name):
      out.append(TensorMapping(hf_name, ours_name, False))

    stacks = [("encoder", config.num_encoder_layers)]
    if not encoder_only:
      stacks.append(("decoder", config.num_decoder_layers))
    for stack, num_layers in stacks:
      out.append(TensorMapping(
          f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
          f"{stack}/relpos_bias/rel_embedding", True))
      for i in range(num_layers):
        hf, ours = f"{stack}.block.{i}.layer", f"{stack}/layers_{i}"
        if stack == "encoder":
          attention(f"{hf}.0.SelfAttention", f"{ours}/attention")
          norm(f"{hf}.0.layer_norm.weight", f"{ours}/pre_attention_layer_norm/scale")
          mlp(f"{hf}.1", ours)
          norm(f"{hf}.1.layer_norm.weight", f"{ours}/pre_mlp_layer_norm/scale")
        else:
          attention(f"{hf}.0.SelfAttention", f"{ours}/self_attention")
          norm(f"{hf}.0.layer_norm.weight", f"{ours}/pre_self_attention_layer_norm/scale")
          attention(f"{hf}.1.EncDecAttention", f"{ours}/encoder_decoder_attention")
          norm(f"{hf}.1.layer_norm.weight", f"{ours}/pre_cross_attention_layer_norm/scale")
          mlp(f"{hf}.2", ours)
          norm(f"{hf}.2.layer_norm.weight", f"{ours}/pre_mlp_layer_norm/scale")
      norm(f"{stack}.final_layer_norm.weight", f"{stack}/{stack}_norm/scale")
    if not encoder_only and not config.tie_word_embeddings:
      out.append(TensorMapping(LM_HEAD, "decoder/logits_dense/kernel", True))
    return out


  def expected_shapes(self, config: t5.T5Config,
                      parts: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """`parts` without the decoder: the token embedding and the encoder (what
    `T5.encode` builds), as in Hugging Face's `T5EncoderModel`. Names are
    canonical (`layers_<i>`) whatever `config.scan_layers` says."""
    model = t5.T5(config.with_layer_options(scan_layers=False))
    tokens = np.ones((1, 1), np.int32)
    if DECODER in parts:
      init = lambda rng: model.init(rng, tokens, tokens)["params"]
    else:
      init = lambda rng: model.init(rng, tokens, method=t5.T5.encode)["params"]
    return mapping.abstract_shapes(init)

  def tied_copies(self, config: t5.T5Config, parts: Sequence[str]) -> dict[str, str]:
    """Copies of `shared.weight`; with an untied output layer
    `lm_head.weight` is a tensor of its own."""
    del parts
    return {c: SHARED_EMBEDDING for c in TIED_COPIES
            if c != LM_HEAD or config.tie_word_embeddings}

  def ignored(self, name: str) -> bool:
    return name in IGNORED

  def tokenizer_files(self, config: t5.T5Config) -> dict[str, str | bytes]:
    del config
    return {"TOKENIZER.md": _TOKENIZER_TEXT, **tokenizer_files.prott5_files()}

  def untied_copy_hint(self, copy: str) -> str:
    return ("but config.json ties the output layer to the embedding (an untied "
            "one, T5 1.1, has tie_word_embeddings false)" if copy == LM_HEAD else
            "and untied input embeddings are not a T5 architecture")

  def mismatch_hint(self, names: set[str], config: t5.T5Config,
                    parts: Sequence[str]) -> str:
    """Why a checkpoint's tensors may not fit config.json's T5 variant."""
    hints = []
    gated_names = any(".DenseReluDense.wi_0." in n for n in names)
    if gated_names and not config.is_gated_act:
      hints.append(f"the checkpoint has a gated MLP (wi_0, wi_1) but feed_forward_proj "
                   f"is {config.feed_forward_proj!r}")
    if not gated_names and config.is_gated_act and any(".DenseReluDense.wi." in n for n in names):
      hints.append(f"the checkpoint has an ungated MLP (wi) but feed_forward_proj "
                   f"is {config.feed_forward_proj!r}")
    if not ("decoder" not in parts or config.tie_word_embeddings or LM_HEAD in names):
      hints.append("config.json says the output layer is untied (T5 1.1) but the "
                   f"checkpoint has no {LM_HEAD}")
    return "".join(f" ({h})" for h in hints)


CONVERTER = T5Converter()
