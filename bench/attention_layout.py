r"""Attention on XLA:CPU: heads-first products against the [B, L, H, D] layout.

`layers.dot_product_attention` transposes q, k, v to [B, H, L, D] before its
two products. This script times it against the same maths contracted
straight from [B, L, H, D] (what it did before), at the shapes of an
embedding batch of the tiny test model and of ProtT5-XL, and prints both
times and their ratio:

  python bench/attention_layout.py
  taskset -c 1 python bench/attention_layout.py   # one core, steadier

Measured 2026-11-26: one core of the 2-core x86_64 CI machine, 3.6x (tiny),
1.19x (XL 12 x 192), 1.11x (XL 4 x 512); an NVIDIA H200 (jax 0.11.2), 1.10x,
1.12x, 1.10x: the layout is no slower on an accelerator.
"""
import time

from absl import app
import jax
import jax.numpy as jnp
import numpy as np

from prottrans_jax.models import layers

# (name, batch, length, heads, head_dim): an embedding batch of the globin
# family (bucket 192) for the tiny model and for ProtT5-XL, and a longer one.
SHAPES = (("tiny", 21, 192, 4, 16), ("prott5_xl", 12, 192, 32, 128),
          ("prott5_xl", 4, 512, 32, 128))


def sequence_major_attention(query, key, value, bias):
  """The reference: products contracted directly from [B, L, H, D]."""
  logits = jnp.einsum("bqhd,bkhd->bhqk", query, key,
                      preferred_element_type=jnp.float32) + bias
  weights = jax.nn.softmax(logits, axis=-1)
  return jnp.einsum("bhqk,bkhd->bqhd", weights, value)


def best_seconds(fn, *args, repeats: int = 5) -> float:
  fn(*args).block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn(*args).block_until_ready()
    times.append(time.perf_counter() - start)
  return min(times)


def main(argv):
  del argv
  print(f"{jax.devices()[0].platform}; best of 5 runs each")
  print(f"{'model':10} {'B x L x H x D':>18} {'heads-first ms':>15} "
        f"{'[B,L,H,D] ms':>13} {'speed-up':>9}")
  rng = np.random.default_rng(0)
  ours = jax.jit(layers.dot_product_attention)
  reference = jax.jit(sequence_major_attention)
  for name, batch, length, heads, head_dim in SHAPES:
    q, k, v = (jnp.asarray(rng.standard_normal((batch, length, heads, head_dim)),
                           jnp.float32) for _ in range(3))
    bias = jnp.asarray(rng.standard_normal((batch, heads, length, length)), jnp.float32)
    # Same maths, checked at full float32 precision (GPUs default to TF32).
    with jax.default_matmul_precision("highest"):
      np.testing.assert_allclose(ours(q, k, v, bias), reference(q, k, v, bias),
                                 rtol=1e-4, atol=1e-4)
    new, old = best_seconds(ours, q, k, v, bias), best_seconds(reference, q, k, v, bias)
    shape = f"{batch}x{length}x{heads}x{head_dim}"
    print(f"{name:10} {shape:>18} {new * 1e3:15.1f} {old * 1e3:13.1f} {old / new:8.2f}x")


if __name__ == "__main__":
  app.run(main)
