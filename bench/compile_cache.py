"""What the persistent compilation cache saves a restarted training run.

  python bench/compile_cache.py                       # ProtT5 XL, 4 layers
  python bench/compile_cache.py --model=models/prott5_tiny.gin --nobinding

Runs scripts/train.py three times on a fresh MODEL_DIR each time, with
`trainer.train.compilation_cache_dir` set to one new directory: the first
run compiles the train step and fills the cache, the next two (a restart
after preemption, say) load it. Prints the "train step compiled in" time of
each run and the cached runs' ratio to the first; the train step is the
program a restart waits for before its first step.
"""

import os
import pathlib
import re
import subprocess
import sys
import tempfile

from absl import app
from absl import flags

import _machine

REPO = pathlib.Path(__file__).resolve().parents[1]

_MODEL = flags.DEFINE_string("model", "models/prott5_xl.gin",
                             "Model gin file (under prottrans_jax/gin/).")
# ProtT5-XL's layer shapes, 4 layers per stack instead of 24: the compiled
# program is the real one's kind, small enough to run here.
_BINDINGS = flags.DEFINE_multi_string(
    "binding", ["t5.T5Config.num_encoder_layers=4",
                "t5.T5Config.num_decoder_layers=4"],
    "Extra gin bindings (NAME=VALUE) for the model.")
_LENGTH = flags.DEFINE_integer("length", 128, "inputs and targets length.")
_BATCH = flags.DEFINE_integer("batch_size", 4, "Global batch size.")

_COMPILED = re.compile(r"train step compiled in ([0-9.]+)s")


def compile_seconds(model_dir: pathlib.Path, cache_dir: pathlib.Path) -> float:
  """Runs one training step; returns the logged compile time."""
  result = subprocess.run(
      [sys.executable, str(REPO / "scripts" / "train.py"),
       f"--gin_file={_MODEL.value}", "--gin_file=runs/pretrain.gin",
       f"--gin.MODEL_DIR='{model_dir}'", "--gin.TRAIN_STEPS=1",
       f"--gin.BATCH_SIZE={_BATCH.value}",
       f"--gin.TASK_FEATURE_LENGTHS={{'inputs': {_LENGTH.value}, "
       f"'targets': {_LENGTH.value}}}",
       "--gin.trainer.train.eval_period=None",
       *(f"--gin.{b}" for b in _BINDINGS.value),
       f"--gin.trainer.train.compilation_cache_dir='{cache_dir}'"],
      cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"),
      capture_output=True, text=True, check=False)
  if result.returncode:
    raise RuntimeError(f"train.py failed:\n{result.stderr[-3000:]}")
  return float(_COMPILED.search(result.stderr).group(1))


def main(argv):
  del argv
  print(f"machine: {_machine.describe()}; "
        f"{_MODEL.value} {' '.join(_BINDINGS.value)}, batch {_BATCH.value} "
        f"x length {_LENGTH.value}, 1 device")
  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    cache = tmp / "cache"
    times = [compile_seconds(tmp / f"run{i}", cache) for i in range(3)]
    files = sum(1 for p in cache.rglob("*") if p.is_file())
  print(f"{'run':<28}{'train step compiled in':>24}{'ratio to first':>16}")
  for i, seconds in enumerate(times):
    label = "1: empty cache (compiles)" if i == 0 else f"{i + 1}: cache filled"
    print(f"{label:<28}{seconds:>23.2f}s{seconds / times[0]:>16.3f}")
  print(f"cache: {files} files")


if __name__ == "__main__":
  app.run(main)
