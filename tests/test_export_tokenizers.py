"""Hugging Face exports carry tokenizer files that the released pipelines
(transformers' tokenizers, sentencepiece, the ProtTrans embedder) load and
that give exactly our ids; `tokenizer_from` copies released files only when
their ids are ours."""
import json
import logging
import re
import shutil
import sys

import h5py
import numpy as np
import pytest
import sentencepiece
import torch
import transformers

from prottrans_jax import families
from prottrans_jax.convert import formats
from prottrans_jax.convert import tokenizer_files
from prottrans_jax.data import fasta
from prottrans_jax.inference import engine
from prottrans_jax.inference import loading
from prottrans_jax.inference import run

from test_bert_models import random_hf_model
from test_convert import tiny_prott5_hf_config


def _released_ids(shared_data, family):
  return json.loads((shared_data / "hf_configs" / "token_ids.json").read_text())[family]


def _proteins(shared_data):
  """Real proteins: the ProtTrans examples and a few globins, and one of them
  with rare residues (none of these files has any) that both sides map to X."""
  sequences = shared_data / "sequences"
  records = (list(fasta.read_fasta(sequences / "prottrans_example_seqs.fasta")) +
             list(fasta.read_fasta(sequences / "globins45.fasta"))[:4])
  rare = records[0].sequence[:10] + "UZOB" + records[0].sequence[14:]
  return records + [fasta.FastaRecord(id="rare", description="rare", sequence=rare, line=0)]


def _as_embedder_input(sequence):
  """What the ProtTrans embedder gives its tokenizer: rare residues as X,
  residues space-separated."""
  return " ".join(re.sub(r"[UZOB]", "X", sequence))


@pytest.fixture(scope="module")
def prott5_export(tmp_path_factory):
  """A tiny random ProtT5 exported encoder-only, as the released `-enc`."""
  torch.manual_seed(0)
  model = transformers.T5ForConditionalGeneration(tiny_prott5_hf_config()).eval()
  root = tmp_path_factory.mktemp("prott5")
  model.save_pretrained(root / "hf")
  formats.convert_checkpoint("hf", "hf", root / "hf", root / "export", encoder_only=True,
                             progress=False)
  return root / "export"


@pytest.fixture(scope="module")
def protbert_export(tmp_path_factory):
  root = tmp_path_factory.mktemp("protbert")
  random_hf_model("bert_mlm").save_pretrained(root / "hf")
  formats.convert_checkpoint("hf", "hf", root / "hf", root / "export", progress=False)
  return root / "export"


def test_prott5_export_tokenizers_give_the_released_ids(prott5_export, shared_data):
  released = _released_ids(shared_data, "prott5")
  files = {p.name for p in prott5_export.iterdir()}
  assert {"spiece.model", "tokenizer.json", "tokenizer_config.json",
          "special_tokens_map.json"} <= files
  tokenize = families.get("t5").tokenize
  proteins = _proteins(shared_data)
  # transformers 5 keeps T5TokenizerFast as a name of its one T5Tokenizer.
  for cls in (transformers.T5Tokenizer, transformers.T5TokenizerFast,
              transformers.AutoTokenizer):
    tokenizer = cls.from_pretrained(prott5_export)
    assert len(tokenizer) == 128
    for token, token_id in released.items():
      if token.startswith("<"):
        assert tokenizer.convert_tokens_to_ids(token) == token_id, (cls, token)
      else:
        assert tokenizer(token, add_special_tokens=False).input_ids == [token_id], (cls, token)
    # Sentinels are special tokens, split out of text (as a masked input has them).
    assert "<extra_id_0>" in tokenizer.all_special_tokens
    assert tokenizer("A <extra_id_0> L").input_ids == [3, 127, 4, 1]
    for record in proteins:
      assert (tokenizer(_as_embedder_input(record.sequence)).input_ids ==
              tokenize(record.sequence)), (cls, record.id)

  # The slow path (transformers 4's T5Tokenizer reads spiece.model with
  # sentencepiece): the model itself, without transformers.
  processor = sentencepiece.SentencePieceProcessor(
      model_file=str(prott5_export / "spiece.model"))
  assert processor.get_piece_size() == 28
  assert (processor.pad_id(), processor.eos_id(), processor.unk_id(), processor.bos_id()) == (
      0, 1, 2, -1)
  for token, token_id in released.items():
    if not token.startswith("<extra_id_"):
      piece = token if token.startswith("<") else tokenizer_files.WORD_START + token
      assert processor.piece_to_id(piece) == token_id, token
      assert processor.id_to_piece(token_id) == piece
  for record in proteins:
    assert (processor.encode(_as_embedder_input(record.sequence)) + [processor.eos_id()] ==
            tokenize(record.sequence)), record.id


def test_prott5_export_embeds_as_the_prottrans_embedder(prott5_export, shared_data,
                                                        tmp_path):
  """T5EncoderModel + T5Tokenizer from the export, used exactly as the
  ProtTrans embedder uses them, equal what prottrans-embed writes for the
  same export (its library call, `run.embed_fasta`, in process)."""
  records = _proteins(shared_data)
  tokenizer = transformers.T5Tokenizer.from_pretrained(prott5_export)
  model = transformers.T5EncoderModel.from_pretrained(prott5_export).float().eval()
  batch = tokenizer([_as_embedder_input(r.sequence) for r in records],
                    add_special_tokens=True, padding="longest", return_tensors="pt")
  with torch.no_grad():
    hidden = model(input_ids=batch["input_ids"],
                   attention_mask=batch["attention_mask"]).last_hidden_state.numpy()
  input_fasta = tmp_path / "in.fasta"
  input_fasta.write_text("".join(f">{r.id}\n{r.sequence}\n" for r in records))
  settings = engine.EmbedSettings()
  run.embed_fasta(str(input_fasta), str(tmp_path / "out.h5"),
                  loading.from_hf(str(prott5_export), settings), settings,
                  progress=False)
  with h5py.File(tmp_path / "out.h5") as ours:
    for row, record in enumerate(records):
      np.testing.assert_allclose(ours[record.id][()],
                                 hidden[row, :len(record.sequence)],
                                 atol=1e-4, rtol=0, err_msg=record.id)


def test_prott5_export_resolves_by_model_id_from_an_offline_cache(
    prott5_export, tmp_path, monkeypatch):
  """The released cache layout, by model id, with the Hub offline."""
  repo = tmp_path / "models--Rostlab--prot_t5_xl_half_uniref50-enc"
  revision = "0" * 40
  shutil.copytree(prott5_export, repo / "snapshots" / revision)
  (repo / "refs").mkdir()
  (repo / "refs" / "main").write_text(revision)
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
  model_id = "Rostlab/prot_t5_xl_half_uniref50-enc"
  tokenizer = transformers.T5Tokenizer.from_pretrained(model_id, cache_dir=tmp_path)
  model = transformers.T5EncoderModel.from_pretrained(model_id, cache_dir=tmp_path)
  assert tokenizer("M K U").input_ids == [19, 14, 26, 1]
  assert model.config.d_model == 32


def test_protbert_export_tokenizers_give_the_released_ids(protbert_export, shared_data):
  released = _released_ids(shared_data, "protbert")
  config = json.loads((protbert_export / "tokenizer_config.json").read_text())
  assert config["do_lower_case"] is False
  assert (protbert_export / "special_tokens_map.json").is_file()
  tokenize = families.get("bert").tokenize
  for cls in (transformers.BertTokenizer, transformers.ElectraTokenizer,
              transformers.AutoTokenizer):
    tokenizer = cls.from_pretrained(protbert_export)
    assert len(tokenizer) == 30
    for token, token_id in released.items():
      if token.startswith("["):
        assert tokenizer.convert_tokens_to_ids(token) == token_id, (cls, token)
      else:
        assert tokenizer(token, add_special_tokens=False).input_ids == [token_id], (cls, token)
    for record in _proteins(shared_data):
      assert (tokenizer(_as_embedder_input(record.sequence)).input_ids ==
              tokenize(record.sequence)), (cls, record.id)


def test_electra_export_names_its_tokenizer_class(tmp_path):
  random_hf_model("electra_generator").save_pretrained(tmp_path / "hf")
  formats.convert_checkpoint("hf", "hf", tmp_path / "hf", tmp_path / "out", progress=False)
  config = json.loads((tmp_path / "out" / "tokenizer_config.json").read_text())
  assert (config["tokenizer_class"], config["do_lower_case"]) == ("ElectraTokenizer", False)
  tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
  assert tokenizer("[CLS] L A O").input_ids == [2, 2, 5, 6, 29, 3]


def test_tokenizer_from_copies_matching_files_and_refuses_others(
    prott5_export, protbert_export, tmp_path):
  # A released tokenizer directory with our ids is copied byte for byte.
  released = tmp_path / "released"
  released.mkdir()
  for name in ("spiece.model", "tokenizer_config.json", "special_tokens_map.json"):
    shutil.copy(prott5_export / name, released / name)
  formats.convert_checkpoint("hf", "hf", prott5_export, tmp_path / "out",
                             tokenizer_from=released, progress=False)
  out = tmp_path / "out"
  assert (out / "spiece.model").read_bytes() == (released / "spiece.model").read_bytes()
  assert not (out / "tokenizer.json").exists()  # Only what the directory holds.
  assert transformers.T5Tokenizer.from_pretrained(out)("A L").input_ids == [3, 4, 1]

  # One swapped pair of residues: refused, naming the first differing token.
  swapped = tmp_path / "swapped"
  swapped.mkdir()
  lines = (protbert_export / "vocab.txt").read_text().splitlines()
  lines[5], lines[6] = lines[6], lines[5]
  (swapped / "vocab.txt").write_text("\n".join(lines) + "\n")
  with pytest.raises(ValueError, match=r"vocab.txt gives id 5 to 'A', our vocabulary to 'L'"):
    formats.convert_checkpoint("hf", "hf", protbert_export, tmp_path / "bad",
                               tokenizer_from=swapped, progress=False)
  assert not (tmp_path / "bad").exists()
  # A BERT vocabulary is no ProtT5 tokenizer; a native output has none.
  with pytest.raises(ValueError, match="is not a t5 tokenizer's"):
    formats.convert_checkpoint("hf", "hf", prott5_export, tmp_path / "bad",
                               tokenizer_from=swapped, progress=False)
  with pytest.raises(ValueError, match="--to hf"):
    formats.convert_checkpoint("hf", "native", prott5_export, tmp_path / "bad",
                               tokenizer_from=released, progress=False)


def test_without_tokenizers_the_slow_files_still_load(monkeypatch, caplog, tmp_path):
  """`tokenizers` is optional for the core: without it tokenizer.json is
  skipped with a warning, and transformers builds it from spiece.model."""
  monkeypatch.setitem(sys.modules, "tokenizers", None)  # `import tokenizers` fails.
  with caplog.at_level(logging.WARNING):
    files = tokenizer_files.prott5_files()
  monkeypatch.undo()
  assert "tokenizer.json" not in files and "tokenizer.json not written" in caplog.text
  for name, content in files.items():
    (tmp_path / name).write_bytes(content if isinstance(content, bytes) else content.encode())
  tokenizer = transformers.T5Tokenizer.from_pretrained(tmp_path)
  assert tokenizer("M K T").input_ids == [19, 14, 11, 1]
  assert tokenizer.convert_tokens_to_ids(["<extra_id_0>", "<extra_id_99>"]) == [127, 28]
