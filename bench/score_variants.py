"""Variant-scoring throughput (inference/variants.py) on this machine.

For each model (random weights, made on the host: no checkpoint needed) it
scores random single substitutions of real proteins and scans them, and
prints:

- variants/s with masked_marginal (one forward pass per variant here: each
  masks its own position) and with wildtype_marginal (one pass per protein,
  shared by all its variants);
- scan positions/s (every substitution of every position: 20 scores per
  position) with both methods: masked_marginal runs one pass per position,
  wildtype_marginal one per protein.

Each measurement runs once untimed first (compilations for every batch
shape), then --rounds times; the figures are medians.

  python bench/score_variants.py                        # tiny, protbert_tiny, xl_width
  python bench/score_variants.py --models=tiny --proteins=45

`xl_width` is ProtT5-XL's width (d_model 1024, 32 heads x 128, d_ff 16384)
with --xl_layers encoder and decoder layers; on a CPU it scores a few
proteins cut to --xl_length residues (--xl_proteins).
"""

import dataclasses
import os
import statistics
import time

from absl import app
from absl import flags
import jax
import numpy as np
from flax import linen as nn

from prottrans_jax import families
from prottrans_jax.data import fasta
from prottrans_jax.inference import engine
from prottrans_jax.inference import variants
from prottrans_jax.models import bert
from prottrans_jax.models import t5

import _machine

_DEFAULT_FASTA = os.path.join(os.path.dirname(__file__), "..", "..", "shared",
                              "data", "sequences", "globins45.fasta")
_MODELS = flags.DEFINE_list("models", ["tiny", "protbert_tiny", "xl_width"],
                            "tiny (ProtT5), protbert_tiny, xl_width.")
_FASTA = flags.DEFINE_string("fasta", _DEFAULT_FASTA, "Proteins to score.")
_PROTEINS = flags.DEFINE_integer("proteins", 12, "Proteins of --fasta used "
                                 "(tiny models).", lower_bound=1)
_VARIANTS = flags.DEFINE_integer("variants_per_protein", 32, "Random single "
                                 "substitutions per protein.", lower_bound=1)
_XL_LAYERS = flags.DEFINE_integer("xl_layers", 2, "Encoder and decoder "
                                  "layers of xl_width.", lower_bound=1)
_XL_PROTEINS = flags.DEFINE_integer("xl_proteins", 2, "Proteins for "
                                    "xl_width.", lower_bound=1)
_XL_LENGTH = flags.DEFINE_integer("xl_length", 64, "xl_width's proteins are "
                                  "cut to this many residues.", lower_bound=1)
_MAX_TOKENS = flags.DEFINE_integer("max_tokens", 4096, "Padded tokens per "
                                   "batch per device.", lower_bound=1)
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Timed runs of each measurement.",
                               lower_bound=1)


def _config(name: str):
  if name == "tiny":
    return t5.T5_CONFIGS["tiny"]
  if name == "protbert_tiny":
    return bert.BERT_CONFIGS["tiny"]
  if name == "xl_width":
    return dataclasses.replace(t5.T5_CONFIGS["prott5_xl"],
                               num_encoder_layers=_XL_LAYERS.value,
                               num_decoder_layers=_XL_LAYERS.value)
  raise ValueError(f"--models: unknown model {name!r}")


def _random_params(config):
  """Normal(0, 0.05) weights from the abstract tree: no initialiser to
  compile, which for the XL width would take longer than the measurement."""
  rng = np.random.default_rng(0)
  return jax.tree.map(
      lambda x: rng.standard_normal(x.shape, np.float32) * np.float32(0.05),
      nn.unbox(families.abstract_params(families.of(config), config)))


def _single_variants(records, count: int) -> list[variants.Variant]:
  """`count` random substitutions per protein at distinct positions (fewer
  for a shorter protein)."""
  rng = np.random.default_rng(1)
  out = []
  for record in records:
    positions = rng.choice(len(record.sequence),
                           min(count, len(record.sequence)), replace=False)
    for position in sorted(positions):
      wild_type = record.sequence[position]
      if wild_type not in variants.RESIDUES:
        continue
      mutant = rng.choice([r for r in variants.RESIDUES if r != wild_type])
      name = f"{wild_type}{position + 1}{mutant}"
      out.append(variants.Variant(record.id, name, (variants.Substitution(
          int(position), wild_type, str(mutant)),), 0))
  return out


def _median_seconds(run) -> float:
  run()  # Compilations.
  times = []
  for _ in range(_ROUNDS.value):
    start = time.perf_counter()
    run()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main(argv):
  del argv
  print(f"machine: {_machine.describe(('avx2', 'avx512f'))}; "
        f"jax {jax.__version__} on {jax.devices()[0].device_kind} x "
        f"{jax.local_device_count()}; --max_tokens={_MAX_TOKENS.value}, "
        f"{_ROUNDS.value} rounds (medians)")
  all_records = list(fasta.read_fasta(_FASTA.value))
  header = (f"{'model':<14} {'params':>8} {'proteins':>8} {'residues':>8} "
            f"{'masked var/s':>12} {'wt var/s':>10} {'masked scan pos/s':>17} "
            f"{'wt scan pos/s':>13}")
  print(header)
  for name in _MODELS.value:
    config = _config(name).with_dtype("float32")
    if name == "xl_width":
      records = [dataclasses.replace(r, sequence=r.sequence[:_XL_LENGTH.value])
                 for r in all_records[:_XL_PROTEINS.value]]
    else:
      records = all_records[:_PROTEINS.value]
    params = _random_params(config)
    count = sum(x.size for x in jax.tree.leaves(params))
    scorer = variants.Scorer(config, params,
                             engine.EmbedSettings(max_tokens=_MAX_TOKENS.value))
    del params
    to_score = _single_variants(records, _VARIANTS.value)
    residues = sum(len(r.sequence) for r in records)
    rates = []
    for method in variants.METHODS:
      seconds = _median_seconds(lambda: scorer.score(records, to_score, method))
      rates.append(len(to_score) / seconds)
    for method in variants.METHODS:
      seconds = _median_seconds(lambda: list(scorer.scan(records, method)))
      rates.append(residues / seconds)
    print(f"{name:<14} {count / 1e6:>7.1f}M {len(records):>8} {residues:>8} "
          f"{rates[0]:>12.1f} {rates[1]:>10.1f} {rates[2]:>17.1f} "
          f"{rates[3]:>13.1f}  ({len(to_score)} variants)", flush=True)


if __name__ == "__main__":
  app.run(main)
