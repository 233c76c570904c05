r"""Scores protein variants with a ProtTrans language model's own probabilities.

  prottrans-score-variants --input proteins.fasta --variants variants.tsv \
      --output scores.tsv --hf_model_dir Rostlab/prot_t5_xl_uniref50
  prottrans-score-variants --input proteins.fasta --output scan.h5 --scan \
      --checkpoint_dir runs/protbert --method wildtype_marginal

The variants file holds a protein id (as in the FASTA input: the header up
to the first whitespace) and a variant per line, separated by a tab:
`A23G`, or `A23G:K40R` for several substitutions at once; positions are
1-based, the wild-type residue first. An optional first line
`protein_id<tab>variant` is a header. A wrong wild-type residue, a position
past the end, an unknown residue letter or protein id, a malformed line and
a repeated line are each an error naming the file and line; nothing is
skipped. A variants file without any variant, a FASTA file without
records, --variants with --scan (or neither) and an existing --output
(without --overwrite) are errors before the model is loaded.

A variant's score is the sum over its positions of log p(mutant) - log p(wild
type) (natural log; > 0: the model prefers the mutant):
  masked_marginal (default): the positions masked together ([MASK] for
    ProtBert/ProtAlbert/ProtElectra generators' MLM head; ProtT5: the
    sentinel <extra_id_0> in the encoder input, one per position, and the
    decoder's probabilities, teacher-forced with the original sequence);
  wildtype_marginal: the unmasked sequence, one forward pass per protein.

Output: a TSV with the columns protein_id, variant, score,
num_substitutions, method, in the variants file's order. With --scan,
every single substitution of every position instead: an HDF5 file with an
L x 20 dataset per protein (columns in the order of its `residues`
attribute, ACDEFGHIKLMNPQRSTVWY; its `wild_type` attribute is the
sequence; 0 at the wild type). masked_marginal scans run one pass per
position (L per protein), wildtype_marginal one per protein.

The model needs its prediction head: a ProtT5 with its decoder (not the
encoder-only `-enc` releases), a *ForMaskedLM BERT/ALBERT/ELECTRA
generator. ProtT5's relative positions take a protein of any length;
the BERT family's learned positions end at max_position_embeddings
(special tokens included): longer proteins are all named, and nothing is
scored. Forward passes are batched by padded tokens (--max_tokens per
device) over this process's devices (--num_partitions ways model-parallel).
"""

import sys

from absl import app
from absl import flags
from absl import logging

from prottrans_jax import cli
from prottrans_jax.data import fasta
from prottrans_jax.inference import engine
from prottrans_jax.inference import variants

_INPUT = flags.DEFINE_string("input", None, "FASTA file of the proteins "
                             "(plain or gzip, local or gs://).")
_VARIANTS = flags.DEFINE_string(
    "variants", None, "Tab-separated file: protein id, variant (A23G or "
    "A23G:K40R; 1-based). Required unless --scan.")
_OUTPUT = flags.DEFINE_string(
    "output", None, "Scores TSV to write; with --scan, the HDF5 file.")
_MODEL = cli.define_model_source_flags(
    "ProtT5 (T5ForConditionalGeneration) or ProtBert/ProtAlbert/ELECTRA "
    "generator (*ForMaskedLM)", "a directory, gs:// URL or Hub model id.")
_METHOD = flags.DEFINE_enum(
    "method", variants.MASKED_MARGINAL, list(variants.METHODS),
    "masked_marginal: mask the variant's positions; wildtype_marginal: read "
    "the unmasked sequence's probabilities.")
_SCAN = flags.DEFINE_bool(
    "scan", False, "Score every single substitution of every position of "
    "every protein: an L x 20 table per protein into --output (HDF5).")
_DTYPE = flags.DEFINE_enum("dtype", "float32", list(engine.DTYPES),
                           "Compute dtype of the activations.")
_MAX_TOKENS = flags.DEFINE_integer(
    "max_tokens", 16384, "Padded tokens per batch per data-parallel device: "
    "rows (forward passes) x the batch's padded length, special tokens "
    "included. Raise it for speed; lower it if a batch runs out of device "
    "memory (an error here: scoring does not retry in smaller pieces).",
    lower_bound=1)
_NUM_PARTITIONS = flags.DEFINE_integer(
    "num_partitions", 1, "Model-parallel ways within this process's devices; "
    "the other devices split the batch.", lower_bound=1)
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Replace an existing --output (refused otherwise).")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar.")

flags.mark_flags_as_required(["input", "output"])
flags.adopt_module_key_flags(cli)  # --help lists --checkpoint_dir, ...


def main(argv):
  del argv
  try:
    # Checked before the model is loaded: bad input costs nothing.
    variants.check_output(_OUTPUT.value, _OVERWRITE.value)
    records, to_score = variants.read_inputs(_INPUT.value, _VARIANTS.value,
                                             _SCAN.value)
    settings = engine.EmbedSettings(dtype=_DTYPE.value,
                                    max_tokens=_MAX_TOKENS.value,
                                    num_partitions=_NUM_PARTITIONS.value)
    model = _MODEL.load(settings, whole_model=True)
    scorer = variants.Scorer(model.config, model.params, settings)
    if _SCAN.value:
      proteins = variants.write_scan(
          _OUTPUT.value, scorer.scan(records, _METHOD.value, _PROGRESS.value),
          _METHOD.value)
      print(f"{_OUTPUT.value}: {proteins} proteins scanned "
            f"({sum(len(r.sequence) for r in records)} positions x 20), "
            f"{_METHOD.value}")
      return
    scores = scorer.score(records, to_score, _METHOD.value, _PROGRESS.value)
    variants.write_scores(_OUTPUT.value, to_score, scores, _METHOD.value)
  except (fasta.FastaError, FileNotFoundError, ValueError) as e:
    sys.exit(f"prottrans-score-variants: error: {e}")
  logging.info("scored %d variants from %s", len(to_score), model.source)
  print(f"{_OUTPUT.value}: {len(to_score)} variants scored, {_METHOD.value}")


def start() -> None:
  """Parses the command line and runs the command."""
  app.run(main)


if __name__ == "__main__":
  start()
