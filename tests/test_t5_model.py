"""T5 model parity with Hugging Face `transformers` on random tiny weights.

The reference is transformers' T5 (PyTorch, float32) with ProtT5's
architecture: ReLU feed-forward, tied embeddings, vocabulary 128.
"""
import dataclasses
from functools import partial
import json

from flax import linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from prottrans_jax.convert import hf_t5
from prottrans_jax.data import fasta
from prottrans_jax.models import layers
from prottrans_jax.models import t5

PROTT5_RESIDUES = "ALGVSREDTIPKFQNYMHWCXBOUZ"  # ids 3..27; eos 1, pad 0
LENGTHS = (150, 97, 33, 9)  # > 128 residues exercises the far buckets


def tokenize(sequence: str) -> list[int]:
  return [PROTT5_RESIDUES.index(c) + 3 for c in sequence] + [1]


def padded_batch(sequences: list[str]) -> np.ndarray:
  rows = [tokenize(s) for s in sequences]
  batch = np.zeros((len(rows), max(map(len, rows))), np.int32)
  for i, row in enumerate(rows):
    batch[i, :len(row)] = row
  return batch


@pytest.fixture(scope="module")
def proteins(shared_data) -> list[str]:
  records = fasta.read_fasta(shared_data / "sequences" / "globins45.fasta")
  return [next(records).sequence[:n] for n in LENGTHS]


@pytest.fixture(scope="module")
def hf_model() -> transformers.T5ForConditionalGeneration:
  config = transformers.T5Config(
      vocab_size=128, d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2,
      num_decoder_layers=3, feed_forward_proj="relu", is_encoder_decoder=True,
      tie_word_embeddings=True, dropout_rate=0.0, decoder_start_token_id=0)
  torch.manual_seed(0)
  model = transformers.T5ForConditionalGeneration(config).eval()
  with torch.no_grad():
    # HF initialises norm scales to 1; random ones catch a mis-mapped norm.
    for name, p in model.named_parameters():
      if "layer_norm" in name:
        p.uniform_(0.5, 1.5)
  return model


@pytest.fixture(scope="module")
def converted(hf_model):
  """(our config, our params) converted from the HF model's state dict."""
  state = {k: v.numpy() for k, v in hf_model.state_dict().items()}
  config = hf_t5.t5_config_from_hf(hf_model.config.to_dict(), dtype="float32")
  return config, hf_t5.state_dict_to_params(state, config)


def test_encoder_matches_transformers_t5_encoder_model(hf_model, converted, proteins):
  config, params = converted
  tokens = padded_batch(proteins)
  encoder = transformers.T5EncoderModel(hf_model.config).eval()
  missing, unexpected = encoder.load_state_dict(hf_model.state_dict(), strict=False)
  assert not missing and all(k.startswith(("decoder.", "lm_head.")) for k in unexpected)
  with torch.no_grad():
    expected = encoder(input_ids=torch.tensor(tokens, dtype=torch.long),
                       attention_mask=torch.tensor(tokens > 0)).last_hidden_state.numpy()

  ours = jax.jit(partial(t5.T5(config).apply, method=t5.T5.encode))(
      {"params": params}, tokens)
  valid = tokens > 0
  assert ours.shape == expected.shape == tokens.shape + (32,)
  np.testing.assert_array_less(np.abs(np.asarray(ours) - expected)[valid], 1e-5)


def test_decoder_logits_match_transformers_with_teacher_forcing(hf_model, converted, proteins):
  config, params = converted
  inputs = padded_batch(proteins)
  targets = padded_batch([p[:20] for p in proteins])
  decoder_inputs = np.pad(targets[:, :-1], [(0, 0), (1, 0)])  # start token 0
  with torch.no_grad():
    expected = hf_model(
        input_ids=torch.tensor(inputs, dtype=torch.long),
        attention_mask=torch.tensor(inputs > 0),
        decoder_input_ids=torch.tensor(decoder_inputs, dtype=torch.long),
        decoder_attention_mask=torch.tensor(targets > 0)).logits.numpy()

  ours = jax.jit(t5.T5(config).apply)({"params": params}, inputs, decoder_inputs, targets)
  assert ours.dtype == jnp.float32 and ours.shape == expected.shape
  np.testing.assert_array_less(np.abs(np.asarray(ours) - expected)[targets > 0], 1e-5)


def test_hf_to_ours_to_hf_is_byte_identical(hf_model, converted):
  config, params = converted
  original = {k: v.numpy() for k, v in hf_model.state_dict().items()}
  back = hf_t5.params_to_state_dict(params, config)
  # Everything but the tied copies of shared.weight comes back.
  assert set(back) == set(original) - set(hf_t5.TIED_COPIES)
  for name, array in back.items():
    assert array.dtype == original[name].dtype, name
    assert array.tobytes() == original[name].tobytes(), name


def test_every_param_has_logical_axis_names():
  config = dataclasses.replace(t5.T5_CONFIGS["tiny"], dtype="float32")
  tokens = jnp.ones((1, 4), jnp.int32)
  boxed = jax.eval_shape(t5.T5(config).init, jax.random.PRNGKey(0), tokens, tokens)["params"]
  leaves = jax.tree_util.tree_leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert len(leaves) == len(hf_t5.tensor_mappings(config))
  for leaf in leaves:
    assert isinstance(leaf, nn.LogicallyPartitioned)
    assert len(leaf.names) == leaf.value.ndim and all(leaf.names)


@pytest.mark.parametrize("kind", ["encoder", "decoder_self", "cross"])
def test_chunked_attention_equals_full_attention(kind):
  rng = np.random.default_rng(0)
  batch, q_len, heads, head_dim = 2, 61, 4, 8
  kv_len = 45 if kind == "cross" else q_len
  query, key, value = (jnp.asarray(rng.normal(size=(batch, n, heads, head_dim)), jnp.float32)
                       for n in (q_len, kv_len, kv_len))
  # Two packed examples per row, then padding: chunks cross segment and
  # padding boundaries, and 7 does not divide the length.
  def segments(length, split, end):
    ids = np.zeros((batch, length), np.int32)
    ids[:, :split], ids[:, split:end] = 1, 2
    ids[1, end - 5:] = 0
    return jnp.asarray(ids)
  q_segments, kv_segments = segments(q_len, 30, 55), segments(kv_len, 20, 40)
  if kind != "cross":
    kv_segments = q_segments
  bias = layers.AttentionBias(
      q_valid=q_segments > 0, kv_valid=kv_segments > 0, q_segment_ids=q_segments,
      kv_segment_ids=kv_segments,
      rel_table=None if kind == "cross" else jnp.asarray(rng.normal(size=(heads, 32)), jnp.float32),
      causal=kind == "decoder_self", bidirectional=kind == "encoder", max_distance=16)

  full = jax.jit(lambda q, k, v, b: layers.dot_product_attention(q, k, v, b.full()))(
      query, key, value, bias)
  by_chunk = jax.jit(lambda q, k, v, b: layers.chunked_attention(q, k, v, b, 7))(
      query, key, value, bias)
  valid = np.asarray(q_segments > 0)
  assert by_chunk.shape == full.shape == (batch, q_len, heads, head_dim)
  np.testing.assert_array_less(np.abs(np.asarray(full - by_chunk))[valid], 1e-5)


def test_long_inputs_take_the_chunked_path(converted, proteins):
  config, params = converted
  tokens = padded_batch(proteins[:2])
  chunked = dataclasses.replace(config, long_sequence_threshold=16, attention_chunk_size=32)
  encode = lambda cfg: np.asarray(jax.jit(partial(t5.T5(cfg).apply, method=t5.T5.encode))(
      {"params": params}, tokens))
  np.testing.assert_array_less(np.abs(encode(config) - encode(chunked))[tokens > 0], 1e-5)


def test_packed_segments_do_not_see_each_other(converted, proteins):
  config, params = converted
  a, b = padded_batch([proteins[2]])[0], padded_batch([proteins[3]])[0]
  packed = np.concatenate([a, b])
  segments = np.array([[1] * len(a) + [2] * len(b)] + [[1] * len(packed)] * 2)
  alone = np.zeros((2, len(packed)), np.int32)
  alone[0, :len(a)], alone[1, :len(b)] = a, b
  encoded = np.asarray(jax.jit(partial(t5.T5(config).apply, method=t5.T5.encode))(
      {"params": params}, np.stack([packed, *alone]), segments))
  np.testing.assert_allclose(encoded[0, :len(a)], encoded[1, :len(a)], atol=1e-5)
  np.testing.assert_allclose(encoded[0, len(a):], encoded[2, :len(b)], atol=1e-5)


def test_tiny_model_encodes_a_titin_length_protein():
  # One head and one layer: the cost is the 35,000^2 attention itself.
  config = t5.T5Config(d_model=8, d_kv=8, num_heads=1, d_ff=16, num_encoder_layers=1,
                       num_decoder_layers=1, dtype="float32")
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(3, 28, size=(1, 35_000)), jnp.int32)
  model = t5.T5(config)
  params = jax.jit(partial(model.init, method=t5.T5.encode))(jax.random.PRNGKey(0), tokens[:, :8])
  out = jax.jit(lambda p, x: model.apply(p, x, method=t5.T5.encode))(params, tokens)
  assert out.shape == (1, 35_000, 8)
  assert bool(jnp.all(jnp.isfinite(out)))


def test_config_dict_round_trip_and_unknown_key():
  config = t5.T5_CONFIGS["prott5_xl"]
  assert t5.T5Config.from_dict(config.to_dict()) == config
  with pytest.raises(ValueError, match="d_modell"):
    t5.T5Config.from_dict({**config.to_dict(), "d_modell": 3})


def test_released_configs_convert(shared_data):
  configs = shared_data / "hf_configs"
  for name, ours in (("prot_t5_xl_uniref50", "prott5_xl"),
                     ("prot_t5_xxl_uniref50", "prott5_xxl"),
                     ("prot_t5_xl_half_uniref50-enc", "prott5_xl")):
    hf = json.loads((configs / f"{name}.config.json").read_text())
    assert hf_t5.t5_config_from_hf(hf) == t5.T5_CONFIGS[ours], name
  with pytest.raises(ValueError, match="gated-gelu"):
    hf_t5.t5_config_from_hf({**hf, "feed_forward_proj": "gated-gelu"})


def test_flops_per_token_counts_six_n_plus_attention():
  config = t5.T5_CONFIGS["base100m"]
  shapes = jax.eval_shape(t5.T5(config).init, jax.random.PRNGKey(0),
                          jnp.ones((1, 1), jnp.int32), jnp.ones((1, 1), jnp.int32))
  n_params = sum(x.size for x in jax.tree_util.tree_leaves(nn.meta.unbox(shapes)))
  assert 90e6 < n_params < 110e6
  # At length 1 attention is negligible: about 6 FLOPs per parameter per
  # token (relpos tables and norms are not matmuls).
  assert abs(t5.flops_per_token(config, 1, 1) * 2 / (6 * n_params) - 1) < 0.02
  assert t5.flops_per_token(config, 512, 128) > t5.flops_per_token(config, 1, 1)
