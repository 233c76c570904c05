"""`prottrans-train-downstream` from a checkout: python scripts/train_downstream.py --help.

The command lives in prottrans_jax/commands/train_downstream.py (installed as
`prottrans-train-downstream`); this file runs the same code.
"""

from prottrans_jax import commands

if __name__ == "__main__":
  commands.launch("train_downstream")
