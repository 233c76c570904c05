"""`prottrans-finetune` from a checkout: python scripts/finetune.py --help.

The command lives in prottrans_jax/commands/finetune.py (installed as
`prottrans-finetune`); this file runs the same code.
"""

from prottrans_jax import commands

if __name__ == "__main__":
  commands.launch("finetune")
