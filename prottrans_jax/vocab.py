"""Protein vocabularies with the exact ids of the released ProtTrans tokenizers.

Plain Python and NumPy: the embedding, conversion and downstream code use
them without TensorFlow. `prottrans_jax.data.vocabularies` wraps them as
`seqio.Vocabulary` objects for the tf.data pipelines of training.

A protein is one token per residue: there is no subword merging, so a fixed
character table reproduces the released tokenizers (ProtT5's sentencepiece
model, ProtBert's `vocab.txt`) without loading them.

Input may be written as the released pipelines expect ("M K T ...") or plain
("MKT..."): whitespace is ignored. Letters are upper-cased. The rare residues
U (selenocysteine), Z, O (pyrrolysine), B and the ambiguous J map to X before
lookup, as the released models were trained; anything else that is not a
vocabulary letter becomes the unknown token.
"""

from typing import Iterable, Sequence

import numpy as np

STANDARD_RESIDUES = "ACDEFGHIKLMNPQRSTVWY"
# Residues the released models saw as themselves; all other letters map to X.
RARE_RESIDUES = "UZOBJ"

# ProtT5 (sentencepiece) order, ids 3..27 (from the released tokenizer).
_PROTT5_RESIDUES = "ALGVSREDTIPKFQNYMHWCXBOUZ"
# ProtBert / ProtBert-BFD `vocab.txt` order, ids 5..29.
_PROTBERT_RESIDUES = "LAGVESIKRDTPNQFYMHCWXUBZO"

# Lookup value of whitespace: dropped, not tokenized.
IGNORED = -1
# Every vocabulary here pads with 0, as seqio requires, except ProtXLNet's
# (XLNet's special-token order puts `<unk>` at 0 and `<pad>` at 5).
PAD_ID = 0


def _build_lookup(residue_ids: dict[str, int], unk_id: int,
                  unknown_residues: str = "") -> np.ndarray:
  """A byte -> token id table (whitespace -> IGNORED, non-residues and
  `unknown_residues` -> unk)."""
  table = np.full(256, unk_id, dtype=np.int32)
  for letter, token_id in residue_ids.items():
    table[ord(letter)] = token_id
    table[ord(letter.lower())] = token_id
  for letter in RARE_RESIDUES:
    table[ord(letter)] = residue_ids["X"]
    table[ord(letter.lower())] = residue_ids["X"]
  for letter in unknown_residues:
    table[ord(letter)] = unk_id
    table[ord(letter.lower())] = unk_id
  for space in " \t\r\n":
    table[ord(space)] = IGNORED
  return table


class CharacterVocabulary:
  """One token per residue character, with fixed special ids below them and
  `extra_ids` sentinels above.

  `encode` and `decode` follow `seqio.Vocabulary`'s contract (no EOS added;
  decoding maps ids past the base vocabulary to unk and stops at the first
  EOS), so the seqio wrapper only adds the TensorFlow ops.
  """

  def __init__(self, residue_offset: int, residues: str,
               special_tokens: Sequence[str], unk_id: int, eos_id: int | None,
               extra_ids: int = 0, unknown_residues: str = ""):
    self._special_tokens = tuple(special_tokens)
    self._residue_ids = {r: residue_offset + i for i, r in enumerate(residues)}
    self._unk_id = unk_id
    self._eos_id = eos_id
    self._extra_ids = extra_ids
    self._lookup = _build_lookup(self._residue_ids, unk_id, unknown_residues)
    self._id_to_piece = list(self._special_tokens) + list(residues)

  @property
  def pad_id(self) -> int:
    return PAD_ID

  @property
  def eos_id(self) -> int | None:
    return self._eos_id

  @property
  def unk_id(self) -> int:
    return self._unk_id

  @property
  def extra_ids(self) -> int:
    return self._extra_ids

  @property
  def base_vocab_size(self) -> int:
    """Special tokens and residues, without the extra ids."""
    return len(self._id_to_piece)

  @property
  def vocab_size(self) -> int:
    return self.base_vocab_size + self._extra_ids

  @property
  def special_tokens(self) -> tuple[str, ...]:
    """The special tokens, ids 0.. in order (residues follow them)."""
    return self._special_tokens

  @property
  def pieces(self) -> tuple[str, ...]:
    """Every token of the base vocabulary by id: specials, then residues."""
    return tuple(self._id_to_piece)

  @property
  def byte_lookup(self) -> np.ndarray:
    """The 256-entry byte -> id table (`IGNORED` for whitespace)."""
    return self._lookup

  @property
  def residue_ids(self) -> dict[str, int]:
    """Residue letter -> id, for the letters the vocabulary holds."""
    return dict(self._residue_ids)

  def encode(self, s: str) -> list[int]:
    """The ids of a protein, without EOS."""
    data = np.frombuffer(s.encode("utf-8"), dtype=np.uint8)
    ids = self._lookup[data]
    # A multi-byte UTF-8 character is one unknown symbol, not several.
    is_continuation = (data & 0xC0) == 0x80
    return ids[(ids != IGNORED) & ~is_continuation].tolist()

  def decode(self, ids: Iterable[int]) -> str:
    """The residues of `ids` up to the first EOS; padding decodes to nothing."""
    clean = [int(i) if int(i) < self.base_vocab_size else self._unk_id
             for i in ids]
    if self._eos_id is not None and self._eos_id in clean:
      clean = clean[:clean.index(self._eos_id) + 1]
    return "".join(self.piece(i) for i in clean)

  def piece(self, token_id: int) -> str:
    """The text of one id of the base vocabulary; padding is empty."""
    if token_id == self.pad_id:
      return ""
    return self._id_to_piece[token_id]

  def __eq__(self, other) -> bool:
    return (type(self) is type(other) and
            self._id_to_piece == other._id_to_piece and
            self._extra_ids == other._extra_ids)

  def __hash__(self) -> int:
    return hash((type(self), tuple(self._id_to_piece), self._extra_ids))


class ProtT5Vocabulary(CharacterVocabulary):
  """The ProtT5 tokenizer's ids: `<pad>` 0, `</s>` 1, `<unk>` 2, residues 3..27.

  100 sentinels sit at the top (`<extra_id_k>` = 127 - k), exactly as
  sentencepiece + T5's extra ids place them; ProtT5's denoising objective
  uses the single sentinel `<extra_id_0>` (id 127) as its mask token.
  """

  NUM_SENTINELS = 100

  def __init__(self):
    super().__init__(
        residue_offset=3, residues=_PROTT5_RESIDUES,
        special_tokens=("<pad>", "</s>", "<unk>"), unk_id=2, eos_id=1,
        extra_ids=self.NUM_SENTINELS)

  @property
  def mask_id(self) -> int:
    """`<extra_id_0>`, the id ProtT5's pre-training replaced residues with."""
    return self.vocab_size - 1

  def piece(self, token_id: int) -> str:
    if token_id == self.eos_id:
      return ""  # Decoded proteins are plain residue strings.
    return super().piece(token_id)


class _FramedVocabulary(CharacterVocabulary):
  """A vocabulary with BERT-style framing: a class-level table of named
  special ids (`PAD_ID`, `UNK_ID`, `CLS_ID`, `SEP_ID`, `MASK_ID`), whose
  class and separator tokens decode to nothing (they frame a protein, they
  are not part of it). ProtBert and ProtXLNet differ only in the table, the
  residue offset and which token ends a sequence.
  """

  PAD_ID: int
  UNK_ID: int
  CLS_ID: int
  SEP_ID: int
  MASK_ID: int

  @property
  def pad_id(self) -> int:
    return self.PAD_ID

  @property
  def mask_id(self) -> int:
    return self.MASK_ID

  @property
  def cls_id(self) -> int:
    return self.CLS_ID

  @property
  def sep_id(self) -> int:
    return self.SEP_ID

  def piece(self, token_id: int) -> str:
    if token_id in (self.CLS_ID, self.SEP_ID):
      return ""
    return super().piece(token_id)


class ProtBertVocabulary(_FramedVocabulary):
  """ProtBert / ProtBert-BFD `vocab.txt`: `[PAD]` 0, `[UNK]` 1, `[CLS]` 2,
  `[SEP]` 3, `[MASK]` 4, residues 5..29.

  `[SEP]` plays seqio's end-of-sequence role, so `add_eos=True` closes an
  example the way BERT does; `[CLS]` is added by the MLM preprocessor.
  """

  PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = 0, 1, 2, 3, 4

  def __init__(self):
    super().__init__(
        residue_offset=5, residues=_PROTBERT_RESIDUES,
        special_tokens=("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"),
        unk_id=self.UNK_ID, eos_id=self.SEP_ID)


class ProtXLNetVocabulary(_FramedVocabulary):
  """ProtXLNet's ids as this project writes them: XLNet's special tokens
  `<unk>` 0, `<s>` 1, `</s>` 2, `<cls>` 3, `<sep>` 4, `<pad>` 5, `<mask>` 6,
  `<eod>` 7, `<eop>` 8, then residues `LAGVESIKRDTPNQFYMHCWXUBZO` at 9..33.

  The released `Rostlab/prot_xlnet` sentencepiece ids were not available
  offline (../shared/data/hf_configs/README.md), so this table is the order
  for checkpoints made here; a model directory's `spiece.model` tokenizes
  for released weights. As the released pipeline, X and the rare residues
  (U, Z, O, B, J) become `<unk>`, and an input ends with `<sep><cls>`
  (XLNetTokenizer's framing: the family's `tokenize` adds it, `encode` does
  not).
  """

  UNK_ID, BOS_ID, EOS_ID, CLS_ID, SEP_ID, PAD_ID, MASK_ID = 0, 1, 2, 3, 4, 5, 6

  def __init__(self):
    super().__init__(
        residue_offset=9, residues=_PROTBERT_RESIDUES,
        special_tokens=("<unk>", "<s>", "</s>", "<cls>", "<sep>", "<pad>", "<mask>",
                        "<eod>", "<eop>"),
        unk_id=self.UNK_ID, eos_id=self.EOS_ID, unknown_residues="X" + RARE_RESIDUES)
