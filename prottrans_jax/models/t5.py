"""T5 encoder-decoder: T5 1.0 as ProtT5 used it, and the T5 1.1 variants.

ProtT5 is T5 1.0, the default: ReLU feed-forward (not gated), RMS norms
without bias, no dense biases, one relative-position table per stack, a token
embedding shared by encoder and decoder and tied to the output logits
(decoder output scaled by d_model**-0.5).

The T5 1.1 variants are supported through two config fields with Hugging
Face's names and meaning: `feed_forward_proj="gated-gelu"` (or any
"gated-ACT") for the gated MLP, act(x @ wi_0) * (x @ wi_1) @ wo, and
`tie_word_embeddings=False` for an output layer of its own (`logits_dense`,
applied to the decoder output without the d_model**-0.5 rescale).

The parameter tree uses T5X's names for this network (`mlp/wi` or
`mlp/wi_0`, `mlp/wi_1`; `decoder/logits_dense`), so T5X checkpoints and the
Hugging Face name table map onto it one to one (prottrans_jax/convert/).
With `scan_layers` each stack runs as one scan and holds its layers stacked
(`encoder/layers/...`); checkpoints and converters always see the unscanned
names (`encoder/layers_0/...`; families.py converts between the two).

Token id 0 is padding. Packed inputs (seqio's packing feature converter) carry
segment ids; a token never attends across segments.
"""
import dataclasses
from typing import Optional

from flax import linen as nn
import jax
import jax.numpy as jnp

from prottrans_jax.models import configs
from prottrans_jax.models import layers


@dataclasses.dataclass(frozen=True, kw_only=True)
class T5Config(configs.DictConfig):
  """Hyper-parameters of a T5 network (names as in HF's config.json).

  The defaults of `feed_forward_proj` and `tie_word_embeddings` are T5 1.0 /
  ProtT5, so configs recorded before these fields existed load unchanged.
  """
  vocab_size: int = 128
  d_model: int
  d_kv: int
  num_heads: int
  d_ff: int
  num_encoder_layers: int
  num_decoder_layers: int
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  dropout_rate: float = 0.1
  layer_norm_epsilon: float = 1e-6
  dtype: str = "bfloat16"  # activations and compute ("float32" in tests)
  param_dtype: str = "float32"
  attention_chunk_size: int = 1024  # queries per chunk in memory-efficient attention
  long_sequence_threshold: int = 2048  # above this length attention runs chunk by chunk
  # "ACT" or "gated-ACT" with ACT a Hugging Face activation name (relu, gelu,
  # gelu_new, ...); as in transformers, "gated-gelu" means the tanh GELU
  # ("gelu_new", flax's default gelu, what T5X's T5 1.1 uses) while plain
  # "gelu" is the exact erf GELU.
  feed_forward_proj: str = "relu"
  # False: the output logits come from a dense layer of their own
  # (`decoder/logits_dense`), without the d_model**-0.5 rescale (T5 1.1).
  tie_word_embeddings: bool = True
  # Both stacks as one `nn.scan` each (parameters `encoder/layers/...` with
  # a leading "layers" axis in memory; checkpoints keep `layers_<i>`), and
  # what each layer's backward pass recomputes ("none", "minimal", "full";
  # layers.REMAT_POLICIES says what each saves); `scan_unroll` layers run
  # per loop iteration when scanned (layers.apply_layers).
  scan_layers: bool = False
  remat_policy: str = "none"
  scan_unroll: int = 1

  def __post_init__(self):
    self.check_dimensions(
        "vocab_size", "d_model", "d_kv", "num_heads", "d_ff",
        "num_encoder_layers", "num_decoder_layers",
        "relative_attention_num_buckets", "relative_attention_max_distance",
        "attention_chunk_size", "long_sequence_threshold")
    parse_feed_forward_proj(self.feed_forward_proj)
    layers.check_layer_options(self.scan_layers, self.remat_policy,
                               self.scan_unroll)
    if not isinstance(self.tie_word_embeddings, bool):
      raise ValueError(
          f"tie_word_embeddings must be a bool, got {self.tie_word_embeddings!r}")

  @property
  def is_gated_act(self) -> bool:
    """Whether the MLP is gated (wi_0, wi_1, wo)."""
    return parse_feed_forward_proj(self.feed_forward_proj)[0]

  @property
  def dense_act_fn(self) -> str:
    """The MLP's activation (a layers.ACTIVATIONS name), as transformers reads it."""
    return parse_feed_forward_proj(self.feed_forward_proj)[1]


def parse_feed_forward_proj(value: str) -> tuple[bool, str]:
  """(gated, activation name) of a `feed_forward_proj`, as transformers reads it.

  "ACT" or "gated-ACT"; "gated-gelu" is transformers' special case for the
  tanh GELU ("gelu_new"). Raises ValueError for anything else.
  """
  parts = value.split("-") if isinstance(value, str) else []
  if not parts or len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
    raise ValueError(
        f"feed_forward_proj {value!r} is not valid: expected 'ACT' or "
        "'gated-ACT', e.g. 'relu' (T5 1.0, ProtT5) or 'gated-gelu' (T5 1.1)")
  if parts[-1] not in layers.ACTIVATIONS:
    raise ValueError(
        f"feed_forward_proj {value!r}: unsupported activation {parts[-1]!r}; "
        f"known: {sorted(layers.ACTIVATIONS)}")
  gated = len(parts) == 2
  return gated, "gelu_new" if value == "gated-gelu" else parts[-1]


T5_CONFIGS: dict[str, T5Config] = {
    "tiny": T5Config(d_model=64, d_kv=16, num_heads=4, d_ff=128,
                     num_encoder_layers=2, num_decoder_layers=2),
    # ~99M parameters: a model that trains at a useful speed on one host,
    # for throughput and MFU benchmarks.
    "base100m": T5Config(d_model=768, d_kv=64, num_heads=12, d_ff=3072,
                         num_encoder_layers=6, num_decoder_layers=6),
    # The released Rostlab/prot_t5_xl_uniref50 (~3B parameters).
    "prott5_xl": T5Config(d_model=1024, d_kv=128, num_heads=32, d_ff=16384,
                          num_encoder_layers=24, num_decoder_layers=24),
    # The released Rostlab/prot_t5_xxl_uniref50 (~11B parameters).
    "prott5_xxl": T5Config(d_model=1024, d_kv=128, num_heads=128, d_ff=65536,
                           num_encoder_layers=24, num_decoder_layers=24),
}


def _mlp_matrices(config: T5Config) -> int:
  """Weight matrices of one MLP: wi, wo; or wi_0, wi_1, wo when gated."""
  return 3 if config.is_gated_act else 2


def _encoder_layer_multiply_adds(config: T5Config, length: int) -> int:
  """Multiply-adds of one encoder layer over `length` positions."""
  d, joined = config.d_model, config.num_heads * config.d_kv
  return (length * (4 * d * joined  # q, k, v, out
                    + _mlp_matrices(config) * d * config.d_ff)
          + 2 * length * length * joined)  # q k^T and weights @ v


def encoder_forward_flops(config: T5Config, length: int) -> float:
  """FLOPs of one encoder forward pass over `length` tokens (embedding)."""
  return 2.0 * config.num_encoder_layers * _encoder_layer_multiply_adds(
      config, length)


def flops_per_token(config: T5Config, encoder_length: int, decoder_length: int) -> float:
  """Training FLOPs (forward + backward) per token position of one example.

  The example has `encoder_length` input and `decoder_length` target
  positions; the result is its total training FLOPs divided by
  `encoder_length + decoder_length`, so multiply by the number of encoder
  plus decoder positions processed to get a step's FLOPs (for MFU).
  Counts every matmul as 2 FLOPs per multiply-add and training as 3x the
  forward pass (the "6N" rule), plus attention scores and weighted sums
  over the full (not causally halved) key length; norms, softmax and the
  embedding lookup are negligible and left out.

  A gated MLP (T5 1.1) has three matrices instead of two. The output logits
  are one d_model x vocab product per decoder position whether they use the
  tied embedding or an untied `logits_dense` (the untied layer adds
  parameters, not FLOPs; the tied path's rescale is negligible).
  """
  d, joined, d_ff = config.d_model, config.num_heads * config.d_kv, config.d_ff
  le, ld = encoder_length, decoder_length
  encoder_layer = _encoder_layer_multiply_adds(config, le)
  decoder_layer = (ld * (4 * d * joined + _mlp_matrices(config) * d * d_ff)  # self-attention; mlp
                   + ld * 2 * d * joined  # cross-attention query and out
                   + le * 2 * d * joined  # cross-attention key and value
                   + 2 * ld * ld * joined + 2 * ld * le * joined)
  logits = ld * d * config.vocab_size
  multiply_adds = (config.num_encoder_layers * encoder_layer
                   + config.num_decoder_layers * decoder_layer + logits)
  return 3 * 2 * multiply_adds / (le + ld)


def _dtypes(config: T5Config) -> dict[str, jnp.dtype]:
  return {"dtype": jnp.dtype(config.dtype), "param_dtype": jnp.dtype(config.param_dtype)}


def _attention(config: T5Config, name: str) -> layers.MultiHeadAttention:
  return layers.MultiHeadAttention(
      num_heads=config.num_heads, head_dim=config.d_kv,
      dropout_rate=config.dropout_rate, chunk_size=config.attention_chunk_size,
      long_sequence_threshold=config.long_sequence_threshold, name=name,
      **_dtypes(config))


def _norm(config: T5Config, name: str) -> layers.RMSNorm:
  return layers.RMSNorm(epsilon=config.layer_norm_epsilon, name=name, **_dtypes(config))


def _mlp(config: T5Config) -> layers.MlpBlock:
  return layers.MlpBlock(config.d_ff, config.dropout_rate, activation=config.dense_act_fn,
                         gated=config.is_gated_act, name="mlp", **_dtypes(config))


def _constrain(x: jax.Array) -> jax.Array:
  return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class EncoderLayer(nn.Module):
  """Pre-norm self-attention then pre-norm MLP, each with a residual."""
  config: T5Config

  @nn.compact
  def __call__(self, x: jax.Array, bias: layers.AttentionBias,
               deterministic: bool) -> jax.Array:
    cfg = self.config
    dropout = nn.Dropout(cfg.dropout_rate)
    h = _norm(cfg, "pre_attention_layer_norm")(x)
    h = _attention(cfg, "attention")(h, h, bias, deterministic)
    x = _constrain(x + dropout(h, deterministic=deterministic))
    h = _norm(cfg, "pre_mlp_layer_norm")(x)
    h = _mlp(cfg)(h, deterministic)
    return _constrain(x + dropout(h, deterministic=deterministic))


class DecoderLayer(nn.Module):
  """Causal self-attention, attention to the encoder, then MLP (all pre-norm)."""
  config: T5Config

  @nn.compact
  def __call__(self, x: jax.Array, encoded: jax.Array,
               self_bias: layers.AttentionBias, cross_bias: layers.AttentionBias,
               deterministic: bool) -> jax.Array:
    cfg = self.config
    dropout = nn.Dropout(cfg.dropout_rate)
    h = _norm(cfg, "pre_self_attention_layer_norm")(x)
    h = _attention(cfg, "self_attention")(h, h, self_bias, deterministic)
    x = _constrain(x + dropout(h, deterministic=deterministic))
    h = _norm(cfg, "pre_cross_attention_layer_norm")(x)
    h = _attention(cfg, "encoder_decoder_attention")(h, encoded, cross_bias, deterministic)
    x = _constrain(x + dropout(h, deterministic=deterministic))
    h = _norm(cfg, "pre_mlp_layer_norm")(x)
    h = _mlp(cfg)(h, deterministic)
    return _constrain(x + dropout(h, deterministic=deterministic))


class Encoder(nn.Module):
  """Embedding -> layers -> final norm; output [B, L, d_model].

  With `output_hidden_states`, the tuple transformers' T5 returns: the
  embedding, the outputs of layers 1..N-1, and the output (after the final
  norm; layer N's output before it has no entry).
  """
  config: T5Config
  embedder: layers.Embed

  @nn.compact
  def __call__(self, tokens: jax.Array, segment_ids: Optional[jax.Array],
               deterministic: bool, output_hidden_states: bool = False
               ) -> jax.Array | tuple[jax.Array, ...]:
    cfg = self.config
    dropout = nn.Dropout(cfg.dropout_rate)
    x = _constrain(dropout(self.embedder(tokens), deterministic=deterministic))
    valid = tokens > 0
    bias = layers.AttentionBias(
        q_valid=valid, kv_valid=valid, q_segment_ids=segment_ids,
        kv_segment_ids=segment_ids,
        rel_table=layers.RelativePositionBias(
            cfg.num_heads, cfg.relative_attention_num_buckets,
            jnp.dtype(cfg.param_dtype), name="relpos_bias")(),
        bidirectional=True, max_distance=cfg.relative_attention_max_distance)
    hidden_states = layers.apply_layers(
        lambda name: EncoderLayer(cfg, name=name), x, bias,
        num_layers=cfg.num_encoder_layers, scan_layers=cfg.scan_layers,
        scan_unroll=cfg.scan_unroll, remat_policy=cfg.remat_policy,
        deterministic=deterministic, output_hidden_states=output_hidden_states)
    x = hidden_states[-1] if output_hidden_states else hidden_states
    x = _norm(cfg, "encoder_norm")(x)
    x = _constrain(dropout(x, deterministic=deterministic))
    return hidden_states[:-1] + (x,) if output_hidden_states else x


class Decoder(nn.Module):
  """Teacher-forced decoder; returns float32 logits over the vocabulary."""
  config: T5Config
  embedder: layers.Embed

  @nn.compact
  def __call__(self, encoded: jax.Array, encoder_tokens: jax.Array,
               decoder_input_tokens: jax.Array,
               decoder_target_tokens: Optional[jax.Array],
               encoder_segment_ids: Optional[jax.Array],
               decoder_segment_ids: Optional[jax.Array],
               deterministic: bool) -> jax.Array:
    cfg = self.config
    dropout = nn.Dropout(cfg.dropout_rate)
    # Decoder inputs start with id 0 (the start token is the pad id), so
    # validity comes from the targets; without targets every position counts.
    if decoder_target_tokens is not None:
      valid = decoder_target_tokens > 0
    else:
      valid = jnp.ones(decoder_input_tokens.shape, bool)
    self_bias = layers.AttentionBias(
        q_valid=valid, kv_valid=valid, q_segment_ids=decoder_segment_ids,
        kv_segment_ids=decoder_segment_ids,
        rel_table=layers.RelativePositionBias(
            cfg.num_heads, cfg.relative_attention_num_buckets,
            jnp.dtype(cfg.param_dtype), name="relpos_bias")(),
        causal=True, bidirectional=False,
        max_distance=cfg.relative_attention_max_distance)
    cross_bias = layers.AttentionBias(
        q_valid=valid, kv_valid=encoder_tokens > 0,
        q_segment_ids=decoder_segment_ids, kv_segment_ids=encoder_segment_ids)

    x = _constrain(dropout(self.embedder(decoder_input_tokens), deterministic=deterministic))
    x = layers.apply_layers(
        lambda name: DecoderLayer(cfg, name=name), x, encoded, self_bias, cross_bias,
        num_layers=cfg.num_decoder_layers, scan_layers=cfg.scan_layers,
        scan_unroll=cfg.scan_unroll, remat_policy=cfg.remat_policy,
        deterministic=deterministic)
    x = _norm(cfg, "decoder_norm")(x)
    x = dropout(x, deterministic=deterministic)
    if cfg.tie_word_embeddings:
      # T5 1.0 ties the output layer to the embedding and rescales first.
      logits = self.embedder.attend(x.astype(jnp.float32) * cfg.d_model**-0.5)
    else:
      # T5 1.1: an output layer of its own, no rescale; float32 like `attend`.
      logits = layers.Dense(cfg.vocab_size, ("embed", "vocab"), layers.mlp_kernel_init,
                            jnp.float32, jnp.dtype(cfg.param_dtype),
                            name="logits_dense")(x)
    return nn.with_logical_constraint(logits, ("batch", "length", "vocab"))


class T5(nn.Module):
  """The encoder-decoder. `encode` alone builds and uses only encoder params.

  `encoder_positions` / `decoder_positions` (from seqio's packing converter)
  are accepted for the feature converter's sake but not needed: relative
  position biases depend on index differences, which equal position
  differences inside a packed segment, and segments never see each other.
  """
  config: T5Config

  def setup(self):
    cfg = self.config
    self.token_embedder = layers.Embed(cfg.vocab_size, cfg.d_model, **_dtypes(cfg))
    self.encoder = Encoder(cfg, self.token_embedder)
    self.decoder = Decoder(cfg, self.token_embedder)

  def encode(self, encoder_input_tokens: jax.Array,
             encoder_segment_ids: Optional[jax.Array] = None,
             enable_dropout: bool = False, output_hidden_states: bool = False
             ) -> jax.Array | tuple[jax.Array, ...]:
    """[B, L] token ids -> [B, L, d_model] after the final norm (config.dtype);
    with `output_hidden_states`, every hidden state (`Encoder`), the output
    last."""
    return self.encoder(encoder_input_tokens, encoder_segment_ids, not enable_dropout,
                        output_hidden_states)

  def decode(self, encoded: jax.Array, encoder_input_tokens: jax.Array,
             decoder_input_tokens: jax.Array,
             decoder_target_tokens: Optional[jax.Array] = None,
             encoder_segment_ids: Optional[jax.Array] = None,
             decoder_segment_ids: Optional[jax.Array] = None,
             enable_dropout: bool = False) -> jax.Array:
    """Teacher-forced decoder logits [B, Ld, vocab] (float32)."""
    return self.decoder(encoded, encoder_input_tokens, decoder_input_tokens,
                        decoder_target_tokens, encoder_segment_ids,
                        decoder_segment_ids, not enable_dropout)

  def __call__(self, encoder_input_tokens: jax.Array, decoder_input_tokens: jax.Array,
               decoder_target_tokens: Optional[jax.Array] = None,
               encoder_segment_ids: Optional[jax.Array] = None,
               decoder_segment_ids: Optional[jax.Array] = None,
               encoder_positions: Optional[jax.Array] = None,
               decoder_positions: Optional[jax.Array] = None,
               enable_dropout: bool = False) -> jax.Array:
    del encoder_positions, decoder_positions  # see the class docstring
    encoded = self.encode(encoder_input_tokens, encoder_segment_ids, enable_dropout)
    return self.decode(encoded, encoder_input_tokens, decoder_input_tokens,
                       decoder_target_tokens, encoder_segment_ids,
                       decoder_segment_ids, enable_dropout)
