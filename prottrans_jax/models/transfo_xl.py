"""Transformer-XL: ProtTXL's network (Dai et al. 2019; the ProtTrans paper's
autoregressive model trained on Summit).

The maths is `transformers` 4.x's `TransfoXLLMHeadModel` (removed in 5.x):

- segment-level recurrence: each layer also attends over a memory, the
  layer inputs of the previous segment(s) (at most `mem_len` of them, with
  no gradient through them). Memory starts EMPTY (length 0), as the original
  Transformer-XL does (transformers alone started from `mem_len` zeros);
- relative positions: sinusoids of the distance query - key (clamped to
  `clamp_len` when > 0) projected per layer (`r_net`), with the global
  content and position biases u, v (`r_w_bias`, `r_r_bias`: one pair per
  layer when `untie_r`, else one shared pair);
- causal attention; with `same_length` every query sees the same number of
  keys (itself and the `mem_len` - 1 before it), so a long protein run as
  one segment and run segment by segment with the memory give the same
  result (`encode` relies on it);
- post-norm (or `pre_lnorm`) layers, ReLU feed-forward, the embedding scaled
  by sqrt(d_model), and a softmax over the vocabulary tied to the embedding
  (no adaptive cutoffs: ProtTXL's vocabulary has 30 tokens).

Layout: batch-major throughout. The memory of all layers is one array
[n_layer, batch, length, d_model] with logical axes ("layers", "batch",
"length", "embed"): partitioned like the activations (transformers keeps it
time-major per layer: `[length, batch, d_model]`).

Parameter names follow this project's style (`layers_0/attention/qkv/
kernel`); prottrans_jax/convert/hf_transfo_xl.py maps them onto Hugging
Face's. The fused q/k/v kernel is [d_model, 3, n_head * d_head] so that the
model axis shards heads, never across q, k and v.
"""
import dataclasses
import math
from typing import Optional

from flax import linen as nn
import jax
import jax.numpy as jnp

from prottrans_jax.models import configs
from prottrans_jax.models import layers

MEMORY_AXES = (layers.LAYERS_AXIS, "batch", "length", "embed")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TransfoXLConfig(configs.DictConfig):
  """Hyper-parameters of a Transformer-XL (names as in HF's config.json)."""
  vocab_size: int = 30
  d_model: int
  d_embed: int
  n_head: int
  d_head: int
  d_inner: int
  n_layer: int
  mem_len: int
  clamp_len: int = -1  # <= 0: no clamping
  same_length: bool = True
  untie_r: bool = True
  pre_lnorm: bool = False
  div_val: int = 1
  cutoffs: tuple[int, ...] = ()  # adaptive softmax clusters: none supported
  layer_norm_epsilon: float = 1e-5
  dropout: float = 0.1
  dropatt: float = 0.0
  init_std: float = 0.02
  proj_init_std: float = 0.01
  # Tokens per segment when a longer input is embedded (or trained on)
  # segment by segment with the memory (`TransfoXL.encode`); not a
  # Hugging Face field.
  segment_length: int = 512
  dtype: str = "bfloat16"  # activations and compute ("float32" in tests)
  param_dtype: str = "float32"
  scan_layers: bool = False
  remat_policy: str = "none"
  scan_unroll: int = 1

  def __post_init__(self):
    # config.json gives a list; a frozen config must hash.
    object.__setattr__(self, "cutoffs", tuple(self.cutoffs))
    self.check_dimensions("vocab_size", "d_model", "d_embed", "n_head", "d_head",
                          "d_inner", "n_layer", "mem_len", "segment_length")
    if self.cutoffs or self.div_val != 1:
      raise ValueError(
          f"TransfoXLConfig: adaptive softmax/embedding (cutoffs "
          f"{list(self.cutoffs)}, div_val {self.div_val}) is not supported; "
          "use cutoffs=() and div_val=1 (a plain softmax over the vocabulary)")
    for name in ("same_length", "untie_r", "pre_lnorm"):
      if not isinstance(getattr(self, name), bool):
        raise ValueError(f"TransfoXLConfig.{name} must be True or False, "
                         f"got {getattr(self, name)!r}")
    layers.check_layer_options(self.scan_layers, self.remat_policy, self.scan_unroll)

  def attention_block(self, length: int) -> int:
    """Queries attending at once: one segment."""
    return min(length, self.segment_length)

  def with_blockwise_attention(self) -> "TransfoXLConfig":
    """Shorter segments where they give the same result (`same_length`:
    segments of at most `mem_len`); otherwise this config itself (no
    cheaper equivalent run exists)."""
    if not self.same_length:
      return self
    return dataclasses.replace(self, segment_length=min(self.segment_length,
                                                        self.mem_len))


TRANSFO_XL_CONFIGS: dict[str, TransfoXLConfig] = {
    "tiny": TransfoXLConfig(d_model=64, d_embed=64, n_head=4, d_head=16, d_inner=128,
                            n_layer=2, mem_len=16, segment_length=16, dropout=0.0),
}


def encoder_forward_flops(config: TransfoXLConfig, length: int) -> float:
  """FLOPs of one forward pass over `length` tokens run as one segment
  from an empty memory (2 FLOPs per multiply-add): q, k, v, out, the
  position projection (one per key) and the feed-forward per token,
  attention scores (content and position terms) and weighted sums over the
  keys each query sees (`mem_len` with `same_length`), the embedding
  projection; norms, lookups and the relative shift are negligible."""
  d, hd, ff = config.d_model, config.n_head * config.d_head, config.d_inner
  keys = min(length, config.mem_len) if config.same_length else length
  layer = length * (4 * d * hd + 2 * d * ff) + length * d * hd + 3 * length * keys * hd
  projection = length * config.d_embed * d if config.d_embed != d else 0
  return 2.0 * (config.n_layer * layer + projection)


def flops_per_token(config: TransfoXLConfig, length: int) -> float:
  """Training FLOPs (forward + backward, 3x forward) per token of a
  `length`-token segment: the network plus the softmax over the vocabulary."""
  head = 2.0 * config.d_model * config.vocab_size
  if config.d_embed != config.d_model:
    head += 2.0 * config.d_model * config.d_embed
  return 3 * (encoder_forward_flops(config, length) / length + head)


def _dtypes(config: TransfoXLConfig) -> dict[str, jnp.dtype]:
  return {"dtype": jnp.dtype(config.dtype), "param_dtype": jnp.dtype(config.param_dtype)}


def _init(config: TransfoXLConfig) -> nn.initializers.Initializer:
  return nn.initializers.normal(stddev=config.init_std)


def _norm(config: TransfoXLConfig, name: str) -> layers.LayerNorm:
  return layers.LayerNorm(epsilon=config.layer_norm_epsilon, name=name, **_dtypes(config))


def _constrain(x: jax.Array) -> jax.Array:
  return nn.with_logical_constraint(x, ("batch", "length", "embed"))


def positional_embedding(distances: jax.Array, d_model: int) -> jax.Array:
  """[K] float distances -> [K, d_model] sinusoids (sin half, then cos half)."""
  inv_freq = 1.0 / (10000 ** (jnp.arange(0.0, d_model, 2.0, dtype=jnp.float32) / d_model))
  angles = distances[:, None] * inv_freq[None, :]
  return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


def rel_shift(x: jax.Array) -> jax.Array:
  """Transformer-XL's relative shift of [..., q, k] scores computed against
  positions k-1 .. 0: afterwards [i, j] is the score of distance
  (k - q) + i - j, for every key a query may see (j <= k - q + i; the rest
  is masked). A zero column, a reshape and a slice, as the original."""
  *lead, q, k = x.shape
  x = jnp.pad(x, [(0, 0)] * len(lead) + [(0, 0), (1, 0)])
  x = x.reshape(*lead, k + 1, q)[..., 1:, :]
  return x.reshape(*lead, q, k)


class RelativeAttention(nn.Module):
  """Relative multi-head attention over [memory; segment] (HF's
  `RelPartialLearnableMultiHeadAttn`), with its residual and norm."""
  config: TransfoXLConfig

  @nn.compact
  def __call__(self, x: jax.Array, memory: jax.Array, pos_emb: jax.Array,
               visible: jax.Array, r_w_bias: Optional[jax.Array],
               r_r_bias: Optional[jax.Array], deterministic: bool) -> jax.Array:
    cfg = self.config
    h, dh = cfg.n_head, cfg.d_head
    dtypes = _dtypes(cfg)
    dtype = dtypes["dtype"]
    if r_w_bias is None:  # untie_r: this layer's own biases
      bias_init = nn.with_logical_partitioning(_init(cfg), ("heads", "kv"))
      r_w_bias = self.param("r_w_bias", bias_init, (h, dh), dtypes["param_dtype"])
      r_r_bias = self.param("r_r_bias", bias_init, (h, dh), dtypes["param_dtype"])
    norm = _norm(cfg, "layer_norm")
    q_len = x.shape[1]
    cat = jnp.concatenate([memory.astype(x.dtype), x], axis=1)
    qkv_kernel = self.param(
        "qkv", nn.with_logical_partitioning(_init(cfg), ("embed", "qkv", "joined_kv")),
        (cfg.d_model, 3, h * dh), dtypes["param_dtype"])
    heads = jnp.einsum("bkd,dtj->tbkj", (norm(cat) if cfg.pre_lnorm else cat).astype(dtype),
                       qkv_kernel.astype(dtype))
    shape = heads.shape[1:3] + (h, dh)
    query, key, value = (heads[i].reshape(shape) for i in range(3))
    query = query[:, -q_len:]
    r_head = layers.Dense(h * dh, ("embed", "joined_kv"), _init(cfg), name="r_net",
                          **dtypes)(pos_emb.astype(dtype)).reshape(-1, h, dh)
    content = jnp.einsum("bihd,bjhd->bhij", query + r_w_bias.astype(dtype), key,
                         preferred_element_type=jnp.float32)
    position = jnp.einsum("bihd,jhd->bhij", query + r_r_bias.astype(dtype), r_head,
                          preferred_element_type=jnp.float32)
    scores = (content + rel_shift(position)) * (1.0 / math.sqrt(dh))
    scores = jnp.where(visible, scores, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(scores, axis=-1)
    weights = nn.Dropout(cfg.dropatt)(weights, deterministic=deterministic)
    out = jnp.einsum("bhij,bjhd->bihd", weights.astype(dtype), value)
    out = out.reshape(out.shape[:2] + (h * dh,))
    out = layers.Dense(cfg.d_model, ("joined_kv", "embed"), _init(cfg), name="out",
                       **dtypes)(out)
    out = nn.Dropout(cfg.dropout)(out, deterministic=deterministic)
    return x + out if cfg.pre_lnorm else norm(x + out)


class FeedForward(nn.Module):
  """ReLU feed-forward with its residual and norm (HF's `PositionwiseFF`)."""
  config: TransfoXLConfig

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
    cfg = self.config
    norm = _norm(cfg, "layer_norm")
    dropout = nn.Dropout(cfg.dropout)
    h = layers.Dense(cfg.d_inner, ("embed", "mlp"), _init(cfg), use_bias=True, name="wi",
                     **_dtypes(cfg))(norm(x) if cfg.pre_lnorm else x)
    h = nn.with_logical_constraint(nn.relu(h), ("batch", "length", "mlp"))
    h = dropout(h, deterministic=deterministic)
    h = layers.Dense(cfg.d_model, ("mlp", "embed"), _init(cfg), use_bias=True, name="wo",
                     **_dtypes(cfg))(h)
    h = dropout(h, deterministic=deterministic)
    return x + h if cfg.pre_lnorm else norm(x + h)


class DecoderLayer(nn.Module):
  config: TransfoXLConfig

  @nn.compact
  def __call__(self, x, memory, pos_emb, visible, r_w_bias, r_r_bias, deterministic):
    x = RelativeAttention(self.config, name="attention")(
        x, memory, pos_emb, visible, r_w_bias, r_r_bias, deterministic)
    return _constrain(FeedForward(self.config, name="mlp")(_constrain(x), deterministic))


class Decoder(nn.Module):
  """The layers, scanned or not, rematerialised by `remat_policy` (as
  `layers.apply_layers`, with each layer's memory as a per-layer input).
  Returns (the output, the stacked layer inputs [n_layer, B, q, d]: the
  next memory's new entries, and with `output_hidden_states` the tuple of
  the embedding output and each layer's output)."""
  config: TransfoXLConfig

  @nn.compact
  def __call__(self, x, memory, pos_emb, visible, r_w_bias, r_r_bias, deterministic,
               output_hidden_states=False):
    cfg = self.config

    def call(layer, x, memory, *args):
      return layer(x, memory, *args, deterministic)

    if cfg.remat_policy != "none":
      call = nn.remat(call, policy=layers.REMAT_POLICIES[cfg.remat_policy],
                      prevent_cse=not cfg.scan_layers)
    args = (pos_emb, visible, r_w_bias, r_r_bias)
    if cfg.scan_layers:
      if output_hidden_states:
        raise ValueError("output_hidden_states needs scan_layers=False")

      def body(layer, x, memory, *args):
        return call(layer, x, memory, *args), x

      stack = nn.scan(body, variable_axes={"params": 0},
                      split_rngs={"params": True, "dropout": True},
                      in_axes=(0,) + (nn.broadcast,) * len(args), length=cfg.n_layer,
                      unroll=cfg.scan_unroll,
                      metadata_params={nn.PARTITION_NAME: layers.LAYERS_AXIS})
      x, inputs = stack(DecoderLayer(cfg, name=layers.SCANNED_LAYERS), x, memory, *args)
      return x, inputs, None
    inputs, outputs = [], [x]
    for i in range(cfg.n_layer):
      inputs.append(x)
      x = call(DecoderLayer(cfg, name=layers.layer_name(i)), x, memory[i], *args)
      outputs.append(x)
    return x, jnp.stack(inputs), tuple(outputs)


def _visible(config: TransfoXLConfig, q_len: int, mem_len: int,
             memory_ids: Optional[jax.Array], segment_ids: Optional[jax.Array]
             ) -> jax.Array:
  """[B or 1, 1, q, mem + q] bool: which keys each query attends to.

  Query i sits at index mem_len + i of [memory; segment]: causal, and with
  `same_length` at most `config.mem_len` back (itself included): what
  transformers' triu/tril masks select, written as distances so that a
  fixed-size memory masks the same way. With ids ([B, M] of the memory,
  [B, q] of the segment) a key is visible only to queries of its id: the
  proteins of a packed row stay apart, and an unfilled memory entry (id -1)
  is seen by nobody.
  """
  distance = (mem_len + jnp.arange(q_len))[:, None] - jnp.arange(mem_len + q_len)[None, :]
  visible = distance >= 0
  if config.same_length:
    visible &= distance < config.mem_len
  visible = visible[None, None]
  if segment_ids is not None:
    keys = jnp.concatenate([memory_ids, segment_ids], axis=1)
    visible = visible & (segment_ids[:, None, :, None] == keys[:, None, None, :])
  return visible


class LmHead(nn.Module):
  """The softmax over the vocabulary, tied to the token embedding (HF's
  `ProjectedAdaptiveLogSoftmax` without clusters): its bias, and its own
  projection when d_embed != d_model."""
  config: TransfoXLConfig

  @nn.compact
  def __call__(self, hidden: jax.Array, embedder: layers.Embed) -> jax.Array:
    cfg = self.config
    if cfg.d_embed != cfg.d_model:
      projection = self.param(
          "projection", nn.with_logical_partitioning(
              nn.initializers.normal(stddev=cfg.proj_init_std), ("embed", "token_embed")),
          (cfg.d_model, cfg.d_embed), jnp.dtype(cfg.param_dtype))
      hidden = jnp.dot(hidden, projection.astype(hidden.dtype))
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("vocab",)),
                      (cfg.vocab_size,), jnp.dtype(cfg.param_dtype))
    logits = embedder.attend(hidden) + bias.astype(jnp.float32)
    return jax.nn.log_softmax(logits, axis=-1)


class TransfoXL(nn.Module):
  """Transformer-XL with its LM head (ProtTXL).

  `__call__` runs one segment: (log-probabilities, the next memory);
  `encode` embeds a whole input, segment by segment beyond
  `config.segment_length`.
  """
  config: TransfoXLConfig

  def setup(self):
    cfg = self.config
    self.embedder = layers.Embed(cfg.vocab_size, cfg.d_embed, embedding_init=_init(cfg),
                                 axes=("vocab", "token_embed"),
                                 **_dtypes(cfg))
    proj_init = nn.initializers.normal(stddev=cfg.proj_init_std)
    if cfg.d_embed != cfg.d_model:
      self.embedding_projection = self.param(
          "embedding_projection",
          nn.with_logical_partitioning(proj_init, ("token_embed", "embed")),
          (cfg.d_embed, cfg.d_model), jnp.dtype(cfg.param_dtype))
    if not cfg.untie_r:
      bias_init = nn.with_logical_partitioning(_init(cfg), ("heads", "kv"))
      self.r_w_bias = self.param("r_w_bias", bias_init, (cfg.n_head, cfg.d_head),
                                 jnp.dtype(cfg.param_dtype))
      self.r_r_bias = self.param("r_r_bias", bias_init, (cfg.n_head, cfg.d_head),
                                 jnp.dtype(cfg.param_dtype))
    self.lm_head = LmHead(cfg)
    self.dropout = nn.Dropout(cfg.dropout)
    self.decoder = Decoder(cfg)

  def empty_memory(self, batch: int) -> jax.Array:
    """The memory before the first segment: length 0."""
    cfg = self.config
    return jnp.zeros((cfg.n_layer, batch, 0, cfg.d_model), jnp.dtype(cfg.dtype))

  def segment(self, tokens: jax.Array, memory: Optional[jax.Array] = None,
              memory_ids: Optional[jax.Array] = None,
              segment_ids: Optional[jax.Array] = None, deterministic: bool = True,
              output_hidden_states: bool = False):
    """One segment: [B, q] tokens and the memory [n_layer, B, M, d] ->
    (last hidden states [B, q, d] (with `output_hidden_states` the tuple of
    the embedding output and every layer's output), the next memory
    [n_layer, B, min(mem_len, M + q), d]: the last layer inputs, no gradient).

    `memory_ids` [B, M] and `segment_ids` [B, q] (both or neither): which
    protein each entry and token belongs to; keys of another id are masked
    (`_visible`); -1 marks memory entries not yet filled.
    """
    cfg = self.config
    batch, q_len = tokens.shape
    if memory is None:
      memory = self.empty_memory(batch)
    if memory.shape[:2] != (cfg.n_layer, batch) or memory.shape[3] != cfg.d_model:
      raise ValueError(f"memory has shape {memory.shape}; expected "
                       f"({cfg.n_layer}, {batch}, length, {cfg.d_model})")
    memory = nn.with_logical_constraint(memory, MEMORY_AXES)
    m_len = memory.shape[2]
    x = self.embedder(tokens)
    if cfg.d_embed != cfg.d_model:
      x = jnp.dot(x, self.embedding_projection.astype(x.dtype))
    x = _constrain(x * jnp.asarray(cfg.d_model ** 0.5, x.dtype))
    distances = jnp.arange(m_len + q_len - 1, -1, -1, dtype=jnp.float32)
    if cfg.clamp_len > 0:
      distances = jnp.minimum(distances, cfg.clamp_len)
    pos_emb = positional_embedding(distances, cfg.d_model).astype(x.dtype)
    x = self.dropout(x, deterministic=deterministic)
    pos_emb = self.dropout(pos_emb, deterministic=deterministic)
    if (memory_ids is None) != (segment_ids is None):
      raise ValueError("pass both memory_ids and segment_ids, or neither")
    visible = _visible(cfg, q_len, m_len, memory_ids, segment_ids)
    biases = (None, None) if cfg.untie_r else (self.r_w_bias, self.r_r_bias)
    x, inputs, outputs = self.decoder(x, memory, pos_emb, visible, *biases, deterministic,
                                      output_hidden_states)
    x = self.dropout(x, deterministic=deterministic)
    end = m_len + q_len
    new_memory = jax.lax.stop_gradient(jnp.concatenate(
        [memory, inputs.astype(memory.dtype)], axis=2)[:, :, max(0, end - cfg.mem_len):end])
    new_memory = nn.with_logical_constraint(new_memory, MEMORY_AXES)
    if output_hidden_states:
      return tuple(outputs[:-1]) + (x,), new_memory
    return x, new_memory

  def log_probs(self, hidden: jax.Array) -> jax.Array:
    """[..., d_model] -> float32 log-probabilities over the vocabulary."""
    return self.lm_head(hidden, self.embedder)

  def __call__(self, input_ids: jax.Array, mems: Optional[jax.Array] = None,
               enable_dropout: bool = False) -> tuple[jax.Array, jax.Array]:
    """One segment: (log-probabilities [B, q, vocab] float32, the next memory)."""
    hidden, new_mems = self.segment(input_ids, mems, None, None, not enable_dropout)
    log_probs = self.log_probs(hidden)
    return nn.with_logical_constraint(log_probs, ("batch", "length", "vocab")), new_mems

  def encode(self, encoder_input_tokens: jax.Array, enable_dropout: bool = False,
             output_hidden_states: bool = False):
    """[B, L] tokens -> [B, L, d_model] last hidden states (or every hidden
    state, as `segment`), from an empty memory.

    Up to `segment_length` tokens run as one segment. Longer inputs run
    segment by segment, carrying the memory (a scan over segments: one
    segment's program whatever L; attention memory O(segment_length x
    (segment_length + mem_len))). With `same_length` that is the same
    result as one segment; without, each token sees only the memory and its
    own segment. Padding after the residues changes nothing before it
    (causal).
    """
    if encoder_input_tokens.shape[1] <= self.config.segment_length:
      return self.segment(encoder_input_tokens, None, None, None, not enable_dropout,
                          output_hidden_states)[0]
    return self.segments(encoder_input_tokens, jnp.zeros_like(encoder_input_tokens),
                         enable_dropout, output_hidden_states)

  def fixed_memory(self, batch: int, ids_dtype=jnp.int32) -> tuple[jax.Array, jax.Array]:
    """A fixed-size memory before any segment: `mem_len` zero entries
    [n_layer, B, mem_len, d] and their ids [B, mem_len], all -1 (unfilled:
    seen by nobody)."""
    cfg = self.config
    return (jnp.zeros((cfg.n_layer, batch, cfg.mem_len, cfg.d_model), jnp.dtype(cfg.dtype)),
            jnp.full((batch, cfg.mem_len), -1, ids_dtype))

  def recurrent_segment(self, tokens: jax.Array, segment_ids: jax.Array, memory: jax.Array,
                        memory_ids: jax.Array, deterministic: bool = True,
                        output_hidden_states: bool = False):
    """One segment [B, q] of packed rows after a fixed-size memory (as
    `fixed_memory`) -> (hidden states as `segment`, the next memory, its
    ids): the recurrence `segments` scans and that training with the memory
    carried between train steps runs once per step (`lm_segment`)."""
    hidden, memory = self.segment(tokens, memory, memory_ids, segment_ids, deterministic,
                                  output_hidden_states)
    memory_ids = jnp.concatenate([memory_ids, segment_ids], axis=1)[:, -self.config.mem_len:]
    return hidden, memory, nn.with_logical_constraint(memory_ids, ("batch", "length"))

  def segments(self, tokens: jax.Array, segment_ids: jax.Array, enable_dropout: bool = False,
               output_hidden_states: bool = False):
    """[B, L] tokens of proteins `segment_ids` [B, L] (a packed row: several
    proteins, each its own id) run `segment_length` tokens at a time from an
    empty memory, the memory carried from segment to segment (a scan: one
    segment's program whatever L) -> the hidden states as `encode`.

    The memory is a fixed-size buffer of `mem_len` entries (unfilled ones
    masked), so every segment has one shape; keys of another protein are
    masked, so a protein's states do not depend on its neighbours in the row.
    """
    cfg = self.config
    deterministic = not enable_dropout
    batch, length = tokens.shape
    seg = min(cfg.segment_length, length)
    num = -(-length // seg)
    pad = ((0, 0), (0, num * seg - length))
    tokens, segment_ids = (jnp.moveaxis(jnp.pad(x, pad).reshape(batch, num, seg), 1, 0)
                           for x in (tokens, segment_ids))

    def body(module, carry, xs):
      hidden, memory, memory_ids = module.recurrent_segment(
          *xs, *carry, deterministic, output_hidden_states)
      return (memory, memory_ids), hidden

    scan = nn.scan(body, variable_broadcast="params",
                   split_rngs={"params": False, "dropout": True})
    _, hidden = scan(self, self.fixed_memory(batch, segment_ids.dtype), (tokens, segment_ids))

    def whole(h):  # [num, B, seg, d] -> [B, L, d]
      return jnp.moveaxis(h, 0, 1).reshape(batch, num * seg, -1)[:, :length]

    return jax.tree.map(whole, hidden)

  def lm(self, decoder_target_tokens: jax.Array, decoder_segment_ids: jax.Array,
         enable_dropout: bool = False) -> jax.Array:
    """Training: log-probabilities [B, L, vocab] (float32) of every position's
    next token, over a packed row run segment by segment (`segments`)."""
    hidden = self.segments(decoder_target_tokens, decoder_segment_ids, enable_dropout)
    return nn.with_logical_constraint(self.log_probs(hidden), ("batch", "length", "vocab"))

  def lm_segment(self, decoder_target_tokens: jax.Array, decoder_segment_ids: jax.Array,
                 memory: jax.Array, memory_ids: jax.Array, enable_dropout: bool = False
                 ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Training with the memory carried between train steps (Transformer-XL's
    own): one segment [B, q] of each row after the memory the previous step
    left -> (log-probabilities [B, q, vocab] float32, the next memory, its
    ids). Run over a row's consecutive segments it computes what `lm`
    computes over the whole row."""
    hidden, memory, memory_ids = self.recurrent_segment(
        decoder_target_tokens, decoder_segment_ids, memory, memory_ids, not enable_dropout)
    log_probs = nn.with_logical_constraint(self.log_probs(hidden), ("batch", "length", "vocab"))
    return log_probs, memory, memory_ids
