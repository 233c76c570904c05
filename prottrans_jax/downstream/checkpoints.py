"""A trained head on disk: an Orbax checkpoint with its config.

  HEAD_DIR/checkpoints/<best epoch>/params/   the parameter tree
  HEAD_DIR/checkpoints/<best epoch>/head/     json: HeadConfig, the feature
                                              source and training facts

The config travels inside the step directory, so a head restores from its
directory alone, like the encoders' checkpoints (prottrans_jax/checkpoints.py).
HEAD_DIR may be a local path or a URL (`gs://bucket/heads/ss`): Orbax reads
and writes it through `prottrans_jax.fs` (etils epath).
"""

import logging
from typing import Any, Mapping

import orbax.checkpoint as ocp

from prottrans_jax import fs
from prottrans_jax.downstream import models

PARAMS = "params"
HEAD = "head"


def _manager(directory: fs.PathLike) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      fs.path(directory) / "checkpoints",
      options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True,
                                           enable_async_checkpointing=False),
      item_names=(PARAMS, HEAD))


def save_head(directory: fs.PathLike, config: models.HeadConfig,
              params: Any, step: int, info: Mapping[str, Any]) -> None:
  """Writes the head at `step` (e.g. its best epoch) with `info` (json).

  A head already in `directory` is replaced (logged), so re-running a
  training command gives the new head, never a mix of two.
  """
  with _manager(directory) as manager:
    for old in manager.all_steps():
      logging.warning("replacing the head saved in %s (step %d)", directory,
                      old)
      manager.delete(old)
    manager.save(step, args=ocp.args.Composite(**{
        PARAMS: ocp.args.StandardSave(params),
        HEAD: ocp.args.JsonSave({"config": config.to_dict(),
                                 "info": dict(info)})}), force=True)
    manager.wait_until_finished()


def load_head(directory: fs.PathLike
              ) -> tuple[models.HeadConfig, Any, dict[str, Any]]:
  """(config, params, info) of the head saved in `directory`."""
  with _manager(directory) as manager:
    step = manager.latest_step()
    if step is None:
      raise FileNotFoundError(f"no trained head in {directory}")
    restored = manager.restore(step, args=ocp.args.Composite(**{
        PARAMS: ocp.args.StandardRestore(), HEAD: ocp.args.JsonRestore()}))
  record = restored[HEAD]
  return (models.HeadConfig.from_dict(record["config"]), restored[PARAMS],
          record["info"])
