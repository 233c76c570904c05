"""Embedding throughput: our engine against transformers' T5EncoderModel
(and BertModel for the ProtBert rows).

Both run the same random weights (a transformers model converted by our
converter) on the same real proteins, in the same batches (sorted by length,
padded tokens per batch and device within --max_tokens), in one process, and the
script prints residues/s of each, their ratio, and our achieved FLOP/s as a
fraction of this machine's dense float32 matmul peak measured in the same
run. Our engine pads each batch to its bucket (buckets fitted to the
proteins; it compiles once per bucket); transformers runs eagerly, so it gets
what its users do, padding to the batch's longest protein (`padding=True`),
with its ids tokenized before the clock starts (ours tokenize in the pass).

The two engines take turns, --rounds times each (after an untimed pass of
each: our compilations, transformers' first-call set-up), and the figures
are medians over rounds; the ratio is the median of the per-round ratios,
which are printed too. On a shared host one pass of each can differ by a
third from the next, so a single pass misleads.

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

from prottrans_jax import cli
from prottrans_jax import families
from prottrans_jax.convert import mapping
from prottrans_jax.data import fasta
from prottrans_jax.inference import batching
from prottrans_jax.inference import engine
from prottrans_jax.models import bert
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
_MAX_TOKENS = cli.define_max_tokens_flag(
    4096, "Padded tokens per batch per device: rows x our bucket length, "
    "special tokens included. Both engines get the same batches, our "
    "engine's plan (transformers pads each to its longest protein). "
    "--max_residues is its deprecated former name.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Timed passes of each engine, "
                               "taken in turns.", lower_bound=1)
flags.adopt_module_key_flags(cli)  # --help lists --max_tokens.


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
  """A random transformers encoder (T5EncoderModel, BertModel, ...) and our
  params of the same weights."""
  torch.manual_seed(0)
  converter = families.of(config).hf_converter
  architecture = converter.architecture_for(config, ())
  hf_config = transformers.AutoConfig.for_model(
      **converter.hf_config(config, architecture, "float32"))
  model = getattr(transformers, architecture)(hf_config).eval()
  to_params = lambda state: mapping.state_dict_to_params(state, converter, config,
                                                         architecture, encoder_only=True)
  return model, to_params


def spread(records: list[fasta.FastaRecord], count: int) -> list:
  """`count` records evenly spaced over the length-sorted list."""
  if not count or count >= len(records):
    return records
  ordered = sorted(records, key=lambda r: len(r.sequence))
  picks = np.linspace(0, len(ordered) - 1, count).round().astype(int)
  return [ordered[i] for i in picks]


def transformers_pass(model, family, records, plan: list[batching.Batch]):
  """A function that embeds `records` with transformers in our engine's
  batches (`plan`), each padded to its longest protein."""
  token_lengths = [len(r.sequence) + family.num_special_tokens for r in records]
  batches = []
  for batch in plan:
    longest = max(token_lengths[i] for i in batch.indices)
    ids = np.zeros((len(batch.indices), longest), np.int64)
    for row, index in enumerate(batch.indices):
      tokens = family.tokenize(records[index].sequence)
      ids[row, :len(tokens)] = tokens
    batches.append(torch.from_numpy(ids))

  def embed():
    with torch.inference_mode():
      for ids in batches:
        model(input_ids=ids, attention_mask=(ids > 0).long()).last_hidden_state
  return embed


def our_pass(embedder: engine.Embedder, records):
  """A function that embeds `records` with our engine (tokenizing and
  fetching the results included, as in scripts/embed.py)."""

  def embed():
    for _ in embedder.embed_batches(records):
      pass
  return embed


def timed_rounds(passes: dict, rounds: int) -> dict:
  """Seconds of each pass over `rounds` turns, after one untimed pass each."""
  seconds = {name: [] for name in passes}
  for embed in passes.values():
    embed()
  for _ in range(rounds):
    for name, embed in passes.items():
      start = time.perf_counter()
      embed()
      seconds[name].append(time.perf_counter() - start)
  return seconds


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
        f"{'hf res/s':>9} {'ratio':>6} {'ours GFLOP/s':>13} {'of peak':>8}   "
        "ratio by round")
  for name in _CONFIGS.value:
    config = _BERT_ROWS[name] if name in _BERT_ROWS else t5.T5_CONFIGS[name]
    family = families.of(config)
    hf_model, to_params = random_hf_encoder(config)
    n_params = sum(p.numel() for p in hf_model.parameters())
    subset = spread(records, _XL_PROTEINS.value) if n_params >= 1e9 else records
    state = {k: v.numpy() for k, v in hf_model.state_dict().items()}
    params = to_params(state)
    del state
    config = dataclasses.replace(config, dtype="float32")
    residues = sum(len(r.sequence) for r in subset)
    embedder = engine.Embedder(config, params,
                               engine.EmbedSettings(max_tokens=_MAX_TOKENS.value))
    seconds = timed_rounds(
        {"ours": our_pass(embedder, subset),
         "hf": transformers_pass(hf_model, family, subset,
                                 embedder.plan(subset))}, _ROUNDS.value)
    del params, hf_model, embedder
    ours, theirs = np.median(seconds["ours"]), np.median(seconds["hf"])
    ratios = [t / o for t, o in zip(seconds["hf"], seconds["ours"])]
    flops = sum(family.encoder_flops(config, len(r.sequence) + family.num_special_tokens)
                for r in subset)
    print(f"{name:13} {len(subset):8d} {residues:9d} {residues / ours:11.1f} "
          f"{residues / theirs:9.1f} {np.median(ratios):6.2f} "
          f"{flops / ours / 1e9:13.1f} {flops / ours / peak:8.1%}   "
          + " ".join(f"{r:.2f}" for r in ratios))


if __name__ == "__main__":
  app.run(main)
