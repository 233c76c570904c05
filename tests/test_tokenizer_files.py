"""Tokenizer files in a model directory (spiece.model, vocab.txt,
tokenizer.json) give the ids `transformers`' tokenizers give on the same
files, framed as the released pipelines frame them, one id per residue; the
embedding path uses them."""

import json
import string

import h5py
import numpy as np
import pytest
import torch
import transformers

from prottrans_jax import families
from prottrans_jax import vocab as vocab_lib
from prottrans_jax.convert import tokenizer_files
from prottrans_jax.inference import engine
from prottrans_jax.inference import file_tokenizer
from prottrans_jax.inference import h5_writer
from prottrans_jax.inference import loading
from prottrans_jax.inference import run

from test_bert_models import random_hf_model

W = tokenizer_files.WORD_START
LETTERS = string.ascii_uppercase
# An order of ours nowhere else: ids that only the file can give.
_RESIDUES = "WYVTSRQPNMLKIHGFEDCAXOZBU"
ALBERT_SPECIALS = ["<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"]
XLNET_SPECIALS = ["<unk>", "<s>", "</s>", "<cls>", "<sep>", "<pad>", "<mask>", "<eod>", "<eop>"]
PROTEINS = ["MKTAYIAKQRQISFVKSHFSRQ", "MVLSPADKTNVKAAWGKVGAUHZAGEYGAEALERMFLSFPTTKTYFPHF",
            "OBXJMKU", "A"]


def _write_spiece(directory, specials, residues=_RESIDUES, user_defined=()):
  directory.mkdir(parents=True, exist_ok=True)
  (directory / tokenizer_files.SPIECE_MODEL).write_bytes(tokenizer_files.spiece_model(
      specials + [W + r for r in residues], unk="<unk>", user_defined=user_defined))
  return directory


def _albert_dir(tmp_path):
  return _write_spiece(tmp_path / "albert", ALBERT_SPECIALS)


def _released_text(sequence, to_x="", to_unk="", unk=None):
  """The released notebooks' input: rare residues replaced, space-separated."""
  return " ".join("X" if r in to_x else unk if r in to_unk else r for r in sequence)


def test_albert_spiece_ids_equal_albert_tokenizer(tmp_path):
  directory = _albert_dir(tmp_path)
  ours = file_tokenizer.from_directory(directory, "albert")
  theirs = transformers.AlbertTokenizer.from_pretrained(directory, do_lower_case=False)
  for sequence in [*LETTERS, *PROTEINS]:
    text = _released_text(sequence, to_x=vocab_lib.RARE_RESIDUES)
    assert ours(sequence) == theirs(text).input_ids, sequence
  for token in theirs.all_special_tokens:
    assert ours.token_id(token) == theirs.convert_tokens_to_ids(token), token
  # The file's order, not ProtBert's table: the same letters, other ids.
  assert ours("MKT") != families.get("albert").tokenize("MKT")
  assert ours("MKT") == [2, 5 + _RESIDUES.index("M"), 5 + _RESIDUES.index("K"),
                         5 + _RESIDUES.index("T"), 3]


def test_xlnet_spiece_ids_equal_xlnet_tokenizer(tmp_path, caplog):
  # Without J: J becomes <unk> on its own (logged), as XLNetTokenizer gives it.
  directory = _write_spiece(tmp_path / "xlnet", XLNET_SPECIALS,
                            user_defined=XLNET_SPECIALS[3:])
  ours = file_tokenizer.from_directory(directory, "xlnet")
  assert "'J'" in caplog.text and "unknown id 0" in caplog.text
  theirs = transformers.XLNetTokenizer.from_pretrained(directory)
  assert (ours.first_residue_row, ours.num_special_tokens) == (0, 2)
  for sequence in [*LETTERS, *PROTEINS, "JJ", "UUJXJ"]:
    text = _released_text(sequence, to_unk="UZOBX", unk="<unk>")
    ids = ours(sequence)
    assert ids == theirs(text).input_ids, sequence
    assert len(ids) == len(sequence) + 2
    assert ids[-2:] == [theirs.sep_token_id, theirs.cls_token_id]
  for token in theirs.all_special_tokens:
    assert ours.token_id(token) == theirs.convert_tokens_to_ids(token), token


def test_tokenizer_json_and_vocab_txt_equal_transformers_and_our_tables(tmp_path):
  # tokenizer.json alone: ALBERT's, as transformers saves it.
  saved = tmp_path / "albert_json"
  transformers.AlbertTokenizer.from_pretrained(
      _albert_dir(tmp_path), do_lower_case=False).save_pretrained(saved)
  (saved / tokenizer_files.SPIECE_MODEL).unlink(missing_ok=True)
  ours = file_tokenizer.from_directory(saved, "albert")
  assert ours.path.name == tokenizer_files.TOKENIZER_JSON
  theirs = transformers.AutoTokenizer.from_pretrained(saved)
  # ProtBert's vocab.txt and ProtT5's tokenizer.json, as our exports write them.
  bert_dir, t5_dir = tmp_path / "bert", tmp_path / "t5"
  for directory, files in ((bert_dir, tokenizer_files.protbert_files("BertTokenizer")),
                           (t5_dir, tokenizer_files.prott5_files())):
    directory.mkdir()
    for name, content in files.items():
      if name != tokenizer_files.SPIECE_MODEL:
        (directory / name).write_bytes(content if isinstance(content, bytes) else content.encode())
  bert = file_tokenizer.from_directory(bert_dir, "bert")
  t5 = file_tokenizer.from_directory(t5_dir, "t5")
  assert (bert.path.name, t5.path.name) == (tokenizer_files.VOCAB_TXT,
                                            tokenizer_files.TOKENIZER_JSON)
  bert_theirs = transformers.BertTokenizer.from_pretrained(bert_dir, do_lower_case=False)
  t5_theirs = transformers.AutoTokenizer.from_pretrained(t5_dir)
  for sequence in [*LETTERS, *PROTEINS]:
    text = _released_text(sequence, to_x=vocab_lib.RARE_RESIDUES)
    assert ours(sequence) == theirs(text).input_ids, sequence
    assert bert(sequence) == bert_theirs(text).input_ids == families.get("bert").tokenize(
        sequence), sequence
    assert t5(sequence) == t5_theirs(text).input_ids == families.get("t5").tokenize(
        sequence), sequence


def test_a_file_that_cannot_give_one_id_per_residue_is_a_clear_error(tmp_path):
  without_w = _write_spiece(tmp_path / "no_w", ALBERT_SPECIALS, _RESIDUES.replace("W", ""))
  with pytest.raises(ValueError, match=r"no_w/spiece.model has no piece for residue 'W'"):
    file_tokenizer.from_directory(without_w, "albert")
  # ProtBert's framing maps U to X: a file without X fails naming both.
  without_x = _write_spiece(tmp_path / "no_x", ALBERT_SPECIALS, _RESIDUES.replace("X", ""))
  with pytest.raises(ValueError, match=r"no piece for residue 'X' \(which 'B' maps to\)"):
    file_tokenizer.from_directory(without_x, "albert")
  # Trained on a few space-separated residues, sentencepiece keeps bare
  # letters and a separate `▁`: each residue would be two ids.
  import sentencepiece
  trained = tmp_path / "trained"
  trained.mkdir()
  sentencepiece.SentencePieceTrainer.train(
      sentence_iterator=iter([" ".join(p) for p in PROTEINS * 20 + [_RESIDUES] * 5]),
      model_prefix=str(trained / "spiece"), vocab_size=32, model_type="unigram",
      control_symbols=["[CLS]", "[SEP]"], minloglevel=2)
  with pytest.raises(ValueError, match=r"trained/spiece.model: residue '\w' tokenizes to 2 ids"):
    file_tokenizer.from_directory(trained, "albert")
  # A framing token the file lacks is named too.
  with pytest.raises(ValueError, match=r"has no token '<sep>', the sep_token"):
    file_tokenizer.from_directory(_albert_dir(tmp_path), "xlnet")


def test_embedding_with_the_directorys_spiece_model_equals_transformers(tmp_path):
  model = random_hf_model("albert_mlm", seed=7)
  directory = tmp_path / "hf"
  model.save_pretrained(directory)
  _write_spiece(directory, ALBERT_SPECIALS)
  # One length: one batch, one compilation; rare residues included.
  records = {"p0": "MKTAYIAKQRQISFVKSHFSRQ", "p1": "MVLSPADKTNVKAAWGUHZOBX"}
  (tmp_path / "in.fasta").write_text("".join(f">{i}\n{s}\n" for i, s in records.items()))
  loaded = loading.from_hf(str(directory), engine.EmbedSettings(max_tokens=256))
  assert loaded.tokenizer.path == directory / tokenizer_files.SPIECE_MODEL
  run.embed_fasta(str(tmp_path / "in.fasta"), str(tmp_path / "out.h5"), loaded,
                  engine.EmbedSettings(max_tokens=256), progress=False)
  hf_tokenizer = transformers.AlbertTokenizer.from_pretrained(directory, do_lower_case=False)
  with h5py.File(tmp_path / "out.h5") as f:
    settings = json.loads(f.attrs[h5_writer.SETTINGS_ATTRIBUTE])
    assert settings["tokenizer"] == loaded.tokenizer.fingerprint
    for record_id, sequence in records.items():
      ids = hf_tokenizer(_released_text(sequence, to_x=vocab_lib.RARE_RESIDUES),
                         return_tensors="pt").input_ids
      with torch.no_grad():
        expected = model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0, 1:-1]
      ours = f[record_id][()]
      assert ours.shape == (len(sequence), 32)
      np.testing.assert_allclose(ours, expected.numpy(), atol=1e-5, rtol=0)
