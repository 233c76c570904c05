"""`prottrans-visualize` from a checkout: python scripts/visualize.py --help.

The command lives in prottrans_jax/commands/visualize.py (installed as
`prottrans-visualize`); this file runs the same code.
"""

from prottrans_jax import commands

if __name__ == "__main__":
  commands.launch("visualize")
