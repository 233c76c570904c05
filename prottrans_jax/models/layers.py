"""Transformer building blocks shared by the models.

T5 1.0 conventions by default (RMS norms, bias-free projections, unscaled
attention, ReLU); the BERT family switches on what it differs in (LayerNorm
with bias, dense biases, 1/sqrt(head_dim) attention scaling, GELU) through
module fields whose defaults keep T5's behaviour.

Every parameter carries logical axis names (`nn.with_logical_partitioning`)
and the main activations are constrained with logical names, so one set of
partitioning rules (prottrans_jax/partitioning.py) places them on any mesh.
Parameters live in `param_dtype`; activations are computed in `dtype`;
attention logits, softmax and RMS statistics are float32.
"""
import math
from typing import Any, Mapping, Optional

from flax import linen as nn
from flax import struct
import jax
import jax.numpy as jnp
import numpy as np

# Added to the logits of masked keys. Finite (not -inf) so a query with no
# visible key (a padding row) gives a uniform softmax instead of NaN.
_MASKED_LOGIT = -1e10

# T5 1.0 initialisers (as in T5X's examples network): fan-in scaled normals for
# the projections; unit normal for the embedding, which T5 does not rescale.
default_kernel_init = nn.initializers.variance_scaling(1.0, "fan_in", "normal")
mlp_kernel_init = nn.initializers.variance_scaling(
    1.0, "fan_in", "truncated_normal")
embedding_init = nn.initializers.normal(stddev=1.0)
relpos_init = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")


# Hugging Face's names for the activations of `hidden_act` in config.json.
# "gelu" is the exact (erf) GELU, "gelu_new" the tanh approximation.
ACTIVATIONS = {
    "relu": nn.relu,
    "gelu": lambda x: nn.gelu(x, approximate=False),
    "gelu_new": lambda x: nn.gelu(x, approximate=True),
    "tanh": jnp.tanh,
}


def activation(name: str):
  if name not in ACTIVATIONS:
    raise ValueError(f"Unsupported activation {name!r}; known: {sorted(ACTIVATIONS)}")
  return ACTIVATIONS[name]


def query_kernel_init(head_dim: int):
  """T5 has no 1/sqrt(d_kv) at run time: it is folded into the query init."""
  def init(key, shape, dtype=jnp.float32):
    return default_kernel_init(key, shape, dtype) / np.sqrt(head_dim).astype(dtype)
  return init


class RMSNorm(nn.Module):
  """T5's layer norm: scale only, no mean subtraction, no bias."""
  epsilon: float = 1e-6
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param(
        "scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
        (x.shape[-1],), self.param_dtype)
    # Statistics in float32 whatever the activation dtype: bf16 squares lose
    # too much precision over a 1024-wide row.
    x = x.astype(jnp.float32)
    variance = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
    y = (x * jax.lax.rsqrt(variance + self.epsilon)).astype(self.dtype)
    return y * scale.astype(self.dtype)


class LayerNorm(nn.Module):
  """BERT's layer norm: mean and (biased) variance, scale and bias.

  `axis_name` is the logical name of the normalised axis ("embed" for the
  residual stream; the factorized embedding of ALBERT/ELECTRA has its own).
  """
  epsilon: float = 1e-12
  axis_name: str = "embed"
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    features = x.shape[-1]
    scale = self.param(
        "scale", nn.with_logical_partitioning(nn.initializers.ones, (self.axis_name,)),
        (features,), self.param_dtype)
    bias = self.param(
        "bias", nn.with_logical_partitioning(nn.initializers.zeros, (self.axis_name,)),
        (features,), self.param_dtype)
    # Float32 statistics, as in RMSNorm.
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    variance = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    y = (x - mean) * jax.lax.rsqrt(variance + self.epsilon)
    return (y * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(self.dtype)


class Dense(nn.Module):
  """A projection of the last axis; kernel stored (in, out).

  Bias-free by default (T5); `use_bias` adds a bias on the output axis
  (BERT family), with the kernel's output logical name.
  """
  features: int
  kernel_axes: tuple[str, str]
  kernel_init: nn.initializers.Initializer = default_kernel_init
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  use_bias: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param(
        "kernel", nn.with_logical_partitioning(self.kernel_init, self.kernel_axes),
        (x.shape[-1], self.features), self.param_dtype)
    y = jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype))
    if self.use_bias:
      bias = self.param(
          "bias", nn.with_logical_partitioning(nn.initializers.zeros, self.kernel_axes[-1:]),
          (self.features,), self.param_dtype)
      y = y + bias.astype(self.dtype)
    return y


class Embed(nn.Module):
  """Token embedding, also used transposed for the tied output logits.

  `axes` are the logical names of (rows, features): BERT's position and
  token-type tables and factorized embeddings name theirs differently.
  """
  num_embeddings: int
  features: int
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  embedding_init: nn.initializers.Initializer = embedding_init
  axes: tuple[str, str] = ("vocab", "embed")

  def setup(self):
    self.embedding = self.param(
        "embedding", nn.with_logical_partitioning(self.embedding_init, self.axes),
        (self.num_embeddings, self.features), self.param_dtype)

  def __call__(self, tokens: jax.Array) -> jax.Array:
    return jnp.take(self.embedding, tokens, axis=0).astype(self.dtype)

  def attend(self, x: jax.Array) -> jax.Array:
    """Float32 logits of `x` against every embedding row."""
    # The vocabulary is tiny (128), so float32 here costs nothing and keeps
    # the loss exact under bf16 activations.
    return jnp.einsum("...d,vd->...v", x.astype(jnp.float32),
                      self.embedding.astype(jnp.float32))


def relative_position_bucket(relative_position: jax.Array, *, bidirectional: bool,
                             num_buckets: int, max_distance: int) -> jax.Array:
  """T5's bucket of `key_position - query_position` (int32 in [0, num_buckets)).

  Half the buckets hold exact small distances, the other half logarithmically
  wider ranges up to `max_distance`; beyond it everything shares the last
  bucket. Bidirectional stacks spend half the buckets on each direction;
  unidirectional (causal) ones only see keys at or before the query.
  The float32 arithmetic is written in the same order as Hugging Face's so
  that bucket boundaries agree exactly.
  """
  buckets = jnp.zeros_like(relative_position)
  if bidirectional:
    num_buckets //= 2
    buckets += (relative_position > 0).astype(relative_position.dtype) * num_buckets
    distance = jnp.abs(relative_position)
  else:
    distance = -jnp.minimum(relative_position, 0)
  max_exact = num_buckets // 2
  log_ratio = (jnp.log(distance.astype(jnp.float32) / max_exact)
               / np.float32(math.log(max_distance / max_exact))
               * (num_buckets - max_exact))
  # Distance 0 gives log(0) = -inf; it is never selected (distance < max_exact)
  # but must not reach the int cast as -inf, hence the clip.
  if_large = max_exact + jnp.clip(log_ratio, 0, num_buckets).astype(relative_position.dtype)
  if_large = jnp.minimum(if_large, num_buckets - 1)
  return buckets + jnp.where(distance < max_exact, distance, if_large)


class RelativePositionBias(nn.Module):
  """One (heads, buckets) table per stack, shared by all its layers.

  Returns the table rather than a bias tensor: attention builds the bias for
  any block of queries from positions (`AttentionBias`), so a long sequence
  never needs an L x L x heads tensor.
  """
  num_heads: int
  num_buckets: int
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self) -> jax.Array:
    return self.param(
        "rel_embedding",
        nn.with_logical_partitioning(relpos_init, ("heads", "relpos_buckets")),
        (self.num_heads, self.num_buckets), self.param_dtype)


@struct.dataclass
class AttentionBias:
  """What each query may see, kept as per-position vectors.

  `for_queries` turns it into the additive float32 bias of any block of
  queries, so full attention and chunked attention share one definition of
  masking and relative positions.
  """
  q_valid: jax.Array  # [B, Lq] bool: query is a real token
  kv_valid: jax.Array  # [B, Lk] bool: key is a real token
  q_segment_ids: Optional[jax.Array] = None  # [B, Lq]: packed example ids
  kv_segment_ids: Optional[jax.Array] = None  # [B, Lk]
  rel_table: Optional[jax.Array] = None  # [heads, buckets]; None: no position bias
  causal: bool = struct.field(pytree_node=False, default=False)
  bidirectional: bool = struct.field(pytree_node=False, default=True)
  max_distance: int = struct.field(pytree_node=False, default=128)

  def for_queries(self, q_start: jax.Array, q_valid: jax.Array,
                  q_segment_ids: Optional[jax.Array]) -> jax.Array:
    """Bias [B, heads or 1, q, Lk] of the queries at indices q_start + [0, q)."""
    q_len, kv_len = q_valid.shape[1], self.kv_valid.shape[1]
    q_index = q_start + jnp.arange(q_len)
    kv_index = jnp.arange(kv_len)
    mask = q_valid[:, :, None] & self.kv_valid[:, None, :]
    if q_segment_ids is not None:
      mask &= q_segment_ids[:, :, None] == self.kv_segment_ids[:, None, :]
    if self.causal:
      mask &= q_index[None, :, None] >= kv_index[None, None, :]
    bias = jnp.where(mask, 0.0, _MASKED_LOGIT).astype(jnp.float32)[:, None]
    if self.rel_table is not None:
      bias = bias + self._position_bias(q_start, q_len, kv_len)[None]
    return bias

  def _position_bias(self, q_start: jax.Array, q_len: int, kv_len: int) -> jax.Array:
    """Relative position bias [heads, q_len, kv_len] of one block of queries.

    The block sees fewer than q_len + kv_len distinct offsets key - query, so
    those are bucketed and looked up once (a log per (q, k) pair or a gather
    of q_len x kv_len indices is far slower on long inputs). Offsets are
    index differences; inside one packed segment they equal the differences
    of the per-example positions.
    """
    # One spare offset keeps the row stride below (width - 1) >= kv_len even
    # for a single query.
    width = q_len + kv_len
    # by_offset[:, j] is the bias of offset j - (q_len - 1) - q_start.
    offsets = jnp.arange(width) - (q_len - 1) - q_start
    buckets = relative_position_bucket(
        offsets, bidirectional=self.bidirectional,
        num_buckets=self.rel_table.shape[1], max_distance=self.max_distance)
    by_offset = jnp.take(self.rel_table.astype(jnp.float32), buckets, axis=1)
    # Row q needs by_offset[:, k - q + q_len - 1]: a window sliding left by one
    # per row. Repeating the row q_len times and re-reading the flat result
    # with a row stride one shorter (width - 1) shifts each row by exactly
    # that, with reshapes and slices only.
    heads = by_offset.shape[0]
    flat = jnp.tile(by_offset, (1, q_len))[:, q_len - 1:q_len - 1 + q_len * (width - 1)]
    return flat.reshape(heads, q_len, width - 1)[:, :, :kv_len]

  def full(self) -> jax.Array:
    """Bias [B, heads or 1, Lq, Lk] for all queries."""
    return self.for_queries(0, self.q_valid, self.q_segment_ids)


def dot_product_attention(query: jax.Array, key: jax.Array, value: jax.Array,
                          bias: jax.Array, *, dropout_rate: float = 0.0,
                          dropout_rng: Optional[jax.Array] = None) -> jax.Array:
  """Softmax(q k^T + bias) v, unscaled (T5); [B, q, H, D] in value's dtype."""
  # Heads-first [B, H, L, D] operands make both products plain batched
  # matmuls. Contracting the [B, L, H, D] layout directly lets XLA:CPU fuse
  # the transposes, products and softmax into one kernel that ran 1.4x
  # (ProtT5-XL) to 3x (tiny) slower (bench/attention_layout.py).
  query, key, value = (jnp.transpose(x, (0, 2, 1, 3)) for x in (query, key, value))
  logits = jnp.einsum("bhqd,bhkd->bhqk", query, key,
                      preferred_element_type=jnp.float32) + bias
  weights = jax.nn.softmax(logits, axis=-1)
  if dropout_rng is not None and dropout_rate > 0.0:
    keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, weights.shape)
    weights = jnp.where(keep, weights / (1.0 - dropout_rate), 0.0)
  out = jnp.einsum("bhqk,bhkd->bhqd", weights.astype(value.dtype), value)
  return jnp.transpose(out, (0, 2, 1, 3))


def chunked_attention(query: jax.Array, key: jax.Array, value: jax.Array,
                      bias: AttentionBias, chunk_size: int, *,
                      dropout_rate: float = 0.0,
                      dropout_rng: Optional[jax.Array] = None) -> jax.Array:
  """`dot_product_attention` one block of `chunk_size` queries at a time.

  Peak memory is O(chunk_size x Lk) per head instead of O(Lq x Lk): the bias
  of each block is built from positions inside the loop. Queries are padded
  to a whole number of blocks; the padding rows are masked and dropped.
  """
  batch, q_len = query.shape[:2]
  num_chunks = -(-q_len // chunk_size)
  pad = num_chunks * chunk_size - q_len

  def blocks(x, fill=0):
    """[B, Lq, ...] -> [num_chunks, B, chunk_size, ...]."""
    x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2), constant_values=fill)
    x = x.reshape((batch, num_chunks, chunk_size) + x.shape[2:])
    return jnp.moveaxis(x, 1, 0)

  has_segments = bias.q_segment_ids is not None
  xs = (jnp.arange(num_chunks), blocks(query), blocks(bias.q_valid, False),
        blocks(bias.q_segment_ids) if has_segments else None)

  def one_chunk(args):
    index, q_block, valid_block, segment_block = args
    rng = None if dropout_rng is None else jax.random.fold_in(dropout_rng, index)
    return dot_product_attention(
        q_block, key, value,
        bias.for_queries(index * chunk_size, valid_block, segment_block),
        dropout_rate=dropout_rate, dropout_rng=rng)

  out = jax.lax.map(one_chunk, xs)  # [num_chunks, B, chunk_size, H, D]
  out = jnp.moveaxis(out, 0, 1).reshape((batch, num_chunks * chunk_size) + out.shape[3:])
  return out[:, :q_len]


class MultiHeadAttention(nn.Module):
  """Multi-head attention with T5's layout: (in, heads*head_dim) kernels.

  Above `long_sequence_threshold` queries, attention runs chunk by chunk
  (`chunked_attention`); below it, in one piece, which is faster.

  T5 by default: no biases, no run-time 1/sqrt(head_dim) (folded into the
  query init). The BERT family sets `use_bias`, `scale_queries` (its weights
  expect the scaling at run time) and `kernel_init` (one init for all four
  projections).
  """
  num_heads: int
  head_dim: int
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  dropout_rate: float = 0.0
  chunk_size: int = 1024
  long_sequence_threshold: int = 2048
  use_bias: bool = False
  scale_queries: bool = False
  kernel_init: Optional[nn.initializers.Initializer] = None

  @nn.compact
  def __call__(self, inputs_q: jax.Array, inputs_kv: jax.Array, bias: AttentionBias,
               deterministic: bool = True) -> jax.Array:
    joined = self.num_heads * self.head_dim

    def project(name, x, init):
      y = Dense(joined, ("embed", "joined_kv"), self.kernel_init or init, self.dtype,
                self.param_dtype, self.use_bias, name=name)(x)
      y = y.reshape(y.shape[:2] + (self.num_heads, self.head_dim))
      return nn.with_logical_constraint(y, ("batch", "length", "heads", "kv"))

    query = project("query", inputs_q, query_kernel_init(self.head_dim))
    if self.scale_queries:
      query = query * jnp.asarray(self.head_dim**-0.5, query.dtype)
    key = project("key", inputs_kv, default_kernel_init)
    value = project("value", inputs_kv, default_kernel_init)

    dropout_rng = None
    if not deterministic and self.dropout_rate > 0.0:
      dropout_rng = self.make_rng("dropout")
    if query.shape[1] > self.long_sequence_threshold:
      out = chunked_attention(query, key, value, bias, self.chunk_size,
                              dropout_rate=self.dropout_rate, dropout_rng=dropout_rng)
    else:
      out = dot_product_attention(query, key, value, bias.full(),
                                  dropout_rate=self.dropout_rate, dropout_rng=dropout_rng)
    out = nn.with_logical_constraint(out, ("batch", "length", "heads", "kv"))
    out = out.reshape(out.shape[:2] + (joined,))
    return Dense(inputs_q.shape[-1], ("joined_kv", "embed"),
                 self.kernel_init or default_kernel_init, self.dtype,
                 self.param_dtype, self.use_bias, name="out")(out)


class MlpBlock(nn.Module):
  """Feed-forward wi -> activation -> dropout -> wo, or its gated form.

  T5 1.0 by default (ReLU, no biases); BERT's intermediate/output pair is
  the same block with `activation="gelu"`, `use_bias` and no inner dropout.
  `gated` is T5 1.1's gated MLP (Hugging Face's `gated-ACT`, T5X's
  `mlp_activations=(ACT, "linear")`): activation(x @ wi_0) * (x @ wi_1),
  then dropout and wo, with T5X's parameter names `wi_0`, `wi_1`, `wo`.
  """
  d_ff: int
  dropout_rate: float = 0.0
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  activation: str = "relu"
  use_bias: bool = False
  kernel_init: nn.initializers.Initializer = mlp_kernel_init
  gated: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
    def wi(name):
      return Dense(self.d_ff, ("embed", "mlp"), self.kernel_init, self.dtype,
                   self.param_dtype, self.use_bias, name=name)(x)

    if self.gated:
      h = activation(self.activation)(wi("wi_0")) * wi("wi_1")
    else:
      h = activation(self.activation)(wi("wi"))
    h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
    h = nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
    return Dense(x.shape[-1], ("mlp", "embed"), self.kernel_init, self.dtype,
                 self.param_dtype, self.use_bias, name="wo")(h)


# --- Stacks of layers: scanned or not, rematerialised or not. ---------------
#
# Every stack of identical layers (T5's encoder and decoder, a BERT's
# encoder) runs through `apply_layers`, so that what the config chooses in
# gin (`scan_layers`, `remat_policy`) means the same in every family, as in
# T5X's scalable T5 and MaxText.
#
# Unscanned, layer i's parameters are `layers_<i>/...` (T5X's names: the
# converters map them and checkpoints store them, whatever the setting).
# Scanned, one `nn.scan` runs the layers and its parameters are one subtree
# `layers/...` whose every leaf has a leading axis, one entry per layer
# weight set, with the logical axis name "layers". `stack_layers` and
# `unstack_layers` turn one layout into the other.

# Logical axis name of the leading (layer) axis of scanned parameters.
LAYERS_AXIS = "layers"
# Name of the parameter subtree of a scanned stack.
SCANNED_LAYERS = "layers"


def layer_name(index: int) -> str:
  """Name of layer weight set `index` in the unscanned (canonical) layout."""
  return f"layers_{index}"


# What the backward pass may keep from each layer's forward pass (what it
# does not keep, it recomputes; the layer's inputs are always kept):
# - "none": no rematerialisation, everything is saved (fastest, most memory);
# - "minimal": only the results of matrix products without batch dimensions,
#   i.e. the outputs of the dense projections (q, k, v, attention out, MLP
#   wi/wo); attention scores and weighted sums (batched products over
#   batch x heads), norms, activations, softmax and dropout are recomputed.
#   That is T5X's and MaxText's "minimal" (jax's
#   `dots_with_no_batch_dims_saveable`, also exported as
#   `checkpoint_dots_with_no_batch_dims`);
# - "full": nothing (`nothing_saveable`): the whole layer is recomputed
#   from its input (least memory, about one more forward pass of compute).
REMAT_POLICIES = {
    "none": None,
    "minimal": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "full": jax.checkpoint_policies.nothing_saveable,
}


def check_layer_options(scan_layers: bool, remat_policy: str,
                        scan_unroll: int = 1) -> None:
  """Raises ValueError unless `scan_layers` is a bool, `remat_policy` one of
  REMAT_POLICIES and `scan_unroll` a positive int (config fields of every
  family with layer stacks)."""
  if not isinstance(scan_layers, bool):
    raise ValueError(f"scan_layers must be True or False, got {scan_layers!r}")
  if (not isinstance(scan_unroll, int) or isinstance(scan_unroll, bool)
      or scan_unroll < 1):
    raise ValueError(f"scan_unroll must be a positive int, got {scan_unroll!r}")
  if not isinstance(remat_policy, str) or remat_policy not in REMAT_POLICIES:
    raise ValueError(f"remat_policy {remat_policy!r} is not one of "
                     f"{', '.join(map(repr, REMAT_POLICIES))}")


def apply_layers(make_layer, x: jax.Array, *args, num_layers: int,
                 num_weight_sets: Optional[int] = None, scan_layers: bool,
                 remat_policy: str, deterministic: bool,
                 scan_unroll: int = 1, output_hidden_states: bool = False
                 ) -> jax.Array | tuple[jax.Array, ...]:
  """Runs `num_layers` layers on `x`: `x = layer(x, *args, deterministic=...)`.

  Call it from a compact method: `make_layer(name)` creates one layer module
  (a child of that method's module) named `name`. `args` (attention biases,
  the encoder output) are the same for every layer.

  Args:
    make_layer: name -> an unbound layer module.
    x: the residual stream, the layers' carry.
    *args: the layers' other inputs (pytrees of arrays).
    num_layers: how many layers run.
    num_weight_sets: how many distinct weight sets they use (ALBERT shares
      them: layer i uses set i // (num_layers // num_weight_sets), Hugging
      Face ALBERT's grouping); default one per layer.
    scan_layers: run the stack as one `nn.scan` (parameters stacked under
      `layers`, leading axis the weight set; compiles one layer, not
      `num_layers`); else as a Python loop (`layers_0`, `layers_1`, ...).
    remat_policy: a REMAT_POLICIES name, applied to each layer.
    deterministic: passed to every layer (no dropout when True).
    scan_unroll: weight sets per iteration of the scanned loop (`lax.scan`'s
      `unroll`; the result is the same). Besides being a speed knob, it is
      how the AOT tool counts a layer's cost: XLA's cost analysis counts a
      loop body once, so the difference between 2 and 1 is one layer.
    output_hidden_states: return every hidden state instead of the last:
      `x` then the output of each layer call, `num_layers + 1` arrays (what
      Hugging Face's `output_hidden_states` holds; a shared weight set gives
      one entry per use). Unscanned stacks only: embedding asks for it, and
      the embedding engine runs unscanned.

  Returns:
    The last layer's output, or with `output_hidden_states` the tuple above.
  """
  check_layer_options(scan_layers, remat_policy, scan_unroll)
  if output_hidden_states and scan_layers:
    raise ValueError("output_hidden_states needs scan_layers=False (an "
                     "unscanned stack returns each layer's output)")
  num_weight_sets = num_weight_sets or num_layers
  if num_layers % num_weight_sets:
    raise ValueError(f"{num_layers} layers cannot share {num_weight_sets} "
                     "weight sets evenly")
  repeats = num_layers // num_weight_sets

  def call(layer, x, *args):
    return layer(x, *args, deterministic=deterministic)

  if remat_policy != "none":
    # Inside a scan the loop already keeps XLA from merging the recomputation
    # with the forward pass, so CSE prevention would only cost (as in T5X).
    call = nn.remat(call, policy=REMAT_POLICIES[remat_policy],
                    prevent_cse=not scan_layers)

  if not scan_layers:
    weight_sets = [make_layer(layer_name(i)) for i in range(num_weight_sets)]
    hidden_states = [x]
    for i in range(num_layers):
      x = call(weight_sets[i // repeats], x, *args)
      hidden_states.append(x)
    return tuple(hidden_states) if output_hidden_states else x

  broadcast_args = (nn.broadcast,) * len(args)

  def one_layer(layer, x, *args):
    return call(layer, x, *args), None

  body = one_layer
  if repeats > 1:
    # A shared weight set: its `repeats` uses are an inner scan over which
    # the parameters are broadcast (one set, no layer axis of their own).
    body = nn.scan(one_layer, variable_broadcast="params",
                   split_rngs={"params": False, "dropout": True},
                   in_axes=broadcast_args, length=repeats)
  stack = nn.scan(body, variable_axes={"params": 0},
                  split_rngs={"params": True, "dropout": True},
                  in_axes=broadcast_args, length=num_weight_sets,
                  unroll=scan_unroll, metadata_params={nn.PARTITION_NAME: LAYERS_AXIS})
  x, _ = stack(make_layer(SCANNED_LAYERS), x, *args)
  return x


# Parameter layouts. `stacks` maps the path of each scanned stack's parent
# module (("encoder",), ("decoder",), ...) to its number of weight sets. The
# transforms apply to a parameter tree and to any tree that holds parameter
# mirrors (an optax state: moments, factored statistics), to arrays (eagerly
# or traced under jit) and to `jax.ShapeDtypeStruct`s (shapes and shardings).


def _stack_leaves(*leaves):
  first = leaves[0]
  if isinstance(first, jax.ShapeDtypeStruct):
    sharding = first.sharding
    if isinstance(sharding, jax.sharding.NamedSharding):
      sharding = jax.sharding.NamedSharding(
          sharding.mesh, jax.sharding.PartitionSpec(None, *sharding.spec))
    return jax.ShapeDtypeStruct((len(leaves),) + tuple(first.shape), first.dtype,
                                sharding=sharding)
  if all(isinstance(leaf, np.ndarray) for leaf in leaves):
    return np.stack(leaves)
  return jnp.stack(leaves)


def _layer_of(leaf, index: int):
  if isinstance(leaf, jax.ShapeDtypeStruct):
    sharding = leaf.sharding
    if isinstance(sharding, jax.sharding.NamedSharding):
      sharding = jax.sharding.NamedSharding(
          sharding.mesh, jax.sharding.PartitionSpec(*tuple(sharding.spec)[1:]))
    return jax.ShapeDtypeStruct(tuple(leaf.shape)[1:], leaf.dtype, sharding=sharding)
  return leaf[index]


def _stack_one(parent: dict, num: int, where: str) -> dict:
  names = [layer_name(i) for i in range(num)]
  missing = [n for n in names if n not in parent]
  if missing:
    raise ValueError(f"{where}: no {', '.join(missing)} to stack (the config "
                     f"has {num} layer weight sets; found "
                     f"{sorted(k for k in parent if k.startswith('layers_'))})")
  extra = sorted(k for k in parent if k.startswith("layers_") and k not in names)
  if extra:
    raise ValueError(f"{where}: {', '.join(extra)} beyond the config's {num} "
                     "layer weight sets")
  structures = {jax.tree_util.tree_structure(parent[n]) for n in names}
  if len(structures) != 1:
    raise ValueError(f"{where}: layers_0..{num - 1} differ in structure")
  out = {k: v for k, v in parent.items() if k not in names}
  out[SCANNED_LAYERS] = jax.tree_util.tree_map(_stack_leaves, *(parent[n] for n in names))
  return out


def _unstack_one(parent: dict, num: int, where: str) -> dict:
  stacked = parent[SCANNED_LAYERS]
  for path, leaf in jax.tree_util.tree_flatten_with_path(stacked)[0]:
    if not leaf.shape or leaf.shape[0] != num:
      raise ValueError(
          f"{where}/{SCANNED_LAYERS}{jax.tree_util.keystr(path)} has shape "
          f"{tuple(leaf.shape)}: expected a leading axis of {num} layer weight sets")
  out = {k: v for k, v in parent.items() if k != SCANNED_LAYERS}
  for i in range(num):
    out[layer_name(i)] = jax.tree_util.tree_map(lambda leaf, i=i: _layer_of(leaf, i),
                                                stacked)
  return out


def _get(tree: Any, path: tuple[str, ...]) -> Any:
  for key in path:
    if not isinstance(tree, dict) or key not in tree:
      return None
    tree = tree[key]
  return tree if isinstance(tree, dict) else None


def _replace(tree: dict, path: tuple[str, ...], value: dict) -> dict:
  if not path:
    return value
  return {**tree, path[0]: _replace(tree[path[0]], path[1:], value)}


def _relayout(tree: Any, stacks: Mapping[tuple[str, ...], int], marker: str,
              convert) -> Any:
  """`convert(parent, num, where)` applied to every stack parent that holds
  `marker`, wherever a parameter tree (or a mirror of one) sits in `tree`."""
  if not stacks:
    return tree

  def is_root(node):
    return isinstance(node, dict) and any(
        (parent := _get(node, path)) is not None and marker in parent
        for path in stacks)

  def relayout_root(root):
    for path, num in stacks.items():
      parent = _get(root, path)
      if parent is not None and marker in parent:
        root = _replace(root, path, convert(parent, num, "/".join(path)))
    return root

  leaves, treedef = jax.tree_util.tree_flatten(tree, is_leaf=is_root)
  return jax.tree_util.tree_unflatten(
      treedef, [relayout_root(leaf) if is_root(leaf) else leaf for leaf in leaves])


def stack_layers(tree: Any, stacks: Mapping[tuple[str, ...], int]) -> Any:
  """Canonical -> scanned: `layers_0..N-1` of each stack become `layers`,
  every leaf stacked on a new leading axis (N = `stacks[path]`)."""
  return _relayout(tree, stacks, layer_name(0), _stack_one)


def unstack_layers(tree: Any, stacks: Mapping[tuple[str, ...], int]) -> Any:
  """Scanned -> canonical: the inverse of `stack_layers`."""
  return _relayout(tree, stacks, SCANNED_LAYERS, _unstack_one)
