"""Loading for embedding: the encoder alone, straight into its shardings.

`loading.from_checkpoint(path, settings)` reads only the encoder's tensors
and puts each into the sharding the Embedder runs it in: on the 8 test
devices with `num_partitions=8`, every `mlp`/`heads`-wide weight is split 8
ways and no device ever holds it whole. The Embedder uses those arrays as
they are and embeds exactly as from a whole-model load.
"""
import dataclasses
import pathlib

import jax
import numpy as np
import pytest

from prottrans_jax import checkpoints
from prottrans_jax import families
from prottrans_jax import partitioning
from prottrans_jax.convert import formats
from prottrans_jax.convert import mapping
from prottrans_jax.data import fasta
from prottrans_jax.inference import engine
from prottrans_jax.inference import loading
from prottrans_jax.models import albert
from prottrans_jax.models import bert
from prottrans_jax.models import electra
from prottrans_jax.models import t5

# Every split dimension divides by 8: heads (8), joined heads x kv (128),
# mlp (256), vocab (128). Tensors of 64 KiB and more keep the checkpoint's
# metadata a few percent of the encoder's bytes (the read bound below); a
# deeper decoder makes reading it unmistakable.
CONFIG = dataclasses.replace(t5.T5_CONFIGS["tiny"], d_model=128, d_kv=16,
                             num_heads=8, d_ff=256, num_encoder_layers=2,
                             num_decoder_layers=4)
SETTINGS = engine.EmbedSettings(num_partitions=8)
RECORDS = [fasta.FastaRecord(f"p{i}", f"p{i}", sequence, i + 1) for i, sequence in
           enumerate(("MVLSPADKTNVKAAWGKVGAHAGEYGAEALERMFLSFPTTKTYFPHF",
                      "MKTAYIAKQRQISFVKSHFSRQ"))]


def _bytes_read() -> int:
  """Bytes this process (all its threads: Orbax reads on tensorstore's) has
  read through read-like system calls, page cache hits included."""
  for line in pathlib.Path("/proc/self/io").read_text().splitlines():
    if line.startswith("rchar:"):
      return int(line.split()[1])
  raise AssertionError("/proc/self/io has no rchar")


def _write_checkpoint(model_dir, config, step=0, drop=None):
  """A params-only checkpoint of random `config` weights (whole model)."""
  rng = np.random.default_rng(2)
  abstract = families.abstract_params(families.of(config), config)
  flat = {name: rng.normal(0, 0.5, leaf.shape).astype(leaf.dtype)
          for name, leaf in mapping.flatten(abstract).items() if name != drop}
  checkpoints.write_params_checkpoint(model_dir, mapping.unflatten(flat), config,
                                      step=step)
  return flat


def _embed(loaded):
  embedder = engine.Embedder(loaded.config, loaded.params, SETTINGS)
  return {r.id: e for batch in embedder.embed(RECORDS) for r, e in batch}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("prott5")
  _write_checkpoint(path, CONFIG, step=3)
  return path


@pytest.fixture(scope="module")
def sharded(model_dir):
  """The encoder loaded for SETTINGS, and the bytes the load read."""
  before = _bytes_read()
  loaded = loading.from_checkpoint(str(model_dir), SETTINGS)
  return loaded, _bytes_read() - before


def test_only_the_encoder_is_read_and_each_device_holds_its_shards(
    model_dir, sharded):
  loaded, bytes_read = sharded
  assert (loaded.name, loaded.config) == ("t5", CONFIG)
  assert loaded.source.endswith("checkpoints/3")

  # Exactly the encoder's tensors: none of the decoder's.
  _, _, on_disk = checkpoints.lazy_params(model_dir)
  on_disk = mapping.flatten(on_disk)
  params = mapping.flatten(loaded.params)
  assert set(params) == {n for n in on_disk if not n.startswith("decoder/")}
  assert loaded.tensors_read == len(params) < len(on_disk)

  # Split 8 ways on the Embedder's mesh: each device holds 1/8 of the split
  # dimension; the norms' scales are replicated.
  mesh = engine.embedding_mesh(SETTINGS)
  split = expected_peak = 0
  for name, array in params.items():
    assert array.sharding.mesh == mesh, name
    spec = tuple(array.sharding.spec) + (None,) * array.ndim
    axes = [d for d in range(array.ndim) if spec[d] == partitioning.MODEL_AXIS]
    assert len(array.addressable_shards) == 8, name
    for shard in array.addressable_shards:
      assert shard.data.shape == tuple(
          n // 8 if d in axes else n for d, n in enumerate(array.shape)), name
    if name.endswith(("mlp/wi/kernel", "mlp/wo/kernel", "query/kernel",
                      "out/kernel", "rel_embedding")):
      assert axes, f"{name} is not split over the model axis"
    split += bool(axes)
    expected_peak += array.nbytes // 8 if axes else array.nbytes
  assert split == len(params) - 5  # 2 x 2 layer norms and the final one.

  # Reported peak per device: an eighth of each split tensor plus the
  # replicated ones, well under the encoder's size.
  encoder_bytes = sum(a.nbytes for a in params.values())
  assert loaded.max_device_bytes == max(loading.device_bytes(loaded.params).values())
  assert loaded.max_device_bytes == expected_peak < encoder_bytes / 7

  # Bytes read from disk. Stored zstd-compressed, random float32 tensors
  # shrink by well under 20%, so reading the encoder's tensors costs at
  # least 0.8x their raw bytes; on top come the checkpoint's metadata
  # (tree, shardings, array metadata, OCDBT manifests and index nodes: ~3%
  # here, read twice), within 10% of the encoder. The decoder alone would
  # add ~2.5x the encoder, and a second read of every split tensor (what
  # Orbax's sharded restore does for one-chunk tensors) ~0.9x: both fail.
  decoder_bytes = sum(np.prod(a.shape) * a.dtype.itemsize
                      for n, a in on_disk.items() if n.startswith("decoder/"))
  assert decoder_bytes > 2 * encoder_bytes
  disk_bytes = sum(f.stat().st_size for f in
                   (model_dir / "checkpoints" / "3" / "params").rglob("*")
                   if f.is_file())
  assert 0.8 * encoder_bytes < bytes_read < 1.1 * encoder_bytes < disk_bytes / 3


def test_embeddings_equal_the_whole_model_load_bit_for_bit(model_dir, sharded):
  """The same parameter values on the same shardings run the same compiled
  program, so the outputs are identical, not merely close."""
  loaded, _ = sharded
  embedder = engine.Embedder(loaded.config, loaded.params, SETTINGS)
  # Kept as they are: no host round trip, no copy.
  for kept, given in zip(jax.tree_util.tree_leaves(embedder.params),
                         jax.tree_util.tree_leaves(loaded.params)):
    assert kept is given
  whole = loading.from_checkpoint(str(model_dir))
  assert "decoder" in whole.params  # Today's path for other callers.
  from_sharded, from_whole = _embed(loaded), _embed(whole)
  assert from_sharded.keys() == from_whole.keys() == {r.id for r in RECORDS}
  for key, embedding in from_sharded.items():
    np.testing.assert_array_equal(embedding, from_whole[key])


def test_host_memory_bound_reads_in_groups_to_the_same_arrays(model_dir, sharded):
  """`max_host_bytes` below one tensor: every tensor is its own restore."""
  loaded, _ = sharded
  target = engine.encoder_params_target(CONFIG, SETTINGS)
  params, num_params = checkpoints.restore_params_subset(model_dir, target,
                                                         max_host_bytes=1)
  assert num_params == len(mapping.flatten(checkpoints.lazy_params(model_dir)[2]))
  for (name, array), expected in zip(mapping.flatten(params).items(),
                                     mapping.flatten(loaded.params).values()):
    assert array.sharding == expected.sharding, name
    np.testing.assert_array_equal(np.asarray(array), np.asarray(expected),
                                  err_msg=name)


def test_a_checkpoint_written_scanned_loads_the_same(tmp_path, sharded):
  """A scanned run stores the canonical layout: it loads into the same
  arrays, and the config says which layout they are in."""
  loaded, _ = sharded
  scanned = CONFIG.with_layer_options(scan_layers=True)
  family = families.of(CONFIG)
  canonical = mapping.unflatten(_write_checkpoint(tmp_path / "unscanned", CONFIG))
  manager = checkpoints.checkpoint_manager(tmp_path / "scanned", async_save=False)
  checkpoints.save(manager, 1, params=family.to_layout(scanned, canonical),
                   config=scanned)
  manager.close()
  assert checkpoints.checkpoint_model_config(tmp_path / "scanned") == ("t5", scanned)

  from_scanned = loading.from_checkpoint(str(tmp_path / "scanned"), SETTINGS)
  assert from_scanned.config == CONFIG  # The params' layout: unscanned.
  expected = mapping.flatten(canonical)
  for name, array in mapping.flatten(from_scanned.params).items():
    np.testing.assert_array_equal(np.asarray(array), expected[name], err_msg=name)
  assert (jax.tree_util.tree_map(lambda a: a.sharding, from_scanned.params)
          == jax.tree_util.tree_map(lambda a: a.sharding, loaded.params))


def test_a_missing_encoder_tensor_is_an_error_naming_it(tmp_path):
  _write_checkpoint(tmp_path, CONFIG, drop="encoder/layers_1/mlp/wo/kernel")
  with pytest.raises(ValueError, match="lacks parameter encoder/layers_1/mlp/wo/kernel"):
    loading.from_checkpoint(str(tmp_path), SETTINGS)


def test_hugging_face_tensors_go_straight_into_their_shardings(model_dir, sharded,
                                                               tmp_path):
  loaded, _ = sharded
  formats.convert_checkpoint("native", "hf", model_dir, tmp_path / "hf",
                             progress=False)
  from_hf = loading.from_hf(str(tmp_path / "hf"), SETTINGS)
  assert from_hf.tensors_read == loaded.tensors_read
  assert from_hf.max_device_bytes == loaded.max_device_bytes
  for (name, array), expected in zip(mapping.flatten(from_hf.params).items(),
                                     mapping.flatten(loaded.params).values()):
    assert array.sharding == expected.sharding, name
    np.testing.assert_array_equal(np.asarray(array), np.asarray(expected),
                                  err_msg=name)


_FAMILY_CONFIGS = {
    "bert": bert.BERT_CONFIGS["tiny"],
    "albert": albert.ALBERT_CONFIGS["tiny"],  # One weight set for all layers.
    "electra": electra.ELECTRA_CONFIGS["tiny_discriminator"],
    "electra_pretraining": electra.ElectraPretrainingConfig(
        generator=electra.ELECTRA_CONFIGS["tiny_generator"],
        discriminator=electra.ELECTRA_CONFIGS["tiny_discriminator"]),
}


@pytest.mark.parametrize("name", sorted(_FAMILY_CONFIGS))
def test_every_family_loads_its_encoder_as_the_embedder_places_it(name, tmp_path):
  """What the sharded load returns is what the Embedder makes of a whole
  model (same values, same shardings), minus the family's non-encoder
  parts (heads, ELECTRA's generator)."""
  config, settings = _FAMILY_CONFIGS[name], engine.EmbedSettings(num_partitions=2)
  family = families.get(name)
  on_disk = _write_checkpoint(tmp_path, config)
  loaded = loading.from_checkpoint(str(tmp_path), settings)
  params = mapping.flatten(loaded.params)
  assert set(params) == {n for n in on_disk
                         if mapping.top_level(n) not in family.non_encoder_parts}
  whole = loading.from_checkpoint(str(tmp_path))
  placed = mapping.flatten(engine.Embedder(whole.config, whole.params, settings).params)
  assert placed.keys() == params.keys()
  for key, array in params.items():
    assert array.sharding == placed[key].sharding, key
    np.testing.assert_array_equal(np.asarray(array), np.asarray(placed[key]),
                                  err_msg=key)
