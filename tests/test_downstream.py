"""Downstream predictors: readers on the real sets, paper-sized heads, metrics
against hand-computed values, training that beats the majority class on
held-out proteins, predictions, maps and the scripts."""

import dataclasses
import json
import os
import subprocess
import sys

import flax.linen as nn
import h5py
import jax
import jax.numpy as jnp
import matplotlib.image
import numpy as np
import pytest

from prottrans_jax.data import sample_corpus
from prottrans_jax.downstream import features
from prottrans_jax.downstream import maps
from prottrans_jax.downstream import metrics
from prottrans_jax.downstream import models
from prottrans_jax.downstream import pipeline
from prottrans_jax.downstream import predict
from prottrans_jax.downstream import readers
from prottrans_jax.downstream import trainer
from prottrans_jax.inference import engine
from prottrans_jax.inference import loading
from prottrans_jax.inference import run
from prottrans_jax.models import t5

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CB513 = "secondary_structure/CB513_HHblits.csv"
TS115 = "secondary_structure/TS115_HHblits.csv"
DEEPLOC_TEST = "localization/deeploc_test_set.fasta"
DEEPLOC_VAL = "localization/deeploc_our_val_set.fasta"
FAST = trainer.TrainConfig(max_epochs=20, patience=4, batch_size=8)


def _write(path, text):
  path.write_text(text)
  return str(path)


# --- readers ---------------------------------------------------------------


def test_readers_parse_every_record_of_the_real_sets(shared_data):
  cb513 = readers.read_netsurfp(shared_data / CB513)
  ts115 = readers.read_netsurfp(shared_data / TS115)
  assert (len(cb513), len(ts115)) == (511, 115)
  for protein in cb513 + ts115:
    for task in readers.RESIDUE_TASKS:
      assert protein.labels[task].shape == (len(protein.sequence),)
  # Resolved (disorder 1.0) and inside CB513's mask, counted from the file.
  assert sum(int(np.sum(p.labels["q3"] >= 0)) for p in cb513) == 83427
  assert sum(int(np.sum(p.labels["q8"] >= 0)) for p in ts115) == 27501
  assert cb513[0].id == "CB513_0001" and cb513[0].sequence.startswith("RTDCYG")

  test = readers.read_deeploc(shared_data / DEEPLOC_TEST)
  val = readers.read_deeploc(shared_data / DEEPLOC_VAL)
  assert (len(test), len(val)) == (2768, 1678)
  assert {int(p.labels["localization"]) for p in test} == set(range(10))
  membrane = [int(p.labels["membrane"]) for p in test]
  # M, S and U (unknown: no label) as in the headers.
  assert (membrane.count(0), membrane.count(1), membrane.count(-1)) == (
      743, 1003, 1022)
  assert not {p.id for p in test} & {p.id for p in val}

  sample = readers.read_labels(sample_corpus.ANNOTATIONS_PATH, "sample")
  assert len(sample) == 100
  assert sum(readers.has_labels(p, ["q3"]) for p in sample) == 29
  assert not any(readers.has_labels(p, ["q8"]) for p in sample)


def test_dual_location_is_labelled_skipped_or_refused(shared_data):
  path = shared_data / DEEPLOC_VAL
  assert len(readers.read_deeploc(path, dual_location="skip")) == 1678 - 23
  with pytest.raises(readers.LabelError, match="Cytoplasm-Nucleus"):
    readers.read_deeploc(path, dual_location="error")


def test_label_length_mismatch_names_the_record(tmp_path):
  path = _write(tmp_path / "bad.csv",
                "input, dssp3, dssp8, disorder, test_mask\n"
                "A C D,H H E,H H E,1.0 1.0 1.0,1.0 1.0 1.0\n"
                "A C D,H H,H H E,1.0 1.0 1.0,1.0 1.0 1.0\n")
  with pytest.raises(readers.LabelError,
                     match=r"bad.csv:3: 'bad_0002'.*dssp3 has 2 entries.*3"):
    readers.read_netsurfp(path)


@pytest.mark.parametrize("label_format", readers.REGRESSION_FORMATS)
def test_heads_on_embeddings_refuse_regression_targets(tmp_path, label_format):
  # These heads classify: a regression file would otherwise fail later as
  # "no protein has a label" (its tasks are not the head's), hiding why.
  with pytest.raises(ValueError, match=rf"{label_format}.*prottrans-finetune"):
    pipeline.train_from_files("mlp", str(tmp_path / "never_read.tsv"),
                              label_format, features.ONEHOT,
                              str(tmp_path / "head"))
  assert not (tmp_path / "head").exists()


def test_unknown_classes_are_errors(tmp_path):
  csv_path = _write(tmp_path / "x.csv",
                    "input, dssp3, dssp8, disorder, test_mask\n"
                    "A C,H E,H X,1.0 1.0,1.0 1.0\n")
  with pytest.raises(readers.LabelError, match=r"unknown q8 class.*'X'"):
    readers.read_netsurfp(csv_path)
  fasta_path = _write(tmp_path / "loc.fasta",
                      ">P1 Nucleus-S test\nMKV\n>P2 Moon-S test\nMKV\n")
  with pytest.raises(readers.LabelError,
                     match=r"loc.fasta:3.*'P2'.*unknown localization.*Moon"):
    readers.read_deeploc(fasta_path)


def test_sample_format_unknown_location_is_an_error_unmapped_is_logged(
    tmp_path, caplog):
  fasta_path = _write(tmp_path / "s.fasta", ">P1\nMKV\n>P2\nMKVL\n>P3\nMK\n")
  header = "id\tentry_name\tlength\tlocation\tmembrane\tsecondary_structure\n"
  rows = ["P1\tA_B\t3\tNucleus\tS\tHHE", "P2\tC_D\t4\tMembrane\tM\t",
          "P3\tE_F\t2\tMoon\tS\t"]
  bad = _write(tmp_path / "bad.tsv", header + "\n".join(rows) + "\n")
  with pytest.raises(readers.LabelError,
                     match=r"bad.tsv:4: 'P3': unknown location 'Moon'"):
    readers.read_swissprot_sample(bad, fasta_path=fasta_path)
  good = _write(tmp_path / "good.tsv", header + "\n".join(rows[:2]) + "\n")
  with caplog.at_level("INFO"):
    proteins = readers.read_swissprot_sample(good, fasta_path=fasta_path)
  assert [int(p.labels["localization"]) for p in proteins] == [
      readers.LOCALIZATION_CLASSES.index("Nucleus"), readers.IGNORE]
  assert "1 proteins whose location is one of ['Membrane'] have no " \
      "localization label" in caplog.text
  # A head says how many proteins it leaves out for lack of its labels.
  with caplog.at_level("INFO"):
    inputs, _ = pipeline.labelled_examples(proteins, "ss_cnn",
                                           features.ONEHOT)
  assert len(inputs) == 1
  assert "ss_cnn head: 1 of 2 proteins have a label for ['q3', 'q8']; " \
      "the other 1 are left out" in caplog.text


def test_id_missing_from_embeddings_is_an_error(tmp_path):
  path = str(tmp_path / "e.h5")
  with h5py.File(path, "w") as f:
    f["P1"] = np.zeros((3, 4), np.float32)
  labels = {"q3": np.zeros(3, np.int32)}
  present = readers.LabeledProtein("P1", "MKV", labels)
  with pytest.raises(readers.LabelError, match=r"'P2' is missing from"):
    features.load_features(
        [present, readers.LabeledProtein("P2", "MKV", labels)], path, False)
  with pytest.raises(readers.LabelError, match=r"3 embedding rows.*4 resid"):
    features.load_features([readers.LabeledProtein("P1", "MKVL", labels)],
                           path, False)
  np.testing.assert_array_equal(
      features.load_features([present], path, per_protein=True)[0],
      np.zeros(4))
  with pytest.raises(FileNotFoundError, match="embeddings file not found"):
    features.load_features([present], str(tmp_path / "none.h5"), False)


# --- models and metrics ----------------------------------------------------


def test_parameter_counts_match_the_paper_for_1024_d_input():
  # Shapes only (eval_shape): light attention alone has 19M parameters.
  count = lambda kind: models.count_params(jax.eval_shape(
      lambda: models.init_params(models.HeadConfig(kind, 1024))))
  # ProtTrans Methods: 1024*32*7+32 + 32*3*7+3 + 32*8*7+8.
  assert count("ss_cnn") == 229_408 + 675 + 1_800 == 231_883
  # 1024*32+32 + 32*10+10 + 32*2+2.
  assert count("mlp") == 32_800 + 330 + 66 == 33_196
  # Light attention: two 9-wide 1024->1024 convolutions, then 2048->32.
  assert count("light_attention") == 2 * (9 * 1024 * 1024 + 1024) + (
      2048 * 32 + 32) + 330 + 66


def test_metrics_equal_hand_computed_values():
  ignore = readers.IGNORE
  predictions = [np.array([0, 1, 2, 2]), np.array([1, 1]), np.array([0])]
  labels = [np.array([0, 1, 1, ignore]), np.array([1, 0]),
            np.array([ignore])]
  correct, total = metrics.correct_counts(predictions, labels)
  np.testing.assert_array_equal(correct, [2, 1, 0])
  np.testing.assert_array_equal(total, [3, 2, 0])
  score = metrics.bootstrap_score(correct, total)
  assert score.value == pytest.approx(3 / 5)  # Pooled over residues.
  assert (score.proteins, score.items) == (2, 5)
  assert score.ci_low <= score.value <= score.ci_high

  # 150 of 200 proteins right: binomial SE sqrt(.75 * .25 / 200) = 0.0306.
  per_protein = metrics.bootstrap_score(np.repeat([1, 0], [150, 50]),
                                        np.ones(200, int), replicates=4000)
  assert per_protein.value == 0.75
  assert per_protein.stderr == pytest.approx(0.0306, rel=0.1)
  assert per_protein.ci_low == pytest.approx(0.75 - 1.96 * 0.0306, abs=0.01)
  assert metrics.format_score(per_protein).startswith("75.0 ±3.")

  everything_right = metrics.bootstrap_score(np.array([4, 2]),
                                             np.array([4, 2]))
  assert (everything_right.value, everything_right.stderr) == (1.0, 0.0)

  train = [{"q3": np.array([2, 2, 0])}, {"q3": np.array([2, ignore])}]
  test = [{"q3": np.array([2, 0, 1, 2])}]
  assert metrics.majority_class(train, "q3") == 2
  assert metrics.majority_score(train, test, "q3").value == 0.5


# --- training on embeddings of a tiny model --------------------------------


@pytest.fixture(scope="module")
def ss_embeddings(shared_data, tmp_path_factory):
  """Per-residue embeddings of 60 CB513 (train) and 30 TS115 (held-out)
  proteins from a random tiny ProtT5."""
  config = dataclasses.replace(t5.T5_CONFIGS["tiny"], dtype="float32")
  params = nn.unbox(t5.T5(config).init(
      jax.random.key(0), jnp.ones((1, 8), jnp.int32),
      method=t5.T5.encode))["params"]
  # Proteins up to 250 residues: fewer padded shapes to compile.
  short = lambda proteins, n: [p for p in proteins
                               if len(p.sequence) <= 250][:n]
  train = short(readers.read_netsurfp(shared_data / CB513), 60)
  test = short(readers.read_netsurfp(shared_data / TS115), 30)
  directory = tmp_path_factory.mktemp("ss")
  fasta_path = str(directory / "ss.fasta")
  readers.write_fasta(train + test, fasta_path)
  h5_path = str(directory / "ss.h5")
  run.embed_fasta(fasta_path, h5_path, loading.LoadedModel(
      "t5", config, params, "random"), engine.EmbedSettings(
          max_tokens=8192), progress=False)
  return train, test, fasta_path, h5_path


def test_ss_head_beats_the_majority_class_on_held_out_proteins(
    ss_embeddings, tmp_path):
  train, test, _, h5_path = ss_embeddings
  head_dir = str(tmp_path / "ss_head")
  head = pipeline.train_head("ss_cnn", train, h5_path, FAST,
                             output_dir=head_dir)
  scores = pipeline.evaluate_head(head, test, h5_path)
  train_labels = [p.labels for p in train]
  test_labels = [p.labels for p in test]
  # Margins well above the scores' standard errors (~0.02) on 8,399
  # held-out residues; a random encoder still carries residue identity.
  for task, margin in (("q3", 0.15), ("q8", 0.05)):
    majority = metrics.majority_score(train_labels, test_labels, task)
    assert scores[task].value > majority.value + margin, (task, scores,
                                                          majority)
  # Early stopping kept the best validation epoch, and the checkpoint
  # restores to the same head.
  val_losses = [h[1] for h in head.info["history"]]
  assert head.info["best_epoch"] == int(np.argmin(val_losses)) + 1
  restored = pipeline.load_trained_head(head_dir)
  assert restored.config == head.config
  assert restored.info["tasks"] == ["q3", "q8"]
  assert pipeline.evaluate_head(restored, test, h5_path) == scores
  # Training again into the same directory replaces the head.
  again = pipeline.train_head("ss_cnn", train, h5_path,
                              dataclasses.replace(FAST, max_epochs=1),
                              output_dir=head_dir)
  assert pipeline.load_trained_head(head_dir).info == again.info


def test_predict_writes_structure_strings_and_localization(
    ss_embeddings, shared_data, tmp_path):
  train, _, fasta_path, h5_path = ss_embeddings
  ss_dir, loc_dir = str(tmp_path / "ss"), str(tmp_path / "loc")
  pipeline.train_head("ss_cnn", train, h5_path,
                      dataclasses.replace(FAST, max_epochs=2),
                      output_dir=ss_dir)
  pipeline.train_head("mlp", readers.read_deeploc(
      shared_data / DEEPLOC_VAL, limit=60), features.ONEHOT,
                      dataclasses.replace(FAST, max_epochs=2),
                      output_dir=loc_dir)
  predictions = predict.predict_fasta(fasta_path, h5_path, [ss_dir, loc_dir])
  assert len(predictions) == 90
  for p in predictions:
    assert len(p.q3) == len(p.q8) == p.length
    assert set(p.q3) <= set("HEC") and set(p.q8) <= set("HGIEBTSC")
    assert p.localization in readers.LOCALIZATION_CLASSES
    assert sum(p.localization_probabilities.values()) == pytest.approx(
        1, abs=1e-3)
    assert p.localization_probabilities[p.localization] == pytest.approx(
        p.localization_probability, abs=1e-4)
  tsv, json_path = predict.write_predictions(predictions,
                                             str(tmp_path / "out" / "pred"))
  rows = open(tsv).read().splitlines()
  assert len(rows) == 91 and rows[0].split("\t")[:3] == ["id", "length", "q3"]
  assert json.load(open(json_path))[0]["id"] == "CB513_0001"
  with pytest.raises(ValueError, match="trained on embeddings"):
    predict.predict_fasta(fasta_path, None, [ss_dir])
  # Embeddings of another model (another width): both widths and the head
  # named, not a Flax shape error.
  wide = str(tmp_path / "wide.h5")
  with h5py.File(h5_path) as source, h5py.File(wide, "w") as f:
    for name in source:
      f[name] = np.zeros((source[name].shape[0], 48), np.float32)
  width = pipeline.load_trained_head(ss_dir).config.input_dim
  assert width != 48
  with pytest.raises(ValueError, match=rf"head {ss_dir} takes features of "
                     rf"width {width}, but {wide} holds width 48"):
    predict.predict_fasta(fasta_path, wide, [ss_dir])


def test_light_attention_trains_on_per_residue_input(shared_data):
  proteins = [p for p in readers.read_deeploc(shared_data / DEEPLOC_VAL,
                                              limit=60)
              if len(p.sequence) <= 500][:16]
  head = pipeline.train_head("light_attention", proteins, features.ONEHOT,
                             dataclasses.replace(FAST, max_epochs=2))
  assert head.config.per_residue_input and len(head.info["history"]) == 2
  assert head.config.input_dim == features.ONEHOT_DIM
  scores = pipeline.evaluate_head(head, proteins, features.ONEHOT)
  assert set(scores) == {"localization", "membrane"}
  assert scores["localization"].proteins == 16


# --- maps and scripts ------------------------------------------------------


def test_map_png_has_one_point_per_protein(shared_data, tmp_path):
  proteins = readers.read_deeploc(shared_data / DEEPLOC_TEST, limit=40)
  png = str(tmp_path / "map.png")
  coords = maps.embedding_map(proteins, features.ONEHOT, "localization", png)
  assert coords.shape == (40, 2) and np.all(np.isfinite(coords))
  image = matplotlib.image.imread(png)
  assert image.ndim == 3 and image.shape[0] > 100
  rows = open(str(tmp_path / "map.tsv")).read().splitlines()
  assert len(rows) == 41 and rows[1].split("\t")[0] == proteins[0].id
  names = maps.label_names(proteins, "localization")
  assert maps.plot(coords, names, str(tmp_path / "again.png"), "t") == 40
  if "umap" not in maps.available_methods():
    with pytest.raises(ValueError, match="umap-learn"):
      maps.project(coords, "umap")


def test_scripts_train_predict_and_map_the_bundled_sample(tmp_path):
  sample = sample_corpus.ANNOTATIONS_PATH
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", JAX_PLATFORMS="cpu")
  run_script = lambda *args: subprocess.run(
      [sys.executable, *args, "--stderrthreshold=error"], cwd=REPO, env=env,
      capture_output=True, text=True, timeout=300, check=False)
  trained = run_script(
      "scripts/train_downstream.py", "--head", "mlp", "--labels", sample,
      "--label_format", "sample", "--onehot", "--max_epochs", "3",
      "--output_dir", str(tmp_path / "loc"), "--test_labels", sample)
  assert trained.returncode == 0, trained.stderr[-2000:]
  assert "Q10" in trained.stdout and "Q2" in trained.stdout
  predicted = run_script(
      "scripts/predict.py", "--fasta", sample_corpus.FASTA_PATH, "--heads",
      str(tmp_path / "loc"), "--output_prefix", str(tmp_path / "pred"))
  assert predicted.returncode == 0, predicted.stderr[-2000:]
  assert len(open(tmp_path / "pred.tsv").read().splitlines()) == 101
  mapped = run_script(
      "scripts/visualize.py", "--onehot", "--labels", sample,
      "--label_format", "sample", "--output", str(tmp_path / "map.png"))
  assert mapped.returncode == 0, mapped.stderr[-2000:]
  assert len(open(tmp_path / "map.tsv").read().splitlines()) == 101
