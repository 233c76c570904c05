"""Variant-effect scores from a protein language model's own probabilities.

A variant is one or more substitutions of a protein (`A23G`, `A23G:K40R`;
1-based positions, the wild-type residue first). Its score is

  sum over its positions i of log p(mutant_i) - log p(wild type_i),

the log-probabilities read at position i, with two ways to read them
(ESM's definitions, Meier et al. 2021):

- `masked_marginal`: the variant's positions are masked together (one
  forward pass per set of masked positions, shared by every variant at the
  same positions);
- `wildtype_marginal`: the unmasked wild-type sequence (one pass per
  protein).

Which model gives the probabilities:

- masked-LM encoders (ProtBert, ProtAlbert, an ELECTRA generator): the MLM
  head's, with `[MASK]` at the masked positions (the BERT family's `__call__`,
  as its training objective runs it);
- ProtT5: the decoder's, teacher-forced with the original sequence (the
  targets of ProtT5's denoising: the whole sequence plus `</s>`, decoder
  inputs shifted right behind a 0), over an encoder input in which every
  masked residue is replaced by `<extra_id_0>` (`vocab.ProtT5Vocabulary.
  mask_id`), one per residue, as ProtT5's pre-training masked residues
  (`data/preprocessors.py::prott5_denoise`: i.i.d. residues, no span
  collapsing).

A scan scores every single substitution of every position: an L x 20 table
per protein over `RESIDUES`, cell (i, a) the score of the substitution of
residue i by `RESIDUES[a]` (0 where a is the wild type).

Computation follows the embedding engine: forward passes are batched by
padded tokens with the same length buckets (`batching.plan_batches`), the
model's parameters are sharded over this process's devices with the
embedding's mesh and rules (`engine.embedding_layout`, `loading`'s
`whole_model`), and proteins above `long_sequence_threshold` tokens attend
block by block inside the model, so any length scores.

No TensorFlow: like the rest of `inference`.
"""

import collections
import dataclasses
import logging
import os
import time
from typing import Any, Iterable, Iterator, Mapping, Sequence

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from prottrans_jax import families
from prottrans_jax import fs
from prottrans_jax import partitioning
from prottrans_jax import vocab as vocab_lib
from prottrans_jax.data import fasta
from prottrans_jax.inference import batching
from prottrans_jax.inference import engine
from prottrans_jax.inference import h5_writer
from prottrans_jax.inference import shards

logger = logging.getLogger(__name__)

MASKED_MARGINAL = "masked_marginal"
WILDTYPE_MARGINAL = "wildtype_marginal"
METHODS = (MASKED_MARGINAL, WILDTYPE_MARGINAL)
# The residues a substitution may name, and the column order of a scan.
RESIDUES = vocab_lib.STANDARD_RESIDUES
# Columns of the log-probability tables the device returns: one per residue
# of RESIDUES, then the input's own residue at that position (the wild type,
# also where it is not one of RESIDUES, e.g. X, in a scan).
_WILD_TYPE_COLUMN = len(RESIDUES)
HEADER = ("protein_id", "variant")
OUTPUT_COLUMNS = ("protein_id", "variant", "score", "num_substitutions",
                  "method")


class VariantError(ValueError):
  """A variants file (or a line of it, named by file and line) that cannot
  be scored."""


@dataclasses.dataclass(frozen=True)
class Substitution:
  position: int  # 0-based.
  wild_type: str
  mutant: str


@dataclasses.dataclass(frozen=True)
class Variant:
  """One line of a variants file."""
  protein_id: str
  name: str  # As written, e.g. "A23G:K40R".
  substitutions: tuple[Substitution, ...]
  line: int  # 1-based line number in its file.

  @property
  def positions(self) -> tuple[int, ...]:
    return tuple(sorted(s.position for s in self.substitutions))


def parse_variant(text: str, sequence: str) -> tuple[Substitution, ...]:
  """`A23G` or `A23G:K40R` against `sequence`; ValueError saying what is
  wrong (the caller adds the file and line)."""
  substitutions = []
  for token in text.split(":"):
    if (len(token) < 3 or not token[1:-1].isdigit() or not token[0].isalpha()
        or not token[-1].isalpha()):
      raise ValueError(f"malformed substitution {token!r} in {text!r}: "
                       "expected <wild type><1-based position><mutant>, e.g. "
                       "A23G, several joined by ':'")
    wild_type, position, mutant = token[0].upper(), int(token[1:-1]), token[-1].upper()
    for role, letter in (("wild-type", wild_type), ("mutant", mutant)):
      if letter not in RESIDUES:
        raise ValueError(f"unknown {role} residue {letter!r} in {token!r}: "
                         f"expected one of {RESIDUES}")
    if not 1 <= position <= len(sequence):
      raise ValueError(f"position {position} of {token!r} is outside the "
                       f"protein (1..{len(sequence)})")
    if sequence[position - 1] != wild_type:
      raise ValueError(f"wrong wild-type residue in {token!r}: position "
                       f"{position} of the protein is "
                       f"{sequence[position - 1]!r}, not {wild_type!r}")
    if any(s.position == position - 1 for s in substitutions):
      raise ValueError(f"position {position} is substituted twice in {text!r}")
    substitutions.append(Substitution(position - 1, wild_type, mutant))
  return tuple(substitutions)


def read_variants(path: str | os.PathLike, sequences: Mapping[str, str],
                  sequences_from: str = "the FASTA input") -> list[Variant]:
  """Every variant of a file of `protein_id <tab> variant` lines, checked
  against `sequences` (protein id -> sequence).

  An optional first line `protein_id<tab>variant` is the header; empty
  lines hold nothing. Anything else that is not a variant of a known
  protein is a VariantError naming the file and line: a malformed line or
  substitution, an unknown residue letter, a position past the end, a
  wild-type residue the protein does not have, an unknown protein id (not
  in `sequences`, read from `sequences_from`), and a line that repeats an
  earlier one (the same substitutions of the same protein). Nothing is
  skipped. A file without any variant line is a VariantError too: an empty
  table of scores is never what was asked for.
  """
  variants = []
  seen: dict[tuple[str, frozenset], int] = {}
  with fs.path(path).open("r") as handle:
    for number, line in enumerate(handle, start=1):
      fields = line.split()
      if not fields or (number == 1 and tuple(fields) == HEADER):
        continue
      where = f"{path}, line {number}"
      if len(fields) != 2:
        raise VariantError(f"{where}: expected 2 fields (protein id, variant) "
                           f"separated by a tab, got {len(fields)}: {line.strip()!r}")
      protein_id, name = fields
      if protein_id not in sequences:
        raise VariantError(f"{where}: unknown protein id {protein_id!r} (not in "
                           f"{sequences_from})")
      try:
        substitutions = parse_variant(name, sequences[protein_id])
      except ValueError as e:
        raise VariantError(f"{where}: {e}") from None
      key = (protein_id, frozenset(substitutions))
      if key in seen:
        raise VariantError(f"{where}: duplicate of line {seen[key]} "
                           f"({protein_id} {name})")
      seen[key] = number
      variants.append(Variant(protein_id, name, substitutions, number))
  if not variants:
    raise VariantError(f"{path}: no variants (expected lines 'protein_id<tab>"
                       "variant', e.g. 'P1<tab>A23G'; a header and empty "
                       "lines hold none): nothing to score")
  return variants


def read_inputs(fasta_path: str, variants_path: str | None, scan: bool
                ) -> tuple[list[fasta.FastaRecord], list[Variant] | None]:
  """The proteins of `fasta_path` and the variants of `variants_path` (None
  with `scan`, which scores every substitution instead), every line
  checked: what the command reads before it loads a model, so that bad
  input costs nothing.

  Raises:
    ValueError: `--variants` and `--scan` both given, or neither.
    FileNotFoundError, fasta.FastaError: no such FASTA file, or one without
      records or with a bad record.
    VariantError: a bad variants file or line (`read_variants`).
  """
  if scan == (variants_path is not None):
    raise ValueError("give --variants (score those variants) or --scan "
                     "(score every substitution), one of them"
                     + (", not both" if scan else ""))
  records = list(fasta.read_fasta(fasta_path))
  if scan:
    return records, None
  return records, read_variants(variants_path, {r.id: r.sequence for r in records},
                                str(fasta_path))


def check_output(path: str | os.PathLike, overwrite: bool) -> None:
  """Refuses an `--output` that exists (unless `overwrite`), is a directory
  or cannot be created, before any work.

  Raises:
    h5_writer.OutputError: naming the path and why.
  """
  shards.check_output_location(path)
  output = fs.path(path)
  if output.is_dir():
    raise h5_writer.OutputError(f"--output {path} is a directory, not a file")
  if output.exists() and not overwrite:
    raise h5_writer.OutputError(f"--output {path} exists: pass --overwrite to "
                                "replace it, or another --output")


@dataclasses.dataclass(frozen=True)
class Pass:
  """One forward pass: a protein with some positions masked (none for the
  wild-type marginal)."""
  record: fasta.FastaRecord
  masked: tuple[int, ...]  # 0-based residue positions.


def _mask_id(family: families.ModelFamily) -> int:
  if family.name == "t5":
    return vocab_lib.ProtT5Vocabulary().mask_id
  return vocab_lib.ProtBertVocabulary().mask_id


def _residue_ids(family: families.ModelFamily) -> np.ndarray:
  vocabulary = (vocab_lib.ProtT5Vocabulary() if family.name == "t5"
                else vocab_lib.ProtBertVocabulary())
  ids = vocabulary.residue_ids
  return np.asarray([ids[r] for r in RESIDUES], np.int32)


class Scorer:
  """A language model placed on this process's devices, ready to give
  log-probabilities of residues (`log_probs`) and scores (`score`, `scan`).

  `params` hold the whole network in `config`'s layout (what
  `loading.from_checkpoint(..., whole_model=True)` returns, or a tree made
  in memory); `settings` give the compute dtype, the padded-token budget per
  device (`max_tokens`) and `num_partitions` (its output options are not
  used).
  """

  def __init__(self, config: Any, params: Any,
               settings: engine.EmbedSettings = engine.EmbedSettings(),
               devices: Sequence[jax.Device] | None = None):
    self.family = families.of(config)
    if self.family.name not in ("t5", "bert", "albert", "electra"):
      raise ValueError(
          f"model family {self.family.name!r} has no single network that "
          "predicts residues: score with its generator as an 'electra' "
          "model (models/electra.py::generator_params)")
    self.settings = settings
    params = self.family.to_canonical(config, params)
    self.config, self.mesh, self.rules, self._model, abstract = (
        engine.embedding_layout(config, settings, devices, whole_model=True))
    self.data_parallel = self.mesh.shape[partitioning.DATA_AXIS]
    self.params = engine.place_params(params, abstract, self.mesh, self.rules)
    self._batch_sharding = partitioning.batch_sharding(self.mesh, self.rules)
    self._mask_id = _mask_id(self.family)
    self._residue_ids = jnp.asarray(_residue_ids(self.family))
    self._log_probs = jax.jit(self._log_probs_fn)

  def _log_probs_fn(self, params, inputs, originals):
    """[B, L, 21] float32: log p of each of RESIDUES, then of `originals`'
    token, at every position of the model's output."""
    if self.family.name == "t5":
      # Teacher forcing with the original sequence: the decoder input is it
      # shifted right behind the start id 0, and row i predicts token i.
      decoder_inputs = jnp.pad(originals[:, :-1], ((0, 0), (1, 0)))
      logits = self._model.apply({"params": params}, inputs, decoder_inputs,
                                 decoder_target_tokens=originals)
    else:
      logits = self._model.apply({"params": params}, inputs)
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    residues = jnp.take(log_probs, self._residue_ids, axis=-1)
    wild_type = jnp.take_along_axis(log_probs, originals[..., None], axis=-1)
    return jnp.concatenate([residues, wild_type], axis=-1)

  def plan(self, passes: Sequence[Pass]) -> list[batching.Batch]:
    """The batches `log_probs` computes, longest first."""
    engine.check_lengths(self.config, [p.record for p in passes], "scored")
    special = self.family.num_special_tokens
    return list(batching.plan_batches(
        [len(p.record.sequence) + special for p in passes],
        self.settings.max_tokens * self.data_parallel, self.data_parallel))

  def _dispatch(self, passes: Sequence[Pass], batch: batching.Batch) -> jax.Array:
    inputs = np.zeros((batch.rows, batch.length), np.int32)
    originals = np.zeros((batch.rows, batch.length), np.int32)
    first = self.family.first_residue_row
    for row, index in enumerate(batch.indices):
      ids = self.family.tokenize(passes[index].record.sequence)
      originals[row, :len(ids)] = ids
      inputs[row, :len(ids)] = ids
      for position in passes[index].masked:
        inputs[row, first + position] = self._mask_id
    inputs, originals = jax.device_put((inputs, originals), self._batch_sharding)
    with partitioning.activate(self.mesh, self.rules):
      return self._log_probs(self.params, inputs, originals)  # Asynchronous.

  def log_probs(self, passes: Sequence[Pass], progress: bool = False
                ) -> Iterator[tuple[int, np.ndarray]]:
    """(index into `passes`, [L, 21] log-probabilities at its residues: one
    column per residue of RESIDUES, then the wild type's), every pass, in
    batches, longest first. The next batch is dispatched before the current
    one is fetched, so the host prepares while the devices compute."""
    batches = self.plan(passes)
    first = self.family.first_residue_row
    residues = sum(len(p.record.sequence) for p in passes)
    logger.info("%d forward passes (%d residues) in %d batches padded to %d "
                "lengths", len(passes), residues, len(batches),
                len({b.length for b in batches}))
    start = time.perf_counter()
    with tqdm.tqdm(total=len(passes), unit="pass", disable=not progress,
                   desc="scoring") as bar:
      pending = None
      for batch in batches + [None]:
        started = None if batch is None else (batch, self._dispatch(passes, batch))
        if pending is not None:
          done, output = pending
          values = np.asarray(jax.device_get(output))
          for row, index in enumerate(done.indices):
            length = len(passes[index].record.sequence)
            yield index, values[row, first:first + length]
          bar.update(len(done.indices))
          bar.set_postfix(passes_per_s=f"{bar.n / max(time.perf_counter() - start, 1e-9):.1f}",
                          refresh=False)
        pending = started

  def score(self, records: Sequence[fasta.FastaRecord],
            variants: Sequence[Variant], method: str = MASKED_MARGINAL,
            progress: bool = False) -> np.ndarray:
    """The score of every variant (float64, in `variants`' order)."""
    if method not in METHODS:
      raise ValueError(f"method {method!r} is not one of {', '.join(METHODS)}")
    by_id = {r.id: r for r in records}
    pass_of = {}  # (protein id, masked positions) -> index into passes.
    passes = []
    for variant in variants:
      masked = variant.positions if method == MASKED_MARGINAL else ()
      key = (variant.protein_id, masked)
      if key not in pass_of:
        pass_of[key] = len(passes)
        passes.append(Pass(by_id[variant.protein_id], masked))
    # What each pass contributes: the log-probabilities at the positions its
    # variants substitute, so memory follows the variants, not L per pass.
    wanted = collections.defaultdict(set)
    for variant in variants:
      masked = variant.positions if method == MASKED_MARGINAL else ()
      wanted[pass_of[(variant.protein_id, masked)]].update(variant.positions)
    rows = {}
    for index, table in self.log_probs(passes, progress):
      for position in wanted[index]:
        rows[(index, position)] = table[position].astype(np.float64)
    column = {r: i for i, r in enumerate(RESIDUES)}
    scores = np.empty(len(variants), np.float64)
    for i, variant in enumerate(variants):
      masked = variant.positions if method == MASKED_MARGINAL else ()
      index = pass_of[(variant.protein_id, masked)]
      scores[i] = sum(
          rows[(index, s.position)][column[s.mutant]]
          - rows[(index, s.position)][_WILD_TYPE_COLUMN]
          for s in variant.substitutions)
    return scores

  def scan(self, records: Sequence[fasta.FastaRecord],
           method: str = MASKED_MARGINAL, progress: bool = False
           ) -> Iterator[tuple[fasta.FastaRecord, np.ndarray]]:
    """(record, [L, 20] float32 scores over RESIDUES) of every protein, as
    each is complete: every single substitution of every position. A bad
    method or a protein the model cannot take is refused here, before the
    caller opens its output."""
    if method not in METHODS:
      raise ValueError(f"method {method!r} is not one of {', '.join(METHODS)}")
    engine.check_lengths(self.config, records, "scanned")
    return self._scan(records, method, progress)

  def _scan(self, records: Sequence[fasta.FastaRecord], method: str,
            progress: bool) -> Iterator[tuple[fasta.FastaRecord, np.ndarray]]:
    passes = [Pass(r, (i,) if method == MASKED_MARGINAL else ())
              for r in records
              for i in (range(len(r.sequence)) if method == MASKED_MARGINAL
                        else (None,))]
    tables = {}
    remaining = {}
    for index, log_probs in self.log_probs(passes, progress):
      record = passes[index].record
      if record.id not in tables:
        tables[record.id] = np.empty((len(record.sequence), len(RESIDUES)),
                                     np.float32)
        remaining[record.id] = (len(record.sequence)
                                if method == MASKED_MARGINAL else 1)
      rows = passes[index].masked or range(len(record.sequence))
      for position in rows:
        tables[record.id][position] = (log_probs[position, :_WILD_TYPE_COLUMN]
                                       - log_probs[position, _WILD_TYPE_COLUMN])
      remaining[record.id] -= 1
      if not remaining[record.id]:
        del remaining[record.id]
        yield record, tables.pop(record.id)


def write_scores(path: str | os.PathLike, variants: Sequence[Variant],
                 scores: Iterable[float], method: str) -> None:
  """The TSV of OUTPUT_COLUMNS, one line per variant, in the input's order."""
  with fs.path(path).open("w") as handle:
    handle.write("\t".join(OUTPUT_COLUMNS) + "\n")
    for variant, score in zip(variants, scores, strict=True):
      handle.write(f"{variant.protein_id}\t{variant.name}\t{score:.8g}\t"
                   f"{len(variant.substitutions)}\t{method}\n")


def write_scan(path: str | os.PathLike,
               tables: Iterable[tuple[fasta.FastaRecord, np.ndarray]],
               method: str) -> int:
  """One [L, 20] dataset per protein (named by its id, '/' as '_'), with the
  wild type (`wild_type`), the column order (`residues`) and the method as
  attributes; the file's attributes repeat the last two. Returns the number
  of proteins written. The file appears whole or not at all: a scan that
  fails part way leaves nothing that `check_output` would refuse."""
  count = 0
  with fs.staged_output(path) as local:
    partial = local.with_name(local.name + ".partial")
    try:
      with h5py.File(partial, "w") as h5:
        h5.attrs["residues"] = RESIDUES
        h5.attrs["method"] = method
        for record, table in tables:
          dataset = h5.create_dataset(record.id.replace("/", "_"), data=table)
          dataset.attrs["wild_type"] = record.sequence
          dataset.attrs["residues"] = RESIDUES
          dataset.attrs["method"] = method
          dataset.attrs["original_id"] = record.description
          count += 1
      os.replace(partial, local)
    finally:
      partial.unlink(missing_ok=True)
  return count
