"""Loading a checkpoint for embedding: the encoder only, each device's
slices only, straight into the embedding mesh's shardings."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prottrans_jax import checkpoints
from prottrans_jax.convert import mapping
from prottrans_jax.data import fasta
from prottrans_jax.inference import engine
from prottrans_jax.inference import loading
from prottrans_jax.models import t5

# Tiny, with every model-parallel dimension divisible by 8.
CONFIG = dataclasses.replace(t5.T5_CONFIGS["tiny"], num_heads=8, d_kv=8)
MODEL_PARALLEL = engine.EmbedSettings(num_partitions=8)


def _bytes_read() -> int:
  """Bytes this process has read through system calls (Linux)."""
  with open("/proc/self/io") as f:
    return int(next(line for line in f if line.startswith("rchar")).split()[1])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  params = nn.unbox(t5.T5(CONFIG).init(
      jax.random.key(3), jnp.ones((1, 8), jnp.int32),
      jnp.ones((1, 8), jnp.int32)))["params"]
  path = tmp_path_factory.mktemp("t5_mp8")
  checkpoints.write_params_checkpoint(path, params, step=1, config=CONFIG)
  return path, mapping.flatten(params)


def test_model_parallel_load_reads_the_encoder_into_its_shards(checkpoint):
  path, on_disk = checkpoint
  loaded = loading.from_checkpoint(str(path), MODEL_PARALLEL)
  params = mapping.flatten(loaded.params)
  targets = mapping.flatten(engine.encoder_targets(CONFIG, MODEL_PARALLEL))
  # Exactly the encoder's tensors came back (no decoder, no second copy of
  # anything); they are jax.Arrays in the embedding mesh's shardings.
  assert sorted(params) == sorted(targets)
  assert not any(name.startswith("decoder/") for name in params)
  encoder_bytes = sum(a.nbytes for a in params.values())
  split = 0
  for name, array in params.items():
    assert array.sharding == targets[name].sharding
    spec = array.sharding.spec
    np.testing.assert_array_equal(np.asarray(array), on_disk[name])
    model_dims = [d for d, axis in enumerate(spec) if axis == "model"]
    for dim in model_dims:
      for shard in array.addressable_shards:
        assert shard.data.shape[dim] == array.shape[dim] // 8
    split += bool(model_dims)
    if name.endswith(("mlp/wi/kernel", "mlp/wo/kernel", "query/kernel")):
      assert model_dims, name  # The big weights are split 8 ways.
  assert split >= 4 * CONFIG.num_encoder_layers
  # No device holds more than its slices and the small replicated tensors.
  replicated = sum(a.nbytes for a in params.values()
                   if "model" not in a.sharding.spec)
  expected_peak = replicated + (encoder_bytes - replicated) // 8
  assert loading.peak_device_bytes(loaded.params) == expected_peak
  assert expected_peak < encoder_bytes / 2


def test_the_decoder_is_not_read(checkpoint):
  """Bytes read from disk by one device's load: the encoder's and Orbax's
  metadata, not the decoder's (about as large as the encoder here).

  Counted on one device: Orbax writes each small tensor as one storage
  chunk, which every device of a sharded load reads and slices (from the
  page cache after the first), so a sharded load's read count says nothing
  about which tensors it asked for."""
  path, on_disk = checkpoint
  one_device = dict(devices=jax.devices()[:1])
  loading.from_checkpoint(str(path), engine.EmbedSettings(), **one_device)
  before = _bytes_read()
  loaded = loading.from_checkpoint(str(path), engine.EmbedSettings(),
                                   **one_device)
  read = _bytes_read() - before
  whole_before = _bytes_read()
  loading.from_checkpoint(str(path))
  whole_read = _bytes_read() - whole_before
  decoder_bytes = sum(a.nbytes for n, a in on_disk.items()
                      if n.startswith("decoder/"))
  encoder_bytes = sum(a.nbytes for a in jax.tree.leaves(loaded.params))
  assert decoder_bytes > 0.8 * encoder_bytes
  assert encoder_bytes <= read < encoder_bytes + decoder_bytes / 2, read
  assert whole_read - read > decoder_bytes / 2, (whole_read, read)


def test_sharded_load_embeds_as_the_whole_model_load(checkpoint):
  path, _ = checkpoint
  records = [fasta.FastaRecord(f"p{n}", f"p{n}", "MKTAYIAKQRQISFVKSHFSRQ"[:n], 1)
             for n in (5, 13, 22)]
  sharded = loading.from_checkpoint(str(path), MODEL_PARALLEL)
  whole = loading.from_checkpoint(str(path))
  results = []
  for model in (sharded, whole):
    embedder = engine.Embedder(model.config, model.params, MODEL_PARALLEL)
    results.append({r.id: e for batch in embedder.embed(records)
                    for r, e in batch})
  for record in records:
    np.testing.assert_array_equal(results[0][record.id],
                                  results[1][record.id])


def test_a_checkpoint_lacking_an_encoder_tensor_is_named(checkpoint, tmp_path):
  _, on_disk = checkpoint
  pruned = {n: a for n, a in on_disk.items()
            if n != "encoder/layers_1/mlp/wo/kernel"}
  checkpoints.write_params_checkpoint(tmp_path, mapping.unflatten(pruned),
                                      step=1, config=CONFIG)
  with pytest.raises(ValueError,
                     match="lacks parameter encoder/layers_1/mlp/wo"):
    loading.from_checkpoint(str(tmp_path), MODEL_PARALLEL)
