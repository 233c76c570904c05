"""SeqIO tasks and preprocessors: the ProtTrans objectives, measured on real proteins."""

import ast
import importlib
import pathlib
import sys

import numpy as np
import pytest
import seqio

import prottrans_jax
from prottrans_jax import tasks
from prottrans_jax import vocab as vocab_lib
from prottrans_jax.data import fasta
from prottrans_jax.data import feature_converters
from prottrans_jax.data import sample_corpus
from prottrans_jax.data import splits
from prottrans_jax.data import tfds_builder
from prottrans_jax.tasks import inspection

PROTT5 = vocab_lib.ProtT5Vocabulary()
PROTBERT = vocab_lib.ProtBertVocabulary()
LENGTHS = {"inputs": 1024, "targets": 1024}


@pytest.fixture(scope="module")
def deeploc_tasks(shared_data):
  """The objectives over ~2,800 real DeepLoc proteins (>100,000 residues)."""
  path = str(shared_data / "localization" / "deeploc_test_set.fasta")
  corpus = "test_deeploc"
  if f"{corpus}_prott5_denoise" not in seqio.TaskRegistry.names():
    tasks.protein.register_objectives(
        corpus, tasks.protein.fasta_source(path, validation_fraction=0.05))
  originals = {r.id: r.sequence for r in fasta.read_fasta(path)}
  return corpus, originals


def _examples(task_name, seed, limit=None, split="train"):
  task = seqio.get_mixture_or_task(task_name)
  ds = task.get_dataset(LENGTHS, split=split, shuffle=True, seed=seed)
  if limit:
    ds = ds.take(limit)
  return list(ds.as_numpy_iterator())


def test_prott5_objective_masks_15_percent_and_targets_are_originals(
    deeploc_tasks):
  corpus, originals = deeploc_tasks
  examples = _examples(f"{corpus}_prott5_denoise", seed=7)
  residues = masked = 0
  for ex in examples:
    inputs, targets = ex["inputs"], ex["targets"]
    original = PROTT5.encode(originals[ex["id"].decode()])
    assert targets[-1] == PROTT5.eos_id and inputs[-1] == PROTT5.eos_id
    body = list(targets[:-1])
    if len(original) <= LENGTHS["targets"] - 1:
      assert body == original
    else:  # A random window of a long protein.
      start = next(i for i in range(len(original))
                   if original[i:i + len(body)] == body)
      assert start + len(body) <= len(original)
    is_masked = inputs[:-1] == PROTT5.mask_id
    np.testing.assert_array_equal(inputs[:-1][~is_masked],
                                  targets[:-1][~is_masked])
    residues += len(body)
    masked += int(is_masked.sum())
  assert residues >= 100_000
  assert abs(masked / residues - 0.15) <= 0.01, masked / residues


def test_same_seed_same_examples_other_seed_other_masks(deeploc_tasks):
  corpus, _ = deeploc_tasks
  name = f"{corpus}_prott5_denoise"
  first, again = _examples(name, 3, 20), _examples(name, 3, 20)
  other = _examples(name, 4, 20)
  for a, b in zip(first, again):
    assert a["id"] == b["id"]
    np.testing.assert_array_equal(a["inputs"], b["inputs"])
  assert [a["id"] for a in first] != [o["id"] for o in other]


def test_bert_objective_80_10_10(deeploc_tasks):
  corpus, _ = deeploc_tasks
  examples = _examples(f"{corpus}_protbert_mlm", seed=11)
  residues = selected = as_mask = as_other = 0
  for ex in examples:
    inputs, targets, weights = ex["inputs"], ex["targets"], ex["loss_weights"]
    assert targets[0] == PROTBERT.cls_id and targets[-1] == PROTBERT.eos_id
    assert weights[0] == 0 and weights[-1] == 0
    sel = weights == 1
    np.testing.assert_array_equal(inputs[~sel], targets[~sel])
    residues += len(targets) - 2
    selected += int(sel.sum())
    as_mask += int((inputs[sel] == PROTBERT.mask_id).sum())
    as_other += int(((inputs[sel] != PROTBERT.mask_id) &
                     (inputs[sel] != targets[sel])).sum())
  assert abs(selected / residues - 0.15) <= 0.01
  assert abs(as_mask / selected - 0.80) <= 0.02
  # A random residue equals the original 1 time in 20, so "changed" is 9.5%.
  assert abs(as_other / selected - 0.10) <= 0.02
  unchanged = selected - as_mask - as_other
  assert abs(unchanged / selected - 0.10) <= 0.02


def test_bundled_sample_task_reads_both_splits_disjoint():
  ids = {}
  for split in (splits.TRAIN, splits.VALIDATION):
    ids[split] = {ex["id"] for ex in _examples(
        "swissprot_sample_prott5_denoise", seed=0, split=split)}
  assert len(ids["train"]) + len(ids["validation"]) == 100
  assert ids["validation"] and not ids["train"] & ids["validation"]


def test_enc_dec_converter_packs_prott5_batches():
  ds = seqio.get_dataset(
      "swissprot_sample_prott5_denoise", {"inputs": 128, "targets": 128},
      dataset_split="train", shuffle=True, seed=0,
      feature_converter=seqio.EncDecFeatureConverter(pack=True))
  batch = next(ds.batch(4, drop_remainder=True).as_numpy_iterator())
  for key in ("encoder_input_tokens", "decoder_target_tokens",
              "decoder_input_tokens", "decoder_loss_weights",
              "encoder_segment_ids", "decoder_segment_ids",
              "encoder_positions", "decoder_positions"):
    assert batch[key].shape == (4, 128), key
  # Packing put more than one protein in some rows.
  assert batch["encoder_segment_ids"].max() >= 1


def test_masked_lm_converter_keeps_all_selected_positions_in_the_loss():
  lengths = {"inputs": 256, "targets": 256}
  ds = seqio.get_dataset(
      "swissprot_sample_protbert_mlm", lengths, dataset_split="train",
      shuffle=False, seed=0,
      feature_converter=feature_converters.MaskedLmFeatureConverter(pack=False))
  raw = seqio.get_mixture_or_task("swissprot_sample_protbert_mlm").get_dataset(
      lengths, split="train", shuffle=False, seed=0)
  for converted, example in zip(ds.take(8).as_numpy_iterator(),
                                raw.take(8).as_numpy_iterator()):
    assert converted["encoder_input_tokens"].shape == (256,)
    assert converted["encoder_loss_weights"].sum() == example["loss_weights"].sum()
  packed = seqio.get_dataset(
      "swissprot_sample_protbert_mlm", lengths, dataset_split="train",
      shuffle=False, seed=0,
      feature_converter=feature_converters.MaskedLmFeatureConverter(pack=True))
  batch = next(packed.batch(2).as_numpy_iterator())
  # Every [MASK] is a selected position; packing must keep them all weighted.
  is_mask = batch["encoder_input_tokens"] == PROTBERT.mask_id
  assert is_mask.sum() > 0
  assert (batch["encoder_loss_weights"][is_mask] == 1).all()
  assert set(np.unique(batch["encoder_loss_weights"])) <= {0, 1}
  assert not batch["encoder_loss_weights"][batch["encoder_segment_ids"] == 0].any()
  assert {k: v.shape for k, v in batch.items()} == {
      k: (2, 256) for k in ("encoder_input_tokens", "encoder_target_tokens",
                            "encoder_loss_weights", "encoder_segment_ids",
                            "encoder_positions")}


def test_registered_task_reads_back_the_sample_built_by_tfds_with_beam(
    tmp_path):
  tfds_builder.build_corpus("swissprot_sample", str(tmp_path), use_beam=True,
                            beam_runner="FnApiRunner",
                            beam_options=["direct_num_workers=1"])
  seqio.set_tfds_data_dir_override(str(tmp_path))
  try:
    task = seqio.get_mixture_or_task("swissprot_sample_tfds_prott5_denoise")
    examples = {
        split: list(task.get_dataset(LENGTHS, split=split, shuffle=False)
                    .as_numpy_iterator())
        for split in (splits.TRAIN, splits.VALIDATION)}
  finally:
    seqio.set_tfds_data_dir_override(None)
  originals = {r.id: r.sequence
               for r in fasta.read_fasta(sample_corpus.FASTA_PATH)}
  assert {split: len(e) for split, e in examples.items()} == {
      "train": 88, "validation": 12}
  for split, split_examples in examples.items():
    for ex in split_examples:
      record_id = ex["id"].decode()
      assert splits.split_of(record_id, 0.1) == split
      if len(originals[record_id]) < LENGTHS["targets"]:
        assert list(ex["targets"][:-1]) == PROTT5.encode(originals[record_id])


def test_describe_examples_shows_masked_inputs_over_their_originals():
  text = inspection.describe_examples(
      "swissprot_sample_prott5_denoise", {"inputs": 64, "targets": 64},
      num_examples=3)
  assert text == inspection.describe_examples(
      "swissprot_sample_prott5_denoise", {"inputs": 64, "targets": 64},
      num_examples=3)  # same seed, same examples and masks
  lines = text.splitlines()
  assert lines[0] == "task 'swissprot_sample_prott5_denoise', split 'train', seed 0"
  originals = {r.id: r.sequence
               for r in fasta.read_fasta(sample_corpus.FASTA_PATH)}
  examples = [lines[i:i + 3] for i in range(1, len(lines), 3)]
  assert len(examples) == 3
  for header, inputs, targets in examples:
    record_id = header.removeprefix("- ").removesuffix(":")
    masked, original = inputs.split(") ")[1], targets.split(") ")[1]
    assert original in originals[record_id]  # a window of the protein
    assert len(masked) == len(original)
    assert "_" in masked
    assert all(m in ("_", o) for m, o in zip(masked, original))


def test_import_tasks_still_registers_for_one_release_and_warns(monkeypatch):
  monkeypatch.delitem(sys.modules, "tasks", raising=False)
  monkeypatch.delitem(sys.modules, "tasks.protein", raising=False)
  with pytest.warns(DeprecationWarning, match="import prottrans_jax.tasks"):
    old = importlib.import_module("tasks")
  assert old.protein is tasks.protein
  assert importlib.import_module("tasks.protein") is tasks.protein
  assert (old.get_task("swissprot_sample_protbert_mlm") is
          seqio.get_mixture_or_task("swissprot_sample_protbert_mlm"))


def _imports_the_tasks_package(path: pathlib.Path) -> bool:
  """Whether the module at `path` imports `prottrans_jax.tasks` (or the
  deprecated top-level `tasks`), absolutely or relatively."""
  package = path.relative_to(pathlib.Path(prottrans_jax.__file__).parents[1])
  names = []
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names += [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        parent = ".".join(package.parent.parts[:len(package.parent.parts) -
                                               node.level + 1])
        base = f"{parent}.{base}" if base else parent
      names += [base] + [f"{base}.{a.name}" for a in node.names]
  return any(n.split(".")[0] == "tasks" or n.split(".")[:2] == ["prottrans_jax", "tasks"]
             for n in names)


def test_library_never_imports_the_tasks_package():
  """Registering the tasks is a side effect kept at the edges (scripts,
  tests, gin files): no library module outside prottrans_jax/tasks imports
  them, so prottrans_jax.data, which the tasks use, never depends on them."""
  root = pathlib.Path(prottrans_jax.__file__).parent
  assert _imports_the_tasks_package(root / "tasks" / "inspection.py")
  offenders = [str(p.relative_to(root)) for p in sorted(root.rglob("*.py"))
               if root / "tasks" not in p.parents and _imports_the_tasks_package(p)]
  assert offenders == []
