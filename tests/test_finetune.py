"""Fine-tuning with LoRA (issue 19): what is trained, what stays frozen,
exact resume on a 2-way model-parallel mesh, and the merged checkpoint.

One LoRA run (tiny ProtT5 encoder from the conftest's params-only
checkpoint, CB513 proteins, 8 CPU devices as data 4 x model 2) is shared by
the tests of this module. The CB513 -> TS115 comparison of LoRA, full
fine-tuning and the frozen-embedding CNN, on a committed pre-trained
fixture, is tests/test_finetune_q3.py.
"""

import csv
import dataclasses
import json
import logging
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from prottrans_jax import checkpoints
from prottrans_jax import partitioning
from prottrans_jax.convert import formats
from prottrans_jax.data import fasta
from prottrans_jax.data import sample_corpus
from prottrans_jax.downstream import checkpoints as head_checkpoints
from prottrans_jax.downstream import features as features_lib
from prottrans_jax.downstream import finetune
from prottrans_jax.downstream import metrics as metrics_lib
from prottrans_jax.downstream import models as heads
from prottrans_jax.downstream import pipeline
from prottrans_jax.downstream import predict
from prottrans_jax.downstream import readers
from prottrans_jax.downstream import trainer
from prottrans_jax.inference import loading
from prottrans_jax.inference import run
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
  """MODEL_DIR of a 4-step LoRA run on 8 devices (data 4 x model 2), every
  step saved."""
  assert jax.device_count() == 8  # conftest's host device count
  model_dir = tmp_path_factory.mktemp("lora_run")
  metrics = _train(model_dir, tiny_prott5_model_dir, cb513,
                   checkpoint_period=1)
  assert set(metrics) >= {"eval/q3", "eval/q8", "loss", "mfu"}
  return model_dir


@pytest.fixture(scope="module")
def lora_trained(lora_run):
  """(config, params) of the shared LoRA run's latest step."""
  return finetune.load_checkpoint(str(lora_run))


def test_frozen_weights_stay_bit_identical(lora_trained,
                                           tiny_prott5_model_dir):
  _, params = lora_trained
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


def _step_trees(model_dir, step):
  return {item: jax.tree_util.tree_leaves(ocp.PyTreeCheckpointer().restore(
      model_dir / "checkpoints" / str(step) / item))
          for item in (checkpoints.PARAMS, checkpoints.OPT_STATE)}


class _SigtermAfter(logging.Handler):
  """Sends this process SIGTERM once, when the log line `line` appears:
  a preemption at a known step, in-process (the loop's handler only sets a
  flag; the run saves at the end of the next step and returns)."""

  def __init__(self, line):
    super().__init__()
    self.line, self.sent = line, False

  def emit(self, record):
    if not self.sent and record.getMessage().startswith(self.line):
      self.sent = True
      os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_saves_and_the_restart_equals_the_uninterrupted_run(
    lora_run, tmp_path, tiny_prott5_model_dir, cb513, caplog):
  """The run stopped after step 2 (steps 3 and 4 removed) and started
  again; SIGTERM arrives while it restores: it trains step 3, saves it
  although no checkpoint is due (period 2) and returns before step 4.
  Step 3 equals the uninterrupted run's: every parameter and optimizer
  moment bit-identical."""
  run_dir = tmp_path / "preempted"
  shutil.copytree(lora_run, run_dir)
  for step in (3, STEPS):
    shutil.rmtree(run_dir / "checkpoints" / str(step))
  absl_logger = logging.getLogger("absl")
  sigterm = _SigtermAfter("restored fine-tuning step 2 ")
  absl_logger.addHandler(sigterm)
  try:
    with caplog.at_level("INFO"):
      _train(run_dir, tiny_prott5_model_dir, cb513, eval_period=None)
  finally:
    absl_logger.removeHandler(sigterm)
  assert sigterm.sent
  assert "preempted: saved fine-tuning step 3" in caplog.text
  assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
      "1", "2", "3"]
  assert not (run_dir / "run.lock").exists()
  expected, resumed = _step_trees(lora_run, 3), _step_trees(run_dir, 3)
  for item, leaves in expected.items():
    for a, b in zip(leaves, resumed[item], strict=True):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_damaged_latest_step_is_moved_aside(lora_run, tmp_path,
                                            tiny_prott5_model_dir, cb513,
                                            caplog):
  """Bytes of step 4 overwritten: its checksum fails, the run warns naming
  it, moves it to 4.damaged and restores step 3 (train_steps 3: nothing
  left to train, so nothing compiles); the merge refuses it."""
  run_dir = tmp_path / "damaged"
  shutil.copytree(lora_run, run_dir)
  step_4 = run_dir / "checkpoints" / str(STEPS)
  target = max((p for p in (step_4 / "params").rglob("*") if p.is_file()),
               key=lambda p: p.stat().st_size)
  with open(target, "r+b") as f:
    f.seek(target.stat().st_size // 2)
    f.write(np.random.default_rng(0).bytes(2048))
  with pytest.raises(checkpoints.DamagedCheckpointError,
                     match=f"step {STEPS} is damaged"):
    finetune.merge_checkpoint(str(step_4), str(tmp_path / "merged"))
  with caplog.at_level("INFO"):
    _train(run_dir, tiny_prott5_model_dir, cb513, train_steps=3,
           eval_period=None)
  assert f"checkpoint step {STEPS} is damaged" in caplog.text
  assert f"moved damaged checkpoint step {STEPS} aside" in caplog.text
  assert "restored fine-tuning step 3" in caplog.text
  assert (run_dir / "checkpoints" / f"{STEPS}.damaged").is_dir()
  assert not step_4.exists()


def test_microbatches_give_the_whole_batch_update(cb513):
  """num_microbatches=2 and 1: the same loss, metrics and update (SGD at
  learning rate 1, so the update is the gradient), < 1e-6; dropout off."""
  encoder = dataclasses.replace(T5_TINY, dropout_rate=0.0,
                                num_encoder_layers=1)
  config = finetune.FinetuneConfig(
      "t5", encoder, heads.HeadConfig("ss_cnn", encoder.d_model, dropout=0.0))
  model = finetune.FinetuneModel(config)
  tx = optax.inject_hyperparams(optax.sgd)(learning_rate=0.0)
  mesh = partitioning.PartitionConfig(mesh_shape=(1, 1)).mesh()
  rules = partitioning.logical_axis_rules()
  with partitioning.activate(mesh, rules):
    layout = finetune_training.plan(model, tx, mesh, rules)
    params = jax.jit(lambda k: finetune_training._unbox(model.init(k)))(  # pylint: disable=protected-access
        jax.random.key(0))
    arrays = finetune.encode_batch(model.family, cb513[:8], config.head.tasks,
                                   48, per_residue=True)
    batch = finetune_training._put(arrays, mesh, rules)  # pylint: disable=protected-access
    results = []
    for num_microbatches in (1, 2):
      step = finetune_training.make_step(
          model, layout, tx, optimizers.constant_schedule(1.0), 0, mesh,
          num_microbatches=num_microbatches)
      state = finetune_training.TrainState(
          step=jnp.int32(0), params=jax.tree_util.tree_map(jnp.copy, params),
          opt_state=tx.init(lora.split(params, layout.mask)[0]))
      results.append(jax.device_get(step(state, batch)))
  (one, one_metrics), (two, two_metrics) = results
  assert one_metrics.keys() == two_metrics.keys()
  for name in one_metrics:
    np.testing.assert_allclose(two_metrics[name], one_metrics[name],
                               atol=1e-6, rtol=1e-6, err_msg=name)
  moved = 0
  for a, b, before in zip(jax.tree_util.tree_leaves(one.params),
                          jax.tree_util.tree_leaves(two.params),
                          jax.tree_util.tree_leaves(params), strict=True):
    np.testing.assert_allclose(b, a, atol=1e-6, rtol=0)
    moved += int(np.any(np.asarray(a) != np.asarray(before)))
  assert moved > 0


@pytest.fixture(scope="module")
def merged_run(lora_run, tmp_path_factory):
  """OUTPUT_DIR of prottrans-merge-lora on the shared LoRA run."""
  output = tmp_path_factory.mktemp("merged") / "ss_merged"
  merged = finetune.merge_checkpoint(str(lora_run), str(output))
  assert merged.head == str(output / finetune.HEAD_SUBDIR)
  return output


@pytest.fixture(scope="module")
def merged_embeddings(merged_run, cb513, tmp_path_factory):
  """(proteins, FASTA, HDF5): prottrans-embed's library call on the merged
  checkpoint (per residue, float32 on disk: its defaults) for 3 proteins."""
  proteins = [readers.LabeledProtein(p.id, p.sequence[:40], {})
              for p in cb513[:3]]
  directory = tmp_path_factory.mktemp("merged_embeddings")
  fasta_path, h5_path = directory / "new.fasta", directory / "new.h5"
  fasta_path.write_text("".join(f">{p.id}\n{p.sequence}\n" for p in proteins))
  loaded = loading.from_checkpoint(str(merged_run))
  assert (loaded.name, loaded.config) == ("t5", T5_TINY)
  run.embed_fasta(str(fasta_path), str(h5_path), loaded, progress=False)
  return proteins, str(fasta_path), str(h5_path)


def test_merged_checkpoint_embeds_as_the_adapter_model(
    lora_trained, merged_run, merged_embeddings, tmp_path):
  """prottrans-merge-lora's checkpoint, loaded as any ProtT5 encoder by the
  embedding engine and converted to Hugging Face, gives the adapter
  model's hidden states."""
  config, params = lora_trained
  proteins, _, h5_path = merged_embeddings
  embedded = features_lib.load_features(proteins, h5_path, per_protein=False)
  model = finetune.FinetuneModel(config)
  hidden = jax.jit(model.hidden)
  # The same checkpoint through the Hugging Face converter: transformers'
  # T5EncoderModel computes the adapter model's hidden states.
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  formats.convert_checkpoint("native", "hf", merged_run, tmp_path / "hf",
                             progress=False)
  hf_encoder = transformers.T5EncoderModel.from_pretrained(
      tmp_path / "hf").eval()
  for protein, embedding in zip(proteins, embedded):
    tokens = jnp.asarray([model.family.tokenize(protein.sequence)])
    expected = hidden(params, tokens)[0, :len(protein.sequence)]
    np.testing.assert_allclose(embedding, expected, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
      hf_hidden = hf_encoder(torch.tensor(np.asarray(tokens))
                             ).last_hidden_state[0].numpy()
    np.testing.assert_allclose(hf_hidden, hidden(params, tokens)[0],
                               atol=1e-5, rtol=1e-5)


def _own_probabilities(config, params, proteins):
  """{task: probabilities} per protein of the fine-tuned network itself, on
  one padded batch as in training: (L, classes) on the residue rows, or
  (classes,)."""
  model = finetune.FinetuneModel(config)
  batch = finetune.encode_batch(model.family, proteins, (), 48,
                                config.head.per_residue_output)
  logits = jax.jit(model.__call__)(params, jnp.asarray(batch["tokens"]),
                                   jnp.asarray(batch["mask"]))
  probs = {t: np.asarray(jax.nn.softmax(v, axis=-1)) for t, v in logits.items()}
  rows = batch["mask"].astype(bool)
  return [{t: p[i][rows[i]] if p.ndim == 3 else p[i] for t, p in probs.items()}
          for i in range(len(proteins))]


def test_merged_head_predicts_as_the_fine_tuned_model(
    lora_run, lora_trained, merged_run, merged_embeddings, tmp_path):
  """The two-command route of a merged run: prottrans-embed on the merged
  checkpoint (float32 on disk, its default), then prottrans-predict with
  OUTPUT_DIR/head, gives the fine-tuned model's own probabilities, for the
  run's per-residue CNN and, on the same embeddings, per-protein heads
  (mean-pooled MLP, light attention) written as merge writes them (fresh
  head parameters: the route, not the training, is under test)."""
  config, params = lora_trained
  proteins, fasta_path, h5_path = merged_embeddings
  width = finetune.encoder_width(config.encoder)
  head_dirs = {"ss_cnn": str(merged_run / finetune.HEAD_SUBDIR)}
  configs = {"ss_cnn": (config, params)}
  rng = np.random.default_rng(5)
  for kind in ("mlp", "light_attention"):
    head = heads.HeadConfig(kind, width)
    # Random values of the head's shapes (op-by-op init took seconds).
    shapes = jax.eval_shape(lambda h=head: heads.init_params(h))
    configs[kind] = (dataclasses.replace(config, head=head), {
        **params, finetune.HEAD: jax.tree_util.tree_map(
            lambda x: rng.normal(0, 0.3, x.shape).astype(np.float32), shapes)})
    head_dirs[kind] = finetune.write_head(
        str(tmp_path / kind), configs[kind][0], configs[kind][1][finetune.HEAD],
        0, str(lora_run))
  own = {kind: _own_probabilities(*configs[kind], proteins)
         for kind in configs}
  for kind, head_dir in head_dirs.items():
    head = pipeline.load_trained_head(head_dir)
    assert head.info["features"] == "embeddings"
    assert head.info["tasks"] == list(configs[kind][0].head.tasks)
    # predict_fasta's features and head, probabilities in full.
    features = features_lib.load_features(
        proteins, h5_path, per_protein=not head.config.per_residue_input)
    predicted = trainer.predict(head.config, head.params, features)
    for probs, expected in zip(predicted, own[kind]):
      assert set(probs) == set(expected)
      for task in expected:
        np.testing.assert_allclose(probs[task], expected[task], atol=1e-5,
                                   rtol=1e-5, err_msg=f"{kind} {task}")
  # What prottrans-predict writes for the three heads at once.
  prefix = tmp_path / "out" / "new"
  predict.write_predictions(predict.predict_fasta(
      fasta_path, h5_path, list(head_dirs.values())), str(prefix))
  rows = json.loads((tmp_path / "out" / "new.json").read_text())
  with open(tmp_path / "out" / "new.tsv", encoding="utf-8") as handle:
    tsv_rows = list(csv.DictReader(handle, delimiter="\t"))
  assert [r["id"] for r in rows] == [r["id"] for r in tsv_rows] == [
      p.id for p in proteins]
  for i, (row, tsv_row) in enumerate(zip(rows, tsv_rows)):
    residues = own["ss_cnn"][i]
    for task in ("q3", "q8"):
      classes = readers.TASK_CLASSES[task]
      assert row[task] == tsv_row[task] == "".join(
          classes[j] for j in residues[task].argmax(-1))
      assert row[f"{task}_probability"] == pytest.approx(
          residues[task].max(-1).mean(), abs=1e-5)
    # The last per-protein head given (light attention) fills the columns.
    protein = own["light_attention"][i]
    for task in ("localization", "membrane"):
      best = int(protein[task].argmax())
      assert row[task] == tsv_row[task] == readers.TASK_CLASSES[task][best]
      assert row[f"{task}_probability"] == pytest.approx(protein[task][best],
                                                         abs=1e-5)


def test_merge_command_on_one_device_prints_the_route(lora_run, merged_run,
                                                      tmp_path):
  """prottrans-merge-lora in a process of one CPU device merges the run
  saved on 8 (data 4 x model 2) into what the library call wrote, and
  prints the two commands that give the fine-tuned model's predictions."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)  # The session's 8 host devices play no part.
  output = tmp_path / "merged"
  result = subprocess.run(
      [sys.executable, "scripts/merge_lora.py", f"--checkpoint_dir={lora_run}",
       f"--output_dir={output}"], cwd=pathlib.Path(__file__).parents[1],
      env=env, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  head = output / finetune.HEAD_SUBDIR
  assert (f"prottrans-embed --checkpoint_dir {output} --input proteins.fasta "
          "--output proteins.h5") in result.stdout
  assert (f"prottrans-predict --fasta proteins.fasta --embeddings proteins.h5 "
          f"--heads {head} ") in result.stdout
  _, _, encoder = checkpoints.restore_params(str(output))
  _, _, expected = checkpoints.restore_params(str(merged_run))
  jax.tree_util.tree_map(np.testing.assert_array_equal, encoder, expected)
  _, head_params, _ = head_checkpoints.load_head(str(head))
  _, expected, _ = head_checkpoints.load_head(
      str(merged_run / finetune.HEAD_SUBDIR))
  jax.tree_util.tree_map(np.testing.assert_array_equal, head_params, expected)


def test_merge_names_the_regression_head_it_does_not_write(tmp_path, caplog):
  """prottrans-predict predicts classes: a regression run's head is left out
  of the merge, with a warning naming the run, not silently."""
  config = dataclasses.replace(_config(kind="mlp", lora_config=None), head=(
      heads.HeadConfig("mlp", T5_TINY.d_model, regression=True)))
  with caplog.at_level(logging.WARNING):
    assert finetune.write_head(str(tmp_path), config, {}, 0,
                               "runs/stability/checkpoints/40") is None
  assert ("runs/stability/checkpoints/40: the regression head is not "
          "written") in caplog.text
  assert not (tmp_path / finetune.HEAD_SUBDIR).exists()


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


# --- bad input of prottrans-finetune and prottrans-merge-lora ---------------


def test_missing_or_empty_labelled_file_names_the_setting(tmp_path):
  missing = tmp_path / "missing.csv"
  with pytest.raises(FileNotFoundError,
                     match=f"TRAIN_FILE {re.escape(str(missing))}: no such"):
    finetune_training.read_proteins(str(missing), "netsurfp", None, ("q3",))
  empty = tmp_path / "empty.csv"
  empty.write_text("")
  with pytest.raises(readers.LabelError,
                     match=f"{re.escape(str(empty))}:1: not a NetSurfP"):
    finetune_training.read_proteins(str(empty), "netsurfp", None, ("q3",))
  header_only = tmp_path / "header.csv"
  header_only.write_text("input,dssp3,dssp8,disorder,cb513_mask\n")
  with pytest.raises(ValueError, match=re.escape(
      f"VALIDATION_FILE {header_only} (netsurfp) has no protein labelled")):
    finetune_training.read_proteins(str(header_only), "netsurfp", None,
                                    ("q3",), "VALIDATION_FILE")


def test_labels_of_another_length_than_the_sequence_name_the_line(tmp_path):
  path = tmp_path / "bad.csv"
  path.write_text("input,dssp3,dssp8,disorder,cb513_mask\n"
                  "M K V,C H,C H E,1 1 1,1 1 1\n")
  with pytest.raises(readers.LabelError,
                     match=f"{re.escape(str(path))}:2: .*dssp3 has 2 entries "
                     "but the sequence has 3 residues"):
    finetune_training.read_proteins(str(path), "netsurfp", None, ("q3",))


def test_merge_refuses_what_it_cannot_merge(lora_run, tmp_path,
                                            tiny_prott5_model_dir):
  empty = tmp_path / "empty_run"
  empty.mkdir()
  with pytest.raises(FileNotFoundError, match=f"no checkpoint at {empty}"):
    finetune.merge_checkpoint(str(empty), str(tmp_path / "out"))
  # A pre-trained checkpoint has no head or adapters to merge.
  with pytest.raises(ValueError, match="holds a 't5' model, not a "
                     "fine-tuning"):
    finetune.merge_checkpoint(str(tiny_prott5_model_dir), str(tmp_path / "out"))
  assert not (tmp_path / "out").exists()


def test_merge_refuses_an_output_dir_with_checkpoints(lora_run, tmp_path):
  output = tmp_path / "merged"
  first = finetune.merge_checkpoint(str(lora_run), str(output)).checkpoint
  before = sorted(p.name for p in first.iterdir())
  with pytest.raises(FileExistsError,
                     match=f"--output_dir {output} already holds checkpoints.*"
                     "--overwrite"):
    finetune.merge_checkpoint(str(lora_run), str(output))
  assert sorted(p.name for p in first.iterdir()) == before
  again = finetune.merge_checkpoint(str(lora_run), str(output),
                                    overwrite=True).checkpoint
  assert checkpoints.verify_params(again) == again

