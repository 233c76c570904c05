"""Vocabularies reproduce the released tokenizers' ids (facts in ../shared),
as the TensorFlow-free core tables and as the seqio wrappers of training."""

import json

import numpy as np
import pytest
import tensorflow as tf

from prottrans_jax import vocab as vocab_lib
from prottrans_jax.data import vocabularies

PROTT5 = [vocab_lib.ProtT5Vocabulary(), vocabularies.prott5()]
PROTBERT = [vocab_lib.ProtBertVocabulary(), vocabularies.protbert()]
BOTH_KINDS = ["core", "seqio"]


@pytest.fixture(scope="module")
def released_ids(shared_data):
  with open(shared_data / "hf_configs" / "token_ids.json") as f:
    return json.load(f)


@pytest.mark.parametrize("vocab", PROTT5, ids=BOTH_KINDS)
def test_prott5_ids_match_released_tokenizer(vocab, released_ids):
  table = released_ids["prott5"]
  assert vocab.vocab_size == 128
  assert (vocab.pad_id, vocab.eos_id, vocab.unk_id) == (
      table["<pad>"], table["</s>"], table["<unk>"])
  for letter in "ALGVSREDTIPKFQNYMHWCX":
    assert vocab.encode(letter) == [table[letter]], letter
  for k in range(100):
    assert vocab.vocab_size - 1 - k == table[f"<extra_id_{k}>"]
  assert vocab.mask_id == table["<extra_id_0>"]


@pytest.mark.parametrize("vocab", PROTBERT, ids=BOTH_KINDS)
def test_protbert_ids_match_released_vocab_txt(vocab, released_ids):
  table = released_ids["protbert"]
  cls_id = vocab_lib.ProtBertVocabulary.CLS_ID
  assert vocab.vocab_size == len(table) == 30
  assert (vocab.pad_id, vocab.unk_id, cls_id, vocab.eos_id,
          vocab.mask_id) == (table["[PAD]"], table["[UNK]"], table["[CLS]"],
                             table["[SEP]"], table["[MASK]"])
  for letter in "LAGVESIKRDTPNQFYMHCWX":
    assert vocab.encode(letter) == [table[letter]], letter


@pytest.mark.parametrize("vocab", PROTT5 + PROTBERT,
                         ids=["prott5-core", "prott5-seqio",
                              "protbert-core", "protbert-seqio"])
def test_rare_residues_map_to_x_and_spaces_are_ignored(vocab):
  x = vocab.encode("X")
  assert vocab.encode("UZOBJ") == x * 5
  assert vocab.encode("M K T a") == vocab.encode("MKTA")
  assert vocab.encode("M1é") == vocab.encode("M") + [vocab.unk_id] * 2


@pytest.mark.parametrize("core", [PROTT5[0], PROTBERT[0]],
                         ids=["prott5", "protbert"])
def test_core_and_seqio_agree_in_python_and_tf_data(core):
  vocab = vocabularies.SeqioVocabulary(core)
  proteins = ["MKTAYIAKQRQISFVKSHFSRQ", "GSHMLEDPVDAFQ", "W"]
  for protein in proteins:
    ids = core.encode(protein)
    assert vocab.encode(protein) == ids
    assert core.decode(ids) == vocab.decode(ids) == protein
  ds = tf.data.Dataset.from_tensor_slices(proteins)
  encoded = list(ds.map(vocab.encode_tf).as_numpy_iterator())
  assert [list(e) for e in encoded] == [core.encode(p) for p in proteins]
  decoded = ds.map(vocab.encode_tf).map(vocab.decode_tf)
  assert [d.decode() for d in decoded.as_numpy_iterator()] == proteins
  # A batch of strings encodes to a ragged batch with the same ids.
  ragged = vocab.encode_tf(tf.constant(proteins))
  assert [list(r) for r in ragged.to_list()] == [core.encode(p)
                                                  for p in proteins]


@pytest.mark.parametrize("vocab", PROTT5, ids=BOTH_KINDS)
def test_prott5_decode_stops_at_eos_and_drops_padding(vocab):
  ids = vocab.encode("MKT") + [vocab.eos_id, 0, 0]
  assert vocab.decode(ids) == "MKT"
  # Ids past the base vocabulary (sentinels) decode as unknown, as in seqio.
  assert vocab.decode(vocab.encode("M") + [vocab.mask_id]) == "M<unk>"
  if isinstance(vocab, vocabularies.SeqioVocabulary):
    assert vocab.decode_tf(tf.constant(np.array(ids))).numpy() == b"MKT"

