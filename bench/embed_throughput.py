"""Embedding throughput: our engine against transformers' T5EncoderModel
(and BertModel for the ProtBert rows).

Both run the same random weights (a transformers T5EncoderModel converted by
our converter) on the same real proteins, in the same batches (sorted by
length, padded tokens per batch within --max_residues), in one process, and
the script prints residues/s of each, their ratio, and our achieved FLOP/s
as a fraction of this machine's dense float32 matmul peak measured in the
same run. Our engine pads each batch to its bucket length (it compiles once
per bucket); transformers runs eagerly, so it gets what its users do,
padding to the batch's longest protein (`padding=True`).

  python bench/embed_throughput.py                # tiny, prott5_xl, protbert
  python bench/embed_throughput.py --configs=tiny --max_proteins=200

FLOPs are counted on the proteins' true lengths (useful work), not on the
padding the batches carry.
"""

import dataclasses
import os
import platform
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers

from prottrans_jax.convert import hf_bert
from prottrans_jax.convert import hf_t5
from prottrans_jax.data import fasta
from prottrans_jax.inference import batching
from prottrans_jax.inference import engine
from prottrans_jax.models import bert
from prottrans_jax.models import registry
from prottrans_jax.models import t5

_DEFAULT_FASTA = os.path.join(os.path.dirname(__file__), "..", "..", "shared",
                              "data", "sequences", "globins45.fasta")
# ProtBert sizes are bert.BERT_CONFIGS' with a "protbert" prefix.
_BERT_ROWS = {"protbert": bert.BERT_CONFIGS["protbert"],
              "protbert_tiny": bert.BERT_CONFIGS["tiny"]}
_CONFIGS = flags.DEFINE_list(
    "configs", ["tiny", "prott5_xl", "protbert"],
    f"Model sizes among {sorted(t5.T5_CONFIGS) + sorted(_BERT_ROWS)}.")
_FASTA = flags.DEFINE_string(
    "fasta", _DEFAULT_FASTA, "Real proteins to embed (default: the globin "
    "family from ../shared/data, lengths 140-160; use "
    "../shared/data/localization/deeploc_test_set.fasta for a wide spread).")
_MAX_PROTEINS = flags.DEFINE_integer(
    "max_proteins", 0, "Use only this many proteins, spread over the length "
    "range (0: all). The XL run uses at most --xl_proteins.")
_XL_PROTEINS = flags.DEFINE_integer(
    "xl_proteins", 12, "Proteins for configs of a billion parameters or more.")
_MAX_RESIDUES = flags.DEFINE_integer("max_residues", 4096,
                                     "Padded tokens per batch, both engines.")


def matmul_peak_flops(size: int = 2048, repeats: int = 20) -> tuple[float, float]:
  """Dense float32 matmul FLOP/s of this machine through XLA: (median, best)
  of `repeats` single products. The median is the reference: a mean of
  back-to-back products swung 86-141 GFLOP/s between runs here, and the
  best product is a burst no long job sustains."""
  a = jnp.ones((size, size), jnp.float32)
  matmul = jax.jit(lambda x, y: x @ y)
  matmul(a, a).block_until_ready()
  seconds = []
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a, a).block_until_ready()
    seconds.append(time.perf_counter() - start)
  return 2 * size**3 / float(np.median(seconds)), 2 * size**3 / min(seconds)


def random_hf_encoder(config):
  """A random transformers encoder (T5EncoderModel or BertModel) and our
  params of the same weights."""
  torch.manual_seed(0)
  if isinstance(config, t5.T5Config):
    model = transformers.T5EncoderModel(transformers.T5Config(
        **hf_t5.hf_config_from_t5(config, architecture_name="T5EncoderModel"))).eval()
    to_params = lambda state: hf_t5.state_dict_to_params(state, config, encoder_only=True)
  else:
    model = transformers.BertModel(transformers.BertConfig(
        **hf_bert.hf_config(config, "BertModel")), add_pooling_layer=False).eval()
    to_params = lambda state: hf_bert.state_dict_to_params(state, config, "BertModel")
  return model, to_params


def spread(records: list[fasta.FastaRecord], count: int) -> list:
  """`count` records evenly spaced over the length-sorted list."""
  if not count or count >= len(records):
    return records
  ordered = sorted(records, key=lambda r: len(r.sequence))
  picks = np.linspace(0, len(ordered) - 1, count).round().astype(int)
  return [ordered[i] for i in picks]


def run_transformers(model, family, records, max_residues: int) -> float:
  """Seconds for transformers to embed `records` in our engine's batches,
  each padded to its longest protein."""
  token_lengths = [len(r.sequence) + family.num_special_tokens for r in records]
  start = time.perf_counter()
  with torch.inference_mode():
    for batch in batching.plan_batches(token_lengths, max_residues):
      longest = max(token_lengths[i] for i in batch.indices)
      ids = np.zeros((len(batch.indices), longest), np.int64)
      for row, index in enumerate(batch.indices):
        tokens = family.tokenize(records[index].sequence)
        ids[row, :len(tokens)] = tokens
      ids = torch.from_numpy(ids)
      model(input_ids=ids, attention_mask=(ids > 0).long()).last_hidden_state
  return time.perf_counter() - start


def run_ours(config, params, records, max_residues: int) -> float:
  """Seconds for our engine, after one untimed pass that compiles."""
  embedder = engine.Embedder(config, params,
                             engine.EmbedSettings(max_residues=max_residues))
  for _ in embedder.embed(records):  # Compile every bucket once.
    pass
  start = time.perf_counter()
  for _ in embedder.embed(records):
    pass
  return time.perf_counter() - start


def main(argv):
  del argv
  torch.set_num_threads(len(os.sched_getaffinity(0)))
  records = spread(list(fasta.read_fasta(_FASTA.value)), _MAX_PROTEINS.value)
  peak, best = matmul_peak_flops()
  print(f"machine: {platform.machine()}, {len(os.sched_getaffinity(0))} CPUs, "
        f"{jax.devices()[0].platform} ({len(jax.devices())} device(s)); "
        f"dense float32 matmul peak {peak / 1e9:.1f} GFLOP/s (median of 20 "
        f"2048^3 products; fastest {best / 1e9:.1f})")
  print(f"{'config':13} {'proteins':>8} {'residues':>9} {'ours res/s':>11} "
        f"{'hf res/s':>9} {'ratio':>6} {'ours GFLOP/s':>13} {'of peak':>8}")
  for name in _CONFIGS.value:
    config = _BERT_ROWS[name] if name in _BERT_ROWS else t5.T5_CONFIGS[name]
    family = registry.family_of(config)
    hf_model, to_params = random_hf_encoder(config)
    n_params = sum(p.numel() for p in hf_model.parameters())
    subset = spread(records, _XL_PROTEINS.value) if n_params >= 1e9 else records
    state = {k: v.numpy() for k, v in hf_model.state_dict().items()}
    params = to_params(state)
    del state
    config = dataclasses.replace(config, dtype="float32")
    residues = sum(len(r.sequence) for r in subset)
    ours = run_ours(config, params, subset, _MAX_RESIDUES.value)
    del params
    theirs = run_transformers(hf_model, family, subset, _MAX_RESIDUES.value)
    del hf_model
    forward_flops = (t5.encoder_forward_flops if family.name == "t5"
                     else bert.encoder_forward_flops)
    flops = sum(forward_flops(config, len(r.sequence) + family.num_special_tokens)
                for r in subset)
    print(f"{name:13} {len(subset):8d} {residues:9d} {residues / ours:11.1f} "
          f"{residues / theirs:9.1f} {theirs / ours:6.2f} "
          f"{flops / ours / 1e9:13.1f} {flops / ours / peak:8.1%}")


if __name__ == "__main__":
  app.run(main)
