"""SeqIO preprocessors for the ProtTrans pre-training objectives.

Each is a plain function over a `tf.data.Dataset`, usable in a `seqio.Task`
(seqio injects `sequence_length`, `output_features` and per-call seeds, so a
run with the same seed sees the same examples — what lets a resumed training
run continue on the same batches).

- ProtT5 (the paper's BART-like denoising, no span collapsing): every residue
  is masked i.i.d. with probability 0.15 and replaced by the one mask token;
  the targets are the whole original sequence plus `</s>`. Inputs and targets
  therefore stay aligned position by position.
- BERT masked LM (ProtBert, ProtAlbert, ProtElectra's generator): 15% of the
  residues are selected; of those 80% become `[MASK]`, 10% a random residue,
  10% stay; `[CLS]` ... `[SEP]` around; loss weights 1 on selected positions.
"""

import seqio
import tensorflow as tf

from prottrans_jax import vocab as vocab_lib

MASK_RATE = 0.15


def sequence_to_targets(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """{"sequence": str, ...} -> {"id": ..., "targets": str}."""
  return dataset.map(lambda x: {"id": x["id"], "targets": x["sequence"]},
                     num_parallel_calls=tf.data.AUTOTUNE)


def _random_crop(tokens: tf.Tensor, length: int, seed: tf.Tensor) -> tf.Tensor:
  """A window of at most `length` tokens at a seeded random offset."""
  excess = tf.maximum(tf.shape(tokens)[0] - length, 0)
  start = tf.random.stateless_uniform([], seed=seed, minval=0,
                                      maxval=excess + 1, dtype=tf.int32)
  return tokens[start:start + length]


def crop_targets(dataset: tf.data.Dataset, sequence_length, output_features,
                 reserved_tokens: int = 1) -> tf.data.Dataset:
  """Crops long proteins to a random window that fits the feature length.

  Args:
    dataset: tokenized examples with "targets".
    sequence_length: seqio's feature lengths; the "targets" length is used.
    output_features: unused; seqio passes it.
    reserved_tokens: room left for special tokens added later (`</s>` for
      ProtT5; `[CLS]` and `[SEP]` for BERT).
  """
  del output_features
  length = sequence_length["targets"] - reserved_tokens

  @seqio.map_over_dataset(num_seeds=1)
  def crop(x, seed):
    return {**x, "targets": _random_crop(x["targets"], length, seed)}

  return crop(dataset)


@seqio.map_over_dataset(num_seeds=1)
def prott5_denoise(x, seed, mask_rate: float = MASK_RATE):
  """ProtT5's objective: i.i.d. masking of residues with one mask token."""
  targets = x["targets"]
  masked = tf.random.stateless_uniform(tf.shape(targets), seed=seed) < mask_rate
  mask_id = vocab_lib.ProtT5Vocabulary().mask_id
  inputs = tf.where(masked, tf.cast(mask_id, targets.dtype), targets)
  return {**x, "inputs": inputs}


def add_cls_and_sep(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """`[CLS] residues [SEP]`, BERT's framing of one sequence."""
  cls_id = vocab_lib.ProtBertVocabulary.CLS_ID
  sep_id = vocab_lib.ProtBertVocabulary.SEP_ID

  def frame(x):
    targets = x["targets"]
    framed = tf.concat([[cls_id], targets, [sep_id]], axis=0)
    return {**x, "targets": tf.cast(framed, targets.dtype)}

  return dataset.map(frame, num_parallel_calls=tf.data.AUTOTUNE)


@seqio.map_over_dataset(num_seeds=3)
def bert_mask(x, seeds, mask_rate: float = MASK_RATE):
  """BERT's 80/10/10 masking over residues (never over `[CLS]`/`[SEP]`)."""
  targets = x["targets"]
  vocab = vocab_lib.ProtBertVocabulary()
  # Random replacements are drawn from the 20 standard residues only.
  standard_ids = tf.constant(
      [vocab.residue_ids[r] for r in vocab_lib.STANDARD_RESIDUES],
      dtype=targets.dtype)
  is_residue = targets >= min(vocab.residue_ids.values())
  shape = tf.shape(targets)
  selected = is_residue & (
      tf.random.stateless_uniform(shape, seed=seeds[0]) < mask_rate)
  action = tf.random.stateless_uniform(shape, seed=seeds[1])
  random_residues = tf.gather(standard_ids, tf.random.stateless_uniform(
      shape, seed=seeds[2], minval=0, maxval=len(vocab_lib.STANDARD_RESIDUES),
      dtype=tf.int32))
  inputs = tf.where(selected & (action < 0.8),
                    tf.cast(vocab.mask_id, targets.dtype), targets)
  inputs = tf.where(selected & (action >= 0.8) & (action < 0.9),
                    random_residues, inputs)
  return {**x, "inputs": inputs,
          "loss_weights": tf.cast(selected, tf.int32)}
