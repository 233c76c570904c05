"""Tokenizer files written beside a Hugging Face export, with our exact ids.

A released pipeline (the ProtTrans embedder, bio_embeddings, any
`AutoTokenizer.from_pretrained(dir)`) loads the tokenizer from the model's
directory; these files make an export load offline and tokenize with the
ids the model was trained with (`prottrans_jax.vocab`):

- ProtT5: `spiece.model`, a sentencepiece unigram model built piece by
  piece in the released order (`<pad>` 0, `</s>` 1, `<unk>` 2, `▁A` 3, ...),
  `tokenizer.json` (the `tokenizers` library's format, for the fast
  tokenizers; skipped with a warning when `tokenizers` is not installed:
  transformers then converts `spiece.model` itself), `tokenizer_config.json`
  and `special_tokens_map.json` with T5's 100 `<extra_id_k>` at 127 - k.
- ProtBert / ProtElectra: `vocab.txt` in the released order,
  `tokenizer_config.json` (`do_lower_case` false) and
  `special_tokens_map.json`.

`released_files` instead takes the files of a released tokenizer directory,
after checking every id they define equals ours.
"""
import json
import logging
import os
import pathlib
from typing import Optional, Sequence

from prottrans_jax import vocab as vocab_lib

logger = logging.getLogger(__name__)

SPIECE_MODEL = "spiece.model"
VOCAB_TXT = "vocab.txt"
TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
# Everything a Hugging Face tokenizer reads from a model directory.
TOKENIZER_FILE_NAMES = (SPIECE_MODEL, VOCAB_TXT, TOKENIZER_JSON, TOKENIZER_CONFIG,
                        SPECIAL_TOKENS_MAP, "added_tokens.json")

# sentencepiece marks a word start (a space, and the dummy prefix) with it.
WORD_START = "\u2581"

Files = dict[str, "str | bytes"]


def _json(value) -> str:
  return json.dumps(value, indent=2, ensure_ascii=False) + "\n"


def prott5_pieces() -> list[str]:
  """Every ProtT5 token by id: sentencepiece's 28, then `<extra_id_99>` ..
  `<extra_id_0>` (ids 28..127), as T5's tokenizers append them."""
  residues = _PROTT5.pieces[len(_PROTT5.special_tokens):]
  return (list(_PROTT5.special_tokens) + [WORD_START + r for r in residues] +
          [f"<extra_id_{k}>" for k in reversed(range(_PROTT5.NUM_SENTINELS))])


def protbert_pieces() -> list[str]:
  """ProtBert's `vocab.txt` lines by id."""
  return list(vocab_lib.ProtBertVocabulary().pieces)


_PROTT5 = vocab_lib.ProtT5Vocabulary()


def _sentencepiece_count() -> int:
  return _PROTT5.base_vocab_size


def _piece_score(token_id: int) -> float:
  # Each residue is a single piece, so scores never choose between
  # segmentations; decreasing ones keep the released file's convention.
  specials = len(_PROTT5.special_tokens)
  return 0.0 if token_id < specials else -float(token_id - specials + 1)


def spiece_model(pieces: Sequence[str], unk: str,
                 user_defined: Sequence[str] = ()) -> bytes:
  """A unigram sentencepiece model holding exactly `pieces`, in id order, in
  the released ProtTrans style: one `▁X` piece per residue (decreasing
  scores), every other piece special: `unk` the unknown piece, those in
  `user_defined` user-defined (XLNet's `<sep>`, `<cls>`, ...), the rest
  control pieces (`<pad>`, `</s>`, `[CLS]`, ...).

  Built piece by piece: a model trained on a few residues holds bare letters
  and a separate `▁`, so each residue would be two pieces.
  """
  # Through orbax-checkpoint protobuf is always installed; sentencepiece's
  # generated module needs it.
  from sentencepiece import sentencepiece_model_pb2 as spm_pb2
  kind = spm_pb2.ModelProto.SentencePiece
  model = spm_pb2.ModelProto()
  residues = 0
  for piece in pieces:
    if piece.startswith(WORD_START):
      # Each residue is a single piece, so scores never choose between
      # segmentations; decreasing ones keep the released files' convention.
      residues += 1
      model.pieces.add(piece=piece, score=-float(residues), type=kind.NORMAL)
    else:
      model.pieces.add(piece=piece, score=0.0, type=(
          kind.UNKNOWN if piece == unk else
          kind.USER_DEFINED if piece in user_defined else kind.CONTROL))
  trainer = model.trainer_spec
  trainer.model_type = spm_pb2.TrainerSpec.UNIGRAM
  trainer.vocab_size = len(pieces)
  index = lambda piece: list(pieces).index(piece) if piece in pieces else -1
  trainer.unk_id, trainer.unk_piece = index(unk), unk
  for role, piece in (("pad", "<pad>"), ("eos", "</s>"), ("bos", "<s>")):
    setattr(trainer, f"{role}_id", index(piece))
    if piece in pieces:
      setattr(trainer, f"{role}_piece", piece)
  # No character normalisation (the released pipelines upper-case and map
  # rare residues themselves); spaces separate residues.
  normalizer = model.normalizer_spec
  normalizer.name = "identity"
  normalizer.add_dummy_prefix = True
  normalizer.remove_extra_whitespaces = True
  normalizer.escape_whitespaces = True
  return model.SerializeToString()


def prott5_spiece_model() -> bytes:
  """ProtT5's sentencepiece model: unigram, one `▁X` piece per residue."""
  return spiece_model(prott5_pieces()[:_sentencepiece_count()],
                      unk=_PROTT5.pieces[_PROTT5.unk_id])


def _prott5_tokenizer_json() -> Optional[str]:
  """The fast tokenizer of `prott5_spiece_model`, or None without `tokenizers`."""
  try:
    import tokenizers
  except ImportError:
    return None
  from tokenizers import decoders, models, normalizers, pre_tokenizers, processors
  pieces = prott5_pieces()
  unigram = models.Unigram(
      [(piece, _piece_score(i) if i < _sentencepiece_count() else 0.0)
       for i, piece in enumerate(pieces)], unk_id=_PROTT5.unk_id,
      byte_fallback=False)
  tokenizer = tokenizers.Tokenizer(unigram)
  # As sentencepiece's remove_extra_whitespaces + add_dummy_prefix + escape.
  tokenizer.normalizer = normalizers.Sequence([
      normalizers.Strip(), normalizers.Replace(tokenizers.Regex(" {2,}"), " ")])
  tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(
      replacement=WORD_START, prepend_scheme="always")
  tokenizer.decoder = decoders.Metaspace(replacement=WORD_START, prepend_scheme="always")
  eos = (_PROTT5.pieces[_PROTT5.eos_id], _PROTT5.eos_id)
  tokenizer.post_processor = processors.TemplateProcessing(
      single="$A </s>", pair="$A </s> $B </s>", special_tokens=[eos])
  specials = [p for p in pieces if p.startswith("<")]
  tokenizer.add_special_tokens([tokenizers.AddedToken(p, normalized=False) for p in specials])
  return tokenizer.to_str(pretty=True) + "\n"


def prott5_files() -> Files:
  """spiece.model, tokenizer.json (when `tokenizers` is installed),
  tokenizer_config.json and special_tokens_map.json of ProtT5."""
  sentinels = [p for p in prott5_pieces() if p.startswith("<extra_id_")]
  sentinels.reverse()  # <extra_id_0> first, as T5Tokenizer lists them.
  special = {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
             "additional_special_tokens": sentinels}
  files: Files = {
      SPIECE_MODEL: prott5_spiece_model(),
      # `legacy` true is what the released files imply (they predate the
      # flag); it only matters for text right after a special token.
      TOKENIZER_CONFIG: _json({"tokenizer_class": "T5Tokenizer", "do_lower_case": False,
                               "extra_ids": len(sentinels), "legacy": True, **special}),
      SPECIAL_TOKENS_MAP: _json(special)}
  fast = _prott5_tokenizer_json()
  if fast is None:
    logger.warning("the `tokenizers` package is not installed: %s not written "
                   "(transformers builds it from %s when it loads the export)",
                   TOKENIZER_JSON, SPIECE_MODEL)
  else:
    files[TOKENIZER_JSON] = fast
  return files


def protbert_files(tokenizer_class: str) -> Files:
  """vocab.txt, tokenizer_config.json and special_tokens_map.json of ProtBert
  for `tokenizer_class` (BertTokenizer, ElectraTokenizer)."""
  special = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]",
             "cls_token": "[CLS]", "mask_token": "[MASK]"}
  return {
      VOCAB_TXT: "\n".join(protbert_pieces()) + "\n",
      # Residues are upper-case letters: lower-casing would make them unknown.
      TOKENIZER_CONFIG: _json({"tokenizer_class": tokenizer_class, "do_lower_case": False,
                               "strip_accents": None, "tokenize_chinese_chars": True,
                               **special}),
      SPECIAL_TOKENS_MAP: _json(special)}


def _first_difference(source: str, theirs: list[str], ours: list[str]) -> Optional[str]:
  for token_id in range(max(len(theirs), len(ours))):
    their = theirs[token_id] if token_id < len(theirs) else None
    our = ours[token_id] if token_id < len(ours) else None
    if their != our:
      return (f"{source} gives id {token_id} to {their!r}, our vocabulary to {our!r}"
              if their is not None and our is not None else
              f"{source} has {len(theirs)} tokens, our vocabulary {len(ours)} "
              f"(first unmatched: id {token_id}, {their or our!r})")
  return None


def _tokenizer_json_pieces(path: pathlib.Path) -> list[str]:
  """A tokenizer.json's tokens by id: its model's vocabulary and its added tokens."""
  data = json.loads(path.read_text(encoding="utf-8"))
  vocab = data["model"]["vocab"]
  by_id = ({i: entry[0] for i, entry in enumerate(vocab)} if isinstance(vocab, list)
           else {i: piece for piece, i in vocab.items()})
  by_id.update({t["id"]: t["content"] for t in data.get("added_tokens", [])})
  return [by_id.get(i) for i in range(max(by_id) + 1)] if by_id else []


def _spiece_pieces(path: pathlib.Path, extra_ids: int) -> list[str]:
  import sentencepiece
  processor = sentencepiece.SentencePieceProcessor(model_file=str(path))
  pieces = [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
  return pieces + [f"<extra_id_{k}>" for k in reversed(range(extra_ids))]


def released_files(directory: os.PathLike, model_type: str) -> Files:
  """The tokenizer files of `directory` (a released model or tokenizer),
  after checking that every file defining ids gives each token our id.

  Raises ValueError naming the file and the first differing token, or when
  the directory holds no file defining ids.
  """
  directory = pathlib.Path(directory)
  if not directory.is_dir():
    raise FileNotFoundError(f"--tokenizer_from: no directory {directory}")
  if model_type == "t5":
    ours = prott5_pieces()
  elif model_type in ("bert", "electra"):
    ours = protbert_pieces()
  else:
    raise ValueError(f"--tokenizer_from: no vocabulary of ours to check a {model_type!r} "
                     "tokenizer against (ProtT5, ProtBert and ProtElectra only)")
  found = {name: directory / name for name in TOKENIZER_FILE_NAMES
           if (directory / name).is_file()}
  config = (json.loads(found[TOKENIZER_CONFIG].read_text(encoding="utf-8"))
            if TOKENIZER_CONFIG in found else {})
  readers = {
      SPIECE_MODEL: lambda p: _spiece_pieces(p, int(config.get("extra_ids", 100))),
      VOCAB_TXT: lambda p: p.read_text(encoding="utf-8").splitlines(),
      TOKENIZER_JSON: _tokenizer_json_pieces}
  id_files = [name for name in readers if name in found]
  if model_type == "t5" and VOCAB_TXT in id_files or model_type != "t5" and SPIECE_MODEL in id_files:
    raise ValueError(f"--tokenizer_from {directory}: its "
                     f"{VOCAB_TXT if model_type == 't5' else SPIECE_MODEL} is not a "
                     f"{model_type} tokenizer's")
  if not id_files:
    raise ValueError(f"--tokenizer_from {directory}: none of {sorted(readers)} there")
  for name in id_files:
    difference = _first_difference(f"--tokenizer_from {found[name]}", readers[name](found[name]),
                                   ours)
    if difference:
      raise ValueError(difference)
  logger.info("tokenizer files copied from %s: %s", directory, ", ".join(found))
  return {name: path.read_bytes() for name, path in found.items()}
