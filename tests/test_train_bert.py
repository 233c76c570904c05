"""ProtBert / ProtAlbert / ProtElectra train with the partitioned trainer from
their gin files: 8 host devices, num_partitions = 2, the bundled corpus;
BERT's LAMB and ELECTRA's loss and metrics on hand-made batches."""

import dataclasses
import pathlib

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import seqio
import tensorflow as tf

from prottrans_jax import checkpoints
from prottrans_jax import families
from prottrans_jax import gin_utils
from prottrans_jax.data import sample_corpus
from prottrans_jax.downstream import metrics
from prottrans_jax.models import electra
from prottrans_jax.tasks import protein
from prottrans_jax.training import objectives
from prottrans_jax.training import optimizers
from prottrans_jax.training import trainer

STEPS = 60
ELECTRA_STEPS = 40


def _logged(model_dir: pathlib.Path) -> dict[str, list[float]]:
  """Training scalars by name, in step order, from the TensorBoard files."""
  scalars = {}
  for path in sorted((model_dir / "train").glob("events.*")):
    for event in tf.compat.v1.train.summary_iterator(str(path)):
      for value in event.summary.value:
        scalars.setdefault(value.tag, []).append(
            (event.step, float(tf.make_ndarray(value.tensor))))
  return {k: [v for _, v in sorted(steps)] for k, steps in scalars.items()}


def _train(model_dir: pathlib.Path, model: str, overrides: list[str]) -> dict[str, float]:
  """Trains with the model's gin file and runs/pretrain_bert.gin on 8 host
  devices, 2-way model parallel; returns the last logged metrics."""
  gin.clear_config()
  gin_utils.parse(
      [f"models/{model}.gin", "runs/pretrain_bert.gin"],
      [f"MODEL_DIR = '{model_dir}'", "NUM_PARTITIONS = 2", "WARMUP_STEPS = 5",
       "trainer.train.log_period = 1", "trainer.train.checkpoint_period = 1000",
       *overrides])
  try:
    return gin.get_configurable(trainer.train)()
  finally:
    gin.clear_config()


@pytest.mark.parametrize("model", ["protbert_tiny", "protalbert_tiny"])
def test_loss_falls_on_the_bundled_corpus(model, tmp_path):
  _train(tmp_path, model, [
      f"TRAIN_STEPS = {STEPS}", "BATCH_SIZE = 8", "LEARNING_RATE = 0.02",
      "TASK_FEATURE_LENGTHS = {'inputs': 64, 'targets': 64}",
      "trainer.train.eval_period = None"])
  loss = _logged(tmp_path)["loss"]
  assert len(loss) == STEPS
  # Means over 10 steps: single packed batches are noisy. 60 steps take
  # the masked-LM loss from uniform towards the residue frequencies.
  assert np.mean(loss[-10:]) < np.mean(loss[:10]) - 0.1, loss
  model_name, _ = checkpoints.checkpoint_model_config(tmp_path)
  assert model_name == {"protbert_tiny": "bert", "protalbert_tiny": "albert"}[model]


@pytest.fixture
def half_split_task():
  """The bundled proteins split in halves: the bundled task's validation
  tenth holds 2,843 residues, fewer than the 5,000 an AUC interval is to
  rest on; half of them give 6,587 at 128 tokens a protein."""
  name = "swissprot_sample_halves"
  protein.register_objectives(name, protein.fasta_source(sample_corpus.FASTA_PATH, 0.5))
  yield f"{name}_protbert_mlm"
  for objective in ("prott5_denoise", "protbert_mlm"):
    seqio.TaskRegistry.remove(f"{name}_{objective}")


def test_protelectra_eval_reports_replaced_token_auc(half_split_task, tmp_path):
  last = _train(tmp_path, "protelectra_tiny", [
      f"MIXTURE_OR_TASK_NAME = '{half_split_task}'", f"TRAIN_STEPS = {ELECTRA_STEPS}",
      "BATCH_SIZE = 8", "LEARNING_RATE = 0.01",
      "TASK_FEATURE_LENGTHS = {'inputs': 128, 'targets': 128}",
      f"trainer.train.eval_period = {ELECTRA_STEPS}"])
  assert checkpoints.checkpoint_model_config(tmp_path)[0] == "electra_pretraining"
  logged = _logged(tmp_path)
  # Both networks learn: the generator's MLM loss and the discriminator's
  # replaced-token loss fall.
  for name in ("cross_entropy", "discriminator_loss"):
    assert np.mean(logged[name][-10:]) < 0.95 * np.mean(logged[name][:10]), name
  # Evaluation on the validation half reports the discriminator's ROC AUC
  # for replaced residues with DeLong's 95% interval over >= 5,000
  # residues, and the generator's masked-residue accuracy beside the
  # most-common-residue baseline.
  residues = last["eval/detection_replaced"] + last["eval/detection_original"]
  assert residues >= 5000 and 0.1 < last["eval/detection_replaced"] / residues < 0.2
  assert (0 <= last["eval/discriminator_auc_ci_low"] < last["eval/discriminator_auc"]
          < last["eval/discriminator_auc_ci_high"] <= 1), last
  assert last["eval/discriminator_auc_ci_high"] - last["eval/discriminator_auc_ci_low"] < 0.1
  assert 0 < last["eval/most_common_residue_baseline"] < 0.2
  assert 0 <= last["eval/masked_residue_accuracy"] <= 1
  # Not asserted: the criterion, an interval above 0.5, and a
  # generator above the baseline, because neither holds reliably at a CI
  # budget. Measured (8 x 128 tokens a step, LAMB 0.01, 2-core AMD EPYC):
  # after 60 steps the AUC is 0.525 [0.508, 0.542] (seed 0), 0.502
  # [0.499, 0.504] (seed 1), 0.504 [0.499, 0.509] (seed 2); seed 0 gives
  # 0.52-0.53 at every 10 steps from 10 to 40. An untrained
  # discriminator already scores 0.540, 0.554 and 0.504 (seeds 0-2): its
  # random token features rank the generator's near-uniform samples apart
  # from the residues' own frequencies, so an interval above 0.5 does not
  # by itself show learning. The generator's masked-residue accuracy is
  # 0.070-0.098, never above the baseline (0.098: always L, the most frequent
  # residue of the training half and of these positions). Why (README,
  # "ProtElectra: is the discriminator learning?"): the exact AUC from raw
  # logits is no better than the binned one; the generator learns the
  # residue frequencies within ~20 steps, leaving only context to detect,
  # and the discriminator learns only the replaced share: with higher LAMB
  # rates or AdamW (up to 150 steps) its output stops depending on the
  # residue; with its output bias started at the share's log-odds it
  # varies but still ranks at chance after 200 AdamW steps.


def test_lamb_adapts_kernels_but_not_biases_or_layer_norms():
  # Every parameter 0.5 and every gradient 1: Adam's first step is 1 (plus
  # decay 0.01 x 0.5), and a trust ratio scales it to the parameter's own
  # size, 0.5, before the learning rate.
  params = {"dense": {"kernel": jnp.full((4, 4), 0.5), "bias": jnp.full((4,), 0.5)},
            "mlp_layer_norm": {"scale": jnp.full((4,), 0.5), "bias": jnp.full((4,), 0.5)}}
  tx = optimizers.lamb(weight_decay=0.01)
  state = optimizers.with_learning_rate(tx.init(params), 0.01)
  updates, _ = tx.update(jax.tree_util.tree_map(jnp.ones_like, params), state, params)
  np.testing.assert_allclose(updates["dense"]["kernel"], -0.01 * 0.5, rtol=1e-4)
  for leaf in (updates["dense"]["bias"], updates["mlp_layer_norm"]["scale"],
               updates["mlp_layer_norm"]["bias"]):
    np.testing.assert_allclose(leaf, -0.01, rtol=1e-4)
  # The state has optax.lamb's structure: earlier checkpoints restore.
  reference = optax.inject_hyperparams(optax.lamb)(learning_rate=0.0, weight_decay=0.01)
  assert (jax.tree_util.tree_structure(tx.init(params))
          == jax.tree_util.tree_structure(reference.init(params)))


def _packed_mlm_batch() -> dict[str, np.ndarray]:
  """Two packed rows as MaskedLmFeatureConverter makes them: [CLS] residues
  [SEP] segments, padding after; selected positions hold [MASK] (4), a
  random residue or the residue itself, each with loss weight 1."""
  cls, sep, mask = 2, 3, 4
  targets = np.array([[cls, 21, 12, 5, 6, sep, cls, 7, 8, 9, sep, 0, 0, 0, 0, 0],
                      [cls, 8, 8, 8, 8, 10, 11, 12, 13, 14, 15, sep, 0, 0, 0, 0]], np.int32)
  inputs = targets.copy()
  weights = np.zeros_like(targets)
  for row, col, token in [(0, 2, mask), (0, 4, 17), (0, 8, 8), (1, 3, mask), (1, 6, mask),
                          (1, 9, mask)]:
    inputs[row, col], weights[row, col] = token, 1
  segments = np.array([[1] * 6 + [2] * 5 + [0] * 5, [1] * 12 + [0] * 4], np.int32)
  positions = np.array([list(range(6)) + list(range(5)) + [0] * 5,
                        list(range(12)) + [0] * 4], np.int32)
  return {"encoder_input_tokens": inputs, "encoder_target_tokens": targets,
          "encoder_loss_weights": weights, "encoder_segment_ids": segments,
          "encoder_positions": positions}


def test_electra_loss_and_metrics_count_each_real_token_once():
  float32 = lambda c: dataclasses.replace(c, dtype="float32")
  config = electra.ElectraPretrainingConfig(
      generator=float32(electra.ELECTRA_CONFIGS["tiny_generator"]),
      discriminator=float32(electra.ELECTRA_CONFIGS["tiny_discriminator"]))
  model = electra.ElectraPretraining(config)
  params = families.get("electra_pretraining").init(model, jax.random.key(0))
  params = jax.tree_util.tree_map(lambda x: getattr(x, "value", x), params,
                                  is_leaf=lambda x: hasattr(x, "value"))
  batch = _packed_mlm_batch()
  selected = batch["encoder_loss_weights"] == 1
  real = batch["encoder_target_tokens"] > 0
  # Without a dropout key the objective samples with key 0; so do we here.
  sums, out = jax.jit(lambda p, b: (
      objectives.electra_sums(model, p, b, None, 0.0),
      objectives._electra_outputs(  # pylint: disable=protected-access
          model, p, b, None, jax.random.key(0))))(params, batch)
  replaced = np.asarray(out["replaced"])
  assert replaced.any() and not (replaced & ~selected).any()
  assert sums["discriminator_tokens"] == real.sum() == 23
  assert sums["discriminator_replaced"] == replaced.sum()
  correct = ((np.asarray(out["discriminator_logits"]) > 0) == replaced) & real
  assert sums["discriminator_correct"] == correct.sum()
  metrics = objectives.electra_metrics(sums)
  np.testing.assert_allclose(metrics["discriminator_all_original_accuracy"],
                             (~replaced & real).sum() / real.sum(), rtol=1e-6)
  # The step divides by the selected count: generator MLM mean + 50 x the
  # discriminator's mean binary cross-entropy over real tokens.
  assert sums["weight"] == selected.sum() == 6
  logits = np.asarray(out["discriminator_logits"], np.float64)
  bce = np.logaddexp(0, logits) - logits * replaced
  np.testing.assert_allclose(
      sums["loss"] / sums["weight"],
      sums["cross_entropy"] / sums["weight"] + 50 * bce[real].mean(), rtol=1e-5)
  # Evaluation bins the discriminator's logits of residues only ([CLS],
  # [SEP] and padding left out), split by whether the residue was replaced.
  *_, histograms = jax.jit(lambda p, b: objectives.electra_eval(model, p, b))(params, batch)
  residues = batch["encoder_target_tokens"] >= config.num_special_tokens
  assert histograms["detection_replaced_counts"].sum() == (replaced & residues).sum()
  assert histograms["detection_original_counts"].sum() == (~replaced & residues).sum()
  assert residues.sum() == 17


def test_discriminator_auc_and_its_interval_from_binned_logits():
  sklearn_metrics = pytest.importorskip("sklearn.metrics")
  rng = np.random.default_rng(0)
  # 6,000 residues, 15% replaced, replaced logits shifted up by 0.3 sd.
  replaced = rng.random(6000) < 0.15
  logits = rng.normal(-2.0, 1.0, 6000) + 0.3 * replaced
  counts = objectives.detection_histograms(jnp.asarray(logits, jnp.float32),
                                           jnp.asarray(replaced), jnp.ones(6000, bool))
  auc = objectives.electra_eval_metrics(jax.device_get(counts))
  assert auc["detection_replaced"] == replaced.sum()
  assert auc["detection_original"] == (~replaced).sum()
  # Bins 1/128 wide: within a small fraction of sklearn's exact AUC.
  assert abs(auc["discriminator_auc"] - sklearn_metrics.roc_auc_score(replaced, logits)) < 1e-3
  # DeLong's standard error agrees with a bootstrap of the exact AUC.
  draws = rng.integers(0, 6000, size=(400, 6000))
  boot = [sklearn_metrics.roc_auc_score(replaced[d], logits[d]) for d in draws]
  np.testing.assert_allclose(auc["discriminator_auc_stderr"], np.std(boot), rtol=0.15)
  np.testing.assert_allclose(
      [auc["discriminator_auc_ci_low"], auc["discriminator_auc_ci_high"]],
      auc["discriminator_auc"] + np.array([-1.96, 1.96]) * auc["discriminator_auc_stderr"],
      rtol=1e-4)
  # Scores that are whole bins apart are ranked exactly, ties counting
  # one half, as sklearn does.
  step = 2 * objectives.DETECTION_LOGIT_RANGE / objectives.DETECTION_BINS
  coarse = (rng.integers(-3, 4, 6000) + 0.5 + replaced) * step
  counts = objectives.detection_histograms(jnp.asarray(coarse, jnp.float32),
                                           jnp.asarray(replaced), jnp.ones(6000, bool))
  exact = metrics.binned_roc_auc(counts["detection_replaced_counts"],
                                 counts["detection_original_counts"])
  np.testing.assert_allclose(exact.value, sklearn_metrics.roc_auc_score(replaced, coarse),
                             rtol=1e-9)
  with pytest.raises(ValueError, match="two positives"):
    metrics.binned_roc_auc(np.array([1.0, 0.0]), np.array([3.0, 4.0]))
