"""`prottrans-merge-embeddings` from a checkout: python scripts/merge_embeddings.py --help.

The command lives in prottrans_jax/commands/merge_embeddings.py (installed as
`prottrans-merge-embeddings`); this file runs the same code.
"""

from prottrans_jax import commands

if __name__ == "__main__":
  commands.launch("merge_embeddings")
