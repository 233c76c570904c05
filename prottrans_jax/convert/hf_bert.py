"""Hugging Face BERT / ALBERT / ELECTRA <-> this project's `bert.Bert`.

Pure numpy, no torch, one tensor at a time, as hf_t5.py. Hugging Face's
`Linear` weights are (out, in), our kernels (in, out): transposes; tables,
norms and biases are the same arrays.

Which heads a checkpoint holds decides the architecture, both ways:

| our tree             | bert                | albert              | electra                 |
| -------------------- | ------------------- | ------------------- | ----------------------- |
| encoder only         | BertModel           | AlbertModel         | ElectraModel            |
| + mlm_head           | BertForMaskedLM     | AlbertForMaskedLM   | ElectraForMaskedLM      |
| + discriminator_head | -                   | -                   | ElectraForPreTraining   |

A pooler is carried along when the checkpoint has one. The output layer is
tied to the word embedding (and BERT's/ALBERT's decoder bias to the head's
bias): older checkpoints store those copies, which are checked equal and
skipped; they are never written (`transformers` re-ties them on load).
"""
import dataclasses
from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from prottrans_jax.convert import hf_t5
from prottrans_jax.convert import params as params_lib
from prottrans_jax.models import albert
from prottrans_jax.models import bert
from prottrans_jax.models import electra

ConversionError = params_lib.ConversionError
TensorMapping = hf_t5.TensorMapping
Loader = params_lib.Loader

HEADS = ("pooler", "mlm_head", "discriminator_head")


@dataclasses.dataclass(frozen=True)
class Family:
  """How one Hugging Face model type is named and configured."""
  model_type: str
  config_class: type
  architectures: Mapping[str, Optional[str]]  # architecture -> its task head
  # Hugging Face's config defaults for fields a config.json may omit.
  defaults: Mapping[str, Any]
  extra_fields: tuple[str, ...] = ()


_BERT_DEFAULTS = {"vocab_size": 30522, "hidden_act": "gelu", "max_position_embeddings": 512,
                  "type_vocab_size": 2, "layer_norm_eps": 1e-12, "hidden_dropout_prob": 0.1,
                  "attention_probs_dropout_prob": 0.1, "initializer_range": 0.02}

FAMILIES = {
    "bert": Family("bert", bert.BertConfig,
                   {"BertModel": None, "BertForMaskedLM": "mlm_head"}, _BERT_DEFAULTS),
    "albert": Family("albert", albert.AlbertConfig,
                     {"AlbertModel": None, "AlbertForMaskedLM": "mlm_head"},
                     {**_BERT_DEFAULTS, "vocab_size": 30000, "hidden_act": "gelu_new",
                      "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
                      "embedding_size": 128, "num_hidden_groups": 1},
                     ("embedding_size", "num_hidden_groups")),
    "electra": Family("electra", electra.ElectraConfig,
                      {"ElectraModel": None, "ElectraForMaskedLM": "mlm_head",
                       "ElectraForPreTraining": "discriminator_head"},
                      {**_BERT_DEFAULTS, "embedding_size": 128}, ("embedding_size",)),
}
_CONFIG_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                  "intermediate_size", "hidden_act", "max_position_embeddings",
                  "type_vocab_size", "layer_norm_eps", "hidden_dropout_prob",
                  "attention_probs_dropout_prob", "initializer_range")


def family_of(config: bert.BertConfig) -> Family:
  for family in FAMILIES.values():
    if type(config) is family.config_class:  # pylint: disable=unidiomatic-typecheck
      return family
  raise ConversionError(f"No Hugging Face family for {type(config).__name__}")


# ----------------------------------------------------------------- names


def tensor_mappings(config: bert.BertConfig, heads: Sequence[str],
                    nested: Optional[bool] = None) -> list[TensorMapping]:
  """Every tensor of a model with `heads` (a subset of HEADS), in order.

  `nested`: the encoder's names carry the family prefix ("bert."), as in
  task models; default: whether `heads` has a task head.
  """
  family = family_of(config).model_type
  if nested is None:
    nested = any(h != "pooler" for h in heads)
  p = f"{family}." if nested else ""
  out = []

  def linear(hf, ours):
    out.append(TensorMapping(f"{hf}.weight", f"{ours}/kernel", True))
    out.append(TensorMapping(f"{hf}.bias", f"{ours}/bias", False))

  def norm(hf, ours):
    out.append(TensorMapping(f"{hf}.weight", f"{ours}/scale", False))
    out.append(TensorMapping(f"{hf}.bias", f"{ours}/bias", False))

  for hf, ours in (("word", "token"), ("position", "position"), ("token_type", "type")):
    out.append(TensorMapping(f"{p}embeddings.{hf}_embeddings.weight",
                             f"embedder/{ours}_embedder/embedding", False))
  norm(f"{p}embeddings.LayerNorm", "embedder/layer_norm")
  if config.embedding_dim != config.hidden_size:
    projection = {"albert": "encoder.embedding_hidden_mapping_in",
                  "electra": "embeddings_project"}[family]
    linear(f"{p}{projection}", "encoder/embedding_projection")
  for i in range(config.num_layer_weights):
    ours = f"encoder/layers_{i}"
    if family == "albert":
      hf = f"{p}encoder.albert_layer_groups.{i}.albert_layers.0"
      names = {"query": "attention.query", "key": "attention.key", "value": "attention.value",
               "out": "attention.dense", "attention_layer_norm": "attention.LayerNorm",
               "wi": "ffn", "wo": "ffn_output", "mlp_layer_norm": "full_layer_layer_norm"}
    else:
      hf = f"{p}encoder.layer.{i}"
      names = {"query": "attention.self.query", "key": "attention.self.key",
               "value": "attention.self.value", "out": "attention.output.dense",
               "attention_layer_norm": "attention.output.LayerNorm",
               "wi": "intermediate.dense", "wo": "output.dense",
               "mlp_layer_norm": "output.LayerNorm"}
    for name in ("query", "key", "value", "out"):
      linear(f"{hf}.{names[name]}", f"{ours}/attention/{name}")
    norm(f"{hf}.{names['attention_layer_norm']}", f"{ours}/attention_layer_norm")
    for name in ("wi", "wo"):
      linear(f"{hf}.{names[name]}", f"{ours}/mlp/{name}")
    norm(f"{hf}.{names['mlp_layer_norm']}", f"{ours}/mlp_layer_norm")
  if "pooler" in heads:
    linear(f"{p}pooler" + (".dense" if family == "bert" else ""), "pooler/dense")
  if "mlm_head" in heads:
    hf = {"bert": "cls.predictions.transform", "albert": "predictions",
          "electra": "generator_predictions"}[family]
    linear(f"{hf}.dense", "mlm_head/dense")
    norm(f"{hf}.LayerNorm", "mlm_head/layer_norm")
    bias = {"bert": "cls.predictions.bias", "albert": "predictions.bias",
            "electra": "generator_lm_head.bias"}[family]
    out.append(TensorMapping(bias, "mlm_head/bias", False))
  if "discriminator_head" in heads:
    linear("discriminator_predictions.dense", "discriminator_head/dense")
    linear("discriminator_predictions.dense_prediction", "discriminator_head/prediction")
  return out


def tied_copies(config: bert.BertConfig, heads: Sequence[str]) -> dict[str, str]:
  """{tied copy: the tensor it equals} for a model with `heads`."""
  if "mlm_head" not in heads:
    return {}
  family = family_of(config).model_type
  word = f"{family}.embeddings.word_embeddings.weight"
  return {"bert": {"cls.predictions.decoder.weight": word,
                   "cls.predictions.decoder.bias": "cls.predictions.bias"},
          "albert": {"predictions.decoder.weight": word,
                     "predictions.decoder.bias": "predictions.bias"},
          "electra": {"generator_lm_head.weight": word}}[family]


def _ignored(name: str) -> bool:
  """Buffers older checkpoints saved with the weights; not parameters."""
  return name.endswith(("embeddings.position_ids", "embeddings.token_type_ids"))


# ----------------------------------------------------------------- configs


def architecture(hf_config: Mapping[str, Any]) -> tuple[Family, str]:
  """(family, architecture) of a config.json; raises for anything else."""
  model_type = hf_config.get("model_type")
  if model_type not in FAMILIES:
    raise ConversionError(f"config.json has model_type {model_type!r}; BERT-family "
                          f"types supported: {', '.join(FAMILIES)}")
  family = FAMILIES[model_type]
  names = hf_config.get("architectures") or [next(iter(family.architectures))]
  if len(names) != 1 or names[0] not in family.architectures:
    raise ConversionError(f"Unknown architecture {names} in config.json; supported: "
                          f"{', '.join(family.architectures)}")
  return family, names[0]


def config_from_hf(hf_config: Mapping[str, Any], **overrides: Any) -> bert.BertConfig:
  """Our config from a Hugging Face BERT/ALBERT/ELECTRA `config.json` dict."""
  family, _ = architecture(hf_config)
  if hf_config.get("position_embedding_type", "absolute") != "absolute":
    raise ConversionError(f"position_embedding_type {hf_config['position_embedding_type']!r} "
                          "is not supported: ProtTrans models use absolute positions")
  if hf_config.get("inner_group_num", 1) != 1:
    raise ConversionError("ALBERT inner_group_num != 1 is not supported (ProtAlbert uses 1)")
  fields = {}
  for name in _CONFIG_FIELDS + family.extra_fields:
    if name in hf_config:
      fields[name] = hf_config[name]
    elif name in family.defaults:
      fields[name] = family.defaults[name]
    else:
      raise ConversionError(f"config.json lacks {name!r}")
  fields.update(overrides)
  return family.config_class.from_dict(fields)


def hf_config(config: bert.BertConfig, architecture_name: str,
              torch_dtype: str = "float32") -> dict[str, Any]:
  """A `config.json` dict `transformers` loads as this model."""
  family = family_of(config)
  if architecture_name not in family.architectures:
    raise ConversionError(f"Unknown {family.model_type} architecture {architecture_name!r}")
  out = {"architectures": [architecture_name], "model_type": family.model_type}
  out.update({name: getattr(config, name) for name in _CONFIG_FIELDS})
  if family.model_type == "albert":
    out.update(embedding_size=config.embedding_size,
               num_hidden_groups=config.num_hidden_groups, inner_group_num=1)
  elif family.model_type == "electra":
    out["embedding_size"] = config.embedding_dim
  out.update(position_embedding_type="absolute", pad_token_id=0, torch_dtype=torch_dtype)
  return out


def architecture_of(config: bert.BertConfig, heads: Sequence[str]) -> str:
  """The Hugging Face architecture holding exactly these task heads."""
  family = family_of(config)
  task_heads = [h for h in heads if h != "pooler"]
  if len(task_heads) > 1:
    raise ConversionError(f"No Hugging Face architecture has all of {task_heads}")
  wanted = task_heads[0] if task_heads else None
  for name, head in family.architectures.items():
    if head == wanted:
      return name
  raise ConversionError(f"No {family.model_type} architecture with a {wanted}")


# ----------------------------------------------------------- state dicts


def expected_shapes(config: bert.BertConfig, heads: Sequence[str]) -> dict[str, tuple[int, ...]]:
  """Flat parameter names and shapes of `Bert(config)` with `heads`, abstractly."""
  model = bert.Bert(config)

  def build(module, tokens):
    hidden = module.encode(tokens)
    if "mlm_head" in heads:
      module.mlm_head(hidden, module.embedder)
    if "discriminator_head" in heads:
      module.discriminator_head(hidden)
    if "pooler" in heads:
      module.pooler(hidden)

  shapes = jax.eval_shape(lambda rng, x: model.init(rng, x, method=build),
                          jax.ShapeDtypeStruct((2,), jnp.uint32),
                          jax.ShapeDtypeStruct((1, 1), jnp.int32))
  return {n: tuple(leaf.shape) for n, leaf in params_lib.flatten(shapes["params"]).items()}


def heads_of_params(names: Sequence[str]) -> list[str]:
  """Which heads a flat parameter tree holds."""
  return [h for h in HEADS if any(n.startswith(h + "/") for n in names)]


def heads_of_checkpoint(names: set[str], config: bert.BertConfig, architecture_name: str
                        ) -> list[str]:
  """The architecture's task head, plus the pooler when the tensors have one."""
  task_head = family_of(config).architectures[architecture_name]
  heads = [task_head] if task_head else []
  nested = task_head is not None
  pooler = {m.hf for m in tensor_mappings(config, heads + ["pooler"], nested)} - {
      m.hf for m in tensor_mappings(config, heads, nested)}
  return (["pooler"] if pooler <= names else []) + heads


def _hf_shape(m: TensorMapping, shapes: Mapping[str, tuple[int, ...]]) -> tuple[int, ...]:
  return shapes[m.ours][::-1] if m.transpose else shapes[m.ours]


def param_loaders(state_dict: Mapping[str, np.ndarray], config: bert.BertConfig,
                  architecture_name: str, encoder_only: bool = False,
                  dtype: Optional[np.dtype] = None) -> tuple[dict[str, Loader], list[str]]:
  """({our flat name: loader}, heads) of a Hugging Face `architecture_name` state dict.

  `encoder_only` skips the heads. Any other tensor unmapped or missing is an
  error listing every such name. Tied copies are checked equal to their
  source when it is read.
  """
  names = set(state_dict.keys())
  all_heads = heads_of_checkpoint(names, config, architecture_name)
  heads = [] if encoder_only else all_heads
  nested = family_of(config).architectures[architecture_name] is not None
  mappings = tensor_mappings(config, heads, nested)
  expected = {m.hf for m in mappings}
  copies = {c: s for c, s in tied_copies(config, all_heads).items() if c in names}
  unused_heads = {m.hf for m in tensor_mappings(config, all_heads, nested)} - expected
  skipped = {n for n in names if n in copies or n in unused_heads or _ignored(n)}
  params_lib.check_names(names - skipped, expected, "the Hugging Face checkpoint")
  shapes = expected_shapes(config, heads)

  def loader(m: TensorMapping) -> Loader:
    def load() -> np.ndarray:
      array = np.asarray(state_dict[m.hf])
      params_lib.check_shape(m.hf, array.shape, _hf_shape(m, shapes))
      for copy, source in copies.items():
        if source == m.hf and not np.array_equal(np.asarray(state_dict[copy]), array):
          raise ConversionError(f"{copy} differs from {source}: the output layer is "
                                "not tied to the embedding")
      array = hf_t5.relayout(m, array)
      return array if dtype is None else array.astype(dtype)
    return load

  return {m.ours: loader(m) for m in mappings}, heads


def state_dict_to_params(state_dict: Mapping[str, np.ndarray], config: bert.BertConfig,
                         architecture_name: str, encoder_only: bool = False,
                         dtype: Optional[np.dtype] = None) -> dict[str, Any]:
  """A Hugging Face state dict -> our nested params (numpy)."""
  loaders, _ = param_loaders(state_dict, config, architecture_name, encoder_only, dtype)
  return params_lib.unflatten({name: load() for name, load in loaders.items()})


def hf_loaders(params: Mapping[str, Loader], config: bert.BertConfig,
               encoder_only: bool = False, dtype: Optional[np.dtype] = None
               ) -> dict[str, tuple[tuple[int, ...], Loader]]:
  """Our flat params (loaders) -> {HF name: (HF shape, loader)}, in order.

  The heads written are those the params hold (none with `encoder_only`).
  """
  heads = [] if encoder_only else heads_of_params(list(params))
  mappings = tensor_mappings(config, heads)
  present = {n for n in params if not encoder_only or n.split("/")[0] not in HEADS}
  params_lib.check_names(present, {m.ours for m in mappings}, "the parameters")
  shapes = expected_shapes(config, heads)

  def loader(m: TensorMapping) -> Loader:
    def load() -> np.ndarray:
      array = np.asarray(params[m.ours]())
      params_lib.check_shape(m.ours, array.shape, shapes[m.ours])
      array = hf_t5.relayout(m, array)
      return array if dtype is None else array.astype(dtype)
    return load

  return {m.hf: (_hf_shape(m, shapes), loader(m)) for m in mappings}


def params_to_state_dict(params: Mapping[str, Any], config: bert.BertConfig,
                         encoder_only: bool = False, dtype: Optional[np.dtype] = None
                         ) -> dict[str, np.ndarray]:
  """Our nested params -> a Hugging Face state dict (numpy, no tied copies)."""
  return {name: load() for name, (_, load) in hf_loaders(
      params_lib.loaders_of(params), config, encoder_only, dtype).items()}
