"""SeqIO task registrations. `import tasks` registers every task by name."""

from tasks import protein  # pylint: disable=unused-import
