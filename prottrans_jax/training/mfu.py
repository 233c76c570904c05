"""Peak FLOP/s per device, for model FLOPs utilisation (MFU).

MFU = achieved model FLOP/s per device / the device's peak. Accelerator peaks
are the vendors' dense bfloat16 figures per JAX device (a TPU v3 device is
one core, half a chip; v4 and later expose one device per chip). A CPU has
no published figure worth using, so its peak is measured: a dense float32
matmul on one device.
"""

import time

import jax
import jax.numpy as jnp

# (substring of `device.device_kind`, peak TFLOP/s per JAX device). Checked in
# order, so the more specific names come first.
PEAK_TFLOPS_BY_DEVICE_KIND = (
    ("TPU v5 lite", 197.0),  # v5e
    ("TPU v5e", 197.0),
    ("TPU v5p", 459.0),
    ("TPU v5", 459.0),
    ("TPU v4", 275.0),
    ("TPU v3", 61.5),  # 123 per chip, two cores
    ("H100", 989.0),
    ("A100", 312.0),
)


def measure_matmul_tflops(size: int = 1024, repeats: int = 10,
                          device: jax.Device | None = None) -> float:
  """Achieved TFLOP/s of a dense float32 [size, size] matmul on one device."""
  device = device or jax.local_devices()[0]
  a = jax.device_put(jnp.ones((size, size), jnp.float32), device)
  matmul = jax.jit(lambda x: x @ x)
  matmul(a).block_until_ready()  # Compile outside the timing.
  start = time.perf_counter()
  for _ in range(repeats):
    out = matmul(a)
  out.block_until_ready()
  seconds = time.perf_counter() - start
  return 2 * size**3 * repeats / seconds / 1e12


def published_peak_tflops(device_kind: str) -> float | None:
  """The vendor's peak per JAX device of this `device_kind`, if listed."""
  for kind, tflops in PEAK_TFLOPS_BY_DEVICE_KIND:
    if kind.lower() in device_kind.lower():
      return tflops
  return None


def peak_tflops_per_device(override: float | None = None,
                           device: jax.Device | None = None) -> float:
  """`override` if given, else the device kind's peak (measured on CPU)."""
  if override:
    return float(override)
  device = device or jax.local_devices()[0]
  peak = published_peak_tflops(device.device_kind)
  if peak is not None:
    return peak
  return measure_matmul_tflops(device=device)
