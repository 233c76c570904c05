"""BERT-shaped encoders: ProtBert, and the parts ProtAlbert and ProtElectra share.

Post-layer-norm Transformer layers (LayerNorm with bias after each residual
sum), biased dense layers, attention scaled by 1/sqrt(head_dim) at run time,
learned absolute positions and token types summed into the embedding. The
maths is Hugging Face's `BertModel` (and `AlbertModel` / `ElectraModel`,
which differ only in what their configs switch on):

- a factorized embedding (`embedding_dim` < `hidden_size`, ALBERT and the
  ELECTRA generator) is projected up to the hidden size before layer 0,
- layers may share weights (`num_layer_weights` < `num_hidden_layers`,
  ALBERT's hidden groups).

`scan_layers` runs the layers as one scan (parameters stacked under
`encoder/layers`, one entry per weight set); checkpoints and converters
always see the unscanned names (`encoder/layers_0/...`).

Parameter names follow this project's T5X-like style (`layers_0/attention/
query/kernel`); prottrans_jax/convert/hf_bert.py maps them onto Hugging
Face's. The width of the embedding tables is the logical axis `token_embed`
(never sharded: the tables are small next to the layers), the residual
stream is `embed`.

Token id 0 is `[PAD]`. Packed inputs carry segment ids (no attention across
segments) and per-example positions (which index the position table).
"""
import dataclasses
from typing import Optional

from flax import linen as nn
import jax
import jax.numpy as jnp

from prottrans_jax.models import configs
from prottrans_jax.models import layers


@dataclasses.dataclass(frozen=True, kw_only=True)
class BertConfig(configs.DictConfig):
  """Hyper-parameters of a BERT network (names as in HF's config.json)."""
  vocab_size: int = 30
  hidden_size: int
  num_hidden_layers: int
  num_attention_heads: int
  intermediate_size: int
  hidden_act: str = "gelu"
  max_position_embeddings: int = 40000
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  hidden_dropout_prob: float = 0.1
  attention_probs_dropout_prob: float = 0.1
  initializer_range: float = 0.02
  dtype: str = "bfloat16"  # activations and compute ("float32" in tests)
  param_dtype: str = "float32"
  attention_chunk_size: int = 1024  # queries per chunk in memory-efficient attention
  long_sequence_threshold: int = 2048  # above this length attention runs chunk by chunk
  # The layers as one `nn.scan` (parameters `encoder/layers/...` with a
  # leading "layers" axis, one entry per weight set, in memory; checkpoints
  # keep `layers_<i>`), and what each layer's backward pass recomputes
  # ("none", "minimal", "full"; layers.REMAT_POLICIES says what each saves);
  # `scan_unroll` weight sets per loop iteration when scanned.
  scan_layers: bool = False
  remat_policy: str = "none"
  scan_unroll: int = 1

  def __post_init__(self):
    self.check_dimensions(
        "vocab_size", "hidden_size", "num_hidden_layers",
        "num_attention_heads", "intermediate_size",
        "max_position_embeddings", "type_vocab_size", "attention_chunk_size",
        "long_sequence_threshold")
    layers.check_layer_options(self.scan_layers, self.remat_policy,
                               self.scan_unroll)

  @property
  def embedding_dim(self) -> int:
    """Width of the embedding tables (ALBERT/ELECTRA factorize it)."""
    return self.hidden_size

  @property
  def num_layer_weights(self) -> int:
    """Distinct layer weight sets (ALBERT shares them across contiguous
    runs of layers: layer i uses set i // (layers / sets), Hugging Face
    ALBERT's grouping)."""
    return self.num_hidden_layers

  @property
  def mlm_activation(self) -> str:
    """The MLM head's activation (ELECTRA's generator fixes it to GELU)."""
    return self.hidden_act

  @property
  def head_dim(self) -> int:
    if self.hidden_size % self.num_attention_heads:
      raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of "
                       f"num_attention_heads {self.num_attention_heads}")
    return self.hidden_size // self.num_attention_heads


BERT_CONFIGS: dict[str, BertConfig] = {
    "tiny": BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=128, max_position_embeddings=1024),
    # The released Rostlab/prot_bert (UniRef100) and Rostlab/prot_bert_bfd
    # (BFD): the same network, ~420M parameters, trained without dropout.
    "protbert": BertConfig(hidden_size=1024, num_hidden_layers=30, num_attention_heads=16,
                           intermediate_size=4096, hidden_dropout_prob=0.0,
                           attention_probs_dropout_prob=0.0),
}


def encoder_forward_flops(config: BertConfig, length: int) -> float:
  """FLOPs of one encoder forward pass over `length` tokens (embedding).

  2 FLOPs per multiply-add; q, k, v, out and the MLP per token, attention
  scores and weighted sums over the full key length, and the factorized
  embedding's projection; norms and lookups are negligible. Shared (ALBERT)
  layers cost as much per use as distinct ones.
  """
  h, e, ff = config.hidden_size, config.embedding_dim, config.intermediate_size
  layer = length * (4 * h * h + 2 * h * ff) + 2 * length * length * h
  projection = length * e * h if e != h else 0
  return 2.0 * (config.num_hidden_layers * layer + projection)


def flops_per_token(config: BertConfig, length: int) -> float:
  """Training FLOPs (forward + backward, 3x forward) per token of a
  `length`-token example: the encoder plus the MLM head."""
  e = config.embedding_dim
  head = 2.0 * (config.hidden_size * e + e * config.vocab_size)
  return 3 * (encoder_forward_flops(config, length) / length + head)


def _dtypes(config: BertConfig) -> dict[str, jnp.dtype]:
  return {"dtype": jnp.dtype(config.dtype), "param_dtype": jnp.dtype(config.param_dtype)}


def _init(config: BertConfig) -> nn.initializers.Initializer:
  """BERT initialises every kernel and table from N(0, initializer_range)."""
  return nn.initializers.normal(stddev=config.initializer_range)


def _dense(config: BertConfig, features: int, axes: tuple[str, str], name: str) -> layers.Dense:
  return layers.Dense(features, axes, _init(config), use_bias=True, name=name,
                      **_dtypes(config))


def _norm(config: BertConfig, name: str, axis_name: str = "embed") -> layers.LayerNorm:
  return layers.LayerNorm(epsilon=config.layer_norm_eps, axis_name=axis_name, name=name,
                          **_dtypes(config))


def _constrain(x: jax.Array) -> jax.Array:
  return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class Embeddings(nn.Module):
  """Token + position + token-type (always type 0) embedding, then LayerNorm."""
  config: BertConfig

  def setup(self):
    cfg = self.config

    def table(rows, axis, name):
      return layers.Embed(rows, cfg.embedding_dim, embedding_init=_init(cfg),
                          axes=(axis, "token_embed"), name=name, **_dtypes(cfg))

    self.token_embedder = table(cfg.vocab_size, "vocab", "token_embedder")
    self.position_embedder = table(cfg.max_position_embeddings, "abspos_buckets",
                                   "position_embedder")
    self.type_embedder = table(cfg.type_vocab_size, "token_types", "type_embedder")
    self.layer_norm = _norm(cfg, "layer_norm", "token_embed")
    self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

  def __call__(self, tokens: jax.Array, positions: Optional[jax.Array],
               deterministic: bool) -> jax.Array:
    if positions is None:
      length = tokens.shape[1]
      # A lookup past the table's end would silently clamp.
      if length > self.config.max_position_embeddings:
        raise ValueError(
            f"Input of {length} tokens exceeds max_position_embeddings "
            f"{self.config.max_position_embeddings} (a learned position table)")
      positions = jnp.arange(length)[None]
    x = (self.token_embedder(tokens) + self.type_embedder(jnp.zeros_like(tokens))
         + self.position_embedder(positions))
    return self.dropout(self.layer_norm(x), deterministic=deterministic)

  def attend(self, x: jax.Array) -> jax.Array:
    """Float32 logits of `x` against every token embedding (tied output)."""
    return self.token_embedder.attend(x)


class EncoderLayer(nn.Module):
  """Self-attention, add, LayerNorm; MLP, add, LayerNorm (post-norm)."""
  config: BertConfig

  @nn.compact
  def __call__(self, x: jax.Array, bias: layers.AttentionBias,
               deterministic: bool) -> jax.Array:
    cfg = self.config
    dropout = nn.Dropout(cfg.hidden_dropout_prob)
    h = layers.MultiHeadAttention(
        num_heads=cfg.num_attention_heads, head_dim=cfg.head_dim,
        dropout_rate=cfg.attention_probs_dropout_prob,
        chunk_size=cfg.attention_chunk_size,
        long_sequence_threshold=cfg.long_sequence_threshold, use_bias=True,
        scale_queries=True, kernel_init=_init(cfg), name="attention",
        **_dtypes(cfg))(x, x, bias, deterministic)
    x = _constrain(_norm(cfg, "attention_layer_norm")(x + dropout(h, deterministic=deterministic)))
    # BERT has no dropout between its intermediate and output dense layers.
    h = layers.MlpBlock(cfg.intermediate_size, dropout_rate=0.0, activation=cfg.hidden_act,
                        use_bias=True, kernel_init=_init(cfg), name="mlp",
                        **_dtypes(cfg))(x, deterministic)
    return _constrain(_norm(cfg, "mlp_layer_norm")(x + dropout(h, deterministic=deterministic)))


class Encoder(nn.Module):
  """Embeddings -> (projection) -> layers; output [B, L, hidden_size].

  With `output_hidden_states`, the tuple transformers' BERT, ALBERT and
  ELECTRA return: the (projected) embedding, then the output of every layer
  call (ALBERT: one per call of a shared layer), the output last.
  """
  config: BertConfig
  embedder: Embeddings

  @nn.compact
  def __call__(self, tokens: jax.Array, segment_ids: Optional[jax.Array],
               positions: Optional[jax.Array], deterministic: bool,
               output_hidden_states: bool = False
               ) -> jax.Array | tuple[jax.Array, ...]:
    cfg = self.config
    x = self.embedder(tokens, positions, deterministic)
    if cfg.embedding_dim != cfg.hidden_size:
      x = _dense(cfg, cfg.hidden_size, ("token_embed", "embed"), "embedding_projection")(x)
    x = _constrain(x)
    valid = tokens > 0
    bias = layers.AttentionBias(q_valid=valid, kv_valid=valid, q_segment_ids=segment_ids,
                                kv_segment_ids=segment_ids)
    # One module per weight set; ALBERT calls each several times, which
    # shares its parameters (scanned: broadcast over an inner scan).
    return layers.apply_layers(
        lambda name: EncoderLayer(cfg, name=name), x, bias,
        num_layers=cfg.num_hidden_layers, num_weight_sets=cfg.num_layer_weights,
        scan_layers=cfg.scan_layers, scan_unroll=cfg.scan_unroll,
        remat_policy=cfg.remat_policy, deterministic=deterministic,
        output_hidden_states=output_hidden_states)


class MlmHead(nn.Module):
  """dense -> activation -> LayerNorm into embedding space, then the tied
  token embedding and an output bias: float32 logits over the vocabulary."""
  config: BertConfig

  @nn.compact
  def __call__(self, x: jax.Array, embedder: Embeddings) -> jax.Array:
    cfg = self.config
    h = _dense(cfg, cfg.embedding_dim, ("embed", "token_embed"), "dense")(x)
    h = layers.activation(cfg.mlm_activation)(h)
    h = _norm(cfg, "layer_norm", "token_embed")(h)
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("vocab",)),
                      (cfg.vocab_size,), jnp.dtype(cfg.param_dtype))
    logits = embedder.attend(h) + bias.astype(jnp.float32)
    return nn.with_logical_constraint(logits, ("batch", "length", "vocab"))


class DiscriminatorHead(nn.Module):
  """ELECTRA's replaced-token detector: dense -> activation -> one logit per token."""
  config: BertConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    h = _dense(cfg, cfg.hidden_size, ("embed", "mlp"), "dense")(x)
    h = layers.activation(cfg.hidden_act)(h)
    logits = _dense(cfg, 1, ("mlp", "classes"), "prediction")(h)
    return logits[..., 0].astype(jnp.float32)


class Pooler(nn.Module):
  """BERT's pooler: tanh(dense(first token)). Kept so that checkpoints that
  carry it convert both ways; nothing here trains or embeds with it."""
  config: BertConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return jnp.tanh(_dense(self.config, self.config.hidden_size, ("embed", "mlp"), "dense")(x[:, 0]))


class Bert(nn.Module):
  """A BERT-shaped encoder with its heads (ProtBert, ProtAlbert, ProtElectra).

  Each method builds only the parameters it uses: `encode` the embeddings
  and layers (what `BertModel` minus the pooler holds), `__call__` adds the
  MLM head, `discriminate` ELECTRA's discriminator head, `pool` the pooler.
  """
  config: BertConfig

  def setup(self):
    self.embedder = Embeddings(self.config)
    self.encoder = Encoder(self.config, self.embedder)
    self.mlm_head = MlmHead(self.config)
    self.discriminator_head = DiscriminatorHead(self.config)
    self.pooler = Pooler(self.config)

  def encode(self, encoder_input_tokens: jax.Array,
             encoder_segment_ids: Optional[jax.Array] = None,
             encoder_positions: Optional[jax.Array] = None,
             enable_dropout: bool = False, output_hidden_states: bool = False
             ) -> jax.Array | tuple[jax.Array, ...]:
    """[B, L] token ids -> [B, L, hidden_size] last hidden states (config.dtype);
    with `output_hidden_states`, every hidden state (`Encoder`), the last
    hidden states last."""
    return self.encoder(encoder_input_tokens, encoder_segment_ids, encoder_positions,
                        not enable_dropout, output_hidden_states)

  def __call__(self, encoder_input_tokens: jax.Array,
               encoder_segment_ids: Optional[jax.Array] = None,
               encoder_positions: Optional[jax.Array] = None,
               enable_dropout: bool = False) -> jax.Array:
    """Masked-LM logits [B, L, vocab] (float32)."""
    hidden = self.encode(encoder_input_tokens, encoder_segment_ids, encoder_positions,
                         enable_dropout)
    return self.mlm_head(hidden, self.embedder)

  def discriminate(self, encoder_input_tokens: jax.Array,
                   encoder_segment_ids: Optional[jax.Array] = None,
                   encoder_positions: Optional[jax.Array] = None,
                   enable_dropout: bool = False) -> jax.Array:
    """Replaced-token logits [B, L] (float32; > 0 means "replaced")."""
    hidden = self.encode(encoder_input_tokens, encoder_segment_ids, encoder_positions,
                         enable_dropout)
    return self.discriminator_head(hidden)

  def pool(self, encoder_input_tokens: jax.Array) -> jax.Array:
    """The pooler's output [B, hidden_size] (checkpoint parity only)."""
    return self.pooler(self.encode(encoder_input_tokens))
