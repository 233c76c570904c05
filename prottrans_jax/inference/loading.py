"""Where an encoder's weights come from: our checkpoints or Hugging Face."""

import numpy as np

from prottrans_jax.convert import convert
from prottrans_jax.convert import params as params_lib
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


def from_hf(directory: str) -> run.LoadedModel:
  """A local Hugging Face ProtT5 directory (config.json + safetensors).

  Full models and the encoder-only releases (e.g. the float16
  `prot_t5_xl_half_uniref50-enc`) both work; only the encoder is read, one
  tensor at a time, and cast to the parameter dtype.
  """
  config, loaders, _, _ = convert.read_checkpoint("hf", directory,
                                                  encoder_only=True)
  dtype = np.dtype(config.param_dtype)
  params = params_lib.unflatten(
      {name: np.asarray(load(), dtype=dtype) for name, load in loaders.items()})
  return run.LoadedModel("t5", config, params, source=str(directory))
