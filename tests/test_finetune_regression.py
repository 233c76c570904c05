"""Per-residue regression fine-tuning (issue 19): the tsv_residue_regression
format, the per-residue CNN with one real output per residue (task
"residue_target"), its masked squared error and Spearman's rho over the
validation residues with a target.

Per-protein regression ("target", tsv_regression) is tests/test_finetune.py.
"""

import re

import jax
import numpy as np
import pytest

from prottrans_jax.data import fasta
from prottrans_jax.data import sample_corpus
from prottrans_jax.downstream import finetune
from prottrans_jax.downstream import metrics as metrics_lib
from prottrans_jax.downstream import models as heads
from prottrans_jax.downstream import readers
from prottrans_jax.models import t5
from prottrans_jax.training import finetune as finetune_training
from prottrans_jax.training import optimizers

T5_TINY = t5.T5_CONFIGS["tiny"].with_dtype("float32")
MAX_LENGTH = 48

# Kyte & Doolittle (1982) hydropathy: a per-residue target a CNN over the
# sequence can rank, so the Spearman below is a meaningful number.
KYTE_DOOLITTLE = {
    "A": 1.8, "R": -4.5, "N": -3.5, "D": -3.5, "C": 2.5, "Q": -3.5, "E": -3.5,
    "G": -0.4, "H": -3.2, "I": 4.5, "L": 3.8, "K": -3.9, "M": 1.9, "F": 2.8,
    "P": -1.6, "S": -0.8, "T": -0.7, "W": -0.9, "Y": -1.3, "V": 4.2}


def _tsv(path, rows):
  path.write_text("protein_id\tsequence\ttargets\n" + "".join(
      "\t".join(row) + "\n" for row in rows))
  return path


def _targets(index, sequence):
  """Hydropathy per residue; every third protein lacks some residues'
  targets (empty every 5th, "nan" every 7th), the last one has none."""
  values = [f"{KYTE_DOOLITTLE.get(c, 0.0):g}" for c in sequence]
  if index == 15:
    return ["nan"] * len(values)
  if index % 3 == 0:
    values = ["" if i % 5 == 4 else "nan" if i % 7 == 6 else v
              for i, v in enumerate(values)]
  return values


def test_residue_regression_run_scores_the_residues_with_a_target(tmp_path):
  """tsv_residue_regression through read_proteins, the per-residue CNN's
  one real output per residue trained two steps from scratch, and the
  evaluation's Spearman equal to scipy's over exactly the validation
  residues with a target (cut at MAX_LENGTH tokens, as the proteins are);
  the loss is the squared error over those residues alone."""
  scipy_stats = pytest.importorskip("scipy.stats")
  records = list(fasta.read_fasta(sample_corpus.FASTA_PATH))[:16]
  tsv = _tsv(tmp_path / "targets.tsv", [
      (r.id, r.sequence, ",".join(_targets(i, r.sequence)))
      for i, r in enumerate(records)])
  proteins = finetune_training.read_proteins(
      str(tsv), "tsv_residue_regression", None,
      readers.RESIDUE_REGRESSION_TASKS)
  # The protein without any residue target is not trained or scored on.
  assert [p.id for p in proteins] == [r.id for r in records[:15]]
  targets = proteins[0].labels["residue_target"]
  assert targets.dtype == np.float32 and len(targets) == len(
      records[0].sequence)
  assert np.isnan(targets[4]) and np.isnan(targets[6])
  assert targets[0] == np.float32(KYTE_DOOLITTLE[records[0].sequence[0]])

  head = heads.HeadConfig("ss_cnn", T5_TINY.d_model, regression=True)
  assert head.tasks == ("residue_target",)
  config = finetune.FinetuneConfig("t5", T5_TINY, head, None)
  train, validation = proteins[:8], proteins[8:]
  metrics = finetune_training.train(
      model_dir=str(tmp_path / "run"), config=config, train_proteins=train,
      validation_proteins=validation, max_length=MAX_LENGTH, batch_size=8,
      train_steps=2, learning_rate=optimizers.constant_schedule(3e-3),
      checkpoint_period=2, log_period=2, eval_period=2)
  assert np.isfinite(metrics["loss"])
  assert np.isfinite(metrics["residue_target_mse"])
  rho = metrics["eval/residue_target"]
  assert np.isfinite(rho) and -1.0 <= rho <= 1.0

  # The validation residues with a target, counted from the targets
  # themselves: those of the first `room` residues (the rest are cut).
  model = finetune.FinetuneModel(config)
  room = MAX_LENGTH - model.family.num_special_tokens
  kept = [p.labels["residue_target"][:room] for p in validation]
  expected_count = sum(int(np.sum(np.isfinite(t))) for t in kept)
  assert expected_count < sum(len(t) for t in kept)  # Some are missing.

  _, params = finetune.load_checkpoint(str(tmp_path / "run"))
  arrays = finetune.encode_batch(model.family, validation, head.tasks,
                                 MAX_LENGTH, per_residue=True)
  outputs = jax.jit(model)(params, arrays["tokens"], arrays["mask"])
  predictions = np.asarray(outputs["residue_target"])
  assert predictions.shape == (len(validation), MAX_LENGTH)
  rows = arrays["mask"] > 0
  per_protein = [(predictions[i][rows[i]], arrays["residue_target"][i][rows[i]])
                 for i in range(len(validation))]
  for (_, target), expected in zip(per_protein, kept, strict=True):
    np.testing.assert_array_equal(target, expected)
  pooled_predictions = np.concatenate([p for p, _ in per_protein])
  pooled_targets = np.concatenate([t for _, t in per_protein])
  finite = np.isfinite(pooled_targets)
  assert int(finite.sum()) == expected_count
  np.testing.assert_allclose(
      rho, scipy_stats.spearmanr(pooled_predictions[finite],
                                 pooled_targets[finite]).statistic, atol=1e-6)
  score = metrics_lib.spearman_score(*zip(*per_protein))
  assert (score.items, score.proteins) == (expected_count, len(validation))
  assert np.isfinite(score.stderr) and score.ci_low < score.ci_high

  # The loss: mean squared error over the residues with a target, its
  # denominator their count (NaN targets and padding are excluded).
  batch = {k: arrays[k] for k in ("tokens", "mask", "residue_target")}
  loss, sums = finetune_training.task_losses(outputs, batch)
  assert int(sums["residue_target_labelled"]) == expected_count
  np.testing.assert_allclose(
      loss, np.mean((pooled_predictions[finite] - pooled_targets[finite])**2),
      rtol=1e-5)


@pytest.mark.parametrize("rows,line,message", [
    ([("P1", "MKV", "1,2,3"), ("P2", "MKL", "1,2")], 3,
     "targets has 2 entries but the sequence has 3 residues"),
    ([("P1", "MKV", "1,2,3,4")], 2, "targets has 4 entries"),
    ([("P1", "MKV", "1,high,3")], 2, "residue 2: target 'high' is not a finite"),
    ([("P1", "MKV", "1,2,inf")], 2, "residue 3: target 'inf' is not a finite"),
    ([("P1", "MKV", "1,2,3"), ("P1", "MKL", "1,2,3")], 3,
     "duplicate protein_id 'P1' \\(first on line 2\\)"),
    ([("P1", "MKV")], 2, "tab-separated fields"),
    ([("P1", "MKV", "")], 2, "tab-separated fields"),
])
def test_bad_residue_regression_rows_name_the_file_and_line(
    tmp_path, rows, line, message):
  tsv = _tsv(tmp_path / "bad.tsv", rows)
  with pytest.raises(readers.LabelError,
                     match=f"{re.escape(str(tsv))}:{line}: .*{message}"):
    readers.read_labels(tsv, "tsv_residue_regression")


def test_residue_regression_header_and_missing_values(tmp_path):
  """The per-protein header is not accepted for per-residue targets; empty
  and nan (any case) values are residues without a target."""
  tsv = tmp_path / "per_protein.tsv"
  tsv.write_text("protein_id\tsequence\ttarget\nP1\tMKV\t0.5\n")
  with pytest.raises(readers.LabelError,
                     match=f"{re.escape(str(tsv))}:1: header"):
    readers.read_labels(tsv, "tsv_residue_regression")
  tsv = _tsv(tmp_path / "good.tsv", [("P1", "mkvl", "0.5, ,NaN,-2e-1")])
  (protein,) = readers.read_labels(tsv, "tsv_residue_regression")
  assert protein.sequence == "MKVL"
  np.testing.assert_array_equal(protein.labels["residue_target"],
                                np.float32([0.5, np.nan, np.nan, -0.2]))
