"""Deprecated: the seqio tasks moved to `prottrans_jax.tasks`.

`import tasks` still registers them (and `tasks.get_task`, `tasks.protein`
still work) for one release, with a DeprecationWarning.
"""

import sys
import warnings

from prottrans_jax.tasks import get_task  # pylint: disable=unused-import
from prottrans_jax.tasks import protein

sys.modules[__name__ + ".protein"] = protein  # `import tasks.protein`, too

warnings.warn(
    "`import tasks` is deprecated and goes in the next release: use "
    "`import prottrans_jax.tasks` (in gin files, too)",
    DeprecationWarning, stacklevel=2)
