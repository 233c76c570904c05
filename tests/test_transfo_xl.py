"""ProtTXL (Transformer-XL) against transformers 4.46's TransfoXLLMHeadModel:
the outputs and the files of ../shared/data/txl_reference (transformers 5.x
no longer has the model), and embedding segment by segment with the memory."""
import dataclasses
import json

from flax import linen as nn
import jax
import numpy as np
import pytest
import safetensors.numpy

from prottrans_jax import families
from prottrans_jax.convert import formats
from prottrans_jax.convert import hf_io
from prottrans_jax.convert import mapping
from prottrans_jax.models import transfo_xl



@pytest.fixture(scope="module")
def reference_dir(shared_data):
  return shared_data / "txl_reference"


@pytest.fixture(scope="module")
def reference(reference_dir):
  """(config, params, arrays) of the transformers 4.46 fixture (its README
  says what each array is)."""
  config, loaders, encoder_only = formats.read_hf_checkpoint(reference_dir / "model",
                                                             dtype="float32")
  assert not encoder_only
  arrays = np.load(reference_dir / "reference.npz")
  return config, mapping.unflatten({n: load() for n, load in loaders.items()}), arrays


def _apply(config, params, *args, method=None):
  model = transfo_xl.TransfoXL(config)
  return jax.tree.map(np.asarray, jax.jit(
      lambda p, *a: model.apply({"params": p}, *a, method=method))(params, *args))


def _segment_and_log_probs(module, tokens, memory):
  """`segment`'s hidden states, and `__call__`'s log-probabilities and
  memory (one program)."""
  hidden, _ = module.segment(tokens, memory)
  log_probs, memory = module(tokens, memory)
  return hidden, memory, log_probs


def _time_major(memory):
  """Ours [n_layer, B, M, d] -> transformers' per layer [M, B, d]."""
  return [np.transpose(layer, (1, 0, 2)) for layer in memory]


def test_segments_with_memory_and_whole_sequence_equal_transformers(reference):
  config, params, ref = reference
  assert (config.n_layer, config.mem_len, config.same_length) == (3, 24, True)
  ids = ref["input_ids"]
  close = dict(atol=1e-5, rtol=0)
  memory = None  # the first segment starts from an empty memory
  for k, segment in enumerate((ids[:, :20], ids[:, 20:])):
    hidden, next_memory, log_probs = _apply(config, params, segment, memory,
                                            method=_segment_and_log_probs)
    np.testing.assert_allclose(hidden, ref[f"segment{k}_last_hidden"], **close)
    losses = -np.take_along_axis(log_probs[:, :-1], segment[:, 1:, None], -1)[..., 0]
    np.testing.assert_allclose(losses, ref[f"segment{k}_losses"], **close)
    # Memory: 20 entries after segment 0, then the last mem_len = 24.
    assert next_memory.shape[2] == (20, 24)[k]
    for i, layer in enumerate(_time_major(next_memory)):
      np.testing.assert_allclose(layer, ref[f"segment{k}_mems_{i}"], **close)
    memory = next_memory
  hidden, _, log_probs = _apply(config, params, ids, None, method=_segment_and_log_probs)
  np.testing.assert_allclose(log_probs, ref["whole_log_probs"], **close)
  np.testing.assert_allclose(hidden, ref["whole_last_hidden"], **close)


def test_ours_to_the_transformers_layout_and_back(reference, reference_dir, tmp_path):
  """The export is the reference's files (names, shapes, values; config.json
  fields) and reads back to the same arrays."""
  config, params, _ = reference
  formats.write_hf_checkpoint(tmp_path, mapping.loaders_of(params), config)
  written = safetensors.numpy.load_file(tmp_path / "model.safetensors")
  original = safetensors.numpy.load_file(reference_dir / "model" / "model.safetensors")
  assert sorted(written) == sorted(original)
  for name, array in original.items():
    assert written[name].shape == array.shape, name
    np.testing.assert_array_equal(written[name], array, err_msg=name)
  exported = json.loads((tmp_path / hf_io.CONFIG_FILE).read_text())
  released = json.loads((reference_dir / "model" / hf_io.CONFIG_FILE).read_text())
  # init_range: the uniform init's range, which nothing here uses.
  for key in set(released) - {"transformers_version", "init_range"}:
    assert exported[key] == released[key], key

  read_config, loaders, _ = formats.read_hf_checkpoint(tmp_path, dtype="float32")
  assert read_config == config
  back = {n: load() for n, load in loaders.items()}
  flat = mapping.flatten(params)
  assert sorted(back) == sorted(flat)
  for name, array in flat.items():
    assert back[name].tobytes() == np.asarray(array).tobytes(), name


def test_a_changed_buffer_or_untied_output_is_refused(reference, tmp_path):
  config, params, _ = reference
  formats.write_hf_checkpoint(tmp_path, mapping.loaders_of(params), config)
  tensors = safetensors.numpy.load_file(tmp_path / "model.safetensors")
  bad = dict(tensors, **{"transformer.pos_emb.inv_freq":
                         tensors["transformer.pos_emb.inv_freq"] * 2})
  safetensors.numpy.save_file(bad, tmp_path / "model.safetensors")
  with pytest.raises(mapping.ConversionError, match="pos_emb.inv_freq differs"):
    formats.read_hf_checkpoint(tmp_path)
  untied = dict(tensors, **{"crit.out_layers.0.weight": np.zeros((30, 64), np.float32)})
  safetensors.numpy.save_file(untied, tmp_path / "model.safetensors")
  _, loaders, _ = formats.read_hf_checkpoint(tmp_path)
  with pytest.raises(mapping.ConversionError, match="tied to the embedding"):
    loaders["embedder/embedding"]()


def test_segment_by_segment_equals_the_whole_sequence_where_it_should(reference):
  """Query t attends to keys t - mem_len < p <= t with `same_length` (in
  one segment as with the memory), so any segment length gives the whole
  run. Without it, one segment attends to every earlier key but segments
  only to the memory and their own: the same only while every segment
  starts at most mem_len in."""
  config, params, ref = reference
  ids = ref["input_ids"]
  # Segments of 7: the last one padded.
  segmented = dataclasses.replace(config, segment_length=7)
  np.testing.assert_allclose(
      _apply(segmented, params, ids, method=transfo_xl.TransfoXL.encode),
      ref["whole_last_hidden"], atol=1e-5, rtol=0)
  causal = dataclasses.replace(config, same_length=False, segment_length=40)
  whole = _apply(causal, params, ids, method=transfo_xl.TransfoXL.encode)
  # Segments of 20: the last starts at 20 <= mem_len 24: the memory holds
  # everything before it.
  np.testing.assert_allclose(_apply(dataclasses.replace(causal, segment_length=20), params,
                                    ids, method=transfo_xl.TransfoXL.encode),
                             whole, atol=1e-5, rtol=0)
  # Segments of 8: the one starting at 32 has lost tokens 0..7.
  eight = _apply(dataclasses.replace(causal, segment_length=8), params, ids,
                 method=transfo_xl.TransfoXL.encode)
  np.testing.assert_allclose(eight[:, :32], whole[:, :32], atol=1e-5, rtol=0)
  assert np.abs(eight[:, 32:] - whole[:, 32:]).max() > 1e-3


def test_a_long_protein_needs_memory_for_a_segment_not_its_length():
  """XLA's temporary memory of `encode`, compiled (not run) for 256 and
  16,384 residues: segment by segment it grows by a few bytes per token
  (ids, masks), where one float per residue and channel would be 4 MiB and
  one segment of the whole length needs attention scores of L x L."""
  config = dataclasses.replace(transfo_xl.TRANSFO_XL_CONFIGS["tiny"].with_dtype("float32"),
                               segment_length=64, mem_len=64)
  family = families.get("transfo_xl")
  params = nn.meta.unbox(jax.eval_shape(
      lambda rng: family.init(family.module(config), rng), jax.random.key(0)))

  def temp_bytes(config, length):
    tokens = jax.ShapeDtypeStruct((1, length), np.int32)
    compiled = jax.jit(lambda p, t: family.module(config).apply(
        {"params": p}, t, method=family.encode)).lower(
            params, tokens).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  short, long = temp_bytes(config, 256), temp_bytes(config, 16384)
  assert long - short < 16 * 16384
  whole = dataclasses.replace(config, segment_length=1024)
  assert temp_bytes(whole, 1024) > 4 * 1024 * 1024 * config.n_head > long
