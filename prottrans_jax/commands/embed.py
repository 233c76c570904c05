r"""Embeds the proteins of FASTA files with a ProtTrans encoder into HDF5.

  prottrans-embed --input proteins.fasta --output embeddings.h5 \
      --checkpoint_dir runs/prott5_tiny [--per_protein]
  prottrans-embed --input proteins.fasta --output embeddings.h5 \
      --hf_model_dir Rostlab/prot_t5_xl_half_uniref50-enc --dtype bfloat16
  prottrans-embed --input 'uniref50/*.fasta' --output gs://b/u50.h5 \
      --hf_model_dir ... --per_residue --per_protein --layers=-1,-4 \
      --shard_index 3 --num_shards 16

Any ProtTrans encoder this project runs embeds (ProtT5, ProtBert,
ProtAlbert, ProtElectra); special tokens ([CLS], [SEP], </s>) are dropped.
Output: one HDF5 dataset per protein, named by the id (header up to the
first whitespace; '/' becomes '_'; the full header is the `original_id`
attribute), (L, d) per residue and/or (d,) per protein. Several outputs
(--per_residue and --per_protein, several --layers) go to one file each:
the --output name with `.per_residue`/`.per_protein` and `.layer<k>`
inserted before the extension.

Sharded runs (a pod, a cluster, many machines): every process runs the same
command with its own --shard_index (default: the jax.distributed process
index) and embeds only its share of the input, balanced by residues, on its
own devices; shards never wait for each other. Each writes OUTPUT.parts/
shard-<i>-of-<n>/; when all are complete, prottrans-merge-embeddings
--output OUTPUT makes the file (a single-shard run merges by itself).

Killed at any moment, the same command finishes the job: every batch is
committed atomically as its own chunk file, and the rerun redoes at most the
batch that was in flight. Every path may be a URL (gs://bucket/...): chunks
are uploaded as they are committed.
"""

import sys

from absl import app
from absl import flags
from absl import logging
import jax
from jax.experimental import multihost_utils

from prottrans_jax import cli
from prottrans_jax import run_lock
from prottrans_jax.data import fasta
from prottrans_jax.inference import engine
from prottrans_jax.inference import h5_writer
from prottrans_jax.inference import run

_INPUT = flags.DEFINE_string(
    "input", None, "FASTA file(s), plain or gzip, local or gs://: a path, a "
    "glob ('uniref50/*.fasta') or a comma-separated list.")
_OUTPUT = flags.DEFINE_string(
    "output", None, "HDF5 file to write (local or gs://); sharded runs write "
    "OUTPUT.parts/ and prottrans-merge-embeddings makes OUTPUT.")
_MODEL = cli.define_model_source_flags(
    "ProtT5, ProtBert, ProtAlbert or ProtElectra model",
    "a directory (config.json + safetensors), local or gs:// (copied locally "
    "first), or a Hub model id such as "
    "Rostlab/prot_t5_xl_half_uniref50-enc[@revision], found in or "
    "downloaded to the Hugging Face cache (HF_HUB_CACHE / HF_HOME; "
    "HF_HUB_OFFLINE=1 reads the cache only).",
    checkpoint_note="Only the encoder is read, straight into the devices' "
    "shards.")
_PER_RESIDUE = flags.DEFINE_bool(
    "per_residue", None, "Write (L, d) per protein, one row per residue "
    "(default: yes, unless --per_protein alone is given).")
_PER_PROTEIN = flags.DEFINE_bool(
    "per_protein", False, "Write the mean over residues, (d,) per protein.")
_LAYERS = flags.DEFINE_list(
    "layers", ["-1"], "Hidden states to write, as transformers numbers them "
    "(output_hidden_states): 0 the embedding output, i the output of layer "
    "i; negative from the top; -1 (default) is the model's final output.")
_DTYPE = flags.DEFINE_enum(
    "dtype", "float32", ["float32", "bfloat16", "float16"],
    "Compute dtype of the encoder's activations (float16 for GPUs without "
    "bfloat16, e.g. T4, V100).")
_OUTPUT_DTYPE = flags.DEFINE_enum("output_dtype", "float32",
                                  ["float32", "float16"], "dtype on disk.")
_MAX_TOKENS = cli.define_max_tokens_flag(16384)  # And --max_residues (old).
_NUM_PARTITIONS = flags.DEFINE_integer(
    "num_partitions", 1, "Model-parallel ways within this process's "
    "devices; the other devices split the batch.")
_SHARD_INDEX = flags.DEFINE_integer(
    "shard_index", None, "Which shard of the input this process embeds "
    "(default: the jax.distributed process index, 0 alone).")
_NUM_SHARDS = flags.DEFINE_integer(
    "num_shards", None, "Shards the input is split into (default: the "
    "number of jax.distributed processes, 1 alone).")
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Replace an existing output (and this shard's "
    "chunks) instead of resuming it.")
_EMPTY = flags.DEFINE_enum("empty_records", "error", ["error", "skip"],
                           "Records without sequence.")
_INVALID = flags.DEFINE_enum(
    "invalid_characters", "error", ["error", "remove", "replace_with_x"],
    "Non-letter characters in sequences (gaps, digits, ...).")
_DUPLICATES = flags.DEFINE_enum(
    "duplicate_ids", "error", ["error", "rename", "skip"],
    "Repeated ids (within a shard; the merge refuses duplicates across "
    "shards).")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar.")
_DISTRIBUTED = cli.define_distributed_flags()  # Gives the shard defaults.
flags.adopt_module_key_flags(cli)  # --help lists them.

flags.mark_flags_as_required(["input", "output"])


def _layers() -> tuple[int, ...]:
  try:
    return tuple(int(layer) for layer in _LAYERS.value)
  except ValueError:
    raise ValueError(f"--layers={','.join(_LAYERS.value)}: expected "
                     "comma-separated integers, e.g. -1,-4") from None


def main(argv):
  del argv
  max_tokens = _MAX_TOKENS.value  # Warns now if given as --max_residues.
  _DISTRIBUTED.initialize()
  num_shards = (jax.process_count() if _NUM_SHARDS.value is None
                else _NUM_SHARDS.value)
  shard_index = (jax.process_index() if _SHARD_INDEX.value is None
                 else _SHARD_INDEX.value)
  try:
    if not 0 <= shard_index < num_shards:
      raise ValueError(f"--shard_index={shard_index} --num_shards="
                       f"{num_shards}: expected 0 <= shard_index < num_shards")
    settings = engine.EmbedSettings(
        per_protein=_PER_PROTEIN.value, per_residue=_PER_RESIDUE.value,
        layers=_layers(), dtype=_DTYPE.value, max_tokens=max_tokens,
        num_partitions=_NUM_PARTITIONS.value)
    model = _MODEL.load(settings)
    summary = run.embed_fasta(
        _INPUT.value, _OUTPUT.value, model, settings,
        fasta.FastaPolicy(empty_records=_EMPTY.value,
                          invalid_characters=_INVALID.value,
                          duplicate_ids=_DUPLICATES.value),
        output_dtype=_OUTPUT_DTYPE.value, overwrite=_OVERWRITE.value,
        progress=_PROGRESS.value, shard_index=shard_index,
        num_shards=num_shards)
  except (fasta.FastaError, h5_writer.OutputError, FileNotFoundError,
          ValueError, run_lock.LockHeldError) as e:
    sys.exit(f"prottrans-embed: error: {e}")
  logging.info("%s", summary)
  if jax.process_count() > 1:
    # jax.distributed stops every process when process 0 exits, so the
    # processes that joined it leave together; none waited while working.
    logging.info("shard %d done; waiting for the other processes to exit "
                 "together", shard_index)
    multihost_utils.sync_global_devices("embed.py: every shard done")
  where = (", ".join(summary.merged) if summary.merged else
           f"{_OUTPUT.value}.parts (shard {shard_index} of {num_shards})")
  print(f"{where}: {summary.embedded} proteins embedded "
        f"({summary.residues} residues), {summary.already_done} already "
        f"there, {summary.proteins} in the input"
        + (f" shard {shard_index} of {num_shards}" if num_shards > 1 else ""))


def start() -> None:
  """Parses the command line and runs the command."""
  app.run(main)


if __name__ == "__main__":
  start()
