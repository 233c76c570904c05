"""`prottrans-score-variants` from a checkout: python scripts/score_variants.py --help.

The command lives in prottrans_jax/commands/score_variants.py (installed as
`prottrans-score-variants`); this file runs the same code.
"""

from prottrans_jax import commands

if __name__ == "__main__":
  commands.launch("score_variants")
