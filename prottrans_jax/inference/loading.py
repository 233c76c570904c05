"""Where an encoder's weights come from: our checkpoints or Hugging Face.

Given the embedding settings, a loader puts the encoder's weights straight
where the `Embedder` wants them: each tensor in its sharding over this
process's embedding mesh. From our checkpoints only the encoder's tensors
are read, and of each only the slices this process's devices hold (Orbax
restores into the target shardings), so no device ever holds a whole copy
of a weight the mesh splits and a ProtT5's decoder is never read.
"""

import dataclasses
import logging
from typing import Any, Sequence

import jax
import numpy as np

from prottrans_jax import checkpoints
from prottrans_jax import families
from prottrans_jax import fs
from prottrans_jax.convert import formats
from prottrans_jax.convert import mapping
from prottrans_jax.inference import engine

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LoadedModel:
  """An encoder's weights and where they came from (recorded in the output)."""
  name: str  # Model family, e.g. "t5".
  config: Any
  params: Any
  source: str  # Checkpoint path and step, or Hugging Face directory.


def peak_device_bytes(params: Any) -> int:
  """The most bytes of `params` any one device holds (the sum of its
  addressable shards): what loading placed on the fullest device."""
  per_device = {}
  for leaf in jax.tree_util.tree_leaves(params):
    for shard in leaf.addressable_shards:
      per_device[shard.device] = (per_device.get(shard.device, 0)
                                  + shard.data.nbytes)
  return max(per_device.values(), default=0)


def _log_placement(source: str, params: Any) -> None:
  total = sum(leaf.nbytes for leaf in jax.tree_util.tree_leaves(params))
  logger.info("%s: encoder %.1f MB placed, at most %.1f MB on one device",
              source, total / 1e6, peak_device_bytes(params) / 1e6)


def from_checkpoint(path: str, settings: engine.EmbedSettings | None = None,
                    devices: Sequence[jax.Device] | None = None
                    ) -> LoadedModel:
  """A MODEL_DIR (its latest step) or one step's directory of ours, local or
  a URL (`gs://...`, which Orbax reads directly).

  The checkpoint records its model family and configuration, so nothing
  else is needed; any family of `prottrans_jax.families` embeds. With
  `settings` (the embedding's), only the encoder is read, straight into
  its shardings on `devices` (default: this process's); without, the whole
  model is restored on the first local device.
  """
  step_dir = checkpoints.step_directory(path)
  if settings is None:
    model_name, config, params = checkpoints.restore_params(step_dir)
    return LoadedModel(model_name, config, params, source=str(step_dir))
  _, config = checkpoints.checkpoint_model_config(step_dir)
  model_name, config, params = checkpoints.restore_params_subset(
      step_dir, engine.encoder_targets(config, settings, devices))
  _log_placement(str(step_dir), params)
  return LoadedModel(model_name, config, params, source=str(step_dir))


def from_hf(directory: str, settings: engine.EmbedSettings | None = None,
            devices: Sequence[jax.Device] | None = None) -> LoadedModel:
  """A Hugging Face ProtT5, ProtBert, ProtAlbert or ProtElectra directory
  (config.json + safetensors or pytorch_model.bin), local or a URL; a URL
  is copied to a local temporary directory first (safetensors and torch
  read local files), which needs the checkpoint's size in local disk.

  Full models, task models (BertForMaskedLM, ElectraForPreTraining, ...) and
  the encoder-only releases (e.g. the float16 `prot_t5_xl_half_uniref50-enc`)
  all work; only the encoder is read, one tensor at a time, and cast to the
  parameter dtype. With `settings`, each tensor goes straight to its
  sharding on `devices` (default: this process's) as it is read: the host
  reads whole tensors (safetensors has no slices), no device gets one the
  mesh splits.
  """
  with fs.local_copy(directory) as local:
    config, loaders, _ = formats.read_hf_checkpoint(local, encoder_only=True)
    dtype = np.dtype(config.param_dtype)
    place = lambda name, array: array
    if settings is not None:
      targets = mapping.flatten(engine.encoder_targets(config, settings,
                                                       devices))
      place = lambda name, array: (jax.device_put(array,
                                                  targets[name].sharding)
                                   if name in targets else array)
    params = mapping.unflatten(
        {name: place(name, np.asarray(load(), dtype=dtype))
         for name, load in loaders.items()})
  if settings is not None:
    _log_placement(str(directory), params)
  return LoadedModel(families.of(config).name, config, params,
                     source=str(directory))
