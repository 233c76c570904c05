"""The embedding engine: proteins in, per-residue or per-protein vectors out.

How it stays fast:
- proteins are sorted by length and batched by a budget of padded tokens
  (`max_tokens`), padded to a few bucket lengths, so the encoder compiles a
  handful of times (`batching.py`);
- the jitted encoder runs data-parallel over every device (batch rows on the
  `data` mesh axis) and model-parallel with `num_partitions` > 1, using the
  same logical-axis rules as training; with `jax.distributed`, every host
  reads the same input, plans the same batches and feeds only the rows its
  devices hold;
- dispatch is asynchronous: the next batch is tokenized and sent while the
  device computes the current one, and results are fetched one batch late;
- per-protein means are taken on the device, so only [B, d] comes back.

Any family of `prottrans_jax.families` embeds (ProtT5, ProtBert,
ProtAlbert, ProtElectra): its record says how to tokenize a protein and
which output rows are residues. Per-residue output has exactly one row per
residue: the special tokens the model needs (`</s>` for T5, `[CLS]` and
`[SEP]` for the BERT family) are dropped, and per-protein means are over
residues only.
"""

import dataclasses
import logging
import time
from typing import Any, Callable, Iterator, Sequence

import flax.linen as nn
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np
import tqdm

from prottrans_jax import deprecation
from prottrans_jax import families
from prottrans_jax import partitioning
from prottrans_jax.data import fasta
from prottrans_jax.inference import batching

logger = logging.getLogger(__name__)


@deprecation.renamed_argument("max_residues", "max_tokens")
@dataclasses.dataclass(frozen=True)
class EmbedSettings:
  """What to compute and how to lay it out.

  Attributes:
    per_protein: mean over residues, (d,) per protein, instead of (L, d).
    dtype: compute dtype of activations ("float32" or "bfloat16").
    max_tokens: padded tokens per batch (memory vs. speed): rows x bucket
      length, special tokens included. Formerly `max_residues`, which still
      works (constructor keyword and attribute) with a DeprecationWarning.
    num_partitions: model-parallel ways; the remaining devices split batches.
  """
  per_protein: bool = False
  dtype: str = "float32"
  max_tokens: int = 16384
  num_partitions: int = 1


class Embedder:
  """A loaded encoder, placed on a mesh, ready to embed batches.

  `params` are in `config`'s layout (what `loading` returns): scanned
  stacks are unstacked, and the encoder runs unscanned.
  """

  def __init__(self, config: Any, params: Any,
               settings: EmbedSettings = EmbedSettings(),
               devices: Sequence[jax.Device] | None = None):
    self.settings = settings
    self.family = families.of(config)
    # `params` are in `config`'s layout. Embedding runs the canonical one
    # (unscanned, no remat: both only pay in training, with a backward
    # pass), so a checkpoint embeds the same whichever layout trained it.
    params = self.family.to_canonical(config, params)
    self.config = config.with_dtype(settings.dtype).with_layer_options(
        scan_layers=False, remat_policy="none")
    self.mesh = partitioning.create_mesh(settings.num_partitions,
                                         devices=devices)
    self.rules = partitioning.logical_axis_rules(1)
    self.data_parallel = self.mesh.shape[partitioning.DATA_AXIS]
    self._model = self.family.module(self.config)
    self.params = self._place_encoder_params(params)
    self._batch_sharding = partitioning.batch_sharding(self.mesh, self.rules)
    self._encode = jax.jit(self._encode_fn)

  def _place_encoder_params(self, params: Any) -> Any:
    """Keeps the encoder's parameters (a full model's decoder is not needed)
    and shards them by the logical-axis rules."""
    abstract = jax.eval_shape(
        lambda: self._model.init(jax.random.key(0),
                                 jnp.ones((1, 8), jnp.int32),
                                 method=self.family.encode))["params"]
    params = params.get("params", params)

    def take(abstract_tree, tree, path=()):
      out = {}
      for key, value in abstract_tree.items():
        if key not in tree:
          raise ValueError("checkpoint lacks encoder parameter "
                           f"{'/'.join(path + (key,))}")
        out[key] = (take(value, tree[key], path + (key,))
                    if isinstance(value, dict) else tree[key])
      return out

    # Host copies: with several processes, every process passes the same
    # values and each keeps the shards of its own devices.
    encoder_params = jax.tree.map(np.asarray,
                                  take(nn.unbox(abstract), params))
    shardings = partitioning.params_shardings(abstract, self.mesh, self.rules)
    return jax.device_put(encoder_params, shardings)

  def _encode_fn(self, params, tokens, residue_mask):
    hidden = self._model.apply({"params": params}, tokens,
                               method=self.family.encode).astype(jnp.float32)
    if not self.settings.per_protein:
      return hidden
    weights = residue_mask.astype(jnp.float32)[..., None]
    return (hidden * weights).sum(axis=1) / jnp.maximum(weights.sum(axis=1), 1)

  def _device_batch(self, sequences: Sequence[str], batch: batching.Batch):
    tokens = np.zeros((batch.rows, batch.length), np.int32)
    residue_mask = np.zeros((batch.rows, batch.length), bool)
    first = self.family.first_residue_row
    for row, sequence in enumerate(sequences):
      ids = self.family.tokenize(sequence)
      tokens[row, :len(ids)] = ids
      residue_mask[row, first:first + len(sequence)] = True
    arrays = partitioning.make_global_batch(
        {"tokens": tokens, "residue_mask": residue_mask}, self._batch_sharding)
    return arrays["tokens"], arrays["residue_mask"]

  def embed(self, records: Sequence[fasta.FastaRecord],
            is_done: Callable[[fasta.FastaRecord], bool] = lambda r: False
            ) -> Iterator[list[tuple[fasta.FastaRecord, np.ndarray]]]:
    """Yields, batch by batch, (record, embedding) pairs, longest first.

    Batches are planned over all `records` and a batch whose records are all
    `is_done` is skipped, so a resumed run computes every remaining protein
    in exactly the batch it had in an uninterrupted run: same shapes, same
    kernels, the same numbers bit for bit.
    """
    token_lengths = [len(r.sequence) + self.family.num_special_tokens
                     for r in records]
    batches = list(batching.plan_batches(token_lengths,
                                         self.settings.max_tokens,
                                         self.data_parallel))
    padded = sum(b.length * b.rows for b in batches)
    logger.info("%d proteins in %d batches padded to %d lengths; padding "
                "is %.1f%% of the tokens",
                len(records), len(batches), len({b.length for b in batches}),
                100 * (1 - sum(token_lengths) / max(padded, 1)))
    pending = None
    for batch in batches:
      batch_records = [records[i] for i in batch.indices]
      if all(is_done(r) for r in batch_records):
        continue
      tokens, mask = self._device_batch([r.sequence for r in batch_records],
                                        batch)
      with partitioning.activate(self.mesh, self.rules):
        output = self._encode(self.params, tokens, mask)  # Asynchronous.
      if pending is not None:
        yield self._collect(*pending)
      pending = (batch_records, output)
    if pending is not None:
      yield self._collect(*pending)

  def _collect(self, batch_records, output):
    if jax.process_count() > 1:
      # Every process gets the whole batch; process 0 writes it.
      values = np.asarray(multihost_utils.process_allgather(output, tiled=True))
    else:
      values = np.asarray(jax.device_get(output))
    if self.settings.per_protein:
      return [(r, values[i]) for i, r in enumerate(batch_records)]
    first = self.family.first_residue_row
    return [(r, values[i, first:first + len(r.sequence)])
            for i, r in enumerate(batch_records)]


def embed_with_progress(embedder: Embedder,
                        records: Sequence[fasta.FastaRecord],
                        is_done: Callable[[fasta.FastaRecord], bool],
                        disable: bool = False
                        ) -> Iterator[list[tuple[fasta.FastaRecord, np.ndarray]]]:
  """`Embedder.embed` with a progress bar (residues/s, proteins/s)."""
  todo = [r for r in records if not is_done(r)]
  start = time.perf_counter()
  proteins = 0
  with tqdm.tqdm(total=sum(len(r.sequence) for r in todo), unit="res",
                 unit_scale=True, disable=disable, desc="embedding") as bar:
    for results in embedder.embed(records, is_done):
      proteins += len(results)
      elapsed = max(time.perf_counter() - start, 1e-9)
      bar.set_postfix(proteins=f"{proteins}/{len(todo)}",
                      proteins_per_s=f"{proteins / elapsed:.1f}", refresh=False)
      bar.update(sum(len(r.sequence) for r, _ in results))
      yield results
