"""Embedding: loading encoders, the engine, sharded HDF5 output."""

from prottrans_jax.inference.shards import read_embeddings  # noqa: F401
