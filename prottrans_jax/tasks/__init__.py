"""SeqIO task registrations: `import prottrans_jax.tasks` registers every
task by name.

Registration is a side effect kept at the edges: scripts, tests and gin
files import this package; library modules never do (they look tasks up in
seqio's registry by name).
"""

import seqio

from prottrans_jax.tasks import protein  # pylint: disable=unused-import


def get_task(name: str) -> seqio.Task:
  """The registered task `name`, or a ValueError listing what is registered."""
  if name not in seqio.TaskRegistry.names():
    known = ", ".join(sorted(seqio.TaskRegistry.names()))
    raise ValueError(f"unknown task {name!r}; registered tasks: {known}")
  return seqio.get_mixture_or_task(name)
