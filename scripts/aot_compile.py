r"""Compiles the train step for a TPU pod slice ahead of time, on a machine
without TPUs, and says whether it fits in HBM (MaxText's train_compile.py).

  bash scripts/setup_env.sh --aot      # once: the pinned libtpu into .libtpu/
  .venv/bin/python scripts/aot_compile.py --gin_file=pods/prott5_tiny_v4-8.gin

A pod gin file names its topology (`aot.compile_train_step.topology`); any
training configuration can be given one with --topology:

  .venv/bin/python scripts/aot_compile.py --gin_file=models/prott5_xl.gin \
    --gin_file=runs/pretrain.gin --topology=v4-128 \
    --gin.partitioning.PartitionConfig.mesh_shape="(16, 4)"

Prints HBM per device (XLA's memory analysis), FLOPs per step (XLA's cost
analysis beside the model formula) and the estimated step time and MFU.
Exit status: 0 fits, 3 at or above 90% of HBM, 1 a configuration error
(unknown topology, no libtpu, a mesh that does not cover the slice, a gin
typo).
"""

import sys

from absl import app
from absl import flags
from absl import logging

from prottrans_jax import gin_utils
from prottrans_jax.training import aot
from prottrans_jax.training import trainer

EXIT_DOES_NOT_FIT = 3

_GIN_FILES = flags.DEFINE_multi_string(
    "gin_file", [], "gin files, in order: a pod file, or a model file then a "
    "run file; --gin.NAME=VALUE binds a macro or parameter after them.")
_TOPOLOGY = flags.DEFINE_string(
    "topology", None, "TPU slice (v3-1024, v4-128, v5p-256: TensorCores) or "
    "jax topology (v4:4x4x4: chips); overrides the gin files' "
    "aot.compile_train_step.topology.")


def main(argv, bindings):
  del argv
  try:
    gin_utils.parse(_GIN_FILES.value, bindings,
                    unused_macros=aot.UNUSED_MACROS)
  except gin_utils.GinConfigError as e:
    raise app.UsageError(str(e)) from e
  logging.set_verbosity(logging.INFO)
  options = gin_utils.configured_arguments(aot.compile_train_step)
  if _TOPOLOGY.value:
    options["topology"] = _TOPOLOGY.value
  try:
    report = aot.compile_train_step(
        train_arguments=gin_utils.configured_arguments(trainer.train),
        **options)
  except aot.AotError as e:
    raise app.UsageError(str(e)) from e
  print(report.text(), flush=True)
  if not report.fits:
    sys.exit(EXIT_DOES_NOT_FIT)


if __name__ == "__main__":
  _argv, _bindings = gin_utils.split_gin_bindings(sys.argv)
  app.run(lambda argv: main(argv, _bindings), argv=_argv)
