r"""Converts ProtTrans checkpoints between Hugging Face, native T5X and this project.

ProtT5 from Hugging Face, T5X or ours; ProtBert, ProtAlbert and ProtElectra
(BertForMaskedLM, AlbertModel, ElectraForPreTraining, ...) between Hugging
Face and ours, chosen by config.json's model_type and architectures.

  prottrans-convert --from hf --to native \
      --input /path/prot_t5_xl_uniref50 --output /path/model_dir
  prottrans-convert --from native --to hf --encoder_only \
      --dtype float16 --input /path/model_dir --output /path/hf_export

Input and output may be gs:// URLs: native checkpoints are read and
written there directly; a Hugging Face or T5X input is copied to local
disk first, and a Hugging Face output is written locally and uploaded when
complete (both need local disk for the checkpoint's size).

A Hugging Face output carries tokenizer files with this project's ids
(convert/tokenizer_files.py), or with --tokenizer_from DIR the released
ones, checked to give the same ids.

All logic lives in prottrans_jax.convert.formats.convert_checkpoint.
"""
import sys

from absl import app
from absl import flags

from prottrans_jax.convert import formats
from prottrans_jax.convert import hf_io

flags.DEFINE_enum("from", None, formats.SOURCES, "Input format.")
flags.DEFINE_enum("to", None, formats.TARGETS, "Output format.")
flags.DEFINE_string("input", None, "Input checkpoint directory (local or "
                    "gs://); with --from hf also a Hugging Face model id "
                    "(owner/name[@revision]) from the Hugging Face cache.")
flags.DEFINE_string("output", None,
                    "Output directory, local or gs:// (must not exist or be empty).")
flags.DEFINE_bool("encoder_only", False,
                  "Keep only the embedding and the encoder (T5EncoderModel; "
                  "BertModel etc. without heads). "
                  "Encoder-only inputs stay encoder-only without it.")
flags.DEFINE_enum("dtype", None, sorted(hf_io.EXPORT_DTYPES),
                  "Tensor dtype of the output (hf default float32; native "
                  "default the model's param_dtype).")
flags.DEFINE_bool("dry_run", False, "Check the input and list the mapping; write nothing.")
flags.DEFINE_bool("overwrite", False, "Replace a non-empty output directory.")
flags.DEFINE_integer("max_shard_mb", hf_io.DEFAULT_MAX_SHARD_BYTES // 2**20,
                     "Hugging Face output is sharded above this size (MiB).")
flags.DEFINE_string("tokenizer_from", None,
                    "With --to hf: a local directory of released tokenizer files "
                    "(spiece.model or vocab.txt, tokenizer.json, tokenizer_config.json, "
                    "...) copied into the output instead of ours; refused, naming the "
                    "first differing token, unless their ids are ours.")
for _name in ("from", "to", "input", "output"):
  flags.mark_flag_as_required(_name)
FLAGS = flags.FLAGS


def main(argv):
  del argv
  try:
    result = formats.convert_checkpoint(
        FLAGS["from"].value, FLAGS.to, FLAGS.input, FLAGS.output,
        encoder_only=True if FLAGS.encoder_only else None, dtype=FLAGS.dtype,
        dry_run=FLAGS.dry_run, overwrite=FLAGS.overwrite,
        max_shard_bytes=FLAGS.max_shard_mb * 2**20, tokenizer_from=FLAGS.tokenizer_from)
  except (FileNotFoundError, FileExistsError, ImportError, ValueError) as e:
    # ConversionError is a ValueError: a clear message, no traceback.
    sys.exit(f"prottrans-convert: error: {e}")
  print("\n".join(result))


def start() -> None:
  """Parses the command line and runs the command."""
  app.run(main)


if __name__ == "__main__":
  start()
