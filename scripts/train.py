"""`prottrans-train` from a checkout: python scripts/train.py --help.

The command lives in prottrans_jax/commands/train.py (installed as
`prottrans-train`); this file runs the same code.
"""

from prottrans_jax import commands

if __name__ == "__main__":
  commands.launch("train")
