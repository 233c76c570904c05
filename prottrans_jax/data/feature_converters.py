"""Feature converters that seqio does not ship.

`seqio.EncoderFeatureConverter` puts loss weights only where the input is the
mask token, which drops BERT's 10% random and 10% unchanged selections from
the loss. `MaskedLmFeatureConverter` keeps the preprocessor's own
`loss_weights` (1 on every selected residue), packed and padded alongside the
tokens.
"""

from typing import Mapping

import seqio
import tensorflow as tf

_Spec = seqio.FeatureConverter.FeatureSpec


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
