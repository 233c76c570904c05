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
analysis beside the model formula) and the estimated step time and MFU. XLA
counts a loop body once, so a scanned or microbatched step is compiled twice
more to count every layer and microbatch (--nocount_loops: once, figures as
XLA gives them). Exit status: 0 fits, 3 at or above 90% of HBM (or libtpu
cannot place it in HBM at all), 1 a configuration error
(unknown topology, no libtpu, a mesh that does not cover the slice, a gin
typo).
"""

import json
import os
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
_JSON_OUTPUT = flags.DEFINE_string(
    "json_output", None, "also write the report's figures to this JSON file "
    "(what bench/train_throughput.py reads).")
_COUNT_LOOPS = flags.DEFINE_bool(
    "count_loops", True, "for a scanned or microbatched step, compile it "
    "twice more (one microbatch, 1 and 2 layers per loop iteration) so that "
    "FLOPs, step time and MFU count every layer and microbatch: XLA's cost "
    "analysis counts a loop body once.")


flags.register_validator(
    "json_output", lambda path: not path or os.path.isdir(
        os.path.dirname(os.path.abspath(path))),
    message="--json_output: its directory does not exist (checked before "
    "compiling, which takes minutes)")


def _write_json(figures):
  if _JSON_OUTPUT.value:
    with open(_JSON_OUTPUT.value, "w") as f:
      json.dump(figures, f, indent=1)


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
  options["count_loops"] = _COUNT_LOOPS.value
  try:
    report = aot.compile_train_step(
        train_arguments=gin_utils.configured_arguments(trainer.train),
        **options)
  except aot.DoesNotFit as e:
    print(f"DOES NOT FIT: {e}", flush=True)
    _write_json({"fits": False, "does_not_fit": str(e)})
    sys.exit(EXIT_DOES_NOT_FIT)
  except aot.AotError as e:
    raise app.UsageError(str(e)) from e
  print(report.text(), flush=True)
  _write_json(report.summary())
  if not report.fits:
    sys.exit(EXIT_DOES_NOT_FIT)


if __name__ == "__main__":
  _argv, _bindings = gin_utils.split_gin_bindings(sys.argv)
  app.run(lambda argv: main(argv, _bindings), argv=_argv)
