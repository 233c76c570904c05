"""Tokenizing with the tokenizer file a model directory holds.

ProtAlbert and ProtXLNet were released with their own sentencepiece models
(`spiece.model`) whose ids nobody here could read offline, so no table of
ours can stand in for them. When a Hugging Face model directory holds a
tokenizer file, the embedding engine tokenizes with it, as the released
pipelines (the ProtTrans notebooks, bio_embeddings) do:

- the residues, separated by spaces, go through the file: `spiece.model`
  through `sentencepiece`, `vocab.txt` (BERT's WordPiece, no lower-casing)
  or `tokenizer.json` through `tokenizers`; the first of these the
  directory holds is used, in that order (the released pipelines use the
  slow tokenizer classes, which read the first two);
- the family's special tokens frame them (`FRAMINGS`): `[CLS] ... [SEP]`
  for ProtBert, ProtAlbert and ProtElectra, `... </s>` for ProtT5,
  `... <sep> <cls>` for ProtXLNet; the token texts are the directory's
  (`special_tokens_map.json`, `tokenizer_config.json`) or the
  `transformers` tokenizer class's defaults;
- rare residues as the family's pipeline handles them: U, Z, O, B (and J)
  become X for ProtT5 and the BERT family (`vocab.RARE_RESIDUES`), while
  ProtXLNet's pipeline gives U, Z, O, B and X as `<unk>`.

One id per residue, always (the engine reads residue i from output row
`first_residue_row + i`). Every letter is checked once, when the file is
read: a standard residue (and X where the family maps to it) that the file
has no piece for, or any letter the file splits into several ids, is a
ValueError naming the file and the letter. A letter the file only knows as
unknown (J in a file without it) becomes the unknown id on its own: logged
once per file, and given to the tokenizer as the unknown token, as the XLNet
pipeline gives its `<unk>` (sentencepiece itself would merge neighbouring
unknown letters into one id). Each protein is still encoded by the file, and
a count of ids other than its residues' is a ValueError naming the residue.

Without such a file the family's own table (`ModelFamily.tokenize`) is used.
"""

import dataclasses
import hashlib
import json
import logging
import pathlib
import re
import string
from typing import Mapping, Optional

from prottrans_jax import vocab as vocab_lib
from prottrans_jax.convert import tokenizer_files

logger = logging.getLogger(__name__)

# The files tried, in order.
FILE_NAMES = (tokenizer_files.SPIECE_MODEL, tokenizer_files.VOCAB_TXT,
              tokenizer_files.TOKENIZER_JSON)

_CLS, _SEP, _EOS, _UNK = "cls_token", "sep_token", "eos_token", "unk_token"


@dataclasses.dataclass(frozen=True)
class Framing:
  """How a family's released pipeline hands a protein to its tokenizer.

  Attributes:
    before, after: special-token roles (`cls_token`, ...) around the residues.
    defaults: role -> token text where the directory names none (those of
      the `transformers` tokenizer class the family's release loads with).
    to_x: letters replaced by X before tokenizing.
    to_unk: letters given as the unknown token.
    required: letters the file must hold as one piece each.
  """
  before: tuple[str, ...]
  after: tuple[str, ...]
  defaults: Mapping[str, str]
  to_x: str
  to_unk: str
  required: str

  @property
  def first_residue_row(self) -> int:
    return len(self.before)

  @property
  def num_special_tokens(self) -> int:
    return len(self.before) + len(self.after)


def _named(vocabulary: vocab_lib.CharacterVocabulary, **ids: int) -> dict[str, str]:
  return {role: vocabulary.pieces[token_id] for role, token_id in ids.items()}


_PROTT5 = vocab_lib.ProtT5Vocabulary()
_PROTBERT = vocab_lib.ProtBertVocabulary()
_PROTXLNET = vocab_lib.ProtXLNetVocabulary()
_WITH_X = vocab_lib.STANDARD_RESIDUES + "X"
_BERT_STYLE = dict(before=(_CLS,), after=(_SEP,), to_x=vocab_lib.RARE_RESIDUES,
                   to_unk="", required=_WITH_X)
_PROTBERT_FRAMING = Framing(defaults=_named(
    _PROTBERT, cls_token=_PROTBERT.cls_id, sep_token=_PROTBERT.SEP_ID,
    unk_token=_PROTBERT.unk_id), **_BERT_STYLE)

# Family name (`ModelFamily.name`) -> its released pipeline's framing.
FRAMINGS: dict[str, Framing] = {
    "t5": Framing(before=(), after=(_EOS,), defaults=_named(
        _PROTT5, eos_token=_PROTT5.eos_id, unk_token=_PROTT5.unk_id),
                  to_x=vocab_lib.RARE_RESIDUES, to_unk="", required=_WITH_X),
    "bert": _PROTBERT_FRAMING,
    "electra": _PROTBERT_FRAMING,
    "electra_pretraining": _PROTBERT_FRAMING,
    # AlbertTokenizer's defaults: Rostlab/prot_albert ships only spiece.model.
    "albert": Framing(defaults={_CLS: "[CLS]", _SEP: "[SEP]", _UNK: "<unk>"},
                      **_BERT_STYLE),
    # XLNetTokenizer's defaults and the ProtXLNet notebook's re.sub("[UZOB]",
    # "<unk>"); bio_embeddings also gives X as <unk>.
    "xlnet": Framing(before=(), after=(_SEP, _CLS),
                     defaults=_named(_PROTXLNET, sep_token=_PROTXLNET.SEP_ID,
                                     cls_token=_PROTXLNET.CLS_ID,
                                     unk_token=_PROTXLNET.UNK_ID),
                     to_x="", to_unk="UZOBX", required=vocab_lib.STANDARD_RESIDUES),
}


class _SentencePiece:

  def __init__(self, path: pathlib.Path, unk: str):
    del unk  # The model's own unknown piece.
    import sentencepiece
    self._processor = sentencepiece.SentencePieceProcessor(model_file=str(path))

  def encode(self, text: str) -> list[int]:
    return self._processor.encode(text)

  def token_id(self, token: str) -> Optional[int]:
    token_id = self._processor.piece_to_id(token)  # Unknown pieces: unk's id.
    return token_id if self._processor.id_to_piece(token_id) == token else None

  def piece(self, token_id: int) -> str:
    return self._processor.id_to_piece(token_id)


class _Tokenizers:
  """A `tokenizers` tokenizer: tokenizer.json as it is, or BERT's WordPiece
  over vocab.txt as BertTokenizer runs it (no lower-casing)."""

  def __init__(self, path: pathlib.Path, unk: str):
    import tokenizers
    from tokenizers import models, normalizers, pre_tokenizers
    if path.name == tokenizer_files.VOCAB_TXT:
      self._tokenizer = tokenizers.Tokenizer(models.WordPiece.from_file(
          str(path), unk_token=unk))
      self._tokenizer.normalizer = normalizers.BertNormalizer(
          clean_text=True, handle_chinese_chars=True, strip_accents=False,
          lowercase=False)
      self._tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    else:
      self._tokenizer = tokenizers.Tokenizer.from_file(str(path))

  def encode(self, text: str) -> list[int]:
    return self._tokenizer.encode(text, add_special_tokens=False).ids

  def token_id(self, token: str) -> Optional[int]:
    return self._tokenizer.token_to_id(token)

  def piece(self, token_id: int) -> str:
    return self._tokenizer.id_to_token(token_id)


def _special_token_names(directory: pathlib.Path) -> dict[str, str]:
  """Role -> token text from the directory's special_tokens_map.json and
  tokenizer_config.json (the former wins, as in `transformers`)."""
  names = {}
  for name in (tokenizer_files.TOKENIZER_CONFIG, tokenizer_files.SPECIAL_TOKENS_MAP):
    path = directory / name
    if not path.is_file():
      continue
    try:
      data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
      raise ValueError(f"{path} is not JSON: {error}") from error
    for role in (_CLS, _SEP, _EOS, _UNK):
      value = data.get(role)
      # A token is its text or an AddedToken's dict.
      value = value.get("content") if isinstance(value, dict) else value
      if isinstance(value, str):
        names[role] = value
  return names


class FileTokenizer:
  """A protein -> the ids the released pipeline feeds, read from one file.

  Attributes:
    path: the file (`spiece.model`, `vocab.txt` or `tokenizer.json`).
    family: the family name whose framing it applies.
    first_residue_row, num_special_tokens: as `ModelFamily`'s.
    max_id: the largest id it can give (checked against the model's
      vocabulary size by the engine).
    fingerprint: the file's name and a digest of its content, which an
      output records.
  """

  def __init__(self, path: pathlib.Path, family: str, framing: Framing,
               names: Mapping[str, str]):
    self.path, self.family, self._framing = path, family, framing
    self.first_residue_row = framing.first_residue_row
    self.num_special_tokens = framing.num_special_tokens
    self.fingerprint = (f"{path.name} blake2b:"
                        f"{hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()}")
    names = {**framing.defaults, **names}
    backend = _SentencePiece if path.name == tokenizer_files.SPIECE_MODEL else _Tokenizers
    try:
      self._backend = backend(path, names[_UNK])
    except Exception as error:  # Each library raises its own types.
      raise ValueError(f"{path}: not a readable {path.name}: {error}") from error
    special = {}
    for role in (*framing.before, *framing.after, _UNK):
      special[role] = self._backend.token_id(names[role])
      if special[role] is None:
        raise ValueError(f"{path} has no token {names[role]!r}, the {role} "
                         f"the {family} framing needs")
    self._before = [special[role] for role in framing.before]
    self._after = [special[role] for role in framing.after]
    self._unk = special[_UNK]
    # Letter -> the text the tokenizer gets for it, or -> the unknown id
    # (given directly); checked one letter at a time.
    self._text: dict[str, str] = {}
    self._direct: dict[str, int] = {}
    self._direct_pattern: Optional[re.Pattern] = None
    self._classify(string.ascii_uppercase)
    self.max_id = max([*special.values(), *(
        self._backend.encode(text)[0] for text in set(self._text.values()))])

  def token_id(self, token: str) -> Optional[int]:
    """The file's id of `token` (a special token's text, a piece), or None."""
    return self._backend.token_id(token)

  def _classify(self, letters: str) -> None:
    unknown = []
    for letter in letters:
      if letter in self._framing.to_unk:
        self._direct[letter] = self._unk
        continue
      text = "X" if letter in self._framing.to_x else letter
      ids = self._backend.encode(text)
      if len(ids) != 1:
        raise ValueError(
            f"{self.path}: residue {letter!r}" + (f" (given as {text!r})" if text != letter else "")
            + f" tokenizes to {len(ids)} ids {[self._backend.piece(i) for i in ids]}: "
            "every residue must be exactly one id (one output row per residue)")
      if ids[0] != self._unk:
        self._text[letter] = text
      elif text in self._framing.required:
        raise ValueError(f"{self.path} has no piece for residue {text!r}"
                         + (f" (which {letter!r} maps to)" if text != letter else ""))
      else:
        self._direct[letter] = self._unk
        unknown.append(letter)
    if unknown:
      logger.warning("%s has no piece for %s: each becomes the unknown id %d",
                     self.path, ", ".join(map(repr, unknown)), self._unk)
    self._direct_pattern = re.compile(
        "([" + re.escape("".join(self._direct)) + "])") if self._direct else None

  def _encode_run(self, letters: str) -> list[int]:
    """Residues that all have a piece, space-separated through the file."""
    ids = self._backend.encode(" ".join(self._text[letter] for letter in letters))
    if len(ids) != len(letters):
      alone = [self._backend.encode(self._text[letter])[0] for letter in letters]
      at = next((i for i, (a, b) in enumerate(zip(ids, alone)) if a != b),
                min(len(ids), len(letters)) - 1)
      raise ValueError(
          f"{self.path}: {len(letters)} residues tokenize to {len(ids)} ids, "
          f"first differing at residue {at + 1} {letters[at]!r} of {letters[:50]!r}: "
          "its pieces do not give one id per residue")
    return ids

  def __call__(self, sequence: str) -> list[int]:
    sequence = "".join(sequence.split()).upper()
    new = set(sequence) - self._text.keys() - self._direct.keys()
    if new:
      self._classify("".join(sorted(new)))
    runs = (self._direct_pattern.split(sequence) if self._direct_pattern
            else [sequence])
    ids = list(self._before)
    # split() with a group alternates runs of letters with a piece and
    # single letters given directly.
    for index, run in enumerate(runs):
      if index % 2:
        ids.append(self._direct[run])
      elif run:
        ids.extend(self._encode_run(run))
    return ids + self._after

  def __repr__(self) -> str:
    return f"FileTokenizer({str(self.path)!r}, {self.family!r})"


def from_directory(directory: "str | pathlib.Path", family: str
                   ) -> Optional[FileTokenizer]:
  """The tokenizer of the first of `FILE_NAMES` in local `directory`, with
  `family`'s framing; None when it holds none of them.

  Raises ValueError naming the file when it cannot tokenize one id per
  residue (see the module docstring), lacks a special token the framing
  needs, or the family has no known released framing.
  """
  directory = pathlib.Path(directory)
  path = next((directory / name for name in FILE_NAMES
               if (directory / name).is_file()), None)
  if path is None:
    return None
  if family not in FRAMINGS:
    raise ValueError(f"{path}: no released tokenizer framing is known for model "
                     f"family {family!r} (known: {sorted(FRAMINGS)}); remove the file "
                     "to use the family's own vocabulary")
  tokenizer = FileTokenizer(path, family, FRAMINGS[family], _special_token_names(directory))
  others = [name for name in FILE_NAMES if name != path.name and (directory / name).is_file()]
  logger.info("tokenizing with %s (%s framing)%s", path, family,
              f"; not with {', '.join(others)}" if others else "")
  return tokenizer
