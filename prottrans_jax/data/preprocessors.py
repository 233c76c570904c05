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
- Permutation LM (ProtXLNet; XLNet's pre-training, `permutation_lm`): a
  sampled factorisation order per protein, the last 1/K of it predicted,
  with XLNet's permutation mask and target mapping.
"""

import math

import seqio
import tensorflow as tf

from prottrans_jax import vocab as vocab_lib

MASK_RATE = 0.15


def sequence_to_targets(dataset: tf.data.Dataset, feature: str = "targets"
                        ) -> tf.data.Dataset:
  """{"sequence": str, ...} -> {"id": ..., feature: str}."""
  return dataset.map(lambda x: {"id": x["id"], feature: x["sequence"]},
                     num_parallel_calls=tf.data.AUTOTUNE)


def _random_crop(tokens: tf.Tensor, length: int, seed: tf.Tensor) -> tf.Tensor:
  """A window of at most `length` tokens at a seeded random offset."""
  excess = tf.maximum(tf.shape(tokens)[0] - length, 0)
  start = tf.random.stateless_uniform([], seed=seed, minval=0,
                                      maxval=excess + 1, dtype=tf.int32)
  return tokens[start:start + length]


def crop_targets(dataset: tf.data.Dataset, sequence_length, output_features,
                 reserved_tokens: int = 1, feature: str = "targets"
                 ) -> tf.data.Dataset:
  """Crops long proteins to a random window that fits the feature length.

  Args:
    dataset: tokenized examples with `feature`.
    sequence_length: seqio's feature lengths; `feature`'s length is used.
    output_features: unused; seqio passes it.
    reserved_tokens: room left for special tokens added later (`</s>` for
      ProtT5; `[CLS]` and `[SEP]` for BERT; `<sep><cls>` for XLNet).
    feature: the tokenized protein's feature ("inputs" for the permutation
      LM, whose "targets" are the predicted tokens).
  """
  del output_features
  length = sequence_length[feature] - reserved_tokens

  @seqio.map_over_dataset(num_seeds=1)
  def crop(x, seed):
    return {**x, feature: _random_crop(x[feature], length, seed)}

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


# XLNet's partial prediction: the last 1/K of each factorisation order is
# predicted (K = 6 in XLNet's pre-training: 85 of 512 tokens).
PARTIAL_PREDICTION = 6
# `<sep><cls>` end every ProtXLNet input, as the released pipeline's.
XLNET_SPECIAL_TOKENS = 2


def max_predictions(length: int, partial_prediction: float = PARTIAL_PREDICTION) -> int:
  """The most tokens an example of `length` (specials included) predicts:
  the "targets" feature length a permutation-LM task needs at least."""
  return math.ceil((length - XLNET_SPECIAL_TOKENS) / partial_prediction)


def permutation_lm(dataset: tf.data.Dataset, sequence_length, output_features,
                   partial_prediction: float = PARTIAL_PREDICTION) -> tf.data.Dataset:
  """XLNet's permutation-LM examples from tokenized, cropped proteins.

  Each protein (its ids in "inputs", at most L - 2 residues) becomes
  `residues <sep> <cls>`, padded on the left with `<pad>` to L (the
  released pipeline's framing). One factorisation order is sampled over the
  real tokens (specials included, as XLNet's permutation covers every
  position); the residues in the last 1/K of it are predicted: n/K of a
  protein's n residues, rounded down or up at random so that the expected
  count is exactly n/K. `<sep>`, `<cls>` and padding are never predicted.

  The permutation mask is XLNet's (`_local_perm` of its data pipeline):
  perm_mask[i, j] = 1 means i may not attend to j.
  - A predicted token sees no predicted or special token at or after itself
    in the order (itself included), and every non-predicted residue.
  - A non-predicted residue sees every non-predicted residue (the context is
    bidirectional) and no predicted or special token, so nothing leaks.
  - A special token sees the non-predicted residues, itself, and the
    predicted/special tokens before it in the order.
  Padding rows and columns are 0 (`attention_mask` removes padding).

  Features (all int32; L = sequence_length["inputs"], P =
  sequence_length["targets"], at least `max_predictions(L, K)`):
  "inputs" [L] ids, "attention_mask" [L] (1 real, 0 padding),
  "perm_mask" [L, L], "target_mapping" [P, L] (one-hot rows of the predicted
  positions in position order, zero rows after), "targets" [P] their ids
  (`<pad>` after), "target_weights" [P] (1, then 0).

  Randomness comes from seqio's per-example stateless seeds, so a seed gives
  the same examples every time.
  """
  del output_features
  length, num_predict = sequence_length["inputs"], sequence_length["targets"]
  if partial_prediction < 1:
    raise ValueError(f"permutation_lm: partial_prediction (K) is {partial_prediction}; "
                     "the predicted fraction 1/K needs K >= 1")
  needed = max_predictions(length, partial_prediction)
  if num_predict < needed:
    raise ValueError(
        f"permutation_lm: the \"targets\" feature length is {num_predict}, but with "
        f"\"inputs\" {length} and K = {partial_prediction} an example predicts up to "
        f"{needed} tokens: set TASK_FEATURE_LENGTHS[\"targets\"] >= {needed}")
  vocab = vocab_lib.ProtXLNetVocabulary()

  @seqio.map_over_dataset(num_seeds=2)
  def build(x, seeds):
    residues = tf.cast(x["inputs"], tf.int32)
    n = tf.shape(residues)[0]
    tokens = tf.concat([residues, [vocab.SEP_ID, vocab.CLS_ID]], axis=0)
    real = n + XLNET_SPECIAL_TOKENS
    is_special = tf.range(real) >= n
    # The order sorts positions by a random key; rank = place in the order.
    keys = tf.random.stateless_uniform([real], seed=seeds[0])
    rank = tf.argsort(tf.argsort(keys))
    expected = tf.cast(n, tf.float32) / partial_prediction
    count = tf.cast(tf.floor(expected + tf.random.stateless_uniform([], seed=seeds[1])),
                    tf.int32)
    # The residues among the last `count` residues of the same order.
    residue_rank = tf.argsort(tf.argsort(keys[:n]))
    is_target = tf.concat([residue_rank >= n - count, [False, False]], axis=0)
    # XLNet's rule: non-predicted residues share rank -1 (they come first and
    # see each other); predicted and special tokens keep their ranks.
    ordered = is_target | is_special
    rev_rank = tf.where(ordered, rank, -1)
    own_rank = tf.where(is_target, rev_rank, rev_rank + 1)
    perm_mask = (own_rank[:, None] <= rev_rank[None, :]) & ordered[None, :]

    pad = length - real
    target_positions = tf.cast(tf.where(is_target)[:, 0], tf.int32)
    num_targets = tf.shape(target_positions)[0]
    out = {
        "inputs": tf.concat([tf.fill([pad], vocab.PAD_ID), tokens], axis=0),
        "attention_mask": tf.concat([tf.zeros([pad], tf.int32),
                                     tf.ones([real], tf.int32)], axis=0),
        "perm_mask": tf.pad(tf.cast(perm_mask, tf.int32), [[pad, 0], [pad, 0]]),
        "target_mapping": tf.pad(
            tf.one_hot(target_positions + pad, length, dtype=tf.int32),
            [[0, num_predict - num_targets], [0, 0]]),
        "targets": tf.pad(tf.gather(tokens, target_positions),
                          [[0, num_predict - num_targets]], constant_values=vocab.PAD_ID),
        "target_weights": tf.pad(tf.ones([num_targets], tf.int32),
                                 [[0, num_predict - num_targets]]),
    }
    shapes = {"inputs": [length], "attention_mask": [length], "perm_mask": [length, length],
              "target_mapping": [num_predict, length], "targets": [num_predict],
              "target_weights": [num_predict]}
    return {"id": x["id"], **{k: tf.ensure_shape(v, shapes[k]) for k, v in out.items()}}

  return build(dataset)
