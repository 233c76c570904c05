"""Where an encoder's weights come from: our checkpoints or Hugging Face."""

from prottrans_jax.inference import run
from prottrans_jax.training import checkpoints


def from_checkpoint(path: str) -> run.LoadedModel:
  """A MODEL_DIR (its latest step) or one step's directory of ours.

  The checkpoint records its model configuration, so nothing else is needed.
  """
  step_dir = checkpoints.step_directory(path)
  model_name, config, params = checkpoints.restore_params(step_dir)
  if model_name != "t5":
    raise ValueError(f"{path}: the embedder does not handle model "
                     f"{model_name!r} yet (only t5)")
  return run.LoadedModel(model_name, config, params, source=str(step_dir))
