"""Fine-tuning with LoRA (issue 19): what is trained, what stays frozen,
exact resume on a 2-way model-parallel mesh, and the merged checkpoint.

One LoRA run (tiny ProtT5 encoder from the conftest's params-only
checkpoint, CB513 proteins, 8 CPU devices as data 4 x model 2) is shared by
the tests of this module. The CB513 -> TS115 comparison of LoRA, full
fine-tuning and the frozen-embedding CNN, on a committed pre-trained
fixture, is tests/test_finetune_q3.py.
"""

import dataclasses
import re
import shutil

import flax
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from prottrans_jax import checkpoints
from prottrans_jax import partitioning
from prottrans_jax.data import fasta
from prottrans_jax.data import sample_corpus
from prottrans_jax.downstream import finetune
from prottrans_jax.downstream import metrics as metrics_lib
from prottrans_jax.downstream import models as heads
from prottrans_jax.downstream import readers
from prottrans_jax.inference import engine
from prottrans_jax.inference import loading
from prottrans_jax.models import bert
from prottrans_jax.models import lora
from prottrans_jax.models import t5
from prottrans_jax.training import finetune as finetune_training
from prottrans_jax.training import optimizers

T5_TINY = t5.T5_CONFIGS["tiny"].with_dtype("float32")
BERT_TINY = bert.BERT_CONFIGS["tiny"].with_dtype("float32")
STEPS = 4


def _config(encoder_family="t5", encoder=T5_TINY, kind="ss_cnn",
            lora_config=lora.LoraConfig()):
  return finetune.FinetuneConfig(
      encoder_family, encoder,
      heads.HeadConfig(kind, finetune.encoder_width(encoder)), lora_config)


def _flat(tree):
  return flax.traverse_util.flatten_dict(tree, sep="/")


@pytest.mark.parametrize("encoder_family,encoder,kind", [
    ("t5", T5_TINY, "ss_cnn"), ("bert", BERT_TINY, "light_attention")])
def test_trainable_count_equals_the_formula(encoder_family, encoder, kind):
  """rank * (in + out) per adapted kernel (q, k, v, o of every layer), the
  head, and the layer norms (T5: a scale per norm; BERT: scale and bias,
  the embeddings' norm too); nothing else, and everything without LoRA."""
  config = _config(encoder_family, encoder, kind)
  model = finetune.FinetuneModel(config)
  tx = optimizers.adamw()
  mesh = partitioning.PartitionConfig(mesh_shape=(1, 1)).mesh()
  layout = finetune_training.plan(model, tx, mesh,
                                  partitioning.logical_axis_rules())
  rank, width = config.lora.rank, finetune.encoder_width(encoder)
  if encoder_family == "t5":
    layers, joined = encoder.num_encoder_layers, encoder.num_heads * encoder.d_kv
    norms = (2 * layers + 1) * width
  else:
    layers, joined = encoder.num_hidden_layers, encoder.hidden_size
    norms = (2 * layers + 1) * 2 * width
  adapters = layers * 4 * rank * (width + joined)
  head = sum(x.size for x in jax.tree_util.tree_leaves(
      layout.abstract_params[finetune.HEAD]))
  assert layout.num_trainable == adapters + head + norms
  assert finetune_training.trainable_count_formula(
      model, layout.abstract_params) == {
          "adapters": adapters, "head": head, "base_trainable": norms}
  # The optimizer state mirrors the trainable tree alone (AdamW: two
  # moments per trainable parameter, the frozen kernels nowhere).
  moments = sum(x.size for x in jax.tree_util.tree_leaves(
      layout.state.opt_state) if x.ndim > 0)
  assert moments == 2 * layout.num_trainable

  full = finetune.FinetuneModel(_config(encoder_family, encoder, kind, None))
  full_layout = finetune_training.plan(full, tx, mesh,
                                       partitioning.logical_axis_rules())
  assert full_layout.num_trainable == full_layout.num_params
  # The frozen-embedding baseline trains the head alone.
  frozen = finetune.FinetuneModel(dataclasses.replace(
      full.config, freeze_encoder=True))
  assert finetune_training.plan(
      frozen, tx, mesh, partitioning.logical_axis_rules()).num_trainable == head


def test_adapters_carry_their_kernels_axes():
  boxed = jax.eval_shape(
      lambda: finetune.FinetuneModel(_config()).init(jax.random.key(0)))
  names = {k: v.names for k, v in _flat(boxed[finetune.LORA]).items()}
  assert names["encoder/layers_0/attention/query/lora_a"] == ("embed", lora.RANK_AXIS)
  assert names["encoder/layers_0/attention/query/lora_b"] == (lora.RANK_AXIS, "joined_kv")
  assert names["encoder/layers_0/attention/out/lora_a"] == ("joined_kv", lora.RANK_AXIS)
  mesh = partitioning.PartitionConfig(num_partitions=2).mesh()
  shardings = _flat(partitioning.params_shardings(
      boxed, mesh, partitioning.logical_axis_rules()))
  # B's output side is split over `model` like the query kernel's.
  split = jax.sharding.PartitionSpec(None, "model")
  assert shardings["encoder/encoder/layers_0/attention/query/kernel"].spec == split
  assert shardings["lora/encoder/layers_0/attention/query/lora_b"].spec == split
  assert shardings["lora/encoder/layers_0/attention/out/lora_a"].spec == (
      jax.sharding.PartitionSpec("model", None))


@pytest.fixture(scope="module")
def cb513(shared_data):
  return readers.read_labels(
      shared_data / "secondary_structure" / "CB513_HHblits.csv", "netsurfp",
      limit=24)


def _train(model_dir, initial_checkpoint, proteins, **overrides):
  arguments = dict(
      model_dir=str(model_dir), config=_config(),
      train_proteins=proteins[:16], validation_proteins=proteins[16:],
      max_length=48, batch_size=8, train_steps=STEPS,
      learning_rate=optimizers.constant_schedule(3e-3),
      partition=partitioning.PartitionConfig(num_partitions=2),
      initial_checkpoint=str(initial_checkpoint), checkpoint_period=2,
      log_period=2, eval_period=STEPS, seed=3)
  return finetune_training.train(**{**arguments, **overrides})


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_prott5_model_dir, cb513):
  """MODEL_DIR of a 4-step LoRA run on 8 devices (data 4 x model 2)."""
  assert jax.device_count() == 8  # conftest's host device count
  model_dir = tmp_path_factory.mktemp("lora_run")
  metrics = _train(model_dir, tiny_prott5_model_dir, cb513)
  assert set(metrics) >= {"eval/q3", "eval/q8", "loss", "mfu"}
  return model_dir


def test_frozen_weights_stay_bit_identical(lora_run, tiny_prott5_model_dir):
  _, params = finetune.load_checkpoint(str(lora_run))
  _, _, pretrained = checkpoints.restore_params(str(tiny_prott5_model_dir))
  pretrained = _flat(pretrained)
  trainable = _flat(lora.trainable_mask(params[finetune.ENCODER],
                                        lora.LoraConfig()))
  frozen_seen = 0
  for name, value in _flat(params[finetune.ENCODER]).items():
    if trainable[name]:
      assert not np.array_equal(value, pretrained[name]), name  # trained
    else:
      assert np.array_equal(value, pretrained[name]), name
      frozen_seen += 1
  assert frozen_seen > 0
  # The adapters moved (B starts at zero).
  assert all(np.any(v != 0) for k, v in _flat(params[finetune.LORA]).items()
             if k.endswith(lora.B))


def test_resumed_run_equals_the_uninterrupted_one(lora_run, tmp_path,
                                                  tiny_prott5_model_dir,
                                                  cb513):
  """Stopped after step 2 (its checkpoint is all that is left) and run again
  to step 4: every parameter and optimizer moment bit-identical."""
  resumed = tmp_path / "resumed"
  shutil.copytree(lora_run, resumed)
  shutil.rmtree(resumed / "checkpoints" / str(STEPS))
  (resumed / "run.lock").unlink(missing_ok=True)
  _train(resumed, tiny_prott5_model_dir, cb513, eval_period=None)
  for item in (checkpoints.PARAMS, checkpoints.OPT_STATE):
    read = lambda d: jax.tree_util.tree_leaves(
        ocp.PyTreeCheckpointer().restore(
            d / "checkpoints" / str(STEPS) / item))
    for a, b in zip(read(lora_run), read(resumed), strict=True):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_merged_checkpoint_embeds_as_the_adapter_model(lora_run, tmp_path,
                                                      cb513):
  """prottrans-merge-lora's checkpoint, loaded as any ProtT5 encoder by the
  embedding engine, gives the adapter model's hidden states."""
  config, params = finetune.load_checkpoint(str(lora_run))
  finetune.merge_checkpoint(str(lora_run), str(tmp_path / "merged"))
  loaded = loading.from_checkpoint(str(tmp_path / "merged"))
  assert (loaded.name, loaded.config) == ("t5", T5_TINY)
  records = [fasta.FastaRecord(p.id, p.id, p.sequence[:40], i + 1)
             for i, p in enumerate(cb513[:3])]
  embedder = engine.Embedder(loaded.config, loaded.params,
                             engine.EmbedSettings())
  embedded = dict((r.id, e) for batch in embedder.embed(records)
                  for r, e in batch)
  model = finetune.FinetuneModel(config)
  hidden = jax.jit(model.hidden)
  for record in records:
    tokens = jnp.asarray([model.family.tokenize(record.sequence)])
    expected = hidden(params, tokens)[0, :len(record.sequence)]
    np.testing.assert_allclose(embedded[record.id], expected, atol=1e-5,
                               rtol=1e-5)


HYDROPHOBIC = set("AILMFVWC")


def _regression_tsv(path, rows):
  path.write_text("protein_id\tsequence\ttarget\n" + "".join(
      "\t".join(row) + "\n" for row in rows))
  return path


def test_regression_run_reports_spearman_of_its_predictions(tmp_path):
  """tsv_regression through read_proteins, a per-protein regression head
  (mean-squared-error loss) trained a few steps from scratch, and the
  evaluation's Spearman equal to scipy's on the final model's predictions
  (target: each protein's hydrophobic fraction)."""
  scipy_stats = pytest.importorskip("scipy.stats")
  records = list(fasta.read_fasta(sample_corpus.FASTA_PATH))[:24]
  tsv = _regression_tsv(tmp_path / "targets.tsv", [
      (r.id, r.sequence, f"{np.mean([c in HYDROPHOBIC for c in r.sequence]):.6f}")
      for r in records])
  proteins = finetune_training.read_proteins(str(tsv), "tsv_regression", None,
                                             readers.REGRESSION_TASKS)
  assert [p.id for p in proteins] == [r.id for r in records]
  config = dataclasses.replace(_config(kind="mlp", lora_config=None), head=(
      heads.HeadConfig("mlp", T5_TINY.d_model, regression=True)))
  validation = proteins[16:]
  metrics = finetune_training.train(
      model_dir=str(tmp_path / "run"), config=config,
      train_proteins=proteins[:16], validation_proteins=validation,
      max_length=48, batch_size=8, train_steps=2,
      learning_rate=optimizers.constant_schedule(3e-3),
      checkpoint_period=2, log_period=2, eval_period=2)
  assert np.isfinite(metrics["loss"]) and np.isfinite(metrics["target_mse"])
  rho = metrics["eval/target"]
  assert np.isfinite(rho) and -1.0 <= rho <= 1.0

  _, params = finetune.load_checkpoint(str(tmp_path / "run"))
  model = finetune.FinetuneModel(config)
  arrays = finetune.encode_batch(model.family, validation, config.head.tasks,
                                 48, per_residue=False)
  predictions = np.asarray(jax.jit(model)(params, arrays["tokens"],
                                          arrays["mask"])["target"])
  assert predictions.shape == (len(validation),)
  expected = scipy_stats.spearmanr(predictions, arrays["target"]).statistic
  np.testing.assert_allclose(rho, expected, atol=1e-6)

  # The metric itself, with ties on both sides, against scipy's.
  rng = np.random.default_rng(0)
  a, b = rng.integers(0, 4, size=(2, 30)).astype(np.float64)
  np.testing.assert_allclose(metrics_lib.spearman(a, b),
                             scipy_stats.spearmanr(a, b).statistic, atol=1e-12)


@pytest.mark.parametrize("rows,line,message", [
    ([("P1", "MKV", "0.5"), ("P2", "MKL", "high")], 3, "not a finite number"),
    ([("P1", "MKV", "inf")], 2, "not a finite number"),
    ([("P1", "MKV", "nan")], 2, "not a finite number"),
    ([("P1", "MKV", "0.5"), ("P1", "MKL", "0.2")], 3, "duplicate protein_id"),
    ([("P1", "MKV")], 2, "tab-separated fields"),
    ([("P1", "MKV", "")], 2, "tab-separated fields"),
])
def test_bad_regression_rows_name_the_file_and_line(tmp_path, rows, line,
                                                    message):
  tsv = _regression_tsv(tmp_path / "bad.tsv", rows)
  with pytest.raises(readers.LabelError, match=f"{re.escape(str(tsv))}:{line}: .*{message}"):
    readers.read_labels(tsv, "tsv_regression")


def test_regression_tsv_header_is_checked(tmp_path):
  tsv = tmp_path / "bad.tsv"
  tsv.write_text("id\tsequence\tvalue\nP1\tMKV\t0.5\n")
  with pytest.raises(readers.LabelError, match=f"{re.escape(str(tsv))}:1: header"):
    readers.read_labels(tsv, "tsv_regression")
