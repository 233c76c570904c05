"""The protein vocabularies as `seqio.Vocabulary` objects, for tf.data.

The ids and the Python encode/decode live in `prottrans_jax.vocab` (no
TensorFlow); this wrapper adds the TensorFlow ops seqio's pipelines call.
"""

import seqio
import tensorflow as tf

from prottrans_jax import vocab as vocab_lib


class SeqioVocabulary(seqio.Vocabulary):
  """A `vocab_lib.CharacterVocabulary` inside seqio tasks and tf.data."""

  def __init__(self, core: vocab_lib.CharacterVocabulary):
    self.core = core
    super().__init__(extra_ids=core.extra_ids)

  @property
  def eos_id(self) -> int | None:
    return self.core.eos_id

  @property
  def unk_id(self) -> int:
    return self.core.unk_id

  @property
  def mask_id(self) -> int:
    return self.core.mask_id

  @property
  def residue_ids(self) -> dict[str, int]:
    return self.core.residue_ids

  @property
  def _base_vocab_size(self) -> int:
    return self.core.base_vocab_size

  def _encode(self, s: str) -> list[int]:
    return self.core.encode(s)

  def _decode(self, ids) -> str:
    return self.core.decode(ids)

  def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
    lookup = tf.constant(self.core.byte_lookup)
    ragged_input = s.shape.rank != 0
    byte_values = tf.strings.unicode_decode(s, "UTF-8", errors="replace",
                                            replacement_char=0xFFFD)
    byte_values = tf.minimum(byte_values, 255)  # Non-ASCII -> a non-residue slot.
    if ragged_input:
      ids = tf.ragged.map_flat_values(tf.gather, lookup, byte_values)
      return tf.ragged.boolean_mask(ids, ids != vocab_lib.IGNORED)
    ids = tf.gather(lookup, byte_values)
    return tf.boolean_mask(ids, ids != vocab_lib.IGNORED)

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    # seqio has already replaced ids outside the base vocabulary by unk.
    pieces = tf.constant([self.core.piece(i)
                          for i in range(self.core.base_vocab_size)])
    return tf.strings.reduce_join(tf.gather(pieces, ids), axis=-1)

  def __eq__(self, other) -> bool:
    return type(self) is type(other) and self.core == other.core

  def __hash__(self) -> int:
    return hash(self.core)


def prott5() -> SeqioVocabulary:
  """ProtT5's ids (sentinels included) for seqio features."""
  return SeqioVocabulary(vocab_lib.ProtT5Vocabulary())


def protbert() -> SeqioVocabulary:
  """ProtBert's `vocab.txt` ids for seqio features."""
  return SeqioVocabulary(vocab_lib.ProtBertVocabulary())


def protxlnet() -> SeqioVocabulary:
  """ProtXLNet's ids (XLNet's special-token order) for seqio features."""
  return SeqioVocabulary(vocab_lib.ProtXLNetVocabulary())
