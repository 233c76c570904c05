"""The embedding engine: proteins in, per-residue and per-protein vectors out.

One pass computes every output asked for (`EmbedSettings.outputs`):
per-residue arrays and per-protein means, of any hidden layers (index 0 the
embedding output, the last the model's output; Hugging Face's
`output_hidden_states`), all from the same batch.

How it stays fast:
- proteins are sorted by length and batched by a budget of padded tokens
  per device (`max_tokens`), padded to a few bucket lengths, so the encoder
  compiles a handful of times (`batching.py`);
- the jitted encoder runs data-parallel over this process's devices (batch
  rows on the `data` mesh axis) and model-parallel with `num_partitions` >
  1, using the same logical-axis rules as training. Every process works
  alone on its own devices: a multi-host run gives each its own proteins
  (independent shards) and the engine never communicates between them;
- dispatch is asynchronous: the next batch is tokenized and sent while the
  device computes the current one, and results are fetched one batch late;
- per-protein means are taken on the device, so only [B, d] per layer
  comes back; hidden layers nobody asked for are never kept.

A batch that runs out of device memory never ends the run: it is embedded
again in halves (rows), down to one row per data-parallel device, then with
attention block by block, each retry logged; only a batch that fails even
then is an error (`OutOfDeviceMemoryError`). The outputs of a split batch
come back as one `EmbeddedBatch`. XLA:CPU does not run out of memory, so
tests use a hook (`TEST_OOM_ENV`).

Any family of `prottrans_jax.families` embeds (ProtT5, ProtBert,
ProtAlbert, ProtElectra): its record says how to tokenize a protein and
which output rows are residues; a tokenizer file read from the model's
directory (`file_tokenizer`) tokenizes instead where there is one. Per-residue output has exactly one row per
residue: the special tokens the model needs (`</s>` for T5, `[CLS]` and
`[SEP]` for the BERT family) are dropped, and per-protein means are over
residues only.
"""

import dataclasses
import functools
import logging
import os
import time
from typing import Any, Callable, Iterator, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from prottrans_jax import deprecation
from prottrans_jax import families
from prottrans_jax import partitioning
from prottrans_jax.data import fasta
from prottrans_jax.inference import batching
from prottrans_jax.inference import file_tokenizer

logger = logging.getLogger(__name__)

PER_RESIDUE = "per_residue"
PER_PROTEIN = "per_protein"
DTYPES = ("float32", "bfloat16", "float16")

# Test hook: with PROTTRANS_JAX_TEST_OOM_ABOVE_TOKENS=N in the environment,
# every attempt at a batch whose rows x queries attending at once (the
# bucket length; the block size where attention runs block by block)
# exceed N raises, before dispatch, the error XLA raises when device memory
# runs out, so tests on XLA:CPU (which never runs out) exercise the
# retries. Unset, as always outside tests, it costs one environment lookup
# per Embedder.
TEST_OOM_ENV = "PROTTRANS_JAX_TEST_OOM_ABOVE_TOKENS"


@dataclasses.dataclass(frozen=True)
class OutputSpec:
  """One output: an array per protein of one kind from one hidden layer.

  Attributes:
    kind: PER_RESIDUE ((L, d): one row per residue) or PER_PROTEIN ((d,):
      the mean over residues).
    layer: the hidden state as the user gave it: 0 the embedding output, i
      the output of layer i, negative from the top (-1: the model's output).
  """
  kind: str
  layer: int

  @property
  def key(self) -> str:
    """The output's name, e.g. "per_residue/layer_-1"."""
    return f"{self.kind}/layer_{self.layer}"


@deprecation.renamed_argument("max_residues", "max_tokens")
@dataclasses.dataclass(frozen=True)
class EmbedSettings:
  """What to compute and how to lay it out.

  Attributes:
    per_protein: compute the mean over residues, (d,) per protein.
    per_residue: compute (L, d) per protein; None means `not per_protein`
      (so `EmbedSettings(per_protein=True)` is per-protein only, and
      `EmbedSettings()` per-residue only).
    layers: hidden states to output, each for every kind above: 0 is the
      embedding output, i the output of layer i, the last the model's
      output (for T5 after the encoder's final norm); negative indexes count
      from the top. Checked against the model by `Embedder`.
    dtype: compute dtype of activations ("float32", "bfloat16", or
      "float16" for GPUs without bfloat16 such as the T4 and V100);
      parameters keep their dtype, norms and softmax run in float32, and
      outputs are float32.
    max_tokens: padded tokens per batch per data-parallel device (memory vs.
      speed): rows x bucket length, special tokens included; a batch holds
      up to this times the number of data-parallel devices. Formerly
      `max_residues`, which still works (constructor keyword and attribute)
      with a DeprecationWarning.
    num_partitions: model-parallel ways; the remaining devices split batches.
  """
  per_protein: bool = False
  per_residue: bool | None = None
  layers: tuple[int, ...] = (-1,)
  dtype: str = "float32"
  max_tokens: int = 16384
  num_partitions: int = 1

  def __post_init__(self):
    # A list (from flags or gin) is kept as a tuple: settings are hashable.
    object.__setattr__(self, "layers", tuple(self.layers))
    if not self.layers or not all(
        isinstance(layer, (int, np.integer)) and not isinstance(layer, bool)
        for layer in self.layers):
      raise ValueError(f"layers must be one or more ints, got {self.layers!r}")
    if len(set(self.layers)) != len(self.layers):
      raise ValueError(f"layers {self.layers} name a layer twice")
    if self.dtype not in DTYPES:
      raise ValueError(f"dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")
    if not self.outputs:
      raise ValueError("per_residue=False and per_protein=False: nothing to "
                       "compute")
    if self.max_tokens < 1 or self.num_partitions < 1:
      raise ValueError(f"max_tokens ({self.max_tokens}) and num_partitions "
                       f"({self.num_partitions}) must be positive")

  @property
  def outputs(self) -> tuple[OutputSpec, ...]:
    """Every output, per-residue ones first, layers in the order given."""
    per_residue = (not self.per_protein if self.per_residue is None
                   else self.per_residue)
    kinds = [kind for kind, wanted in ((PER_RESIDUE, per_residue),
                                       (PER_PROTEIN, self.per_protein))
             if wanted]
    return tuple(OutputSpec(kind, int(layer))
                 for kind in kinds for layer in self.layers)


def resolve_layers(layers: Sequence[int], num_hidden_states: int
                   ) -> tuple[int, ...]:
  """`layers` as indexes 0..num_hidden_states - 1 (negatives from the top).

  Raises ValueError naming a layer out of range, or two that are the same
  hidden state.
  """
  top = num_hidden_states - 1
  resolved = []
  for layer in layers:
    index = layer + num_hidden_states if layer < 0 else layer
    if not 0 <= index <= top:
      raise ValueError(
          f"layer {layer} does not exist: this model has hidden states 0..{top} "
          f"(0 the embedding output, {top} the model's output), or -1..-"
          f"{num_hidden_states} counted from the top")
    if index in resolved:
      raise ValueError(
          f"layers {layers[resolved.index(index)]} and {layer} are the same "
          f"hidden state ({index} of 0..{top})")
    resolved.append(index)
  return tuple(resolved)


@dataclasses.dataclass(frozen=True)
class EmbeddedBatch:
  """The outputs of one planned batch.

  Attributes:
    index: the batch's position in `Embedder.plan(records)`.
    records: its proteins, longest first.
    outputs: `OutputSpec.key` -> one float32 array per record, in `records`'
      order: (L, d) per residue (one row per residue), (d,) per protein.
  """
  index: int
  records: list[fasta.FastaRecord]
  outputs: dict[str, list[np.ndarray]]


class ProteinTooLongError(ValueError):
  """Proteins longer than the model's learned positions (the BERT family's
  `max_position_embeddings`), found when batches are planned."""


class NonFiniteEmbeddingError(ValueError):
  """A protein's embedding is NaN or infinite (damaged weights, or float16
  overflow): refused rather than written."""


def _names(records: Sequence[fasta.FastaRecord], shown: int = 20) -> str:
  """Record ids for a message: the first `shown`, then how many more."""
  names = ", ".join(repr(r.id) for r in records[:shown])
  return names + (f" and {len(records) - shown} more" if len(records) > shown
                  else "")


class OutOfDeviceMemoryError(RuntimeError):
  """A batch that does not fit even as one row per device, attention block
  by block."""


def _is_out_of_memory(error: Exception) -> bool:
  """Whether XLA ran out of device memory, running or compiling.

  The status may sit anywhere in the message: on an H100 (jax 0.11.2) a
  program too large for memory failed to compile with NOT_FOUND (the GPU
  autotuner found no kernel configuration), quoting the RESOURCE_EXHAUSTED
  of each failed try further down.
  """
  return (isinstance(error, jax.errors.JaxRuntimeError)
          and "RESOURCE_EXHAUSTED" in str(error))


def _test_oom_above_tokens() -> int | None:
  value = os.environ.get(TEST_OOM_ENV)
  if not value:
    return None
  if not value.isdigit() or int(value) < 1:
    raise ValueError(f"{TEST_OOM_ENV}={value!r}: expected a positive number "
                     "of tokens (a test hook; unset it)")
  return int(value)


def _local(devices: Sequence[jax.Device] | None) -> list[jax.Device]:
  """`devices`, by default this process's; another process's is an error
  (each process embeds on its own devices)."""
  if devices is None:
    return jax.local_devices()
  others = [d for d in devices if d.process_index != jax.process_index()]
  if others:
    raise ValueError(f"devices {others} belong to other processes: each "
                     "process embeds on its own (jax.local_devices())")
  return list(devices)


def embedding_mesh(settings: EmbedSettings,
                   devices: Sequence[jax.Device] | None = None
                   ) -> jax.sharding.Mesh:
  """The mesh an `Embedder` with `settings` runs on: `data` x
  `num_partitions`-way `model` over `devices` (default this process's)."""
  return partitioning.create_mesh(settings.num_partitions,
                                  devices=_local(devices))


def embedding_layout(config: Any, settings: EmbedSettings,
                     devices: Sequence[jax.Device] | None = None,
                     whole_model: bool = False
                     ) -> tuple[Any, jax.sharding.Mesh,
                                partitioning.LogicalRules, nn.Module, Any]:
  """How `Embedder` runs `config`: (the config it runs: canonical layout,
  `settings.dtype`; the mesh over this process's devices; the logical-axis
  rules; the module; the encoder's abstract boxed parameters).

  `whole_model`: the abstract parameters are those of the family's `init`
  (T5's decoder, the BERT family's masked-LM head: what variant scoring
  runs) instead of the encoder's alone.
  """
  family = families.of(config)
  run_config = config.with_dtype(settings.dtype).with_layer_options(
      scan_layers=False, remat_policy="none")
  mesh = embedding_mesh(settings, devices)
  rules = partitioning.logical_axis_rules(1)
  model = family.module(run_config)
  if whole_model:
    abstract = families.abstract_params(family, run_config)
  else:
    abstract = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.ones((1, 8), jnp.int32),
                           method=family.encode))["params"]
  return run_config, mesh, rules, model, abstract


def encoder_params_target(config: Any, settings: EmbedSettings,
                          devices: Sequence[jax.Device] | None = None,
                          whole_model: bool = False) -> Any:
  """The encoder's parameters as `Embedder` places them (canonical names,
  `jax.ShapeDtypeStruct`s with their shardings): what a loader restores
  straight into place. With `whole_model`, those of `embedding_layout`'s
  whole model, placed the same way."""
  _, mesh, rules, _, abstract = embedding_layout(config, settings, devices,
                                                 whole_model)
  shardings = partitioning.params_shardings(abstract, mesh, rules)
  return jax.tree.map(
      lambda a, sharding: jax.ShapeDtypeStruct(a.shape, a.dtype,
                                               sharding=sharding),
      nn.unbox(abstract), shardings)


def _checked_tokenizer(tokenizer: file_tokenizer.FileTokenizer,
                       family: families.ModelFamily, config: Any
                       ) -> file_tokenizer.FileTokenizer:
  """`tokenizer`, after checking it frames proteins as the family's output
  rows expect and gives no id past the model's vocabulary."""
  if (tokenizer.first_residue_row, tokenizer.num_special_tokens) != (
      family.first_residue_row, family.num_special_tokens):
    raise ValueError(
        f"{tokenizer.path}: its {tokenizer.family} framing puts the first residue "
        f"at row {tokenizer.first_residue_row} of {tokenizer.num_special_tokens} "
        f"special tokens; model family {family.name} expects row "
        f"{family.first_residue_row} of {family.num_special_tokens}")
  vocab_size = getattr(config, "vocab_size", None)
  if vocab_size is not None and tokenizer.max_id >= vocab_size:
    raise ValueError(f"{tokenizer.path} gives ids up to {tokenizer.max_id}; the "
                     f"model's vocabulary has {vocab_size} (vocab_size)")
  return tokenizer


def place_params(params: Any, abstract: Any, mesh: jax.sharding.Mesh,
                 rules: partitioning.LogicalRules) -> Any:
  """The parameters `abstract` names (an encoder's: a full model's decoder is
  not needed), sharded by the logical-axis rules. Arrays already in place
  (the sharded loaders') stay where they are: nothing is gathered. A
  parameter `params` lacks is a ValueError naming it."""
  params = params.get("params", params)

  def take(abstract_tree, tree, path=()):
    out = {}
    for key, value in abstract_tree.items():
      if key not in tree:
        raise ValueError("checkpoint lacks parameter "
                         f"{'/'.join(path + (key,))}")
      out[key] = (take(value, tree[key], path + (key,))
                  if isinstance(value, dict) else tree[key])
    return out

  # Host copies: with several processes, every process passes the same
  # values and each keeps the shards of its own devices.
  taken = jax.tree.map(
      lambda x: x if isinstance(x, jax.Array) else np.asarray(x),
      take(nn.unbox(abstract), params))
  return jax.device_put(taken, partitioning.params_shardings(abstract, mesh,
                                                             rules))


def check_lengths(config: Any, records: Sequence[fasta.FastaRecord],
                  done: str = "embedded") -> None:
  """Every protein `config`'s model cannot take (a learned position table
  has an end; T5's relative positions have none), named before any work
  (`done`: what the message says was not done)."""
  limit = getattr(config, "max_position_embeddings", None)
  if limit is None:
    return
  special = families.of(config).num_special_tokens
  too_long = [r for r in records if len(r.sequence) + special > limit]
  if not too_long:
    return
  shown = "; ".join(f"{r.id!r} ({len(r.sequence)} residues)"
                    for r in too_long[:20])
  more = f"; and {len(too_long) - 20} more" if len(too_long) > 20 else ""
  raise ProteinTooLongError(
      f"{len(too_long)} protein(s) longer than this model's {limit} "
      f"positions ({limit - special} residues plus {special} special "
      f"tokens): {shown}{more}. Nothing was {done}: leave them out of "
      "the input, or split them into pieces that fit")


class Embedder:
  """A loaded encoder, placed on this process's devices, ready to embed.

  `params` are in `config`'s layout (what `loading` returns): scanned
  stacks are unstacked, and the encoder runs unscanned. `devices` (default
  `jax.local_devices()`) must be this process's.
  """

  def __init__(self, config: Any, params: Any,
               settings: EmbedSettings = EmbedSettings(),
               devices: Sequence[jax.Device] | None = None,
               tokenizer: file_tokenizer.FileTokenizer | None = None):
    self.settings = settings
    self.family = families.of(config)
    self._tokenize = (self.family.tokenize if tokenizer is None else
                      _checked_tokenizer(tokenizer, self.family, config))
    self._hidden_states = dict(zip(settings.layers, resolve_layers(
        settings.layers, self.family.num_hidden_states(config))))
    # `params` are in `config`'s layout. Embedding runs the canonical one
    # (unscanned, no remat: both only pay in training, with a backward
    # pass), so a checkpoint embeds the same whichever layout trained it.
    params = self.family.to_canonical(config, params)
    self.config, self.mesh, self.rules, self._model, abstract = (
        embedding_layout(config, settings, devices))
    self.data_parallel = self.mesh.shape[partitioning.DATA_AXIS]
    self.params = place_params(params, abstract, self.mesh, self.rules)
    self._batch_sharding = partitioning.batch_sharding(self.mesh, self.rules)
    self._encode = jax.jit(self._encode_fn)
    self._test_oom_above_tokens = _test_oom_above_tokens()
    # (rows, length, blockwise) of attempts that ran out of memory: a batch
    # of the same shape goes straight to the retries.
    self._out_of_memory: set[tuple[int, int, bool]] = set()

  def _encode_fn(self, params, tokens, residue_mask, model=None):
    """{OutputSpec.key: float32 [B, L, d] per residue, [B, d] sums over
    residues per protein}."""
    model = self._model if model is None else model
    top = self.family.num_hidden_states(self.config) - 1
    if set(self._hidden_states.values()) == {top}:
      # The model's output alone: `encode` as it runs everywhere else.
      hidden_states = {top: model.apply({"params": params}, tokens,
                                        method=self.family.encode)}
    else:
      # XLA drops the hidden states nobody reads.
      hidden_states = dict(enumerate(model.apply(
          {"params": params}, tokens, method=self.family.encode,
          output_hidden_states=True)))
    weights = residue_mask.astype(jnp.float32)
    outputs = {}
    for spec in self.settings.outputs:
      hidden = hidden_states[self._hidden_states[spec.layer]].astype(jnp.float32)
      if spec.kind == PER_PROTEIN:
        # The sum over residues, as a product (in full float32: TPUs and
        # GPUs would round its inputs otherwise); `_fetch` divides it by
        # their number. So each mean is computed the same whatever else the
        # program outputs: XLA fuses sibling reductions together, and may
        # turn a division into a product with the reciprocal, differently
        # in different programs, and the last bits of a mean would depend on
        # the other outputs asked for.
        hidden = jnp.einsum("bl,bld->bd", weights, hidden,
                            precision=jax.lax.Precision.HIGHEST)
      outputs[spec.key] = hidden
    return outputs

  @functools.cached_property
  def _blockwise_config(self) -> Any:
    return self.config.with_blockwise_attention()

  @functools.cached_property
  def _encode_blockwise(self) -> Callable[..., Any]:
    """`_encode` attending block by block at every length above one block
    (the last retry of a batch out of memory)."""
    return jax.jit(functools.partial(
        self._encode_fn, model=self.family.module(self._blockwise_config)))

  def _rows(self, proteins: int) -> int:
    """Rows of a batch of `proteins`: a whole share for every device."""
    return -(-proteins // self.data_parallel) * self.data_parallel

  def plan(self, records: Sequence[fasta.FastaRecord]) -> list[batching.Batch]:
    """The batches `embed_batches` computes, in order, longest first.

    Deterministic: it depends on the proteins' lengths, the settings and the
    number of data-parallel devices, nothing else (a resumed run, or a shard
    rerun on a host with as many devices, plans the same batches, so every
    protein is computed in the same batch shape, bit for bit). A batch holds
    at most `max_tokens` padded tokens per data-parallel device.
    """
    token_lengths = [len(r.sequence) + self.family.num_special_tokens
                     for r in records]
    check_lengths(self.config, records)
    return list(batching.plan_batches(
        token_lengths, self.settings.max_tokens * self.data_parallel,
        self.data_parallel))

  def embed_batches(self, records: Sequence[fasta.FastaRecord],
                    skip: Callable[[int], bool] = lambda index: False, *,
                    batches: Sequence[batching.Batch] | None = None
                    ) -> Iterator[EmbeddedBatch]:
    """Yields the outputs of every batch of `plan(records)`, in plan order,
    except those whose index `skip` is true for.

    `batches` is `plan(records)` when the caller has made it already.
    """
    batches = self.plan(records) if batches is None else batches
    token_lengths = sum(len(r.sequence) + self.family.num_special_tokens
                        for r in records)
    padded = sum(b.length * b.rows for b in batches)
    logger.info("%d proteins in %d batches padded to %d lengths; padding "
                "is %.1f%% of the tokens; outputs: %s",
                len(records), len(batches), len({b.length for b in batches}),
                100 * (1 - token_lengths / max(padded, 1)),
                ", ".join(spec.key for spec in self.settings.outputs))
    pending = None
    for index, batch in enumerate(batches):
      if skip(index):
        continue
      batch_records = [records[i] for i in batch.indices]
      started = self._start(index, batch_records, batch)
      if pending is not None:
        yield self._finish(*pending)
      pending = (index, batch_records, batch, started)
    if pending is not None:
      yield self._finish(*pending)

  def _start(self, index: int, batch_records: list[fasta.FastaRecord],
             batch: batching.Batch) -> dict[str, jax.Array] | None:
    """Dispatches a batch (asynchronously): its device outputs, or None if
    it is out of memory at once (`_finish` retries it)."""
    if (batch.rows, batch.length, False) in self._out_of_memory:
      return None
    try:
      return self._dispatch(batch_records, batch.rows, batch.length)
    except jax.errors.JaxRuntimeError as error:
      if not _is_out_of_memory(error):
        raise
      self._note_out_of_memory(index, batch.rows, batch.length, False, error)
      return None

  def _finish(self, index: int, batch_records: list[fasta.FastaRecord],
              batch: batching.Batch, started: dict[str, jax.Array] | None
              ) -> EmbeddedBatch:
    """Fetches a started batch; one out of memory is embedded in parts."""
    if started is not None:
      try:
        return EmbeddedBatch(index, batch_records,
                             self._fetch(started, batch_records))
      except jax.errors.JaxRuntimeError as error:
        if not _is_out_of_memory(error):
          raise
        self._note_out_of_memory(index, batch.rows, batch.length, False, error)
    return EmbeddedBatch(index, batch_records,
                         self._retry(index, batch_records, batch.length))

  def _note_out_of_memory(self, index: int, rows: int, length: int,
                          blockwise: bool, error: Exception) -> None:
    self._out_of_memory.add((rows, length, blockwise))
    lines = str(error).splitlines()
    logger.warning("batch %d: %d rows x %d tokens%s ran out of device "
                   "memory (%s)", index, rows, length,
                   " (attention block by block)" if blockwise else "",
                   next(line for line in lines if "RESOURCE_EXHAUSTED" in line)[:300])

  def _retry(self, index: int, batch_records: list[fasta.FastaRecord],
             length: int, blockwise: bool = False
             ) -> dict[str, list[np.ndarray]]:
    """Embeds proteins whose batch ran out of memory, synchronously: in two
    halves (rows, recursively), then one row per device with attention
    block by block."""
    rows = self._rows(len(batch_records))
    if rows > self.data_parallel:
      # Halves of whole row groups (a row per device), so no half pads more.
      split = -(-rows // self.data_parallel // 2) * self.data_parallel
      parts = [batch_records[:split], batch_records[split:]]
      logger.warning("batch %d: retrying %d rows x %d tokens as %d + %d rows",
                     index, rows, length, *(self._rows(len(p)) for p in parts))
      outputs = [self._attempt(index, part, length, blockwise) for part in parts]
      return {key: outputs[0][key] + outputs[1][key] for key in outputs[0]}
    block = self._blockwise_config.attention_block(length)
    if blockwise or block == self.config.attention_block(length):
      raise OutOfDeviceMemoryError(
          f"batch {index}: {rows} row(s) x {length} tokens (one row per "
          f"data-parallel device; attention {block} queries at a time) do "
          f"not fit in device memory, so proteins "
          f"{', '.join(repr(r.id) for r in batch_records)} cannot be "
          "embedded here: use more model partitions (--num_partitions), "
          "devices with more memory, or leave the longest proteins out")
    logger.warning("batch %d: retrying %d row(s) x %d tokens with attention "
                   "%d queries at a time", index, rows, length, block)
    return self._attempt(index, batch_records, length, blockwise=True)

  def _attempt(self, index: int, batch_records: list[fasta.FastaRecord],
               length: int, blockwise: bool) -> dict[str, list[np.ndarray]]:
    """One synchronous try of a part of a batch; `_retry` if out of memory."""
    rows = self._rows(len(batch_records))
    if (rows, length, blockwise) not in self._out_of_memory:
      try:
        return self._fetch(
            self._dispatch(batch_records, rows, length, blockwise),
            batch_records)
      except jax.errors.JaxRuntimeError as error:
        if not _is_out_of_memory(error):
          raise
        self._note_out_of_memory(index, rows, length, blockwise, error)
    return self._retry(index, batch_records, length, blockwise)

  def _dispatch(self, batch_records: list[fasta.FastaRecord], rows: int,
                length: int, blockwise: bool = False) -> dict[str, jax.Array]:
    """Tokenizes, places and starts one batch: its device outputs."""
    if self._test_oom_above_tokens is not None:
      config = self._blockwise_config if blockwise else self.config
      attending = rows * config.attention_block(length)
      if attending > self._test_oom_above_tokens:
        raise jax.errors.JaxRuntimeError(
            f"RESOURCE_EXHAUSTED: Out of memory: {rows} rows x "
            f"{config.attention_block(length)} queries attending at once > "
            f"{TEST_OOM_ENV}={self._test_oom_above_tokens} (test hook)")
    tokens = np.full((rows, length), self.family.pad_id, np.int32)
    residue_mask = np.zeros((rows, length), bool)
    first = self.family.first_residue_row
    for row, record in enumerate(batch_records):
      ids = self._tokenize(record.sequence)
      tokens[row, :len(ids)] = ids
      residue_mask[row, first:first + len(record.sequence)] = True
    # This process's devices hold the whole batch.
    tokens, residue_mask = jax.device_put((tokens, residue_mask),
                                          self._batch_sharding)
    encode = self._encode_blockwise if blockwise else self._encode
    with partitioning.activate(self.mesh, self.rules):
      return encode(self.params, tokens, residue_mask)  # Asynchronous.

  def _fetch(self, outputs: dict[str, jax.Array],
             batch_records: list[fasta.FastaRecord]
             ) -> dict[str, list[np.ndarray]]:
    """Waits for a batch's outputs: one array per record and output."""
    values = jax.device_get(outputs)
    first = self.family.first_residue_row
    result = {}
    for spec in self.settings.outputs:
      value = values[spec.key]
      result[spec.key] = [
          value[i, first:first + len(r.sequence)] if spec.kind == PER_RESIDUE
          else value[i] / np.float32(max(len(r.sequence), 1))
          for i, r in enumerate(batch_records)]
      bad = [r for r, array in zip(batch_records, result[spec.key])
             if not np.isfinite(array).all()]
      if bad:
        raise NonFiniteEmbeddingError(
            f"{spec.key} of protein(s) {_names(bad)} is not finite (NaN "
            f"or infinite) in compute dtype {self.settings.dtype}: the "
            "weights hold non-finite values (a damaged checkpoint?) or "
            "activations overflowed (float16: try bfloat16 or float32). "
            "Their batch was not written")
    return result

  def embed(self, records: Sequence[fasta.FastaRecord],
            is_done: Callable[[fasta.FastaRecord], bool] = lambda r: False
            ) -> Iterator[list[tuple[fasta.FastaRecord, np.ndarray]]]:
    """Yields, batch by batch, (record, embedding) pairs, longest first, for
    settings with one output (`embed_batches` gives several).

    Batches are planned over all `records` and a batch whose records are all
    `is_done` is skipped, so a resumed run computes every remaining protein
    in exactly the batch it had in an uninterrupted run: same shapes, same
    kernels, the same numbers bit for bit.
    """
    key = _only_output(self.settings).key
    batches = self.plan(records)
    return (list(zip(embedded.records, embedded.outputs[key]))
            for embedded in self.embed_batches(
                records, _all_done(records, batches, is_done), batches=batches))


def _only_output(settings: EmbedSettings) -> OutputSpec:
  """The one output of `settings` (what `embed` yields)."""
  if len(settings.outputs) != 1:
    raise ValueError(
        "embed() yields one array per protein, but the settings ask for "
        f"{len(settings.outputs)} outputs "
        f"({', '.join(o.key for o in settings.outputs)}): use embed_batches()")
  return settings.outputs[0]


def _all_done(records: Sequence[fasta.FastaRecord],
              batches: Sequence[batching.Batch],
              is_done: Callable[[fasta.FastaRecord], bool]
              ) -> Callable[[int], bool]:
  """Batch index -> whether every protein of that batch `is_done`."""
  return lambda index: all(is_done(records[i]) for i in batches[index].indices)


def embed_batches_with_progress(
    embedder: Embedder, records: Sequence[fasta.FastaRecord],
    skip: Callable[[int], bool] = lambda index: False, disable: bool = False,
    *, batches: Sequence[batching.Batch] | None = None
) -> Iterator[EmbeddedBatch]:
  """`Embedder.embed_batches` with a progress bar (residues/s, proteins/s)
  over the batches not skipped."""
  batches = embedder.plan(records) if batches is None else batches
  todo = [b for i, b in enumerate(batches) if not skip(i)]
  total_proteins = sum(len(b.indices) for b in todo)
  start = time.perf_counter()
  proteins = 0
  with tqdm.tqdm(total=sum(len(records[i].sequence) for b in todo
                           for i in b.indices),
                 unit="res", unit_scale=True, disable=disable,
                 desc="embedding") as bar:
    for embedded in embedder.embed_batches(records, skip, batches=batches):
      proteins += len(embedded.records)
      elapsed = max(time.perf_counter() - start, 1e-9)
      bar.set_postfix(proteins=f"{proteins}/{total_proteins}",
                      proteins_per_s=f"{proteins / elapsed:.1f}", refresh=False)
      bar.update(sum(len(r.sequence) for r in embedded.records))
      yield embedded


def embed_with_progress(embedder: Embedder,
                        records: Sequence[fasta.FastaRecord],
                        is_done: Callable[[fasta.FastaRecord], bool],
                        disable: bool = False
                        ) -> Iterator[list[tuple[fasta.FastaRecord, np.ndarray]]]:
  """`Embedder.embed` with a progress bar (one output; see
  `embed_batches_with_progress`)."""
  key = _only_output(embedder.settings).key
  batches = embedder.plan(records)
  for embedded in embed_batches_with_progress(
      embedder, records, _all_done(records, batches, is_done), disable,
      batches=batches):
    yield list(zip(embedded.records, embedded.outputs[key]))
