"""`prottrans-convert` from a checkout: python scripts/convert_checkpoint.py --help.

The command lives in prottrans_jax/commands/convert_checkpoint.py (installed as
`prottrans-convert`); this file runs the same code.
"""

from prottrans_jax import commands

if __name__ == "__main__":
  commands.launch("convert_checkpoint")
