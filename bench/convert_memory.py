r"""Wall time and peak memory of converting a full-size ProtT5-XL checkpoint.

Writes a randomly initialised Hugging Face checkpoint of `--config` (default
prott5_xl: 3B parameters, 11 GB in float32) tensor by tensor, then converts it
in a fresh process per conversion and prints wall time and that process's
peak RSS as a fraction of the checkpoint's size:

  python bench/convert_memory.py                    # full size: ~35 GB of disk
  python bench/convert_memory.py --config tiny      # seconds, for a smoke run

Conversions: hf -> native (Orbax MODEL_DIR), hf -> hf float16 encoder-only
(the released `-enc` export), and native -> hf.
"""
import os
import pathlib
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
import numpy as np

from prottrans_jax.convert import formats
from prottrans_jax.convert import hf_t5
from prottrans_jax.models import t5

flags.DEFINE_enum("config", "prott5_xl", sorted(t5.T5_CONFIGS), "Model size.")
flags.DEFINE_string("workdir", None, "Where to write checkpoints (default: a temp dir).")
FLAGS = flags.FLAGS

CONVERSIONS = (
    ("hf", "native", "hf", "native", {}),
    ("hf", "hf", "hf", "hf_enc_fp16", {"encoder_only": True, "dtype": "float16"}),
    ("native", "hf", "native", "hf_back", {}),
)


def write_random_hf_checkpoint(directory: pathlib.Path, config: t5.T5Config) -> int:
  """A random float32 HF checkpoint, one tensor in memory at a time; its size."""
  rng = np.random.default_rng(0)
  shapes = hf_t5.CONVERTER.expected_shapes(config, ("decoder",))
  loaders = {name: (lambda shape=shape: rng.standard_normal(shape, np.float32) * 0.05)
             for name, shape in shapes.items()}
  files = formats.write_hf_checkpoint(directory, loaders, config)
  return sum(f.stat().st_size for f in files if f.suffix == ".safetensors")


def run_python(code: str) -> tuple[float, int]:
  """(wall seconds, peak RSS bytes) of `code` run in a fresh process."""
  start = time.perf_counter()
  process = subprocess.Popen([sys.executable, "-c", code],
                             env={**os.environ, "JAX_PLATFORMS": "cpu"})
  _, status, usage = os.wait4(process.pid, 0)
  wall = time.perf_counter() - start
  if os.waitstatus_to_exitcode(status) != 0:
    raise RuntimeError(f"failed: {code}")
  return wall, usage.ru_maxrss * 1024  # ru_maxrss is KiB on Linux


def run_conversion(source: str, target: str, input_dir: pathlib.Path,
                   output_dir: pathlib.Path, options: dict) -> tuple[float, int]:
  """(wall seconds, peak RSS bytes) of one conversion in a fresh process."""
  return run_python(
      "from prottrans_jax.convert import formats; "
      f"formats.convert_checkpoint({source!r}, {target!r}, {str(input_dir)!r}, "
      f"{str(output_dir)!r}, progress=False, **{options!r})")


def main(argv):
  del argv
  config = t5.T5_CONFIGS[FLAGS.config]
  with tempfile.TemporaryDirectory(dir=FLAGS.workdir) as tmp:
    root = pathlib.Path(tmp)
    start = time.perf_counter()
    size = write_random_hf_checkpoint(root / "hf", config)
    print(f"{FLAGS.config}: random HF checkpoint {size / 1e9:.2f} GB written in "
          f"{time.perf_counter() - start:.1f} s")
    # What the interpreter and libraries take before any tensor is read.
    _, imports_only = run_python("from prottrans_jax.convert import formats")
    print(f"importing the converter alone: peak RSS {imports_only / 1e9:.2f} GB")
    for source, target, input_name, output_name, options in CONVERSIONS:
      wall, peak = run_conversion(source, target, root / input_name, root / output_name, options)
      print(f"{source} -> {target} {options or ''}: {wall:.1f} s, peak RSS "
            f"{peak / 1e9:.2f} GB = {peak / size:.2f} x checkpoint size "
            f"({(peak - imports_only) / size:.3f} x above the imports)")


if __name__ == "__main__":
  app.run(main)
