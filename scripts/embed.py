"""Embeds the proteins of a FASTA file with a ProtTrans encoder into HDF5.

  python scripts/embed.py --input proteins.fasta --output embeddings.h5 \
      --checkpoint_dir runs/prott5_tiny [--per_protein]
  python scripts/embed.py --input proteins.fasta --output embeddings.h5 \
      --hf_model_dir /path/to/prot_t5_xl_half_uniref50-enc --dtype bfloat16
  python scripts/embed.py --input proteins.fasta --output embeddings.h5 \
      --hf_model_dir /path/to/prot_bert_bfd

Any ProtTrans encoder this project runs embeds (ProtT5, ProtBert,
ProtAlbert, ProtElectra); special tokens ([CLS], [SEP], </s>) are dropped.
Output: one HDF5 dataset per protein, named by the id (header up to the
first whitespace; '/' becomes '_'; the full header is the `original_id`
attribute), (L, d) per residue or (d,) with --per_protein. A run that is
killed can be started again with the same command: it skips what is done.

Every path may be a URL (gs://bucket/...). A gs:// --output is written to a
local temporary file and uploaded when the run ends: a run stopped before
then uploads nothing, and the same command started again resumes from the
file the bucket holds (an earlier run's complete output), not from the
stopped run's batches. A gs:// --hf_model_dir is copied to local disk first.
"""

import sys

from absl import app
from absl import flags
from absl import logging

from prottrans_jax import cli
from prottrans_jax.data import fasta
from prottrans_jax.inference import engine
from prottrans_jax.inference import h5_writer
from prottrans_jax.inference import loading
from prottrans_jax.inference import run

_INPUT = flags.DEFINE_string("input", None,
                             "FASTA file (plain or gzip), local or gs://.")
_OUTPUT = flags.DEFINE_string(
    "output", None, "HDF5 file to write. A gs:// URL is written locally and "
    "uploaded when the run ends (a stopped run uploads nothing; a rerun "
    "resumes from the bucket's file).")
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint_dir", None,
    "This project's checkpoint: a MODEL_DIR (latest step) or a step dir, "
    "local or gs://.")
_HF = flags.DEFINE_string(
    "hf_model_dir", None,
    "Hugging Face ProtT5, ProtBert, ProtAlbert or ProtElectra directory "
    "(config.json + safetensors), local or gs:// (copied locally first).")
_PER_PROTEIN = flags.DEFINE_bool(
    "per_protein", False, "Write the mean over residues, (d,) per protein.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"],
                           "Compute dtype of the encoder's activations.")
_OUTPUT_DTYPE = flags.DEFINE_enum("output_dtype", "float32",
                                  ["float32", "float16"], "dtype on disk.")
_MAX_TOKENS = cli.define_max_tokens_flag(16384)  # And --max_residues (old).
_NUM_PARTITIONS = flags.DEFINE_integer(
    "num_partitions", 1, "Model-parallel ways; the other devices split "
    "the batch.")
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Replace an existing output instead of resuming it.")
_EMPTY = flags.DEFINE_enum("empty_records", "error", ["error", "skip"],
                           "Records without sequence.")
_INVALID = flags.DEFINE_enum(
    "invalid_characters", "error", ["error", "remove", "replace_with_x"],
    "Non-letter characters in sequences (gaps, digits, ...).")
_DUPLICATES = flags.DEFINE_enum("duplicate_ids", "error",
                                ["error", "rename", "skip"], "Repeated ids.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar.")
_DISTRIBUTED = cli.define_distributed_flags()  # Process 0 writes the output.
flags.adopt_module_key_flags(cli)  # --help lists them.

flags.mark_flags_as_required(["input", "output"])
flags.mark_flags_as_mutual_exclusive(["checkpoint_dir", "hf_model_dir"],
                                     required=True)


def main(argv):
  del argv
  max_tokens = _MAX_TOKENS.value  # Warns now if given as --max_residues.
  _DISTRIBUTED.initialize()
  try:
    model = (loading.from_checkpoint(_CHECKPOINT.value) if _CHECKPOINT.value
             else loading.from_hf(_HF.value))
    summary = run.embed_fasta(
        _INPUT.value, _OUTPUT.value, model,
        engine.EmbedSettings(per_protein=_PER_PROTEIN.value,
                             dtype=_DTYPE.value,
                             max_tokens=max_tokens,
                             num_partitions=_NUM_PARTITIONS.value),
        fasta.FastaPolicy(empty_records=_EMPTY.value,
                          invalid_characters=_INVALID.value,
                          duplicate_ids=_DUPLICATES.value),
        output_dtype=_OUTPUT_DTYPE.value, overwrite=_OVERWRITE.value,
        progress=_PROGRESS.value)
  except (fasta.FastaError, h5_writer.OutputError, FileNotFoundError,
          ValueError) as e:
    sys.exit(f"embed.py: error: {e}")
  logging.info("%s", summary)
  if _DISTRIBUTED.process_id.value == 0:
    print(f"{_OUTPUT.value}: {summary.embedded} proteins embedded "
          f"({summary.residues} residues), {summary.already_done} already "
          f"there, {summary.proteins} in {_INPUT.value}")


if __name__ == "__main__":
  app.run(main)
