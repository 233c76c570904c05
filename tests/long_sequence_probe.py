"""Embeds one protein of the length given on the command line; prints JSON.

Run in its own process by test_embed_long.py so that the peak resident memory
it reports belongs to that one embedding.
"""

import json
import resource
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prottrans_jax.data import fasta
from prottrans_jax.inference import engine
from prottrans_jax.models import t5

# A small T5 of the real architecture. Attention over 35,000 residues costs
# L^2 x heads x d_kv x 2 = 4e10 multiply-adds per layer, so one layer of two
# 8-wide heads keeps the test within a couple of minutes on two cores.
CONFIG = t5.T5Config(d_model=32, d_kv=8, num_heads=2, d_ff=64,
                     num_encoder_layers=1, num_decoder_layers=1,
                     dtype="float32", attention_chunk_size=512,
                     long_sequence_threshold=2048)


def main(length: int) -> None:
  params = nn.unbox(t5.T5(CONFIG).init(
      jax.random.key(0), jnp.ones((1, 8), jnp.int32),
      method=t5.T5.encode))["params"]
  embedder = engine.Embedder(CONFIG, params,
                             engine.EmbedSettings(max_tokens=1),
                             devices=jax.local_devices()[:1])
  rng = np.random.default_rng(0)
  record = fasta.FastaRecord(
      "long", "long", "".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), length)),
      1)
  [(_, embedding)] = next(embedder.embed([record]))
  peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  print(json.dumps({"rows": embedding.shape[0],
                    "finite": bool(np.isfinite(embedding).all()),
                    "peak_rss_mib": peak_mib}))


if __name__ == "__main__":
  main(int(sys.argv[1]))
