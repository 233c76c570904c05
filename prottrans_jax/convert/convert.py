"""Deprecated alias of `prottrans_jax.convert.formats` (kept for one release)."""
import warnings

from prottrans_jax.convert.formats import *  # pylint: disable=wildcard-import,unused-wildcard-import

warnings.warn("prottrans_jax.convert.convert is now prottrans_jax.convert.formats; the old "
              "name will be removed in the next release", DeprecationWarning, stacklevel=2)
