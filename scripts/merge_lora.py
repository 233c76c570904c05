"""`prottrans-merge-lora` from a checkout: python scripts/merge_lora.py --help.

The command lives in prottrans_jax/commands/merge_lora.py (installed as
`prottrans-merge-lora`); this file runs the same code.
"""

from prottrans_jax import commands

if __name__ == "__main__":
  commands.launch("merge_lora")
