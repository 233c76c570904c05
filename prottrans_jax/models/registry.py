"""Model families by name: what checkpoints record and what embedding needs.

A checkpoint records `model_name` and its config
(prottrans_jax/training/checkpoints.py); the embedding engine, the loaders
and the converters look the family up here to build the network, tokenize
a protein the way the released pipeline does, and know which encoder output
rows are residues.
"""
import dataclasses
from typing import Any, Callable

from flax import linen as nn

from prottrans_jax import vocab as vocab_lib
from prottrans_jax.models import albert
from prottrans_jax.models import bert
from prottrans_jax.models import electra
from prottrans_jax.models import t5


@dataclasses.dataclass(frozen=True)
class ModelFamily:
  """One family of networks.

  Attributes:
    name: the `model_name` checkpoints record.
    config_class: its frozen config dataclass.
    module: config -> the Flax module.
    encode: the module's method [B, L] tokens -> [B, L, d] hidden states.
    tokenize: protein sequence -> the encoder's input ids.
    first_residue_row: encoder output row of the first residue (1 after
      BERT's [CLS]); residues then fill one row each.
    num_special_tokens: ids `tokenize` adds around the residues.
  """
  name: str
  config_class: type
  module: Callable[[Any], nn.Module]
  encode: Callable[..., Any]
  tokenize: Callable[[str], list[int]]
  first_residue_row: int
  num_special_tokens: int


def _prott5_tokens(sequence: str, vocab=vocab_lib.ProtT5Vocabulary()) -> list[int]:
  """ProtT5's input: residues then `</s>` (what the released pipeline feeds)."""
  return vocab.encode(sequence) + [vocab.eos_id]


def _protbert_tokens(sequence: str, vocab=vocab_lib.ProtBertVocabulary()) -> list[int]:
  """ProtBert's input: `[CLS]` residues `[SEP]` (BertTokenizer's framing)."""
  return [vocab.cls_id] + vocab.encode(sequence) + [vocab.eos_id]


def _bert_family(name: str, config_class: type) -> ModelFamily:
  return ModelFamily(name, config_class, bert.Bert, bert.Bert.encode, _protbert_tokens,
                     first_residue_row=1, num_special_tokens=2)


FAMILIES: dict[str, ModelFamily] = {
    "t5": ModelFamily("t5", t5.T5Config, t5.T5, t5.T5.encode, _prott5_tokens,
                      first_residue_row=0, num_special_tokens=1),
    "bert": _bert_family("bert", bert.BertConfig),
    "albert": _bert_family("albert", albert.AlbertConfig),
    "electra": _bert_family("electra", electra.ElectraConfig),
    # Jointly trained generator + discriminator; embeds with the discriminator.
    "electra_pretraining": ModelFamily(
        "electra_pretraining", electra.ElectraPretrainingConfig, electra.ElectraPretraining,
        electra.ElectraPretraining.encode, _protbert_tokens, first_residue_row=1,
        num_special_tokens=2),
}


def get(name: str) -> ModelFamily:
  if name not in FAMILIES:
    raise ValueError(f"Unknown model family {name!r}; known: {sorted(FAMILIES)}")
  return FAMILIES[name]


def with_dtype(config: Any, dtype: str) -> Any:
  """`config` computing in `dtype` (both networks of a joint ELECTRA)."""
  if isinstance(config, electra.ElectraPretrainingConfig):
    return dataclasses.replace(
        config, generator=dataclasses.replace(config.generator, dtype=dtype),
        discriminator=dataclasses.replace(config.discriminator, dtype=dtype))
  return dataclasses.replace(config, dtype=dtype)


def family_of(config: Any) -> ModelFamily:
  """The family whose config class `config` is (exactly: ALBERT's and
  ELECTRA's configs subclass BERT's)."""
  for family in FAMILIES.values():
    if type(config) is family.config_class:  # pylint: disable=unidiomatic-typecheck
      return family
  raise ValueError(f"No model family for config {type(config).__name__}")
