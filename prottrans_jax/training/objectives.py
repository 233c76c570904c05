"""Training objectives: the loss, eval outputs and batches of each family.

The train and eval steps (steps.py) and the trainer (trainer.py) know no
model family: a family's record (prottrans_jax/families.py) names its
`Objective`, which says which feature converter makes the batches and which
features a batch has, and computes the loss sums. As T5X's `BaseModel` puts
feature converter and loss on the model, this puts them beside it.

- ENCODER_DECODER (T5): span-free denoising, decoder cross-entropy on the
  targets with teacher forcing;
- MASKED_LM (BERT, ALBERT, ELECTRA): masked LM on the encoder's aligned
  targets, over every position BERT masking selected
  (`MaskedLmFeatureConverter`);
- ELECTRA (electra_pretraining): the generator's masked-LM loss plus
  `discriminator_weight` x replaced-token detection (models/electra.py);
- PERMUTATION_LM (XLNet): cross-entropy of the query stream's logits at the
  target-mapping rows (`preprocessors.permutation_lm`,
  `PermutationLmFeatureConverter`);
- CAUSAL_LM (transfo_xl): every residue's next residue within its protein,
  a packed row run segment by segment with the memory carried between
  segments inside the step (models/transfo_xl.py `TransfoXL.lm`); evaluation
  and the in-step training path;
- CAUSAL_LM_CARRIED (transfo_xl, `trainer.train.carry_memory_between_steps`):
  the same loss trained as Transformer-XL trains, one segment of every row
  per step, the memory a part of the train state (`CarriedMemory`).
"""
import dataclasses
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import seqio

from prottrans_jax.data import feature_converters
from prottrans_jax.downstream import metrics
from prottrans_jax.models import electra
from prottrans_jax.models import transfo_xl
from prottrans_jax.training import losses

Batch = Mapping[str, jnp.ndarray]


@dataclasses.dataclass(frozen=True)
class CarriedMemory:
  """A memory the train state carries from one train step to the next.

  A packed row of the task's length trains as consecutive segments, one
  per step: the trainer's input cuts each batch of rows into windows of
  `segment_length + 1` tokens, a segment and the token after it (which the
  segment's last position predicts: Transformer-XL's data iterator gives a
  segment its targets shifted by one), and feeds them in row order
  (`inputs.consecutive_windows`).

  Attributes:
    segment_length: model config -> tokens of each row one step trains on.
    init: (module, global batch size) -> the memory before the first step
      (a tree of arrays).
    axes: the logical axis names of each of its arrays (a tree like
      `init`'s): the partitioning rules place them as activations.
  """
  segment_length: Callable[[Any], int]
  init: Callable[[Any, int], Any]
  axes: Any


@dataclasses.dataclass(frozen=True)
class Objective:
  """A model family's loss and batches: the hook the train/eval steps call.

  Attributes:
    loss_sums: (model, params, batch, dropout_rng or None, z_loss) -> sums
      over the batch with "loss" (the summed loss), "cross_entropy",
      "z_loss", "correct" and "weight"; sums add over microbatches.
    loss_weights: batch -> the weights the loss normalizing factor counts.
    eval_outputs: (model, params, batch) -> (logits, targets, weights,
      extra_sums): the token predictions evaluation scores, and further
      sums over the batch (which add over batches) for `eval_metrics`.
    feature_converter: seqio converter class (called with pack=...).
    features: batch feature -> the task feature length it has ("inputs"
      or "targets"), or a tuple of them, one per axis after the batch
      (XLNet's perm_mask is ("inputs", "inputs")).
    extra_metrics: sums -> further training metrics (e.g. ELECTRA's
      discriminator accuracy).
    masked: (batch, mask_id) -> where a target's own token was hidden from
      the model, shaped like the targets (masked-residue accuracy counts
      these); default: where the encoder input is the mask token.
    eval_metrics: the summed extra_sums of an evaluation -> further
      evaluation metrics (e.g. ELECTRA's discriminator ROC AUC).
    memory: what the train state carries between steps; with it,
      loss_sums takes the memory as a sixth argument and returns (sums, the
      next memory), and a step's batch is one window of every row
      (`step_feature_lengths`).
    between_steps: the objective that trains the same loss with the
      model's memory carried between train steps, where the family has one
      (`trainer.train.carry_memory_between_steps`).
  """
  loss_sums: Callable[..., dict[str, jnp.ndarray]]
  loss_weights: Callable[[Batch], jnp.ndarray]
  eval_outputs: Callable[..., tuple]
  feature_converter: type
  features: Mapping[str, str | tuple[str, ...]]
  extra_metrics: Callable[[Mapping[str, jnp.ndarray]], dict[str, jnp.ndarray]] = (
      lambda sums: {})
  masked: Callable[[Batch, int], jnp.ndarray] = (
      lambda batch, mask_id: batch["encoder_input_tokens"] == mask_id)
  eval_metrics: Callable[[Mapping[str, Any]], dict[str, float]] = lambda totals: {}
  memory: CarriedMemory | None = None
  between_steps: "Objective | None" = None

  def _axes(self, name: str) -> tuple[str, ...]:
    axes = self.features[name]
    return (axes,) if isinstance(axes, str) else tuple(axes)

  @property
  def length_keys(self) -> frozenset[str]:
    """The task feature lengths a batch uses ("inputs", "targets")."""
    return frozenset(key for name in self.features for key in self._axes(name))

  def batch_shapes(self, task_feature_lengths: Mapping[str, int]
                   ) -> dict[str, tuple[int, ...]]:
    """Each batch feature's shape after the batch axis."""
    return {name: tuple(task_feature_lengths[key] for key in self._axes(name))
            for name in self.features}

  def step_feature_lengths(self, task_feature_lengths: Mapping[str, int],
                           model_config: Any) -> dict[str, int]:
    """The feature lengths of one train step's batch: the task's, or with a
    carried memory one window (a segment and the token after it)."""
    if self.memory is None:
      return dict(task_feature_lengths)
    segment = self.memory.segment_length(model_config)
    odd = {k: v for k, v in task_feature_lengths.items() if v % segment}
    if odd:
      raise ValueError(
          f"TASK_FEATURE_LENGTHS {dict(odd)} is not a multiple of the model's "
          f"segment_length {segment}: with carry_memory_between_steps each "
          "packed row trains as whole consecutive segments, one per step")
    return {k: segment + 1 for k in task_feature_lengths}


# Masked-LM batch features (all of the task's aligned length).
_MLM_FEATURES = ("encoder_input_tokens", "encoder_target_tokens", "encoder_loss_weights",
                 "encoder_segment_ids", "encoder_positions")
_MLM_MODEL_FEATURES = ("encoder_input_tokens", "encoder_segment_ids", "encoder_positions")
# Packed encoder-decoder batches (seqio.EncDecFeatureConverter); all but the
# loss weights go to the model.
_ENC_DEC_FEATURES = ("encoder_input_tokens", "encoder_segment_ids", "encoder_positions",
                     "decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights",
                     "decoder_segment_ids", "decoder_positions")
_ENC_DEC_MODEL_FEATURES = tuple(f for f in _ENC_DEC_FEATURES if f != "decoder_loss_weights")


def _apply(model, params, batch, dropout_rng, model_features, rngs=None, **kwargs):
  """`model(**the batch's model features, **kwargs)`, dropout iff an rng."""
  rngs = dict(rngs or {})
  if dropout_rng is not None:
    rngs["dropout"] = dropout_rng
  return model.apply({"params": params}, **{k: batch[k] for k in model_features if k in batch},
                     **kwargs, enable_dropout=dropout_rng is not None, rngs=rngs)


def _token_cross_entropy(model_features: tuple[str, ...], targets: str, weights: str):
  """(loss_sums, eval_outputs) of a model whose output is logits over
  `batch[targets]`, weighted by `batch[weights]`."""

  def loss_sums(model, params, batch, dropout_rng, z_loss):
    sums = losses.cross_entropy_sums(_apply(model, params, batch, dropout_rng, model_features),
                                     batch[targets], batch[weights], z_loss)
    return {**sums, "loss": sums["cross_entropy"] + sums["z_loss"]}

  def eval_outputs(model, params, batch):
    return (_apply(model, params, batch, None, model_features), batch[targets],
            batch[weights], {})

  return loss_sums, eval_outputs


# T5: teacher-forced decoder cross-entropy (+ z-loss) on the targets.
encoder_decoder_sums, encoder_decoder_eval = _token_cross_entropy(
    _ENC_DEC_MODEL_FEATURES, "decoder_target_tokens", "decoder_loss_weights")
# BERT family: cross-entropy on every position BERT masking selected.
masked_lm_sums, masked_lm_eval = _token_cross_entropy(
    _MLM_MODEL_FEATURES, "encoder_target_tokens", "encoder_loss_weights")


def _selected(batch: Batch) -> jnp.ndarray:
  """Positions BERT masking selected: a loss weight, or an input that is not
  the target ([MASK] or a random residue). The second keeps the generator's
  positions right even where a pipeline drops loss weights."""
  changed = batch["encoder_input_tokens"] != batch["encoder_target_tokens"]
  return ((batch["encoder_loss_weights"] > 0) | changed).astype(jnp.int32)


def _electra_outputs(model, params, batch, dropout_rng, sample_rng):
  return _apply(model, params, batch, dropout_rng, _MLM_MODEL_FEATURES,
                rngs={"sample": sample_rng},
                encoder_target_tokens=batch["encoder_target_tokens"],
                encoder_loss_weights=_selected(batch))


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


# Discriminator logits are counted in DETECTION_BINS equal bins over
# [-DETECTION_LOGIT_RANGE, DETECTION_LOGIT_RANGE] (the ends take what lies
# beyond), so the ROC AUC is a sum over batches and devices like every
# eval metric. Bins 1/128 wide tie only near-equal scores: the AUC moves by
# at most half the share of replaced/original pairs that share a bin.
DETECTION_BINS = 4096
DETECTION_LOGIT_RANGE = 16.0


def detection_histograms(logits: jnp.ndarray, replaced: jnp.ndarray,
                         valid: jnp.ndarray) -> dict[str, jnp.ndarray]:
  """Counts of valid tokens' discriminator logits per bin, replaced and not."""
  scaled = (logits + DETECTION_LOGIT_RANGE) * (DETECTION_BINS / (2 * DETECTION_LOGIT_RANGE))
  bins = jnp.clip(jnp.floor(scaled).astype(jnp.int32), 0, DETECTION_BINS - 1).reshape(-1)
  valid = valid.reshape(-1).astype(jnp.float32)
  replaced = replaced.reshape(-1).astype(jnp.float32)
  count = lambda weights: jnp.zeros(DETECTION_BINS, jnp.float32).at[bins].add(weights)
  return {"detection_replaced_counts": count(valid * replaced),
          "detection_original_counts": count(valid * (1.0 - replaced))}


def electra_eval(model, params, batch):
  """The generator's predictions (what the masked-residue metrics score),
  and the discriminator's logits binned by whether each real residue was
  replaced (the generator's sample differs from the original; special
  tokens and padding are left out) for its ROC AUC."""
  out = _electra_outputs(model, params, batch, None, jax.random.key(0))
  residues = batch["encoder_target_tokens"] >= model.config.num_special_tokens
  return (out["generator_logits"], batch["encoder_target_tokens"], _selected(batch),
          detection_histograms(out["discriminator_logits"], out["replaced"], residues))


def electra_eval_metrics(totals):
  """Replaced-token detection's ROC AUC with DeLong's 95% interval (over
  every evaluated residue as an independent item)."""
  auc = metrics.binned_roc_auc(totals["detection_replaced_counts"],
                               totals["detection_original_counts"])
  return {"discriminator_auc": auc.value, "discriminator_auc_stderr": auc.stderr,
          "discriminator_auc_ci_low": auc.ci_low, "discriminator_auc_ci_high": auc.ci_high,
          "detection_replaced": float(auc.positives),
          "detection_original": float(auc.negatives)}


def _next_token(batch: Batch) -> tuple[jnp.ndarray, jnp.ndarray]:
  """(each position's next token, its weight): 0 past a protein's last
  residue (packed rows: the next protein's first residue is not predicted
  from this one) and at the row's end. Unpacked (eval) rows hold one
  protein each."""
  targets = batch["decoder_target_tokens"]
  ids = batch.get("decoder_segment_ids", (targets > 0).astype(jnp.int32))
  shift = lambda x: jnp.pad(x[:, 1:], ((0, 0), (0, 1)))
  same = (shift(ids) == ids) & (ids > 0)
  return shift(targets), shift(batch["decoder_loss_weights"]) * same


def _causal_lm_log_probs(model, params, batch, dropout_rng):
  targets = batch["decoder_target_tokens"]
  ids = batch.get("decoder_segment_ids", (targets > 0).astype(jnp.int32))
  return _apply(model, params, {"decoder_target_tokens": targets, "decoder_segment_ids": ids},
                dropout_rng, ("decoder_target_tokens", "decoder_segment_ids"),
                method="lm")


def causal_lm_sums(model, params, batch, dropout_rng, z_loss):
  """Next-residue cross-entropy; log-probabilities have log Z = 0, so the
  z-loss is 0 whatever its weight."""
  targets, weights = _next_token(batch)
  sums = losses.cross_entropy_sums(_causal_lm_log_probs(model, params, batch, dropout_rng),
                                   targets, weights, z_loss)
  return {**sums, "loss": sums["cross_entropy"] + sums["z_loss"]}


def causal_lm_eval(model, params, batch):
  return (_causal_lm_log_probs(model, params, batch, None), *_next_token(batch), {})


def _row_starts(batch: Batch) -> jnp.ndarray:
  """[B] whether each row's window is the first of its packed row. seqio
  packs whole proteins, numbering a row's from 1 and each one's positions
  from 0, the first at the row's start; a later window can begin with
  protein 1 only inside it (position > 0)."""
  return (batch["decoder_segment_ids"][:, 0] == 1) & (batch["decoder_positions"][:, 0] == 0)


def causal_lm_carried_sums(model, params, batch, dropout_rng, z_loss, memory):
  """`causal_lm_sums` of one window [B, segment + 1] of every row after the
  memory the previous step left -> (sums, the next memory).

  The memory is emptied where a new packed row starts. Transformer-XL never
  resets it, as its stream is one text; here a row's proteins are whole (a
  protein never continues into the next row) and attention never crosses
  proteins, so the old row's memory could only be wrongly seen where the
  new row's protein ids repeat its. Emptying makes a step depend on its own
  row alone, which is what `TransfoXL.lm` computes in one step.
  """
  targets, weights = _next_token(batch)
  segment = lambda x: x[:, :-1]  # The window's last token is only a target.
  start = _row_starts(batch)
  hidden = jnp.where(start[None, :, None, None], jnp.zeros_like(memory["hidden"]),
                     memory["hidden"])
  ids = jnp.where(start[:, None], -1, memory["ids"])
  features = ("decoder_target_tokens", "decoder_segment_ids")
  log_probs, hidden, ids = _apply(model, params, {k: segment(batch[k]) for k in features},
                                  dropout_rng, features, memory=hidden, memory_ids=ids,
                                  method="lm_segment")
  sums = losses.cross_entropy_sums(log_probs, segment(targets), segment(weights), z_loss)
  return {**sums, "loss": sums["cross_entropy"] + sums["z_loss"]}, {"hidden": hidden, "ids": ids}


ENCODER_DECODER = Objective(
    loss_sums=encoder_decoder_sums,
    loss_weights=lambda batch: batch["decoder_loss_weights"],
    eval_outputs=encoder_decoder_eval,
    feature_converter=seqio.EncDecFeatureConverter,
    features={name: "targets" if name.startswith("decoder") else "inputs"
              for name in _ENC_DEC_FEATURES})

MASKED_LM = Objective(
    loss_sums=masked_lm_sums,
    loss_weights=lambda batch: batch["encoder_loss_weights"],
    eval_outputs=masked_lm_eval,
    feature_converter=feature_converters.MaskedLmFeatureConverter,
    features={name: "inputs" for name in _MLM_FEATURES})

ELECTRA = Objective(
    loss_sums=electra_sums,
    loss_weights=_selected,
    eval_outputs=electra_eval,
    feature_converter=feature_converters.MaskedLmFeatureConverter,
    features={name: "inputs" for name in _MLM_FEATURES},
    extra_metrics=electra_metrics,
    eval_metrics=electra_eval_metrics)


# XLNet: the sequence's features have the "inputs" length L, the predicted
# tokens' the "targets" length P (PermutationLmFeatureConverter).
_PLM_FEATURES = {"input_ids": "inputs", "attention_mask": "inputs",
                 "perm_mask": ("inputs", "inputs"), "target_mapping": ("targets", "inputs"),
                 "target_ids": "targets", "target_weights": "targets"}


def _plm_logits(model, params, batch, dropout_rng):
  """The query stream's logits [B, P, vocab] at the target-mapping rows."""
  rngs = {} if dropout_rng is None else {"dropout": dropout_rng}
  return model.apply({"params": params}, batch["input_ids"],
                     attention_mask=batch["attention_mask"],
                     perm_mask=batch["perm_mask"].astype(jnp.float32),
                     target_mapping=batch["target_mapping"].astype(jnp.float32),
                     deterministic=dropout_rng is None, rngs=rngs)


def permutation_lm_sums(model, params, batch, dropout_rng, z_loss):
  """Cross-entropy (+ z-loss) of every predicted token (weight 1 rows)."""
  sums = losses.cross_entropy_sums(_plm_logits(model, params, batch, dropout_rng),
                                   batch["target_ids"], batch["target_weights"], z_loss)
  return {**sums, "loss": sums["cross_entropy"] + sums["z_loss"]}


def permutation_lm_eval(model, params, batch):
  return (_plm_logits(model, params, batch, None), batch["target_ids"],
          batch["target_weights"], {})


PERMUTATION_LM = Objective(
    loss_sums=permutation_lm_sums,
    loss_weights=lambda batch: batch["target_weights"],
    eval_outputs=permutation_lm_eval,
    feature_converter=feature_converters.PermutationLmFeatureConverter,
    features=_PLM_FEATURES,
    # A predicted token never sees itself (its perm_mask row hides it): each
    # is a masked residue, scored against the most-common-residue baseline.
    masked=lambda batch, mask_id: jnp.ones_like(batch["target_ids"]))


# seqio's decoder batches: `decoder_target_tokens` are the residues (the
# converter's shifted `decoder_input_tokens` are not used: the model reads
# the residues and predicts each next one, as Transformer-XL's LM does).
_DECODER_FEATURES = ("decoder_target_tokens", "decoder_input_tokens", "decoder_loss_weights",
                     "decoder_segment_ids", "decoder_positions")

# Nothing is masked: a causal LM's inputs are the residues themselves.
_NOTHING_MASKED = lambda batch, mask_id: jnp.zeros_like(batch["decoder_target_tokens"])

# Transformer-XL's memory in the train state: the last `mem_len` layer
# inputs of every row [n_layer, B, mem_len, d_model] and the protein ids of
# those entries [B, mem_len] (-1: not filled), sharded like activations.
TRANSFO_XL_MEMORY = CarriedMemory(
    segment_length=lambda config: config.segment_length,
    init=lambda model, batch: dict(zip(("hidden", "ids"), model.fixed_memory(batch))),
    axes={"hidden": transfo_xl.MEMORY_AXES, "ids": ("batch", "length")})

# Evaluation runs whole rows (`causal_lm_eval`), as CAUSAL_LM does.
CAUSAL_LM_CARRIED = Objective(
    loss_sums=causal_lm_carried_sums,
    loss_weights=lambda batch: _next_token(batch)[1][:, :-1],
    eval_outputs=causal_lm_eval,
    feature_converter=seqio.DecoderFeatureConverter,
    features={name: "targets" for name in _DECODER_FEATURES},
    masked=_NOTHING_MASKED,
    memory=TRANSFO_XL_MEMORY)

CAUSAL_LM = Objective(
    loss_sums=causal_lm_sums,
    loss_weights=lambda batch: _next_token(batch)[1],
    eval_outputs=causal_lm_eval,
    feature_converter=seqio.DecoderFeatureConverter,
    features={name: "targets" for name in _DECODER_FEATURES},
    masked=_NOTHING_MASKED,
    between_steps=CAUSAL_LM_CARRIED)
