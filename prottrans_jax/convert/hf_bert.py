"""Hugging Face BERT / ALBERT / ELECTRA <-> this project's `bert.Bert`.

Pure numpy, no torch, one tensor at a time (the generic loaders of
mapping.py). Hugging Face's `Linear` weights are (out, in), our kernels
(in, out): transposes; tables, norms and biases are the same arrays.

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
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from prottrans_jax.convert import mapping
from prottrans_jax.convert import tokenizer_files
from prottrans_jax.models import albert
from prottrans_jax.models import bert
from prottrans_jax.models import electra

ConversionError = mapping.ConversionError
TensorMapping = mapping.TensorMapping

HEADS = ("pooler", "mlm_head", "discriminator_head")
# Every BERT-family config.json field our configs share, with Hugging Face's
# BertConfig defaults for those a config.json may omit.
_BERT_DEFAULTS = {"vocab_size": 30522, "hidden_size": mapping.REQUIRED,
                  "num_hidden_layers": mapping.REQUIRED,
                  "num_attention_heads": mapping.REQUIRED,
                  "intermediate_size": mapping.REQUIRED, "hidden_act": "gelu",
                  "max_position_embeddings": 512, "type_vocab_size": 2,
                  "layer_norm_eps": 1e-12, "hidden_dropout_prob": 0.1,
                  "attention_probs_dropout_prob": 0.1, "initializer_range": 0.02}

_TOKENIZER_NOTE = "TOKENIZER.md"
_TOKENIZER_TEXT = """# Tokenizer

This model was trained with ProtBert's vocabulary (`vocab.txt` here, read
by `BertTokenizer(do_lower_case=False)`): `[PAD]` 0, `[UNK]` 1, `[CLS]` 2,
`[SEP]` 3, `[MASK]` 4, residues `LAGVESIKRDTPNQFYMHCWXUBZO` at 5..29. Input
is `[CLS]` + space-separated residues + `[SEP]`, with U, Z, O, B mapped to
X first.
"""


class BertConverter(mapping.HfConverter):
  """One BERT-shaped Hugging Face model type.

  Args:
    model_type: config.json's model_type.
    config_class: our config class for it.
    architectures: Hugging Face architecture -> the task head it holds.
    fields: the config.json fields the config shares (BERT's and its own).
  """
  parts = HEADS

  def __init__(self, model_type: str, config_class: type,
               architectures: Mapping[str, Optional[str]], fields: mapping.ConfigFields):
    self.model_type = model_type
    self.config_class = config_class
    self.architectures = dict(architectures)
    self.fields = fields

  # ------------------------------------------------------------- configs

  def architecture(self, hf_config: Mapping[str, Any]) -> str:
    return mapping.architecture_of(hf_config, self.architectures,
                                   next(iter(self.architectures)))

  def config_from_hf(self, hf_config: Mapping[str, Any], **overrides: Any) -> bert.BertConfig:
    self.architecture(hf_config)
    if hf_config.get("position_embedding_type", "absolute") != "absolute":
      raise ConversionError(
          f"position_embedding_type {hf_config['position_embedding_type']!r} is not "
          "supported: ProtTrans models use absolute positions")
    if hf_config.get("inner_group_num", 1) != 1:
      raise ConversionError("ALBERT inner_group_num != 1 is not supported (ProtAlbert uses 1)")
    return mapping.config_from_fields(self.config_class,
                                      {**self.fields.read(hf_config), **overrides})

  def hf_config(self, config: bert.BertConfig, architecture: str,
                torch_dtype: str = "float32") -> dict[str, Any]:
    self._check_config(config)
    out = mapping.hf_config_head(self.model_type, architecture, self.architectures)
    out.update(self.fields.write(config))
    if self.model_type == "albert":
      out["inner_group_num"] = 1
    elif self.model_type == "electra":
      # Ours may leave it None (the hidden size); Hugging Face's is a number.
      out["embedding_size"] = config.embedding_dim
    out.update(position_embedding_type="absolute", pad_token_id=0, torch_dtype=torch_dtype)
    return out

  def _check_config(self, config: Any) -> None:
    if type(config) is not self.config_class:  # pylint: disable=unidiomatic-typecheck
      raise ConversionError(f"A {type(config).__name__} is not a {self.model_type} model")

  # ------------------------------------------------------------- parts

  def parts_in_checkpoint(self, names: set[str], config: bert.BertConfig,
                          architecture: str) -> tuple[str, ...]:
    """The architecture's task head, plus the pooler when the tensors have one."""
    task_head = self.architectures[architecture]
    heads = [task_head] if task_head else []
    with_pooler = {m.hf for m in self.tensor_plan(config, architecture, heads + ["pooler"])}
    pooler = with_pooler - {m.hf for m in self.tensor_plan(config, architecture, heads)}
    return tuple((["pooler"] if pooler <= names else []) + heads)

  def architecture_for(self, config: bert.BertConfig, parts: Sequence[str]) -> str:
    task_heads = [h for h in parts if h != "pooler"]
    if len(task_heads) > 1:
      raise ConversionError(f"No Hugging Face architecture has all of {task_heads}")
    wanted = task_heads[0] if task_heads else None
    for name, head in self.architectures.items():
      if head == wanted:
        return name
    raise ConversionError(f"No {self.model_type} architecture with a {wanted}")

  # ------------------------------------------------------------- tensors

  def tensor_plan(self, config: bert.BertConfig, architecture: str,
                  parts: Sequence[str]) -> list[TensorMapping]:
    """Every tensor of a model with heads `parts`; a task architecture's
    encoder names carry the model type's prefix ("bert.")."""
    nested = self.architectures[architecture] is not None
    p = f"{self.model_type}." if nested else ""
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
                    "electra": "embeddings_project"}[self.model_type]
      linear(f"{p}{projection}", "encoder/embedding_projection")
    for i in range(config.num_layer_weights):
      ours = f"encoder/layers_{i}"
      if self.model_type == "albert":
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
    if "pooler" in parts:
      linear(f"{p}pooler" + (".dense" if self.model_type == "bert" else ""), "pooler/dense")
    if "mlm_head" in parts:
      hf = {"bert": "cls.predictions.transform", "albert": "predictions",
            "electra": "generator_predictions"}[self.model_type]
      linear(f"{hf}.dense", "mlm_head/dense")
      norm(f"{hf}.LayerNorm", "mlm_head/layer_norm")
      bias = {"bert": "cls.predictions.bias", "albert": "predictions.bias",
              "electra": "generator_lm_head.bias"}[self.model_type]
      out.append(TensorMapping(bias, "mlm_head/bias", False))
    if "discriminator_head" in parts:
      linear("discriminator_predictions.dense", "discriminator_head/dense")
      linear("discriminator_predictions.dense_prediction", "discriminator_head/prediction")
    return out

  def expected_shapes(self, config: bert.BertConfig,
                      parts: Sequence[str]) -> dict[str, tuple[int, ...]]:
    # Canonical names (`layers_<i>`) whatever `config.scan_layers` says.
    model = bert.Bert(config.with_layer_options(scan_layers=False))

    def build(module, tokens):
      hidden = module.encode(tokens)
      if "mlm_head" in parts:
        module.mlm_head(hidden, module.embedder)
      if "discriminator_head" in parts:
        module.discriminator_head(hidden)
      if "pooler" in parts:
        module.pooler(hidden)

    tokens = np.ones((1, 1), np.int32)
    return mapping.abstract_shapes(
        lambda rng: model.init(rng, tokens, method=build)["params"])

  def tied_copies(self, config: bert.BertConfig, parts: Sequence[str]) -> dict[str, str]:
    if "mlm_head" not in parts:
      return {}
    word = f"{self.model_type}.embeddings.word_embeddings.weight"
    return {"bert": {"cls.predictions.decoder.weight": word,
                     "cls.predictions.decoder.bias": "cls.predictions.bias"},
            "albert": {"predictions.decoder.weight": word,
                       "predictions.decoder.bias": "predictions.bias"},
            "electra": {"generator_lm_head.weight": word}}[self.model_type]

  def untied_copy_hint(self, copy: str) -> str:
    del copy
    return "but the output layer of this model is tied to the embedding"

  def ignored(self, name: str) -> bool:
    """Buffers older checkpoints saved with the weights; not parameters."""
    return name.endswith(("embeddings.position_ids", "embeddings.token_type_ids"))

  def tokenizer_files(self, config: bert.BertConfig) -> dict[str, str | bytes]:
    """ProtBert's vocabulary (the ids of `ProtBertVocabulary`)."""
    del config
    files = {_TOKENIZER_NOTE: _TOKENIZER_TEXT}
    # ALBERT's tokenizer class reads a sentencepiece model, not vocab.txt.
    if self.model_type != "albert":
      files.update(tokenizer_files.protbert_files(
          "ElectraTokenizer" if self.model_type == "electra" else "BertTokenizer"))
    return files


BERT = BertConverter("bert", bert.BertConfig,
                     {"BertModel": None, "BertForMaskedLM": "mlm_head"},
                     mapping.ConfigFields(_BERT_DEFAULTS))
ALBERT = BertConverter(
    "albert", albert.AlbertConfig, {"AlbertModel": None, "AlbertForMaskedLM": "mlm_head"},
    mapping.ConfigFields({**_BERT_DEFAULTS, "vocab_size": 30000, "hidden_act": "gelu_new",
                          "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
                          "embedding_size": 128, "num_hidden_groups": 1}))
ELECTRA = BertConverter(
    "electra", electra.ElectraConfig,
    {"ElectraModel": None, "ElectraForMaskedLM": "mlm_head",
     "ElectraForPreTraining": "discriminator_head"},
    mapping.ConfigFields({**_BERT_DEFAULTS, "embedding_size": 128}))
