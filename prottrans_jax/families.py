"""Model families: the one record every part of the project looks up.

A checkpoint records its family's `name` and config (prottrans_jax/
checkpoints.py). From the record alone the trainer builds the network and
its objective, the embedding engine tokenizes a protein and finds the
residue rows, the converters find the Hugging Face name table, and the
benchmarks count FLOPs. Adding a family is one module (its config, Flax
module and FLOPs; an objective or a converter only where no existing one
fits) and one entry in `FAMILIES` (docs/design.md walks through it).

The training objective is named, not imported: it needs seqio (feature
converters), which embedding and conversion do not.
"""
import dataclasses
import importlib
from typing import Any, Callable, Mapping, Optional

from flax import linen as nn
import jax
import numpy as np

from prottrans_jax import vocab as vocab_lib
from prottrans_jax.convert import hf_bert
from prottrans_jax.convert import hf_t5
from prottrans_jax.convert import hf_xlnet
from prottrans_jax.convert import hf_transfo_xl
from prottrans_jax.convert import mapping
from prottrans_jax.models import albert
from prottrans_jax.models import bert
from prottrans_jax.models import electra
from prottrans_jax.models import layers
from prottrans_jax.models import t5
from prottrans_jax.models import xlnet
from prottrans_jax.models import transfo_xl

# Dummy inputs for initialisation: no parameter shape depends on them. NumPy,
# so that importing this module does not start a JAX backend (multi-process
# runs must call jax.distributed.initialize first).
_TOKENS = np.ones((1, 8), np.int32)


@dataclasses.dataclass(frozen=True)
class ModelFamily:
  """One family of networks and everything the project does with it.

  Attributes:
    name: the `model_name` checkpoints record.
    config_class: its frozen config dataclass (`to_dict`/`from_dict`, and
      `with_dtype`, the dtype policy).
    module: config -> the Flax module.
    init: (module, rng) -> the whole network's boxed parameters.
    encode: the module's method [B, L] tokens -> [B, L, d] hidden states.
    tokenize: protein sequence -> the encoder's input ids, as the released
      pipeline feeds them.
    first_residue_row: encoder output row of the first residue (1 after
      BERT's [CLS]); residues then fill one row each.
    num_special_tokens: ids `tokenize` adds around the residues.
    non_encoder_parts: top-level parameter groups outside what `encode`
      uses (T5's decoder, the BERT family's heads): what an encoder-only
      conversion drops.
    training_flops: (config, task feature lengths) -> training FLOPs of one
      example (for MFU).
    encoder_flops: (config, tokens) -> FLOPs of one encoder forward pass.
    objective_name: "module:attribute" of its training objective
      (`prottrans_jax.training.objectives.Objective`).
    hf_converter: its Hugging Face model type (`convert.mapping.HfConverter`),
      None where it has none.
    scanned_stacks: config -> {path of a layer stack's parent module: its
      number of layer weight sets} for every stack the config scans (empty
      when `scan_layers` is off): what `to_layout` / `to_canonical` convert.
    num_hidden_states: config -> how many arrays `encode(...,
      output_hidden_states=True)` returns: the embedding output and one per
      layer call (Hugging Face's `output_hidden_states`).
    pad_id: the id batches are padded with (`encode` masks it): 0 except
      ProtXLNet's `<pad>` (its 0 is `<unk>`, a real token).
  """
  name: str
  config_class: type
  module: Callable[[Any], nn.Module]
  init: Callable[[nn.Module, jax.Array], Any]
  encode: Callable[..., Any]
  tokenize: Callable[[str], list[int]]
  first_residue_row: int
  num_special_tokens: int
  non_encoder_parts: tuple[str, ...]
  training_flops: Callable[[Any, Mapping[str, int]], float]
  encoder_flops: Callable[[Any, int], float]
  objective_name: str
  hf_converter: Optional[mapping.HfConverter]
  scanned_stacks: Callable[[Any], dict[tuple[str, ...], int]]
  num_hidden_states: Callable[[Any], int]
  pad_id: int = 0

  def objective(self) -> Any:
    """The training objective (imports the training stack on first use)."""
    module, attribute = self.objective_name.split(":")
    return getattr(importlib.import_module(module), attribute)

  def to_layout(self, config: Any, tree: Any) -> Any:
    """A canonical tree (the unscanned layout checkpoints hold and converters
    name: `encoder/layers_0/...`) in the layout `config`'s module uses
    (scanned stacks: `encoder/layers/...`, each leaf stacked on a leading
    axis). `tree` is a parameter tree or any tree holding mirrors of one
    (an optax state); leaves are arrays (eager or traced) or
    `jax.ShapeDtypeStruct`s. Returns `tree` itself when nothing is scanned.
    """
    return layers.stack_layers(tree, self.scanned_stacks(config))

  def to_canonical(self, config: Any, tree: Any) -> Any:
    """The inverse of `to_layout`: a tree in `config`'s layout, canonical."""
    return layers.unstack_layers(tree, self.scanned_stacks(config))


def _prott5_tokens(sequence: str, vocab=vocab_lib.ProtT5Vocabulary()) -> list[int]:
  """ProtT5's input: residues then `</s>` (what the released pipeline feeds)."""
  return vocab.encode(sequence) + [vocab.eos_id]


def _protbert_tokens(sequence: str, vocab=vocab_lib.ProtBertVocabulary()) -> list[int]:
  """ProtBert's input: `[CLS]` residues `[SEP]` (BertTokenizer's framing)."""
  return [vocab.cls_id] + vocab.encode(sequence) + [vocab.eos_id]


def _protxlnet_tokens(sequence: str, vocab=vocab_lib.ProtXLNetVocabulary()) -> list[int]:
  """ProtXLNet's input: residues then `<sep>` `<cls>` (XLNetTokenizer's framing)."""
  return vocab.encode(sequence) + [vocab.sep_id, vocab.cls_id]
def _residue_tokens(sequence: str, vocab=vocab_lib.ProtBertVocabulary()) -> list[int]:
  """ProtTXL's input: the residues alone, in ProtBert's ids (the paper
  names no special tokens for its autoregressive models)."""
  return vocab.encode(sequence)


def _init_with_tokens(module: nn.Module, rng: jax.Array) -> Any:
  """`module(tokens, tokens)`: T5's inputs and decoder inputs, or a BERT's
  inputs and segment ids."""
  return module.init(rng, _TOKENS, _TOKENS)["params"]


def _init_electra_pretraining(module: nn.Module, rng: jax.Array) -> Any:
  return module.init({"params": rng, "sample": rng}, _TOKENS, _TOKENS, _TOKENS)["params"]


_OBJECTIVES = "prottrans_jax.training.objectives"


def _t5_stacks(config: t5.T5Config) -> dict[tuple[str, ...], int]:
  if not config.scan_layers:
    return {}
  return {("encoder",): config.num_encoder_layers, ("decoder",): config.num_decoder_layers}


def _init_xlnet(module: nn.Module, rng: jax.Array) -> Any:
  return module.init(rng, _TOKENS)["params"]


def _xlnet_stacks(config: xlnet.XLNetConfig) -> dict[tuple[str, ...], int]:
  return {("encoder",): config.n_layer} if config.scan_layers else {}


def _bert_stacks(config: bert.BertConfig) -> dict[tuple[str, ...], int]:
  return {("encoder",): config.num_layer_weights} if config.scan_layers else {}


def _electra_pretraining_stacks(config: electra.ElectraPretrainingConfig
                                ) -> dict[tuple[str, ...], int]:
  return {(name,): network.num_layer_weights
          for name, network in (("generator", config.generator),
                                ("discriminator", config.discriminator))
          if network.scan_layers}


def _transfo_xl_stacks(config: transfo_xl.TransfoXLConfig) -> dict[tuple[str, ...], int]:
  return {("decoder",): config.n_layer} if config.scan_layers else {}


def _bert_family(name: str, config_class: type,
                 hf_converter: hf_bert.BertConverter) -> ModelFamily:
  return ModelFamily(
      name=name, config_class=config_class, module=bert.Bert, init=_init_with_tokens,
      encode=bert.Bert.encode, tokenize=_protbert_tokens, first_residue_row=1,
      num_special_tokens=2, non_encoder_parts=hf_bert.HEADS,
      training_flops=lambda config, lengths: (
          bert.flops_per_token(config, lengths["inputs"]) * lengths["inputs"]),
      encoder_flops=bert.encoder_forward_flops,
      objective_name=f"{_OBJECTIVES}:MASKED_LM", hf_converter=hf_converter,
      scanned_stacks=_bert_stacks,
      num_hidden_states=lambda config: config.num_hidden_layers + 1)


FAMILIES: dict[str, ModelFamily] = {
    "t5": ModelFamily(
        name="t5", config_class=t5.T5Config, module=t5.T5, init=_init_with_tokens,
        encode=t5.T5.encode, tokenize=_prott5_tokens, first_residue_row=0,
        num_special_tokens=1, non_encoder_parts=("decoder",),
        training_flops=lambda config, lengths: t5.flops_per_token(
            config, lengths["inputs"], lengths["targets"]) * (
                lengths["inputs"] + lengths["targets"]),
        encoder_flops=t5.encoder_forward_flops,
        objective_name=f"{_OBJECTIVES}:ENCODER_DECODER", hf_converter=hf_t5.CONVERTER,
        scanned_stacks=_t5_stacks,
        num_hidden_states=lambda config: config.num_encoder_layers + 1),
    "bert": _bert_family("bert", bert.BertConfig, hf_bert.BERT),
    "albert": _bert_family("albert", albert.AlbertConfig, hf_bert.ALBERT),
    "electra": _bert_family("electra", electra.ElectraConfig, hf_bert.ELECTRA),
    # Generator + discriminator trained jointly; embeds with the
    # discriminator. Two Hugging Face models: export each with
    # `electra.generator_params` / `electra.discriminator_params`.
    "electra_pretraining": ModelFamily(
        name="electra_pretraining", config_class=electra.ElectraPretrainingConfig,
        module=electra.ElectraPretraining, init=_init_electra_pretraining,
        encode=electra.ElectraPretraining.encode, tokenize=_protbert_tokens,
        first_residue_row=1, num_special_tokens=2,
        non_encoder_parts=("generator", "generator_head", "discriminator_head"),
        training_flops=lambda config, lengths: (
            electra.flops_per_token(config, lengths["inputs"]) * lengths["inputs"]),
        encoder_flops=lambda config, length: bert.encoder_forward_flops(
            config.discriminator, length),
        objective_name=f"{_OBJECTIVES}:ELECTRA", hf_converter=None,
        scanned_stacks=_electra_pretraining_stacks,
        num_hidden_states=lambda config: config.discriminator.num_hidden_layers + 1),
    # ProtXLNet: residues first, `<sep><cls>` last. The released pipeline
    # pads on the left; relative attention with masked padding gives the
    # residues the same states padded on the right (tests/test_xlnet.py).
    "xlnet": ModelFamily(
        name="xlnet", config_class=xlnet.XLNetConfig, module=xlnet.XLNet, init=_init_xlnet,
        encode=xlnet.XLNet.encode, tokenize=_protxlnet_tokens, first_residue_row=0,
        num_special_tokens=2, non_encoder_parts=hf_xlnet.HEADS,
        # Partial prediction: the permutation-LM task's "targets" length is
        # the number of query-stream rows (preprocessors.permutation_lm).
        training_flops=lambda config, lengths: xlnet.training_flops(
            config, lengths["inputs"], lengths["targets"]),
        encoder_flops=xlnet.encoder_forward_flops,
        objective_name=f"{_OBJECTIVES}:PERMUTATION_LM", hf_converter=hf_xlnet.CONVERTER,
        scanned_stacks=_xlnet_stacks, num_hidden_states=lambda config: config.n_layer + 1,
        pad_id=vocab_lib.ProtXLNetVocabulary.PAD_ID),
    # ProtTXL: one segment of `segment_length` tokens per training example
    # (the memory carried across an example's segments), embedding segment
    # by segment with the memory (`TransfoXL.encode`).
    "transfo_xl": ModelFamily(
        name="transfo_xl", config_class=transfo_xl.TransfoXLConfig,
        module=transfo_xl.TransfoXL,
        init=lambda module, rng: module.init(rng, _TOKENS)["params"],
        encode=transfo_xl.TransfoXL.encode, tokenize=_residue_tokens, first_residue_row=0,
        num_special_tokens=0, non_encoder_parts=(hf_transfo_xl.LM_HEAD,),
        training_flops=lambda config, lengths: (
            transfo_xl.flops_per_token(config, config.segment_length) * lengths["targets"]),
        encoder_flops=transfo_xl.encoder_forward_flops,
        objective_name=f"{_OBJECTIVES}:CAUSAL_LM", hf_converter=hf_transfo_xl.CONVERTER,
        scanned_stacks=_transfo_xl_stacks,
        num_hidden_states=lambda config: config.n_layer + 1),
}


def get(name: str) -> ModelFamily:
  """The family checkpoints record as `name`."""
  if name not in FAMILIES:
    raise ValueError(f"Unknown model family {name!r}; known: {sorted(FAMILIES)}")
  return FAMILIES[name]


def of(config: Any) -> ModelFamily:
  """The family whose config class `config` is (exactly: ALBERT's and
  ELECTRA's configs subclass BERT's)."""
  for family in FAMILIES.values():
    if type(config) is family.config_class:  # pylint: disable=unidiomatic-typecheck
      return family
  raise ValueError(f"No model family for config {type(config).__name__}")


def for_hf_model_type(model_type: str) -> ModelFamily:
  """The family a Hugging Face `config.json` with this `model_type` loads into."""
  for family in FAMILIES.values():
    if family.hf_converter is not None and family.hf_converter.model_type == model_type:
      return family
  known = sorted(f.hf_converter.model_type for f in FAMILIES.values() if f.hf_converter)
  raise ValueError(f"config.json has model_type {model_type!r}; supported: "
                   f"{', '.join(known)}")


def abstract_params(family: ModelFamily, config: Any) -> Any:
  """The boxed parameter tree of the whole network, shapes only (no memory)."""
  return jax.eval_shape(lambda rng: family.init(family.module(config), rng),
                        jax.random.key(0))
