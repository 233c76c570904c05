"""Feature converters that seqio does not ship.

`seqio.EncoderFeatureConverter` puts loss weights only where the input is the
mask token, which drops BERT's 10% random and 10% unchanged selections from
the loss. `MaskedLmFeatureConverter` keeps the preprocessor's own
`loss_weights` (1 on every selected residue), packed and padded alongside the
tokens. `PermutationLmFeatureConverter` passes XLNet's permutation-LM
features (already at their lengths) to the names the model takes.
"""

import logging
from typing import Mapping

import seqio
import tensorflow as tf

_Spec = seqio.FeatureConverter.FeatureSpec
logger = logging.getLogger(__name__)


class MaskedLmFeatureConverter(seqio.FeatureConverter):
  """Encoder-only masked-LM batches from aligned inputs/targets/loss_weights.

  Task feature lengths are given for "inputs" and "targets" as usual;
  "loss_weights" always has the targets' length.
  """

  TASK_FEATURES = {
      "inputs": _Spec(dtype=tf.int32),
      "targets": _Spec(dtype=tf.int32),
      "loss_weights": _Spec(dtype=tf.int32),
  }
  MODEL_FEATURES = {
      "encoder_input_tokens": _Spec(dtype=tf.int32),
      "encoder_target_tokens": _Spec(dtype=tf.int32),
      "encoder_loss_weights": _Spec(dtype=tf.int32),
  }
  PACKING_FEATURE_DTYPES = {
      "encoder_segment_ids": tf.int32,
      "encoder_positions": tf.int32,
  }

  def __call__(self, ds: tf.data.Dataset,
               task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
    if task_feature_lengths.get("inputs") != task_feature_lengths.get("targets"):
      raise ValueError("masked-LM inputs and targets are aligned, so their "
                       f"lengths must be equal: {dict(task_feature_lengths)}")
    lengths = {**task_feature_lengths,
               "loss_weights": task_feature_lengths["targets"]}
    return super().__call__(ds, lengths)

  def _convert_features(self, ds: tf.data.Dataset,
                        task_feature_lengths: Mapping[str, int]
                        ) -> tf.data.Dataset:
    # seqio's packer finds a feature's length by counting its non-zero
    # values, which would cut a 0/1 weight vector at its number of ones.
    # Shifting real positions to 1/2 keeps every one of them non-zero;
    # padding stays 0 and the shift is undone after packing.
    ds = ds.map(lambda x: {**x, "loss_weights": x["loss_weights"] + 1},
                num_parallel_calls=tf.data.AUTOTUNE)
    ds = self._pack_or_pad(ds, task_feature_lengths)

    def convert(x):
      out = {
          "encoder_input_tokens": x["inputs"],
          "encoder_target_tokens": x["targets"],
          "encoder_loss_weights": tf.maximum(x["loss_weights"] - 1, 0),
      }
      if self.pack:
        out["encoder_segment_ids"] = x["inputs_segment_ids"]
        out["encoder_positions"] = x["inputs_positions"]
      return out

    return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)

  def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]
                                ) -> Mapping[str, int]:
    length = task_feature_lengths["targets"]
    lengths = {k: length for k in self.MODEL_FEATURES}
    if self.pack:
      lengths.update({k: length for k in self.PACKING_FEATURE_DTYPES})
    return lengths


class PermutationLmFeatureConverter(seqio.FeatureConverter):
  """XLNet permutation-LM batches from `preprocessors.permutation_lm`'s
  examples, under the names of the model's arguments (Hugging Face's).

  Task feature lengths: "inputs" (L, the sequence) and "targets" (P, the
  predicted tokens). The preprocessor already built every feature at its
  length (padding `<pad>` is 5, not seqio's 0), so nothing is padded here.
  Rows are never packed: a factorisation order and its [L, L] mask cover
  one protein, so `pack=True` (what the trainer asks for) still gives one
  protein per row, and says so.
  """

  TASK_FEATURES = {
      "inputs": _Spec(dtype=tf.int32),
      "attention_mask": _Spec(dtype=tf.int32),
      "perm_mask": _Spec(dtype=tf.int32, rank=2),
      "target_mapping": _Spec(dtype=tf.int32, rank=2),
      "targets": _Spec(dtype=tf.int32),
      "target_weights": _Spec(dtype=tf.int32),
  }
  MODEL_FEATURES = {
      "input_ids": _Spec(dtype=tf.int32),
      "attention_mask": _Spec(dtype=tf.int32),
      "perm_mask": _Spec(dtype=tf.int32, rank=2),
      "target_mapping": _Spec(dtype=tf.int32, rank=2),
      "target_ids": _Spec(dtype=tf.int32),
      "target_weights": _Spec(dtype=tf.int32),
  }
  PACKING_FEATURE_DTYPES = {}
  # Each feature's length: the task length of its first axis (seqio checks
  # lengths along axis 0).
  _LENGTH_OF = {"inputs": "inputs", "attention_mask": "inputs", "perm_mask": "inputs",
                "target_mapping": "targets", "targets": "targets",
                "target_weights": "targets", "input_ids": "inputs", "target_ids": "targets"}

  def __init__(self, pack: bool = False, **kwargs):
    if pack:
      logger.info("permutation LM: rows are not packed (one protein per row)")
    super().__init__(pack=False, **kwargs)

  def __call__(self, ds: tf.data.Dataset,
               task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
    if set(task_feature_lengths) != {"inputs", "targets"}:
      raise ValueError("permutation-LM feature lengths are \"inputs\" (the sequence) "
                       "and \"targets\" (the predicted tokens), not "
                       f"{dict(task_feature_lengths)}")
    return super().__call__(ds, {name: task_feature_lengths[length]
                                 for name, length in self._LENGTH_OF.items()
                                 if name in self.TASK_FEATURES})

  def _convert_features(self, ds: tf.data.Dataset,
                        task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
    del task_feature_lengths
    renamed = {"inputs": "input_ids", "targets": "target_ids"}
    return ds.map(lambda x: {renamed.get(k, k): x[k] for k in self.TASK_FEATURES},
                  num_parallel_calls=tf.data.AUTOTUNE)

  def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]
                                ) -> Mapping[str, int]:
    lengths = {"inputs": task_feature_lengths["inputs"],
               "targets": task_feature_lengths["targets"]}
    return {name: lengths[self._LENGTH_OF[name]] for name in self.MODEL_FEATURES}
