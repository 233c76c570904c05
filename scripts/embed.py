"""`prottrans-embed` from a checkout: python scripts/embed.py --help.

The command lives in prottrans_jax/commands/embed.py (installed as
`prottrans-embed`); this file runs the same code.
"""

from prottrans_jax import commands

if __name__ == "__main__":
  commands.launch("embed")
