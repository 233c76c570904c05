"""XLNet as ProtXLNet used it: what Hugging Face's `XLNetLMHeadModel` computes.

Transformer-XL layers with relative attention (no absolute positions): a
sinusoidal encoding of the distance i - j between query i and key j
(clamped to `clamp_len` when that is > 0) is projected per layer (`r`) and
scored against the query plus `r_r_bias`; the content score uses
`r_w_bias`, and, given `token_type_ids`, a segment score (`r_s_bias`
against `seg_embed[same segment or not]`). Scores are scaled by
1/sqrt(d_head) after the three are summed. Post-LN residuals around the
attention and a GELU feed-forward.

Two streams (XLNet's permutation language modelling): the content stream
`h` starts from the token embeddings, and each position may see itself;
given a `target_mapping` ([B, P, L], row p one-hot on the position of
prediction p), the query stream `g` starts from the learned `mask_emb` and
attends, from its target's position, to the content stream only where the
permutation mask allows (`perm_mask[b, i, j] = 1`: i may not see j; a
query never sees its own token unless the mask says so). Both streams share
every weight. Logits are the stream's last state against the tied word
embedding plus a bias (`lm_loss`).

`attention_mask` (1 = a real token) masks keys; when it is None every token
that is not `pad_token_id` is real (how every family here finds padding, so
that the embedding engine's padded batches need nothing else). Padding may
sit on either side: relative attention only sees distances between tokens.

Parameters carry Hugging Face's shapes (q, k, v, o, r: [d_model, n_head,
d_head]; `mask_emb` [1, 1, d_model]), so the converter only transposes the
feed-forward kernels. Hugging Face keeps an r-bias set per layer whatever
`untie_r` says, and so does this module (`untie_r` is carried for
config.json). `scan_layers` runs the layers as one scan (`encoder/layers`).
"""
import dataclasses
from typing import Optional

from flax import linen as nn
from flax import struct
import jax
import jax.numpy as jnp
import numpy as np

from prottrans_jax.models import configs
from prottrans_jax.models import layers

# Subtracted from the scores of hidden keys, as Hugging Face does (a row with
# every key hidden then gets a uniform softmax, exactly as there).
_HIDDEN_SCORE = 1e30


@dataclasses.dataclass(frozen=True, kw_only=True)
class XLNetConfig(configs.DictConfig):
  """Hyper-parameters of an XLNet network (names as in HF's config.json)."""
  vocab_size: int = 34
  d_model: int
  n_layer: int
  n_head: int
  d_head: Optional[int] = None  # None: d_model // n_head (HF's default)
  d_inner: int
  ff_activation: str = "gelu"
  untie_r: bool = True
  attn_type: str = "bi"
  bi_data: bool = False
  clamp_len: int = -1  # > 0: relative distances clamped to +-clamp_len
  layer_norm_eps: float = 1e-12
  dropout: float = 0.1
  initializer_range: float = 0.02
  pad_token_id: int = 5
  dtype: str = "bfloat16"  # activations and compute ("float32" in tests)
  param_dtype: str = "float32"
  # As BertConfig: the layers as one `nn.scan` (`encoder/layers/...`, a
  # leading "layers" axis; checkpoints keep `layers_<i>`), what each layer's
  # backward pass recomputes, and layers per scanned loop iteration.
  scan_layers: bool = False
  remat_policy: str = "none"
  scan_unroll: int = 1

  def __post_init__(self):
    self.check_dimensions("vocab_size", "d_model", "n_layer", "n_head", "d_inner")
    if self.d_head is None:
      object.__setattr__(self, "d_head", self.d_model // self.n_head)
    self.check_dimensions("d_head")
    if self.d_head * self.n_head != self.d_model:
      raise ValueError(f"XLNetConfig: d_head {self.d_head} x n_head {self.n_head} != "
                       f"d_model {self.d_model} (Hugging Face requires d_head = "
                       "d_model / n_head)")
    if self.attn_type != "bi":
      raise ValueError(f"XLNetConfig.attn_type {self.attn_type!r} is not supported: "
                       "ProtXLNet attends bidirectionally ('bi')")
    if self.bi_data:
      raise ValueError("XLNetConfig.bi_data=True (forward and backward position "
                       "halves of a batch) is not supported")
    if self.ff_activation not in layers.ACTIVATIONS:
      raise ValueError(f"XLNetConfig.ff_activation {self.ff_activation!r} is not one of "
                       f"{sorted(layers.ACTIVATIONS)}")
    layers.check_layer_options(self.scan_layers, self.remat_policy, self.scan_unroll)

  def attention_block(self, length: int) -> int:
    """Every query attends at once: XLNet has no chunked attention here."""
    return length

  def with_blockwise_attention(self) -> "XLNetConfig":
    """Itself: there is no block-by-block attention to fall back to."""
    return self


XLNET_CONFIGS: dict[str, XLNetConfig] = {
    "tiny": XLNetConfig(d_model=64, n_layer=2, n_head=4, d_inner=128),
    # Rostlab/prot_xlnet's size as the ProtTrans paper gives it
    # (gin/models/protxlnet.gin cites the sources).
    "protxlnet": XLNetConfig(d_model=1024, n_layer=30, n_head=16, d_inner=4096),
}


def encoder_forward_flops(config: XLNetConfig, length: int) -> float:
  """FLOPs of one content-stream forward pass over `length` tokens.

  2 FLOPs per multiply-add: per layer, q, k, v, o and the feed-forward per
  token, `r` over the 2 x length relative distances, and per head the
  content scores (length^2), position scores (before the shift: length x
  2 length) and weighted sums (length^2).
  """
  d, ff = config.d_model, config.d_inner
  layer = (length * (4 * d * d + 2 * d * ff) + 2 * length * d * d
           + 4 * length * length * d)
  return 2.0 * config.n_layer * layer


def training_flops(config: XLNetConfig, length: int, num_predict: int) -> float:
  """Training FLOPs (forward + backward, 3x forward) of one `length`-token
  example with `num_predict` targets: the content stream; the query stream
  (its q, o and feed-forward on the targets, its scores over all positions,
  as this module computes them, and the target mapping both ways); the LM
  head on the targets."""
  d, ff, p = config.d_model, config.d_inner, num_predict
  query_stream = config.n_layer * (p * (2 * d * d + 2 * d * ff) + 4 * length * length * d
                                   + 2 * p * length * d)
  head = p * d * config.vocab_size
  return 3 * (encoder_forward_flops(config, length) + 2.0 * (query_stream + head))


def _dtypes(config: XLNetConfig) -> dict[str, jnp.dtype]:
  return {"dtype": jnp.dtype(config.dtype), "param_dtype": jnp.dtype(config.param_dtype)}


def _init(config: XLNetConfig) -> nn.initializers.Initializer:
  """XLNet initialises every weight, bias vector and table from
  N(0, initializer_range); Linear biases and norms start at 0 and 1."""
  return nn.initializers.normal(stddev=config.initializer_range)


def _norm(config: XLNetConfig, name: str) -> layers.LayerNorm:
  return layers.LayerNorm(epsilon=config.layer_norm_eps, name=name, **_dtypes(config))


def _constrain(x: jax.Array) -> jax.Array:
  return nn.with_logical_constraint(x, ("batch", "length", "embed"))


def relative_positions(config: XLNetConfig, length: int) -> jax.Array:
  """Sinusoidal encodings [2 length, d_model] (float32) of the distances
  length, length - 1, ..., -length + 1: row k is distance length - k."""
  distance = jnp.arange(length, -length, -1, dtype=jnp.float32)
  if config.clamp_len > 0:
    distance = jnp.clip(distance, -config.clamp_len, config.clamp_len)
  inv_freq = 1.0 / jnp.power(
      jnp.float32(10000.0), jnp.arange(0, config.d_model, 2, dtype=jnp.float32) / config.d_model)
  angles = distance[:, None] * inv_freq[None, :]
  return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


def _by_distance(scores: jax.Array) -> jax.Array:
  """[B, H, Lq, 2 Lq] scores against the encodings of `relative_positions`
  -> [B, H, Lq, Lq], entry (i, j) the score of distance i - j, i.e. of
  column Lq - i + j. Reshapes only: dropping the first Lq elements of the
  flattened (i, k) rows and re-reading them with rows of 2 Lq - 1 moves row
  i left by i, so column j lands on k = Lq - i + j (Transformer-XL's shift)."""
  batch, heads, length, width = scores.shape
  flat = scores.reshape(batch, heads, length * width)[..., length:]
  return flat.reshape(batch, heads, length, width - 1)[..., :length]


@struct.dataclass
class AttentionInputs:
  """What every layer sees besides its streams (the same in every layer)."""
  positions: jax.Array  # [2L, d_model] `relative_positions`, compute dtype
  content_mask: jax.Array  # [B, L, L] bool: the content stream's query i may not see j
  query_mask: Optional[jax.Array] = None  # [B, L, L] bool: the same, query stream
  other_segment: Optional[jax.Array] = None  # [B, L, L] bool: j in another segment than i
  target_mapping: Optional[jax.Array] = None  # [B, P, L]


class RelativeAttention(nn.Module):
  """Relative multi-head attention of both streams, with its post-LN residual."""
  config: XLNetConfig

  @nn.compact
  def __call__(self, h: jax.Array, g: Optional[jax.Array], inputs: AttentionInputs,
               deterministic: bool) -> tuple[jax.Array, Optional[jax.Array]]:
    cfg = self.config
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    shape = (cfg.d_model, cfg.n_head, cfg.d_head)

    def param(name, axes, param_shape):
      value = self.param(name, nn.with_logical_partitioning(_init(cfg), axes),
                         param_shape, param_dtype)
      return value.astype(dtype)

    q, k, v, o, r = (param(n, ("embed", "heads", "kv"), shape) for n in "qkvor")
    r_w_bias, r_r_bias, r_s_bias = (param(n, ("heads", "kv"), shape[1:])
                                    for n in ("r_w_bias", "r_r_bias", "r_s_bias"))
    seg_embed = param("seg_embed", ("token_types", "heads", "kv"), (2,) + shape[1:])
    layer_norm = _norm(cfg, "layer_norm")
    dropout = nn.Dropout(cfg.dropout)

    def project(x, w):
      y = jnp.einsum("bld,dnh->blnh", x.astype(dtype), w)
      return nn.with_logical_constraint(y, ("batch", "length", "heads", "kv"))

    keys, values = project(h, k), project(h, v)
    keys_r = jnp.einsum("kd,dnh->knh", inputs.positions, r)

    def attend(queries, hidden):
      scores = jnp.einsum("bind,bjnd->bnij", queries + r_w_bias, keys,
                          preferred_element_type=jnp.float32)
      scores += _by_distance(jnp.einsum("bind,knd->bnik", queries + r_r_bias, keys_r,
                                        preferred_element_type=jnp.float32))
      if inputs.other_segment is not None:
        by_segment = jnp.einsum("bind,snd->bnis", queries + r_s_bias, seg_embed,
                                preferred_element_type=jnp.float32)
        scores += jnp.where(inputs.other_segment[:, None], by_segment[..., 1:],
                            by_segment[..., :1])
      scores = scores * np.float32(cfg.d_head**-0.5)
      scores = scores - _HIDDEN_SCORE * hidden[:, None].astype(jnp.float32)
      weights = dropout(jax.nn.softmax(scores, axis=-1), deterministic=deterministic)
      return jnp.einsum("bnij,bjnd->bind", weights.astype(dtype), values)

    def residual(x, attended):
      out = jnp.einsum("bind,hnd->bih", attended, o)
      return _constrain(layer_norm(x + dropout(out, deterministic=deterministic)))

    h_out = residual(h, attend(project(h, q), inputs.content_mask))
    if g is None:
      return h_out, None
    # Each prediction's query sits at its target's position (relative
    # distances and mask row from there), then comes back to its own row.
    mapping = inputs.target_mapping.astype(dtype)
    queries = jnp.einsum("bpnd,bpl->blnd", project(g, q), mapping)
    attended = jnp.einsum("blnd,bpl->bpnd", attend(queries, inputs.query_mask), mapping)
    return h_out, residual(g, attended)


class Layer(nn.Module):
  """Relative attention, then the feed-forward (each with dropout, residual
  and LayerNorm), applied to the content and (when present) query stream."""
  config: XLNetConfig

  @nn.compact
  def __call__(self, streams: tuple[jax.Array, Optional[jax.Array]],
               inputs: AttentionInputs, deterministic: bool
               ) -> tuple[jax.Array, Optional[jax.Array]]:
    cfg = self.config
    h, g = RelativeAttention(cfg, name="rel_attn")(*streams, inputs, deterministic)
    mlp = layers.MlpBlock(cfg.d_inner, dropout_rate=cfg.dropout, activation=cfg.ff_activation,
                          use_bias=True, kernel_init=_init(cfg), name="ff", **_dtypes(cfg))
    norm = _norm(cfg, "ff_layer_norm")
    dropout = nn.Dropout(cfg.dropout)

    def feed_forward(x):
      return _constrain(norm(x + dropout(mlp(x, deterministic), deterministic=deterministic)))

    return feed_forward(h), None if g is None else feed_forward(g)


class Encoder(nn.Module):
  """The stack of layers (parameters `encoder/layers_<i>`, or scanned
  `encoder/layers`)."""
  config: XLNetConfig

  @nn.compact
  def __call__(self, h: jax.Array, g: Optional[jax.Array], inputs: AttentionInputs,
               deterministic: bool, output_hidden_states: bool = False):
    cfg = self.config
    return layers.apply_layers(
        lambda name: Layer(cfg, name=name), (h, g), inputs, num_layers=cfg.n_layer,
        scan_layers=cfg.scan_layers, scan_unroll=cfg.scan_unroll,
        remat_policy=cfg.remat_policy, deterministic=deterministic,
        output_hidden_states=output_hidden_states)


class XLNet(nn.Module):
  """XLNet with its LM head (`XLNetLMHeadModel`): `encode` builds what
  `XLNetModel` holds (word embedding, `mask_emb`, layers), `__call__` adds
  the LM head's bias (`lm_loss`; its weight is the word embedding)."""
  config: XLNetConfig

  def setup(self):
    cfg = self.config
    self.word_embedding = layers.Embed(cfg.vocab_size, cfg.d_model, embedding_init=_init(cfg),
                                       axes=("vocab", "embed"), name="word_embedding",
                                       **_dtypes(cfg))
    # Hugging Face's [1, 1, d_model]; the unit axes are never sharded (None).
    self.mask_emb = self.param(
        "mask_emb", nn.with_logical_partitioning(_init(cfg), (None, None, "embed")),
        (1, 1, cfg.d_model), jnp.dtype(cfg.param_dtype))
    self.encoder = Encoder(cfg)
    self.lm_loss = LmLoss(cfg)
    self.dropout = nn.Dropout(cfg.dropout)

  def _streams(self, input_ids, attention_mask, perm_mask, target_mapping, token_type_ids,
               deterministic, output_hidden_states=False):
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    length = input_ids.shape[1]
    real = (input_ids != cfg.pad_token_id if attention_mask is None
            else attention_mask.astype(bool))
    hidden = jnp.broadcast_to(~real[:, None, :], input_ids.shape + (length,))
    if perm_mask is not None:
      hidden = hidden | (perm_mask > 0)
    # The content stream always sees its own token.
    content_mask = hidden & ~jnp.eye(length, dtype=bool)[None]
    positions = self.dropout(relative_positions(cfg, length), deterministic=deterministic)
    inputs = AttentionInputs(
        positions=positions.astype(dtype), content_mask=content_mask,
        query_mask=None if target_mapping is None else hidden,
        other_segment=None if token_type_ids is None else (
            token_type_ids[:, :, None] != token_type_ids[:, None, :]),
        target_mapping=target_mapping)
    h = _constrain(self.dropout(self.word_embedding(input_ids), deterministic=deterministic))
    g = None
    if target_mapping is not None:
      g = jnp.broadcast_to(self.mask_emb[0].astype(dtype),
                           target_mapping.shape[:2] + (cfg.d_model,))
      g = self.dropout(g, deterministic=deterministic)
    return self.encoder(h, g, inputs, deterministic, output_hidden_states)

  def encode(self, input_ids: jax.Array, attention_mask: Optional[jax.Array] = None,
             token_type_ids: Optional[jax.Array] = None, deterministic: bool = True,
             output_hidden_states: bool = False
             ) -> jax.Array | tuple[jax.Array, ...]:
    """[B, L] ids -> the content stream's last hidden states [B, L, d_model]
    (`XLNetModel`'s `last_hidden_state`, config.dtype); with
    `output_hidden_states`, the embedding then every layer's output
    (n_layer + 1 arrays, the last hidden states last)."""
    out = self._streams(input_ids, attention_mask, None, None, token_type_ids,
                        deterministic, output_hidden_states)
    if output_hidden_states:
      return tuple(h for h, _ in out)
    return out[0]

  def __call__(self, input_ids: jax.Array, attention_mask: Optional[jax.Array] = None,
               perm_mask: Optional[jax.Array] = None,
               target_mapping: Optional[jax.Array] = None,
               token_type_ids: Optional[jax.Array] = None,
               deterministic: bool = True) -> jax.Array:
    """Float32 logits: of the query stream at each prediction [B, P, vocab]
    when `target_mapping` [B, P, L] is given, else of the content stream at
    every position [B, L, vocab]. `perm_mask` [B, L, L]: 1 where i may not
    see j."""
    h, g = self._streams(input_ids, attention_mask, perm_mask, target_mapping,
                         token_type_ids, deterministic)
    out = self.dropout(h if g is None else g, deterministic=deterministic)
    return self.lm_loss(out, self.word_embedding)


class LmLoss(nn.Module):
  """Hugging Face's `lm_loss`: the tied word embedding plus a bias."""
  config: XLNetConfig

  @nn.compact
  def __call__(self, x: jax.Array, embedding: layers.Embed) -> jax.Array:
    cfg = self.config
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("vocab",)),
                      (cfg.vocab_size,), jnp.dtype(cfg.param_dtype))
    logits = embedding.attend(x) + bias.astype(jnp.float32)
    return nn.with_logical_constraint(logits, ("batch", "length", "vocab"))
