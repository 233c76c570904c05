"""Hugging Face T5 <-> this project's T5: the name table and the config.

Pure numpy, no torch. Hugging Face stores torch `Linear` weights (out, in)
and the relative-position table (buckets, heads) in block 0 of each stack;
we store kernels (in, out) and the table (heads, buckets) once per stack, so
both are transposes. The token embedding is shared; `lm_head.weight` and the
stacks' `embed_tokens.weight` are tied copies of `shared.weight`.

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
# Tied copies of `shared.weight` some writers (torch state_dict()) include.
TIED_COPIES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight",
               "lm_head.weight")
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


def tensor_mappings(config: t5.T5Config, encoder_only: bool = False) -> list[TensorMapping]:
  """Every tensor of the model, in checkpoint order."""
  out = [TensorMapping(SHARED_EMBEDDING, "token_embedder/embedding", False)]

  def attention(hf_prefix, ours_prefix):
    for hf_name, our_name in _ATTENTION:
      out.append(TensorMapping(f"{hf_prefix}.{hf_name}.weight",
                               f"{ours_prefix}/{our_name}/kernel", True))

  def mlp(hf_prefix, ours_prefix):
    for name in ("wi", "wo"):
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
  return out


def relayout(mapping: TensorMapping, array: np.ndarray) -> np.ndarray:
  """Hugging Face layout <-> ours (a transpose is its own inverse)."""
  return np.ascontiguousarray(array.T) if mapping.transpose else array


# ----------------------------------------------------------------- configs


def architecture(hf_config: Mapping[str, Any]) -> str:
  """The checkpoint's architecture; raises for anything but a T5 1.0 model."""
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


def t5_config_from_hf(hf_config: Mapping[str, Any], **overrides: Any) -> t5.T5Config:
  """T5Config from a Hugging Face `config.json` dict (T5 1.0 / ProtT5 only).

  `overrides` set the fields config.json does not carry (dtype, attention
  chunking) or replace its values (e.g. dropout_rate).
  """
  architecture(hf_config)
  ff = hf_config.get("feed_forward_proj", "relu")
  if ff != "relu":
    raise ConversionError(
        f"feed_forward_proj {ff!r} is not supported: this T5 is the T5 1.0 / "
        "ProtT5 architecture with a ReLU feed-forward ('relu'); gated variants "
        "(T5 1.1, 'gated-gelu') have a different MLP")
  if hf_config.get("tie_word_embeddings") is False:
    raise ConversionError(
        "tie_word_embeddings is false (T5 1.1 style untied output layer); "
        "ProtT5 / T5 1.0 ties the output logits to the shared embedding")
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
  }
  fields.update(overrides)
  return t5.T5Config.from_dict(fields)


def hf_config_from_t5(config: t5.T5Config, *, architecture_name: str = "T5ForConditionalGeneration",
                      torch_dtype: str = "float32") -> dict[str, Any]:
  """A `config.json` dict `transformers` loads as this model (ProtT5 fields)."""
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
      "feed_forward_proj": "relu",
      "tie_word_embeddings": True,
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
    raise ConversionError(
        f"{name} differs from {SHARED_EMBEDDING}: untied embeddings or output "
        "layer are not the T5 1.0 / ProtT5 architecture")


def plan(names: set[str], config: t5.T5Config,
         encoder_only: bool) -> tuple[list[TensorMapping], list[str]]:
  """Which checkpoint tensors become which parameters, and which are skipped.

  Raises listing every missing tensor and every tensor that maps to nothing.
  Skipped: ignored legacy tensors, tied copies of the embedding (checked
  equal when read) and, for an encoder-only conversion, the decoder.
  """
  mappings = tensor_mappings(config, encoder_only)
  expected = {m.hf for m in mappings}
  skipped = sorted(n for n in names if n in IGNORED or n in TIED_COPIES
                   or (encoder_only and n.startswith("decoder.")))
  if SHARED_EMBEDDING not in names and any(c in names for c in TIED_COPIES):
    expected.discard(SHARED_EMBEDDING)  # taken from a tied copy instead
  params_lib.check_names(set(names) - set(skipped), expected, "the Hugging Face checkpoint")
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
  shared_source = SHARED_EMBEDDING if SHARED_EMBEDDING in names else next(
      c for c in TIED_COPIES if c in names)
  tied_copies = [c for c in TIED_COPIES if c in names and c != shared_source
                 and not (encoder_only and c.startswith("decoder."))]

  def loader(m: TensorMapping) -> Loader:
    source = shared_source if m.hf == SHARED_EMBEDDING else m.hf

    def load() -> np.ndarray:
      array = np.asarray(state_dict[source])
      params_lib.check_shape(source, array.shape, _hf_shape(m, shapes))
      array = relayout(m, array)
      if source == shared_source:
        for copy in tied_copies:  # small: vocab x d_model
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
  re-ties the copies on load. Raises on a missing parameter; each loader
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
  """Our nested params -> a Hugging Face state dict (numpy, `shared.weight` only)."""
  return {name: load() for name, (_, load) in hf_loaders(
      params_lib.loaders_of(params), config, encoder_only, dtype).items()}
