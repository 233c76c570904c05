"""Where an encoder's weights come from: our checkpoints or Hugging Face."""

import numpy as np

from prottrans_jax.convert import convert
from prottrans_jax.convert import params as params_lib
from prottrans_jax.inference import run
from prottrans_jax.models import registry
from prottrans_jax.training import checkpoints


def from_checkpoint(path: str) -> run.LoadedModel:
  """A MODEL_DIR (its latest step) or one step's directory of ours.

  The checkpoint records its model family and configuration, so nothing
  else is needed; any family of `models.registry` embeds.
  """
  step_dir = checkpoints.step_directory(path)
  model_name, config, params = checkpoints.restore_params(step_dir)
  registry.get(model_name)  # A clear error for a family the embedder lacks.
  return run.LoadedModel(model_name, config, params, source=str(step_dir))


def from_hf(directory: str) -> run.LoadedModel:
  """A local Hugging Face ProtT5, ProtBert, ProtAlbert or ProtElectra directory
  (config.json + safetensors or pytorch_model.bin).

  Full models, task models (BertForMaskedLM, ElectraForPreTraining, ...) and
  the encoder-only releases (e.g. the float16 `prot_t5_xl_half_uniref50-enc`)
  all work; only the encoder is read, one tensor at a time, and cast to the
  parameter dtype.
  """
  config, loaders, _, _ = convert.read_checkpoint("hf", directory,
                                                  encoder_only=True)
  dtype = np.dtype(config.param_dtype)
  params = params_lib.unflatten(
      {name: np.asarray(load(), dtype=dtype) for name, load in loaders.items()})
  return run.LoadedModel(registry.family_of(config).name, config, params,
                         source=str(directory))
