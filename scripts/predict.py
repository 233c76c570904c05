"""`prottrans-predict` from a checkout: python scripts/predict.py --help.

The command lives in prottrans_jax/commands/predict.py (installed as
`prottrans-predict`); this file runs the same code.
"""

from prottrans_jax import commands

if __name__ == "__main__":
  commands.launch("predict")
