"""Where an encoder's weights come from: our checkpoints or Hugging Face."""

import dataclasses
from typing import Any

import numpy as np

from prottrans_jax import checkpoints
from prottrans_jax import families
from prottrans_jax import fs
from prottrans_jax.convert import formats
from prottrans_jax.convert import mapping


@dataclasses.dataclass(frozen=True)
class LoadedModel:
  """An encoder's weights and where they came from (recorded in the output)."""
  name: str  # Model family, e.g. "t5".
  config: Any
  params: Any
  source: str  # Checkpoint path and step, or Hugging Face directory.


def from_checkpoint(path: str) -> LoadedModel:
  """A MODEL_DIR (its latest step) or one step's directory of ours, local or
  a URL (`gs://...`, which Orbax reads directly).

  The checkpoint records its model family and configuration, so nothing
  else is needed; any family of `prottrans_jax.families` embeds.
  """
  step_dir = checkpoints.step_directory(path)
  model_name, config, params = checkpoints.restore_params(step_dir)
  return LoadedModel(model_name, config, params, source=str(step_dir))


def from_hf(directory: str) -> LoadedModel:
  """A Hugging Face ProtT5, ProtBert, ProtAlbert or ProtElectra directory
  (config.json + safetensors or pytorch_model.bin), local or a URL; a URL
  is copied to a local temporary directory first (safetensors and torch
  read local files), which needs the checkpoint's size in local disk.

  Full models, task models (BertForMaskedLM, ElectraForPreTraining, ...) and
  the encoder-only releases (e.g. the float16 `prot_t5_xl_half_uniref50-enc`)
  all work; only the encoder is read, one tensor at a time, and cast to the
  parameter dtype.
  """
  with fs.local_copy(directory) as local:
    config, loaders, _ = formats.read_hf_checkpoint(local, encoder_only=True)
    dtype = np.dtype(config.param_dtype)
    params = mapping.unflatten(
        {name: np.asarray(load(), dtype=dtype) for name, load in loaders.items()})
  return LoadedModel(families.of(config).name, config, params,
                     source=str(directory))
