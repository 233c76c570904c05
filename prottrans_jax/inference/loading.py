"""Where an encoder's weights come from: our checkpoints or Hugging Face.

Given the embedding's `EmbedSettings`, both loaders keep only the encoder and
put each of its tensors straight into the sharding the embedding engine runs
it in (`engine.encoder_params_target`: the same mesh and rules as
`engine.Embedder`, which then uses them as they are). No device ever holds
a whole tensor the mesh splits, so a model larger than one device's memory
(ProtT5-XXL's encoder, ~22 GB in float32) embeds model-parallel. Without
settings they return the parameters whole, as other callers want them.
"""

import collections
import dataclasses
import logging
from typing import Any, Sequence

import jax
import numpy as np

from prottrans_jax import checkpoints
from prottrans_jax import families
from prottrans_jax import fs
from prottrans_jax.convert import formats
from prottrans_jax.convert import hf_io
from prottrans_jax.convert import mapping
from prottrans_jax.inference import engine
from prottrans_jax.inference import file_tokenizer
from prottrans_jax.inference import fingerprint

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LoadedModel:
  """An encoder's weights and where they came from (recorded in the output).

  `tensors_read` and `max_device_bytes` are set by the loaders given
  settings: how many tensors were read from the checkpoint, and the most
  bytes of parameters any one device holds after placement. `fingerprint`
  (set by both loaders; None for parameters made in memory) identifies the
  weight files (`fingerprint.py`): an output records it, so a resume with
  other weights at the same path is refused.
  """
  name: str  # Model family, e.g. "t5".
  config: Any
  params: Any
  # Checkpoint path and step, Hugging Face directory, or Hub model id pinned
  # to its commit (owner/name@commit).
  source: str
  tensors_read: int | None = None
  max_device_bytes: int | None = None
  fingerprint: str | None = None
  # The tokenizer file of a Hugging Face directory (`file_tokenizer`); None:
  # the family's own vocabulary.
  tokenizer: file_tokenizer.FileTokenizer | None = None


def device_bytes(params: Any) -> dict[jax.Device, int]:
  """Bytes of `params` (a tree of `jax.Array`s) on each of this process's
  devices: the sum of the shards it holds. Computed from the shards, as
  `device.memory_stats()` is not available on every platform (None on CPU)."""
  totals = collections.Counter()
  for leaf in jax.tree_util.tree_leaves(params):
    for shard in leaf.addressable_shards:
      totals[shard.device] += shard.data.nbytes
  return dict(totals)


def _placed(name: str, config: Any, params: Any, source: str,
            tensors_read: int, out_of: str, weights: str,
            tokenizer: file_tokenizer.FileTokenizer | None = None) -> LoadedModel:
  """The LoadedModel of sharded `params`, its reads and placement logged."""
  max_bytes = max(device_bytes(params).values())
  logger.info("%s: read %d tensors of %s; the fullest device holds %.1f MB "
              "of the %.1f MB placed", source, tensors_read, out_of,
              max_bytes / 1e6,
              sum(leaf.nbytes for leaf in jax.tree_util.tree_leaves(params)) / 1e6)
  return LoadedModel(name, config, params, source, tensors_read=tensors_read,
                     max_device_bytes=max_bytes, fingerprint=weights,
                     tokenizer=tokenizer)


def from_checkpoint(path: str, settings: engine.EmbedSettings | None = None,
                    devices: Sequence[jax.Device] | None = None, *,
                    whole_model: bool = False) -> LoadedModel:
  """A MODEL_DIR (its latest step) or one step's directory of ours, local or
  a URL (`gs://...`, which Orbax reads directly).

  The checkpoint records its model family and configuration, so nothing
  else is needed; any family of `prottrans_jax.families` embeds.

  With `settings` (those the Embedder will run with, on the same `devices`:
  default as `engine.Embedder`'s), only the encoder's tensors are read (not
  T5's decoder nor the BERT family's heads), each once per process, on the
  host, a group at a time (`checkpoints.restore_params_subset`), and
  `params` are `jax.Array`s already in their shardings on
  `engine.embedding_mesh(settings, devices)`, in the param dtype: each
  device only ever receives its shards. They are in the canonical (unscanned) layout, the disk's, and the
  returned config says so (`scan_layers` off), whichever layout trained
  them. A checkpoint lacking an encoder tensor is a ValueError naming it.

  With `settings` and `whole_model`, the same for the parameters of the
  family's whole network (`engine.embedding_layout`: T5's decoder too, the
  BERT family's masked-LM head), as variant scoring needs them.

  Without `settings`, the whole model in the recorded config's layout on
  the first local device (conversion, evaluation and tests use this).
  """
  step_dir = checkpoints.step_directory(path)
  weights = fingerprint.of_checkpoint_step(
      step_dir, (checkpoints.PARAMS, checkpoints.MODEL_CONFIG))
  if settings is None:
    model_name, config, params = checkpoints.restore_params(step_dir)
    return LoadedModel(model_name, config, params, source=str(step_dir),
                       fingerprint=weights)
  model_name, config = checkpoints.checkpoint_model_config(step_dir)
  config = config.with_layer_options(scan_layers=False)
  target = engine.encoder_params_target(config, settings, devices,
                                        whole_model)
  params, tensors_held = checkpoints.restore_params_subset(step_dir, target)
  return _placed(model_name, config, params, str(step_dir),
                 len(jax.tree_util.tree_leaves(target)),
                 f"the {tensors_held} the checkpoint holds", weights)


def from_hf(directory: str, settings: engine.EmbedSettings | None = None,
            devices: Sequence[jax.Device] | None = None, *,
            whole_model: bool = False) -> LoadedModel:
  """A Hugging Face ProtT5, ProtBert, ProtAlbert, ProtElectra or ProtXLNet directory
  (config.json + safetensors or pytorch_model.bin), local or a URL, or a
  Hub model id (`Rostlab/prot_t5_xl_half_uniref50-enc[@revision]`: its
  directory in the Hub cache, downloaded when online; see
  `hf_io.resolve_model`). A URL is copied to a local temporary directory
  first (safetensors and torch read local files), which needs the
  checkpoint's size in local disk. `source` is the directory as given, or
  for an id, the id pinned to the commit read (`owner/name@commit`).

  Full models, task models (BertForMaskedLM, ElectraForPreTraining, ...) and
  the encoder-only releases (e.g. the float16 `prot_t5_xl_half_uniref50-enc`)
  all work; only the encoder is read, one tensor at a time, and cast to the
  parameter dtype.

  With `settings` (and `devices`, as for `from_checkpoint`), each tensor is
  put straight into its sharding on `engine.embedding_mesh(settings,
  devices)` once read, so no device receives a whole tensor the mesh
  splits; the host still reads each tensor whole (safetensors), one at a
  time. Without, the parameters are host (numpy) arrays. `whole_model`
  (with `settings`) reads and places the whole network's parameters as
  `from_checkpoint` does (a T5ForConditionalGeneration's decoder, a
  *ForMaskedLM's head).

  A tokenizer file in the directory (`spiece.model`, `vocab.txt`,
  `tokenizer.json`) is read into `tokenizer` (`file_tokenizer.from_directory`:
  a file that cannot give one id per residue is a ValueError naming it,
  before any weight is read).
  """
  location = hf_io.resolve_model(directory)
  with fs.local_copy(location.directory) as local:
    config, loaders, _ = formats.read_hf_checkpoint(
        local, encoder_only=not (whole_model and settings is not None))
    tokenizer = file_tokenizer.from_directory(local, families.of(config).name)
    weights = fingerprint.of_hf_directory(local)
    if settings is None:
      dtype = np.dtype(config.param_dtype)
      params = mapping.unflatten(
          {name: np.asarray(load(), dtype=dtype) for name, load in loaders.items()})
      return LoadedModel(families.of(config).name, config, params,
                         source=location.source, fingerprint=weights,
                         tokenizer=tokenizer)
    targets = mapping.flatten(engine.encoder_params_target(
        config, settings, devices, whole_model))
    missing = sorted(set(targets) - set(loaders))
    if missing:
      raise ValueError(f"{location.directory} lacks "
                       f"{'' if whole_model else 'encoder '}parameter(s) "
                       f"{', '.join(missing)}")
    params = mapping.unflatten({
        name: jax.device_put(np.asarray(loaders[name](), dtype=target.dtype),
                             target.sharding)
        for name, target in targets.items()})
  return _placed(families.of(config).name, config, params, location.source,
                 len(targets), "its model" if whole_model else "its encoder",
                 weights, tokenizer)
