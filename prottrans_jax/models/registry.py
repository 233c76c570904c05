"""Deprecated alias of `prottrans_jax.families` (kept for one release).

`FAMILIES`, `get` and `family_of` (now `families.of`) moved to
prottrans_jax/families.py, the one record per model family; `with_dtype`
is now the config's own method (`config.with_dtype(dtype)`).
"""
import warnings

from prottrans_jax.families import FAMILIES, ModelFamily, get  # pylint: disable=unused-import
from prottrans_jax.families import of as family_of  # pylint: disable=unused-import

warnings.warn("prottrans_jax.models.registry moved to prottrans_jax.families; the old "
              "name will be removed in the next release", DeprecationWarning, stacklevel=2)


def with_dtype(config, dtype: str):
  """Deprecated: `config.with_dtype(dtype)`."""
  return config.with_dtype(dtype)
