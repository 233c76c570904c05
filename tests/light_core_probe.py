"""Runs `prottrans-embed` and a Hugging Face -> native conversion in one
process, after importing every module of the core packages (inference,
convert, downstream, models), then prints as JSON the training-only
packages (TensorFlow, seqio, TFDS, Beam, gin) that got imported: [] on the
TensorFlow-free core.

  python tests/light_core_probe.py HF_DIR FASTA OUTPUT.h5 NATIVE_DIR
"""

import importlib
import json
import pkgutil
import sys

from absl import app

from prottrans_jax import commands
from prottrans_jax.convert import formats


def import_core_modules() -> None:
  for package in ("inference", "convert", "downstream", "models"):
    module = importlib.import_module(f"prottrans_jax.{package}")
    for info in pkgutil.walk_packages(module.__path__, module.__name__ + "."):
      importlib.import_module(info.name)


def main() -> None:
  hf_dir, fasta_path, output, native_dir = sys.argv[1:5]
  import_core_modules()
  from prottrans_jax.commands import embed  # pylint: disable=g-import-not-at-top
  try:
    app.run(embed.main, argv=["prottrans-embed", f"--hf_model_dir={hf_dir}",
                              f"--input={fasta_path}", f"--output={output}",
                              "--noprogress"])
  except SystemExit as e:
    if e.code:
      raise
  formats.convert_checkpoint("hf", "native", hf_dir, native_dir,
                             progress=False)
  print(json.dumps(sorted(commands.TRAIN_PACKAGES & set(sys.modules))))


if __name__ == "__main__":
  main()
