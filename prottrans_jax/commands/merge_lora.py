"""Folds a fine-tuning run's LoRA adapters into its encoder's weights.

  prottrans-merge-lora --checkpoint_dir runs/ss_lora --output_dir runs/ss_merged
  prottrans-embed --checkpoint_dir runs/ss_merged --input x.fasta --output x.h5
  prottrans-predict --fasta x.fasta --embeddings x.h5 \
      --heads runs/ss_merged/head --output_prefix x_predicted

--checkpoint_dir is a fine-tuning MODEL_DIR (its latest step) or a step
directory (prottrans_jax/training/finetune.py writes them). The output is a
params-only checkpoint of the encoder's own family (ProtT5 encoder, ProtBert,
...) with W + (alpha / rank) A B in every adapted kernel: embed, predict and
the Hugging Face converter read it as any other checkpoint. The fine-tuned
head is written beside it, OUTPUT_DIR/head, as a trained head that
prottrans-predict runs on that checkpoint's embeddings (the fine-tuned
model's predictions; not for a regression head). A run without adapters
(full fine-tuning) is written the same way. An --output_dir that holds
checkpoints already is refused unless --overwrite.
"""

import sys

from absl import app
from absl import flags

from prottrans_jax.downstream import finetune

_CHECKPOINT_DIR = flags.DEFINE_string(
    "checkpoint_dir", None, "Fine-tuning MODEL_DIR or step directory.")
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", None, "MODEL_DIR to write the merged encoder into (local "
    "or gs://); must hold no checkpoint yet (see --overwrite).")
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Replace the checkpoints --output_dir holds.")
flags.mark_flags_as_required(["checkpoint_dir", "output_dir"])


def main(argv):
  del argv
  try:
    merged = finetune.merge_checkpoint(_CHECKPOINT_DIR.value,
                                       _OUTPUT_DIR.value,
                                       overwrite=_OVERWRITE.value)
  except (ValueError, FileNotFoundError, FileExistsError) as e:
    sys.exit(f"prottrans-merge-lora: error: {e}")
  out = _OUTPUT_DIR.value
  print(f"wrote the encoder {merged.checkpoint}")
  if merged.head is None:
    print("a regression head: not written (prottrans-predict predicts "
          "classes)")
    return
  print(f"wrote the fine-tuned head {merged.head}\n"
        "the fine-tuned model's predictions for proteins.fasta:\n"
        f"  prottrans-embed --checkpoint_dir {out} --input proteins.fasta "
        "--output proteins.h5\n"
        "  prottrans-predict --fasta proteins.fasta --embeddings proteins.h5 "
        f"--heads {merged.head} --output_prefix predictions")


def start() -> None:
  app.run(main)
