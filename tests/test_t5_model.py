"""T5 model parity with Hugging Face `transformers` on random tiny weights.

The reference is transformers' T5 (PyTorch, float32), vocabulary 128, in
ProtT5's architecture (T5 1.0: ReLU feed-forward, tied embeddings) and in
the T5 1.1 variants (untied output layer, gated-GELU feed-forward, both).
"""
import dataclasses
from functools import partial
import json

from flax import linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers

from prottrans_jax.convert import hf_t5
from prottrans_jax.convert import mapping
from prottrans_jax.data import fasta
from prottrans_jax.models import layers
from prottrans_jax.models import t5
from t5_variants import VARIANTS, hf_encoder_output, hf_logits, padded_batch, random_hf_t5
from t5_variants import teacher_forcing

LENGTHS = (150, 97, 33, 9)  # > 128 residues exercises the far buckets


@pytest.fixture(scope="module")
def proteins(shared_data) -> list[str]:
  records = fasta.read_fasta(shared_data / "sequences" / "globins45.fasta")
  return [next(records).sequence[:n] for n in LENGTHS]


def _convert(model: transformers.T5ForConditionalGeneration):
  """(our config, our params) converted from the HF model's state dict."""
  state = {k: v.numpy() for k, v in model.state_dict().items()}
  config = hf_t5.CONVERTER.config_from_hf(model.config.to_dict(), dtype="float32")
  return config, mapping.state_dict_to_params(state, hf_t5.CONVERTER, config,
                                              "T5ForConditionalGeneration")


@pytest.fixture(scope="module")
def hf_model() -> transformers.T5ForConditionalGeneration:
  """ProtT5's architecture (T5 1.0), 2 encoder and 3 decoder layers."""
  return random_hf_t5(num_decoder_layers=3)


@pytest.fixture(scope="module")
def converted(hf_model):
  return _convert(hf_model)


@pytest.fixture(scope="module", params=list(VARIANTS))
def variant(request, hf_model, converted):
  """(variant name, HF model, our config, our params) for every variant."""
  if request.param == "t5_1_0":
    return request.param, hf_model, *converted
  model = random_hf_t5(*VARIANTS[request.param], num_decoder_layers=3)
  return request.param, model, *_convert(model)


def test_config_reads_the_variant(variant):
  name, _, config, params = variant
  feed_forward_proj, tied = VARIANTS[name]
  assert (config.feed_forward_proj, config.tie_word_embeddings) == (feed_forward_proj, tied)
  mlp = params["encoder"]["layers_1"]["mlp"]
  assert set(mlp) == ({"wi_0", "wi_1", "wo"} if config.is_gated_act else {"wi", "wo"})
  assert ("logits_dense" in params["decoder"]) == (not tied)


def test_encoder_matches_transformers_t5_encoder_model(variant, proteins):
  _, hf_model, config, params = variant
  tokens = padded_batch(proteins)
  expected = hf_encoder_output(hf_model, tokens)

  ours = jax.jit(partial(t5.T5(config).apply, method=t5.T5.encode))(
      {"params": params}, tokens)
  valid = tokens > 0
  assert ours.shape == expected.shape == tokens.shape + (32,)
  np.testing.assert_array_less(np.abs(np.asarray(ours) - expected)[valid], 1e-5)


def test_decoder_logits_match_transformers_with_teacher_forcing(variant, proteins):
  _, hf_model, config, params = variant
  inputs = padded_batch(proteins)
  decoder_inputs, targets = teacher_forcing(proteins, 20)
  expected = hf_logits(hf_model, inputs, decoder_inputs, targets)

  ours = jax.jit(t5.T5(config).apply)({"params": params}, inputs, decoder_inputs, targets)
  assert ours.dtype == jnp.float32 and ours.shape == expected.shape
  np.testing.assert_array_less(np.abs(np.asarray(ours) - expected)[targets > 0], 1e-5)


def test_hf_to_ours_to_hf_is_byte_identical(variant):
  _, hf_model, config, params = variant
  original = {k: v.numpy() for k, v in hf_model.state_dict().items()}
  back = mapping.params_to_state_dict(params, hf_t5.CONVERTER, config)
  # Everything but the tied copies of shared.weight comes back; untied,
  # lm_head.weight is a tensor of its own and comes back too.
  assert set(back) == set(original) - set(hf_t5.CONVERTER.tied_copies(config, ["decoder"]))
  assert ("lm_head.weight" in back) == (not config.tie_word_embeddings)
  for name, array in back.items():
    assert array.dtype == original[name].dtype, name
    assert array.tobytes() == original[name].tobytes(), name


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_param_has_logical_axis_names(name):
  feed_forward_proj, tied = VARIANTS[name]
  config = dataclasses.replace(t5.T5_CONFIGS["tiny"], dtype="float32",
                               feed_forward_proj=feed_forward_proj, tie_word_embeddings=tied)
  tokens = jnp.ones((1, 4), jnp.int32)
  boxed = jax.eval_shape(t5.T5(config).init, jax.random.PRNGKey(0), tokens, tokens)["params"]
  leaves = jax.tree_util.tree_leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert len(leaves) == len(hf_t5.CONVERTER.tensor_plan(
      config, "T5ForConditionalGeneration", ["decoder"]))
  for leaf in leaves:
    assert isinstance(leaf, nn.LogicallyPartitioned)
    assert len(leaf.names) == leaf.value.ndim and all(leaf.names)
  # T5X's logical axes for the variant parameters.
  flat = {"/".join(k.key for k in path): leaf for path, leaf in
          jax.tree_util.tree_flatten_with_path(
              boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))[0]}
  mlp = ("wi_0", "wi_1") if config.is_gated_act else ("wi",)
  for wi in mlp:
    assert flat[f"decoder/layers_1/mlp/{wi}/kernel"].names == ("embed", "mlp")
  assert flat["decoder/layers_1/mlp/wo/kernel"].names == ("mlp", "embed")
  if tied:
    assert not any("logits_dense" in n for n in flat)
  else:
    logits = flat["decoder/logits_dense/kernel"]
    assert logits.names == ("embed", "vocab") and logits.value.shape == (64, 128)


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
  # A record written before the variant fields existed is T5 1.0.
  old = {k: v for k, v in config.to_dict().items()
         if k not in ("feed_forward_proj", "tie_word_embeddings")}
  assert t5.T5Config.from_dict(old) == config
  assert (config.feed_forward_proj, config.tie_word_embeddings) == ("relu", True)
  t5_1_1 = dataclasses.replace(config, feed_forward_proj="gated-gelu", tie_word_embeddings=False)
  assert t5.T5Config.from_dict(t5_1_1.to_dict()) == t5_1_1


def test_feed_forward_proj_reads_as_in_transformers():
  for value in ("relu", "gelu", "gelu_new", "gated-gelu", "gated-relu", "gated-gelu_new"):
    hf = transformers.T5Config(feed_forward_proj=value)
    ours = dataclasses.replace(t5.T5_CONFIGS["tiny"], feed_forward_proj=value)
    assert (ours.is_gated_act, ours.dense_act_fn) == (hf.is_gated_act, hf.dense_act_fn), value
  # gated-gelu is the tanh GELU, plain gelu the exact one.
  x = jnp.linspace(-3.0, 3.0, 13)
  for value, approximate in (("gated-gelu", True), ("gelu", False)):
    act = layers.activation(
        dataclasses.replace(t5.T5_CONFIGS["tiny"], feed_forward_proj=value).dense_act_fn)
    np.testing.assert_array_equal(act(x), nn.gelu(x, approximate=approximate))
  assert not np.allclose(nn.gelu(x, approximate=True), nn.gelu(x, approximate=False), atol=1e-4)
  for bad, why in (("gated", "unsupported activation 'gated'"),
                   ("relu-gated", "'ACT' or 'gated-ACT'"),
                   ("gated-gelu-x", "'ACT' or 'gated-ACT'"),
                   ("gated-swish", "unsupported activation 'swish'")):
    with pytest.raises(ValueError, match=why):
      dataclasses.replace(t5.T5_CONFIGS["tiny"], feed_forward_proj=bad)
  with pytest.raises(ValueError, match="tie_word_embeddings"):
    dataclasses.replace(t5.T5_CONFIGS["tiny"], tie_word_embeddings="false")


def test_released_configs_convert(shared_data):
  configs = shared_data / "hf_configs"
  for name, ours in (("prot_t5_xl_uniref50", "prott5_xl"),
                     ("prot_t5_xxl_uniref50", "prott5_xxl"),
                     ("prot_t5_xl_half_uniref50-enc", "prott5_xl")):
    hf = json.loads((configs / f"{name}.config.json").read_text())
    assert hf_t5.CONVERTER.config_from_hf(hf) == t5.T5_CONFIGS[ours], name
  # T5 1.1 as older transformers write it, and as transformers 5 does
  # (tie_word_embeddings always true, the fact in scale_decoder_outputs).
  t5_1_1 = dataclasses.replace(t5.T5_CONFIGS["prott5_xl"], feed_forward_proj="gated-gelu",
                               tie_word_embeddings=False)
  for untied in ({"tie_word_embeddings": False},
                 {"tie_word_embeddings": True, "scale_decoder_outputs": False}):
    assert hf_t5.CONVERTER.config_from_hf({**hf, "feed_forward_proj": "gated-gelu", **untied}) == t5_1_1
  assert hf_t5.CONVERTER.config_from_hf({**hf, "scale_decoder_outputs": True}) == t5.T5_CONFIGS["prott5_xl"]
  assert hf_t5.CONVERTER.hf_config(t5_1_1, "T5ForConditionalGeneration")["tie_word_embeddings"] is False
  assert hf_t5.CONVERTER.hf_config(t5_1_1, "T5ForConditionalGeneration")["feed_forward_proj"] == "gated-gelu"
  with pytest.raises(hf_t5.ConversionError, match="gated-swish"):
    hf_t5.CONVERTER.config_from_hf({**hf, "feed_forward_proj": "gated-swish"})
  with pytest.raises(hf_t5.ConversionError, match="scale_decoder_outputs"):
    hf_t5.CONVERTER.config_from_hf({**hf, "tie_word_embeddings": False, "scale_decoder_outputs": True})


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


@pytest.mark.parametrize("name", list(VARIANTS))
def test_flops_count_every_weight_matrix_of_the_variant(name):
  feed_forward_proj, tied = VARIANTS[name]
  config = dataclasses.replace(t5.T5_CONFIGS["base100m"], feed_forward_proj=feed_forward_proj,
                               tie_word_embeddings=tied)
  shapes = jax.eval_shape(t5.T5(config).init, jax.random.PRNGKey(0),
                          jnp.ones((1, 1), jnp.int32), jnp.ones((1, 1), jnp.int32))
  flat = jax.tree_util.tree_flatten_with_path(nn.meta.unbox(shapes)["params"])[0]
  sizes = {"/".join(k.key for k in path): leaf.size for path, leaf in flat}
  # One encoder and one decoder position: every kernel is one matrix-vector
  # product; the output layer is the embedding (tied) or logits_dense.
  matmul_weights = sum(n for k, n in sizes.items() if k.endswith("/kernel"))
  if tied:
    matmul_weights += sizes["token_embedder/embedding"]
  joined = config.num_heads * config.d_kv
  attention = (config.num_encoder_layers * 2 + config.num_decoder_layers * 4) * joined
  assert t5.flops_per_token(config, 1, 1) == 3 * 2 * (matmul_weights + attention) / 2
  # Encoder forward pass alone, at 1 token: its kernels plus attention.
  encoder_weights = sum(n for k, n in sizes.items()
                        if k.startswith("encoder/") and k.endswith("/kernel"))
  assert t5.encoder_forward_flops(config, 1) == 2 * (
      encoder_weights + config.num_encoder_layers * 2 * joined)
