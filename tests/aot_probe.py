"""Ahead-of-time compilation for a TPU topology, through the library call
scripts/aot_compile.py makes; prints one JSON line.

  python tests/aot_probe.py GIN_FILE [NAME=VALUE ...]

Run in its own process by test_aot_compile.py, so that libtpu is loaded into
that process only and the test session keeps its 8 host CPU devices. Besides
the pod file's report, it records what libtpu describes for the slices
named in the README and the errors of meshes that do not fit the slice.
"""

import json
import sys

from prottrans_jax import gin_utils
from prottrans_jax import partitioning
from prottrans_jax.training import aot
from prottrans_jax.training import trainer

# Slice names -> what libtpu describes for them.
SLICES = ("v3-8", "v3-1024", "v4-8", "v4-128", "v4-256", "v5p-8", "v5p-256")
# Partitions that do not lay a mesh over the 4 devices of the test's slice.
BAD_PARTITIONS = {
    "not_dividing": partitioning.PartitionConfig(num_partitions=3),
    "fewer_devices": partitioning.PartitionConfig(mesh_shape=(1, 2)),
}


def main(gin_file: str, bindings: list[str]) -> None:
  gin_utils.parse([gin_file], bindings, unused_macros=aot.UNUSED_MACROS)
  options = gin_utils.configured_arguments(aot.compile_train_step)
  train_arguments = gin_utils.configured_arguments(trainer.train)
  # The library call of scripts/aot_compile.py.
  report = aot.compile_train_step(train_arguments=train_arguments, **options)

  slices = {}
  for name in SLICES:
    devices = aot.topology_devices(aot.parse_topology(name))
    slices[name] = {"devices": len(devices),
                    "device_kind": devices[0].device_kind,
                    "chips": aot.parse_topology(name).chips}
  # The same step scanned and in 2 microbatches: XLA's cost analysis counts
  # each loop body once, the counted figures every layer and microbatch.
  scanned_arguments = {
      **train_arguments, "num_microbatches": 2,
      "model_config": train_arguments["model_config"].with_layer_options(
          scan_layers=True)}
  scanned = aot.compile_train_step(train_arguments=scanned_arguments,
                                   **options)
  errors = {}
  for name, partition in BAD_PARTITIONS.items():
    try:
      aot.compile_train_step(
          train_arguments={**train_arguments, "partition": partition},
          **options)
    except aot.AotError as e:
      errors[name] = str(e)
  print(json.dumps({
      "memory": dict(report.memory),
      "state_bytes": report.state_bytes,
      "total_bytes": report.total_bytes,
      "hbm_bytes_per_device": report.hbm_bytes_per_device,
      "fits": report.fits,
      "mesh_shape": dict(report.mesh_shape),
      "num_devices": report.topology.num_devices,
      "device_kind": report.device_kind,
      "jax_topology": report.topology.jax_name,
      "xla_flops_per_device": report.xla_flops_per_device,
      "model_flops_per_device": report.model_flops_per_device,
      "cost_method": report.cost_method,
      "scanned": {"xla_flops_per_device": scanned.xla_flops_per_device,
                  "xla_flops_as_compiled": scanned.xla_flops_as_compiled,
                  "cost_method": scanned.cost_method,
                  "total_bytes": scanned.total_bytes},
      "text": report.text(),
      "slices": slices,
      "errors": errors,
  }))


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2:])
