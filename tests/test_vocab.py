"""Vocabularies reproduce the released tokenizers' ids (facts in ../shared)."""

import json

import numpy as np
import pytest
import tensorflow as tf

from prottrans_jax import vocab as vocab_lib


@pytest.fixture(scope="module")
def released_ids(shared_data):
  with open(shared_data / "hf_configs" / "token_ids.json") as f:
    return json.load(f)


def test_prott5_ids_match_released_tokenizer(released_ids):
  vocab = vocab_lib.ProtT5Vocabulary()
  table = released_ids["prott5"]
  assert vocab.vocab_size == 128
  assert (vocab.pad_id, vocab.eos_id, vocab.unk_id) == (
      table["<pad>"], table["</s>"], table["<unk>"])
  for letter in "ALGVSREDTIPKFQNYMHWCX":
    assert vocab.encode(letter) == [table[letter]], letter
  for k in range(100):
    assert vocab.vocab_size - 1 - k == table[f"<extra_id_{k}>"]
  assert vocab.mask_id == table["<extra_id_0>"]


def test_protbert_ids_match_released_vocab_txt(released_ids):
  vocab = vocab_lib.ProtBertVocabulary()
  table = released_ids["protbert"]
  assert vocab.vocab_size == len(table) == 30
  assert (vocab.pad_id, vocab.unk_id, vocab.cls_id, vocab.eos_id,
          vocab.mask_id) == (table["[PAD]"], table["[UNK]"], table["[CLS]"],
                             table["[SEP]"], table["[MASK]"])
  for letter in "LAGVESIKRDTPNQFYMHCWX":
    assert vocab.encode(letter) == [table[letter]], letter


@pytest.mark.parametrize("vocab", [vocab_lib.ProtT5Vocabulary(),
                                   vocab_lib.ProtBertVocabulary()])
def test_rare_residues_map_to_x_and_spaces_are_ignored(vocab):
  x = vocab.encode("X")
  assert vocab.encode("UZOBJ") == x * 5
  assert vocab.encode("M K T a") == vocab.encode("MKTA")
  assert vocab.encode("M1é") == vocab.encode("M") + [vocab.unk_id] * 2


@pytest.mark.parametrize("vocab", [vocab_lib.ProtT5Vocabulary(),
                                   vocab_lib.ProtBertVocabulary()])
def test_round_trip_in_python_and_tf_data(vocab):
  proteins = ["MKTAYIAKQRQISFVKSHFSRQ", "GSHMLEDPVDAFQ", "W"]
  for protein in proteins:
    ids = vocab.encode(protein)
    assert vocab.decode(ids) == protein
  ds = tf.data.Dataset.from_tensor_slices(proteins)
  encoded = list(ds.map(vocab.encode_tf).as_numpy_iterator())
  assert [list(e) for e in encoded] == [vocab.encode(p) for p in proteins]
  decoded = ds.map(vocab.encode_tf).map(vocab.decode_tf)
  assert [d.decode() for d in decoded.as_numpy_iterator()] == proteins
  # A batch of strings encodes to a ragged batch with the same ids.
  ragged = vocab.encode_tf(tf.constant(proteins))
  assert [list(r) for r in ragged.to_list()] == [vocab.encode(p)
                                                  for p in proteins]


def test_prott5_decode_stops_at_eos_and_drops_padding():
  vocab = vocab_lib.ProtT5Vocabulary()
  ids = vocab.encode("MKT") + [vocab.eos_id, 0, 0]
  assert vocab.decode(ids) == "MKT"
  assert vocab.decode_tf(tf.constant(np.array(ids))).numpy() == b"MKT"
