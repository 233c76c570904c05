"""Hugging Face T5 <-> this project's T5: the name table and the config.

Pure numpy, no torch. Hugging Face stores torch `Linear` weights (out, in)
and the relative-position table (buckets, heads) in block 0 of each stack;
we store kernels (in, out) and the table (heads, buckets) once per stack, so
both are transposes. The token embedding is shared; the stacks'
`embed_tokens.weight` are tied copies of `shared.weight`, and so is
`lm_head.weight` in T5 1.0 / ProtT5.

T5 1.1 variants: a gated MLP (`feed_forward_proj` "gated-ACT") is
`DenseReluDense.wi_0` / `wi_1` / `wo` (Hugging Face keeps the module name);
an untied output layer (`tie_word_embeddings` false) makes `lm_head.weight`
a tensor of its own, our `decoder/logits_dense/kernel` transposed.

`param_loaders` takes any Mapping, so a lazy one (hf_io's reader over
safetensors files) converts a checkpoint one tensor at a time.
"""
import dataclasses
from typing import Any, Mapping, Optional

import numpy as np

from prottrans_jax.convert import params as params_lib
from prottrans_jax.models import t5

ConversionError = params_lib.ConversionError

ARCHITECTURES = ("T5ForConditionalGeneration", "T5Model", "T5EncoderModel")
# Architectures whose checkpoints have no decoder.
ENCODER_ONLY_ARCHITECTURES = ("T5EncoderModel",)
SHARED_EMBEDDING = "shared.weight"
LM_HEAD = "lm_head.weight"
# Tied copies of `shared.weight` some writers (torch state_dict()) include.
TIED_COPIES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight",
               LM_HEAD)
# Present in old checkpoints, never used by Hugging Face's model (it ignores
# it on load): cross-attention has no position bias.
IGNORED = ("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",)

_ATTENTION = (("q", "query"), ("k", "key"), ("v", "value"), ("o", "out"))


@dataclasses.dataclass(frozen=True)
class TensorMapping:
  """One Hugging Face tensor and the parameter it becomes."""
  hf: str  # e.g. "encoder.block.0.layer.0.SelfAttention.q.weight"
  ours: str  # e.g. "encoder/layers_0/attention/query/kernel"
  transpose: bool  # 2-D transpose between the two layouts


def tied_copies(config: t5.T5Config) -> tuple[str, ...]:
  """The names that are copies of `shared.weight` for this config.

  With an untied output layer `lm_head.weight` is a tensor of its own.
  """
  return TIED_COPIES if config.tie_word_embeddings else tuple(
      c for c in TIED_COPIES if c != LM_HEAD)


def _mlp_names(config: t5.T5Config) -> tuple[str, ...]:
  return ("wi_0", "wi_1", "wo") if config.is_gated_act else ("wi", "wo")


def tensor_mappings(config: t5.T5Config, encoder_only: bool = False) -> list[TensorMapping]:
  """Every tensor of the model, in checkpoint order."""
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


def relayout(mapping: TensorMapping, array: np.ndarray) -> np.ndarray:
  """Hugging Face layout <-> ours (a transpose is its own inverse)."""
  return np.ascontiguousarray(array.T) if mapping.transpose else array


# ----------------------------------------------------------------- configs


def architecture(hf_config: Mapping[str, Any]) -> str:
  """The checkpoint's architecture; raises for anything but a T5 model."""
  if hf_config.get("model_type", "t5") != "t5":
    raise ConversionError(
        f"config.json has model_type {hf_config.get('model_type')!r}; only 't5' "
        "(ProtT5) checkpoints are supported")
  names = hf_config.get("architectures") or ["T5ForConditionalGeneration"]
  unknown = [a for a in names if a not in ARCHITECTURES]
  if unknown or len(names) != 1:
    raise ConversionError(
        f"Unknown architecture {names} in config.json; supported: {', '.join(ARCHITECTURES)}")
  return names[0]


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


def t5_config_from_hf(hf_config: Mapping[str, Any], **overrides: Any) -> t5.T5Config:
  """T5Config from a Hugging Face `config.json` dict.

  T5 1.0 / ProtT5 and the T5 1.1 variants (`feed_forward_proj` "gated-ACT",
  untied output layer). `overrides` set the fields config.json does not
  carry (dtype, attention chunking) or replace its values (e.g.
  dropout_rate).
  """
  architecture(hf_config)
  ff = hf_config.get("feed_forward_proj", "relu")
  try:
    t5.parse_feed_forward_proj(ff)
  except ValueError as e:
    raise ConversionError(f"config.json: {e}") from e
  fields = {
      "vocab_size": hf_config.get("vocab_size", 32128),
      "d_model": hf_config["d_model"],
      "d_kv": hf_config["d_kv"],
      "num_heads": hf_config["num_heads"],
      "d_ff": hf_config["d_ff"],
      "num_encoder_layers": hf_config["num_layers"],
      "num_decoder_layers": hf_config.get("num_decoder_layers") or hf_config["num_layers"],
      "relative_attention_num_buckets": hf_config.get("relative_attention_num_buckets", 32),
      "relative_attention_max_distance": hf_config.get("relative_attention_max_distance", 128),
      "dropout_rate": hf_config.get("dropout_rate", 0.1),
      "layer_norm_epsilon": hf_config.get("layer_norm_epsilon", 1e-6),
      "feed_forward_proj": ff,
      "tie_word_embeddings": ties_word_embeddings(hf_config),
  }
  fields.update(overrides)
  return t5.T5Config.from_dict(fields)


def hf_config_from_t5(config: t5.T5Config, *, architecture_name: str = "T5ForConditionalGeneration",
                      torch_dtype: str = "float32") -> dict[str, Any]:
  """A `config.json` dict `transformers` loads as this model (ProtT5 fields).

  An untied output layer is written as `tie_word_embeddings: false`, which
  every transformers version reads as untied and not rescaled.
  """
  if architecture_name not in ARCHITECTURES:
    raise ConversionError(f"Unknown architecture {architecture_name!r}")
  return {
      "architectures": [architecture_name],
      "model_type": "t5",
      "vocab_size": config.vocab_size,
      "d_model": config.d_model,
      "d_kv": config.d_kv,
      "num_heads": config.num_heads,
      "d_ff": config.d_ff,
      "num_layers": config.num_encoder_layers,
      "num_decoder_layers": config.num_decoder_layers,
      "relative_attention_num_buckets": config.relative_attention_num_buckets,
      "relative_attention_max_distance": config.relative_attention_max_distance,
      "dropout_rate": config.dropout_rate,
      "layer_norm_epsilon": config.layer_norm_epsilon,
      "feed_forward_proj": config.feed_forward_proj,
      "tie_word_embeddings": config.tie_word_embeddings,
      "is_encoder_decoder": True,
      "initializer_factor": 1.0,
      "pad_token_id": 0,
      "eos_token_id": 1,
      "decoder_start_token_id": 0,
      "torch_dtype": torch_dtype,
  }


# ----------------------------------------------------------- state dicts


def _hf_shape(m: TensorMapping, shapes: Mapping[str, tuple[int, ...]]) -> tuple[int, ...]:
  """The Hugging Face shape of a tensor, from our parameter shapes."""
  return shapes[m.ours][::-1] if m.transpose else shapes[m.ours]


def _check_tied_copy(name: str, copy: np.ndarray, shared: np.ndarray) -> None:
  if copy.shape != shared.shape or not np.array_equal(copy, shared):
    why = ("but config.json ties the output layer to the embedding (an untied "
           "one, T5 1.1, has tie_word_embeddings false)" if name == LM_HEAD else
           "and untied input embeddings are not a T5 architecture")
    raise ConversionError(f"{name} differs from {SHARED_EMBEDDING}, {why}")


def _variant_hints(names: set[str], config: t5.T5Config, encoder_only: bool) -> str:
  """Why a checkpoint's tensors may not fit config.json's variant."""
  hints = []
  gated_names = any(".DenseReluDense.wi_0." in n for n in names)
  if gated_names and not config.is_gated_act:
    hints.append(f"the checkpoint has a gated MLP (wi_0, wi_1) but feed_forward_proj "
                 f"is {config.feed_forward_proj!r}")
  if not gated_names and config.is_gated_act and any(".DenseReluDense.wi." in n for n in names):
    hints.append(f"the checkpoint has an ungated MLP (wi) but feed_forward_proj "
                 f"is {config.feed_forward_proj!r}")
  if not (encoder_only or config.tie_word_embeddings or LM_HEAD in names):
    hints.append("config.json says the output layer is untied (T5 1.1) but the "
                 f"checkpoint has no {LM_HEAD}")
  return "".join(f" ({h})" for h in hints)


def plan(names: set[str], config: t5.T5Config,
         encoder_only: bool) -> tuple[list[TensorMapping], list[str]]:
  """Which checkpoint tensors become which parameters, and which are skipped.

  Raises listing every missing tensor and every tensor that maps to nothing.
  Skipped: ignored legacy tensors, tied copies of the embedding (checked
  equal when read) and, for an encoder-only conversion, the decoder.
  """
  mappings = tensor_mappings(config, encoder_only)
  expected = {m.hf for m in mappings}
  copies = tied_copies(config)
  skipped = sorted(n for n in names if n in IGNORED or n in copies
                   or (encoder_only and (n.startswith("decoder.") or n == LM_HEAD)))
  if SHARED_EMBEDDING not in names and any(c in names for c in copies):
    expected.discard(SHARED_EMBEDDING)  # taken from a tied copy instead
  try:
    params_lib.check_names(set(names) - set(skipped), expected, "the Hugging Face checkpoint")
  except ConversionError as e:
    raise ConversionError(f"{e}{_variant_hints(names, config, encoder_only)}") from None
  return mappings, skipped


Loader = params_lib.Loader


def param_loaders(state_dict: Mapping[str, np.ndarray], config: t5.T5Config,
                  encoder_only: bool = False,
                  dtype: Optional[np.dtype] = None) -> dict[str, Loader]:
  """Our flat parameter names -> functions that read and convert one tensor.

  Checks the names first (every tensor missing or unmapped is listed); each
  loader checks its shape. Nothing is read until a loader is called, so with
  a lazy `state_dict` a checkpoint converts one tensor at a time. `dtype`
  casts (None keeps the checkpoint's dtype: HF -> ours -> HF is then
  byte-identical).
  """
  names = set(state_dict.keys())
  mappings, _ = plan(names, config, encoder_only)
  shapes = params_lib.expected_shapes(config, encoder_only)
  copies = tied_copies(config)
  shared_source = SHARED_EMBEDDING if SHARED_EMBEDDING in names else next(
      c for c in copies if c in names)
  to_check = [c for c in copies if c in names and c != shared_source
              and not (encoder_only and c.startswith("decoder."))]

  def loader(m: TensorMapping) -> Loader:
    source = shared_source if m.hf == SHARED_EMBEDDING else m.hf

    def load() -> np.ndarray:
      array = np.asarray(state_dict[source])
      params_lib.check_shape(source, array.shape, _hf_shape(m, shapes))
      array = relayout(m, array)
      if source == shared_source:
        for copy in to_check:  # small: vocab x d_model
          _check_tied_copy(copy, np.asarray(state_dict[copy]), array)
      return array if dtype is None else array.astype(dtype)
    return load

  return {m.ours: loader(m) for m in mappings}


def state_dict_to_params(state_dict: Mapping[str, np.ndarray], config: t5.T5Config,
                         encoder_only: bool = False,
                         dtype: Optional[np.dtype] = None) -> dict[str, Any]:
  """A Hugging Face state dict -> our nested params (numpy)."""
  loaders = param_loaders(state_dict, config, encoder_only, dtype)
  return params_lib.unflatten({name: load() for name, load in loaders.items()})


def hf_loaders(params: Mapping[str, Loader], config: t5.T5Config,
               encoder_only: bool = False,
               dtype: Optional[np.dtype] = None) -> dict[str, tuple[tuple[int, ...], Loader]]:
  """Our flat params (as loaders) -> {HF name: (HF shape, loader)} in order.

  Only `shared.weight` is written for the tied embedding: `transformers`
  re-ties the copies on load. An untied output layer is written as
  `lm_head.weight`. Raises on a missing parameter; each loader
  raises on a shape that does not match `config`.
  """
  mappings = tensor_mappings(config, encoder_only)
  present = {n for n in params if not (encoder_only and n.startswith("decoder/"))}
  params_lib.check_names(present, {m.ours for m in mappings}, "the parameters")
  shapes = params_lib.expected_shapes(config, encoder_only)

  def loader(m: TensorMapping) -> Loader:
    def load() -> np.ndarray:
      array = np.asarray(params[m.ours]())
      params_lib.check_shape(m.ours, array.shape, shapes[m.ours])
      array = relayout(m, array)
      return array if dtype is None else array.astype(dtype)
    return load

  return {m.hf: (_hf_shape(m, shapes), loader(m)) for m in mappings}


def params_to_state_dict(params: Mapping[str, Any], config: t5.T5Config,
                         encoder_only: bool = False,
                         dtype: Optional[np.dtype] = None) -> dict[str, np.ndarray]:
  """Our nested params -> a Hugging Face state dict (numpy; no tied copies)."""
  return {name: load() for name, (_, load) in hf_loaders(
      params_lib.loaders_of(params), config, encoder_only, dtype).items()}
