"""`prottrans-eval` from a checkout: python scripts/eval.py --help.

The command lives in prottrans_jax/commands/eval.py (installed as
`prottrans-eval`); this file runs the same code.
"""

from prottrans_jax import commands

if __name__ == "__main__":
  commands.launch("eval")
