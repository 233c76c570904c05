"""prottrans_jax: ProtTrans protein language models in JAX/Flax, from one CPU to a TPU pod."""

__version__ = "0.1.0"
