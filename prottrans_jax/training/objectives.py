"""What the trainer needs to know about each model family.

The trainer (trainer.py) and steps (steps.py) are family-agnostic through
a `Setup`: which feature converter makes the batches and which features a
batch has, how to initialise the parameters, how many FLOPs a step costs,
and the loss (`steps.Objective`). Families:

- t5: span-free denoising, encoder-decoder cross-entropy (steps' default);
- bert, albert, electra: masked LM on the encoder's aligned targets, over
  every position BERT masking selected (`MaskedLmFeatureConverter`);
- electra_pretraining: the generator's masked-LM loss plus
  `discriminator_weight` x replaced-token detection (models/electra.py).
"""
import dataclasses
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import seqio

from prottrans_jax.data import feature_converters
from prottrans_jax.models import bert
from prottrans_jax.models import electra
from prottrans_jax.models import registry
from prottrans_jax.models import t5
from prottrans_jax.training import losses
from prottrans_jax.training import steps

# Masked-LM batch features (all of the task's aligned length).
_MLM_FEATURES = ("encoder_input_tokens", "encoder_target_tokens", "encoder_loss_weights",
                 "encoder_segment_ids", "encoder_positions")
_MLM_MODEL_FEATURES = ("encoder_input_tokens", "encoder_segment_ids", "encoder_positions")
# Packed encoder-decoder batches (seqio.EncDecFeatureConverter).
_ENC_DEC_FEATURES = ("encoder_input_tokens", "encoder_segment_ids", "encoder_positions",
                     "decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights",
                     "decoder_segment_ids", "decoder_positions")


@dataclasses.dataclass(frozen=True)
class Setup:
  """A family's training plumbing.

  Attributes:
    objective: the loss the steps compute.
    feature_converter: seqio converter class (called with pack=...).
    features: batch feature -> the task feature length it has ("inputs"
      or "targets").
    init_fn: module -> (rng -> boxed params).
    flops_per_example: (config, task feature lengths) -> training FLOPs of
      one example, for MFU.
  """
  objective: steps.Objective
  feature_converter: type
  features: Mapping[str, str]
  init_fn: Callable[[nn.Module], Callable[[jax.Array], Any]]
  flops_per_example: Callable[[Any, Mapping[str, int]], float]


def _init_with_tokens(model: nn.Module) -> Callable[[jax.Array], Any]:
  """Boxed params from `model(tokens, tokens)`: T5's inputs and decoder
  inputs, or a BERT's inputs and segment ids; shapes do not depend on the
  dummy length."""
  tokens = jnp.ones((1, 8), jnp.int32)
  return lambda key: model.init(key, tokens, tokens)["params"]


def _init_electra(model: nn.Module) -> Callable[[jax.Array], Any]:
  tokens = jnp.ones((1, 8), jnp.int32)
  return lambda key: model.init({"params": key, "sample": key}, tokens, tokens,
                                tokens)["params"]


def _model_inputs(batch: steps.Batch) -> dict[str, jnp.ndarray]:
  return {k: batch[k] for k in _MLM_MODEL_FEATURES if k in batch}


def _apply(model, params, batch, dropout_rng, **kwargs):
  rngs = {} if dropout_rng is None else {"dropout": dropout_rng}
  return model.apply({"params": params}, **_model_inputs(batch), **kwargs,
                     enable_dropout=dropout_rng is not None, rngs=rngs)


def masked_lm_sums(model, params, batch, dropout_rng, z_loss):
  """Masked-LM cross-entropy on every position BERT masking selected."""
  logits = _apply(model, params, batch, dropout_rng)
  sums = losses.cross_entropy_sums(logits, batch["encoder_target_tokens"],
                                   batch["encoder_loss_weights"], z_loss)
  return {**sums, "loss": sums["cross_entropy"] + sums["z_loss"]}


def masked_lm_eval(model, params, batch):
  return (_apply(model, params, batch, None), batch["encoder_target_tokens"],
          batch["encoder_loss_weights"])


def _selected(batch: steps.Batch) -> jnp.ndarray:
  """Positions BERT masking selected: a loss weight, or an input that is not
  the target ([MASK] or a random residue). The second keeps the generator's
  positions right even where a pipeline drops loss weights."""
  changed = batch["encoder_input_tokens"] != batch["encoder_target_tokens"]
  return ((batch["encoder_loss_weights"] > 0) | changed).astype(jnp.int32)


def _electra_outputs(model, params, batch, dropout_rng, sample_rng):
  rngs = {"sample": sample_rng}
  if dropout_rng is not None:
    rngs["dropout"] = dropout_rng
  return model.apply({"params": params}, **_model_inputs(batch),
                     encoder_target_tokens=batch["encoder_target_tokens"],
                     encoder_loss_weights=_selected(batch),
                     enable_dropout=dropout_rng is not None, rngs=rngs)


def electra_sums(model, params, batch, dropout_rng, z_loss):
  """Generator MLM sums plus the weighted discriminator loss.

  The step divides the summed loss by the number of masked positions M,
  while ELECTRA's discriminator loss is a mean over all T tokens: its sum
  enters scaled by M / T of the (micro)batch, so that after the division
  the loss is ELECTRA's gen_mean + weight x disc_mean (exactly so without
  microbatches).
  """
  # Sampling noise differs every step but is reproducible from the dropout
  # key (itself derived from the step); eval uses a fixed key.
  sample_rng = (jax.random.key(0) if dropout_rng is None
                else jax.random.fold_in(dropout_rng, 1))
  out = _electra_outputs(model, params, batch, dropout_rng, sample_rng)
  sums = losses.cross_entropy_sums(out["generator_logits"], batch["encoder_target_tokens"],
                                   _selected(batch), z_loss)
  detection = electra.discriminator_sums(out["discriminator_logits"], out["replaced"],
                                         batch["encoder_target_tokens"] > 0)
  scale = model.config.discriminator_weight * sums["weight"] / jnp.maximum(
      detection["tokens"], 1.0)
  return {**sums, "loss": sums["cross_entropy"] + sums["z_loss"] + scale * detection["bce"],
          **{f"discriminator_{k}": v for k, v in detection.items()}}


def electra_metrics(sums):
  tokens = jnp.maximum(sums["discriminator_tokens"], 1.0)
  return {"discriminator_loss": sums["discriminator_bce"] / tokens,
          "discriminator_accuracy": sums["discriminator_correct"] / tokens,
          # What answering "original" everywhere scores.
          "discriminator_all_original_accuracy": 1.0 - sums["discriminator_replaced"] / tokens}


def electra_eval(model, params, batch):
  """The generator's predictions (what the masked-residue metrics score)."""
  out = _electra_outputs(model, params, batch, None, jax.random.key(0))
  return out["generator_logits"], batch["encoder_target_tokens"], _selected(batch)


_MASKED_LM = Setup(
    objective=steps.Objective(masked_lm_sums, lambda batch: batch["encoder_loss_weights"],
                              masked_lm_eval),
    feature_converter=feature_converters.MaskedLmFeatureConverter,
    features={name: "inputs" for name in _MLM_FEATURES},
    init_fn=_init_with_tokens,
    flops_per_example=lambda config, lengths: (
        bert.flops_per_token(config, lengths["inputs"]) * lengths["inputs"]))

SETUPS: dict[str, Setup] = {
    "t5": Setup(
        objective=steps.ENCODER_DECODER,
        feature_converter=seqio.EncDecFeatureConverter,
        features={name: "targets" if name.startswith("decoder") else "inputs"
                  for name in _ENC_DEC_FEATURES},
        init_fn=_init_with_tokens,
        flops_per_example=lambda config, lengths: t5.flops_per_token(
            config, lengths["inputs"], lengths["targets"]) * (
                lengths["inputs"] + lengths["targets"])),
    "bert": _MASKED_LM,
    "albert": _MASKED_LM,
    "electra": _MASKED_LM,
    "electra_pretraining": Setup(
        objective=steps.Objective(electra_sums, _selected, electra_eval, electra_metrics),
        feature_converter=feature_converters.MaskedLmFeatureConverter,
        features={name: "inputs" for name in _MLM_FEATURES},
        init_fn=_init_electra,
        flops_per_example=lambda config, lengths: (
            electra.flops_per_token(config, lengths["inputs"]) * lengths["inputs"])),
}


def setup_for(config: Any) -> Setup:
  """The training setup of the family `config` belongs to."""
  return SETUPS[registry.family_of(config).name]
