r"""The paper's downstream evaluation for one encoder, beside the one-hot
baseline, the majority class and the paper's ProtT5-XL-U50 figures.

  python bench/downstream_eval.py --checkpoint_dir runs/prott5_tiny
  python bench/downstream_eval.py --hf_model_dir /models/prot_t5_xl_half \
      --ss_proteins 0 --loc_train_proteins 0 --loc_test_proteins 0 \
      --max_length 0 --dtype bfloat16     # everything, on an accelerator

Protocol (embed -> train head -> score), with what ../shared/data holds:
- Q3/Q8: the paper trains on NetSurfP-2.0's training set and tests on
  CASP12, TS115 and CB513. Without that training set or CASP12, a CNN
  trained on CB513 is tested on TS115 and one trained on TS115 is tested on
  CB513 (each trains on a set disjoint from the one it is scored on).
- Q10/Q2: the paper trains on DeepLoc's training set. Without it, the FNN
  (or light attention) trains on the DeepLoc-derived validation set of
  Stärk et al. (itself split from DeepLoc's training set) and is tested on
  DeepLoc's test set.
Subsets are seeded random samples. Early stopping holds out 10% of each
training set. ± is the standard error
(bootstrap over proteins). The subset flags make it run in minutes on CPU.
"""

import dataclasses
import os
import random
import tempfile
import time

from absl import app
from absl import flags
import jax

from prottrans_jax import cli
from prottrans_jax.downstream import features
from prottrans_jax.downstream import metrics
from prottrans_jax.downstream import pipeline
from prottrans_jax.downstream import readers
from prottrans_jax.downstream import trainer
from prottrans_jax.inference import engine
from prottrans_jax.inference import loading
from prottrans_jax.inference import run

import _machine

_MODEL = cli.define_model_source_flags("ProtT5", "a directory or Hub model id.")
_DATA = flags.DEFINE_string(
    "data_dir", os.path.join(os.path.dirname(__file__), "..", "..", "shared",
                             "data"), "The shared data directory.")
_WORK = flags.DEFINE_string("work_dir", None, "Embeddings go here (a re-run "
                            "with the same model reuses them); default: a "
                            "temporary directory.")
_SS_PROTEINS = flags.DEFINE_integer(
    "ss_proteins", 120, "CB513 and TS115 proteins each (0 = all).")
_LOC_TRAIN = flags.DEFINE_integer("loc_train_proteins", 400,
                                  "DeepLoc training proteins (0 = all).")
_LOC_TEST = flags.DEFINE_integer("loc_test_proteins", 400,
                                 "DeepLoc test proteins (0 = all).")
_MAX_LENGTH = flags.DEFINE_integer(
    "max_length", 600, "Leave out longer proteins (0 = keep all).")
_LOC_HEAD = flags.DEFINE_enum("localization_head", "mlp",
                              ["mlp", "light_attention"],
                              "The paper's FNN or light attention.")
_EPOCHS = flags.DEFINE_integer("max_epochs", 40, "Upper bound on epochs.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"],
                           "Encoder compute dtype.")
_MAX_TOKENS = cli.define_max_tokens_flag(16384)  # And --max_residues (old).
flags.adopt_module_key_flags(cli)  # --help lists --max_tokens, the model flags.

PAPER = {("q3", "CASP12"): 81, ("q3", "TS115"): 87, ("q3", "CB513"): 86,
         ("q8", "CASP12"): 70, ("q8", "TS115"): 77, ("q8", "CB513"): 74,
         ("localization", "DeepLoc"): 81, ("membrane", "DeepLoc"): 91}


@dataclasses.dataclass(frozen=True)
class Experiment:
  """One head trained on one set and scored on a disjoint one."""
  kind: str
  train: list[readers.LabeledProtein]
  test: list[readers.LabeledProtein]
  test_name: str
  train_name: str


def _subset(proteins, count):
  """A seeded random subset: the files are grouped by class (DeepLoc), so
  their first proteins would be a biased sample."""
  kept = [p for p in proteins
          if not _MAX_LENGTH.value or len(p.sequence) <= _MAX_LENGTH.value]
  if not count or count >= len(kept):
    return kept
  chosen = sorted(random.Random(0).sample(range(len(kept)), count))
  return [kept[i] for i in chosen]


def _experiments(data_dir: str) -> list[Experiment]:
  ss = os.path.join(data_dir, "secondary_structure")
  loc = os.path.join(data_dir, "localization")
  cb513 = _subset(readers.read_netsurfp(
      os.path.join(ss, "CB513_HHblits.csv")), _SS_PROTEINS.value)
  ts115 = _subset(readers.read_netsurfp(
      os.path.join(ss, "TS115_HHblits.csv")), _SS_PROTEINS.value)
  deeploc_train = _subset(readers.read_deeploc(
      os.path.join(loc, "deeploc_our_val_set.fasta")), _LOC_TRAIN.value)
  deeploc_test = _subset(readers.read_deeploc(
      os.path.join(loc, "deeploc_test_set.fasta")), _LOC_TEST.value)
  return [
      Experiment("ss_cnn", ts115, cb513, "CB513", "TS115"),
      Experiment("ss_cnn", cb513, ts115, "TS115", "CB513"),
      Experiment(_LOC_HEAD.value, deeploc_train, deeploc_test, "DeepLoc",
                 "DeepLoc val. set (Stärk et al.)")]


def _embed(model: loading.LoadedModel, proteins, path: str,
           per_protein: bool) -> str:
  fasta_path = path + ".fasta"
  readers.write_fasta(proteins, fasta_path)
  run.embed_fasta(fasta_path, path, model, engine.EmbedSettings(
      per_protein=per_protein, dtype=_DTYPE.value,
      max_tokens=_MAX_TOKENS.value), progress=False)
  return path


def _cell(scores, task, test_name):
  score = scores.get((task, test_name))
  return metrics.format_score(score) if score else "n/a"


def _table(columns: dict[str, dict], sizes: dict, title: str) -> str:
  rows = [("Q3", "q3", "CASP12"), ("Q3", "q3", "TS115"), ("Q3", "q3", "CB513"),
          ("Q8", "q8", "CASP12"), ("Q8", "q8", "TS115"), ("Q8", "q8", "CB513"),
          ("Q10", "localization", "DeepLoc"), ("Q2", "membrane", "DeepLoc")]
  header = (["metric", "test set", "proteins", "items"] + list(columns) +
            ["ProtT5-XL-U50 (paper)"])
  lines = [header]
  for name, task, test_name in rows:
    proteins, items = sizes.get((task, test_name), ("-", "-"))
    lines.append([name, test_name, str(proteins), str(items)] +
                 [_cell(c, task, test_name) for c in columns.values()] +
                 [str(PAPER[(task, test_name)])])
  widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
  fmt = lambda line: "  ".join(v.ljust(w) for v, w in zip(line, widths))
  rule = "-" * len(fmt(header))
  return "\n".join([title, rule, fmt(header), rule] +
                   [fmt(line) for line in lines[1:]] + [rule])


def main(argv):
  del argv
  start = time.perf_counter()
  model = _MODEL.load()
  work_dir = _WORK.value or tempfile.mkdtemp(prefix="downstream_eval_")
  os.makedirs(work_dir, exist_ok=True)
  experiments = _experiments(_DATA.value)
  config = trainer.TrainConfig(max_epochs=_EPOCHS.value)
  columns = {"this model": {}, "one-hot": {}, "majority class": {}}
  sizes, timings = {}, {}
  for i, experiment in enumerate(experiments):
    tick = time.perf_counter()
    # The FNN needs only means, which the engine takes on the device.
    per_protein = experiment.kind == "mlp"
    h5_path = _embed(model, experiment.train + experiment.test,
                     os.path.join(work_dir, f"set{i}.h5"), per_protein)
    timings[f"embed {experiment.test_name}"] = time.perf_counter() - tick
    tick = time.perf_counter()
    for column, source in (("this model", h5_path),
                           ("one-hot", features.ONEHOT)):
      head = pipeline.train_head(experiment.kind, experiment.train, source,
                                 config)
      for task, score in pipeline.evaluate_head(head, experiment.test,
                                                source).items():
        columns[column][(task, experiment.test_name)] = score
        sizes[(task, experiment.test_name)] = (score.proteins, score.items)
        columns["majority class"][(task, experiment.test_name)] = (
            metrics.majority_score([p.labels for p in experiment.train],
                                   [p.labels for p in experiment.test], task))
    timings[f"heads {experiment.test_name}"] = time.perf_counter() - tick
  device = jax.devices()[0]
  d_model = getattr(model.config, "d_model", "?")
  print(_table(columns, sizes,
               f"Downstream evaluation of {model.source} (d={d_model}); "
               f"{device.platform}:{device.device_kind} x{jax.device_count()},"
               f" {_machine.describe()}"))
  for experiment in experiments:
    print(f"{experiment.test_name}: {experiment.kind} head trained on "
          f"{len(experiment.train)} {experiment.train_name} proteins, tested "
          f"on {len(experiment.test)} (disjoint sets)")
  print("CASP12: not in ../shared/data (n/a). Paper: trained on NetSurfP-2.0 "
        "/ DeepLoc training sets, not available here, so figures are not "
        "directly comparable. '±' = standard error (bootstrap over proteins)."
        + (f" Proteins longer than {_MAX_LENGTH.value} left out."
           if _MAX_LENGTH.value else ""))
  print("wall time: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items())
        + f", total {time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
  app.run(main)
