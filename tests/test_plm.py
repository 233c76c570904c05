"""ProtXLNet's permutation LM: XLNet's examples (factorisation orders, partial
prediction, permutation masks, target mappings) from real proteins, its
tasks and its objective."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio

from prottrans_jax import tasks
from prottrans_jax import vocab as vocab_lib
from prottrans_jax.data import preprocessors
from prottrans_jax.training import objectives

XLNET = vocab_lib.ProtXLNetVocabulary()
LENGTH = 256
LENGTHS = {"inputs": LENGTH, "targets": preprocessors.max_predictions(LENGTH)}


@pytest.fixture(scope="module")
def deeploc_plm(shared_data):
  """`{corpus}_protxlnet_plm` over the real DeepLoc proteins (>100,000 residues)."""
  corpus = "test_plm_deeploc"
  if f"{corpus}_protxlnet_plm" not in seqio.TaskRegistry.names():
    tasks.protein.register_objectives(corpus, tasks.protein.fasta_source(
        str(shared_data / "localization" / "deeploc_test_set.fasta"),
        validation_fraction=0.05))
  return corpus


@pytest.fixture(scope="module")
def sample_batches():
  """The bundled sample's validation proteins as model batches of 4."""
  lengths = {"inputs": 32, "targets": preprocessors.max_predictions(32)}
  ds = seqio.get_dataset("swissprot_sample_protxlnet_plm", lengths,
                         objectives.PERMUTATION_LM.feature_converter(pack=True),
                         dataset_split="validation", shuffle=False, num_epochs=1)
  return lengths, list(ds.batch(4).as_numpy_iterator())


def _examples(task_name, seed, limit, lengths=LENGTHS):
  ds = seqio.get_mixture_or_task(task_name).get_dataset(
      lengths, split="train", shuffle=False, seed=seed)
  return list(ds.take(limit).as_numpy_iterator())


def _check_xlnet_rule(ex):
  """Asserts XLNet's permutation-mask rule on one example and returns
  (residues, predicted)."""
  ids, mask, perm = ex["inputs"], ex["attention_mask"], ex["perm_mask"]
  real = np.flatnonzero(mask)
  pad = LENGTH - len(real)
  # Left padding with <pad>, then residues <sep> <cls> (the released framing).
  assert np.all(mask[:pad] == 0) and np.all(ids[:pad] == XLNET.pad_id)
  assert ids[-2] == XLNET.sep_id and ids[-1] == XLNET.cls_id
  assert not perm[:pad].any() and not perm[:, :pad].any()
  special = np.array([LENGTH - 2, LENGTH - 1])
  rows = ex["target_weights"].astype(bool)
  mapping = ex["target_mapping"]
  assert np.all(mapping[rows].sum(1) == 1) and not mapping[~rows].any()
  predicted = np.flatnonzero(mapping[rows].sum(0))
  assert len(predicted) == rows.sum()  # one row per predicted position
  np.testing.assert_array_equal(ex["targets"][rows], ids[predicted])
  # Never <sep>, <cls> or padding.
  assert np.all((predicted >= pad) & (predicted < LENGTH - 2))
  context = np.setdiff1d(np.arange(pad, LENGTH - 2), predicted)
  ordered = np.concatenate([predicted, special])
  # Non-predicted residues see each other and nothing of the order.
  assert not perm[np.ix_(context, context)].any()
  assert perm[np.ix_(context, ordered)].all()
  # Everyone sees the non-predicted residues.
  assert not perm[np.ix_(ordered, context)].any()
  # Predicted tokens hide themselves; <sep>/<cls> see themselves.
  assert np.all(perm[predicted, predicted] == 1) and np.all(perm[special, special] == 0)
  # Among predicted and special tokens the mask is one order: a token's
  # place is how many others it sees, and every token hides exactly the
  # ones at or after its place (itself, if predicted).
  block = perm[np.ix_(ordered, ordered)].astype(bool)
  place = (~block).sum(1) - np.isin(ordered, special)
  np.testing.assert_array_equal(np.sort(place), np.arange(len(ordered)))
  np.testing.assert_array_equal(block & ~np.eye(len(ordered), dtype=bool),
                                place[None, :] > place[:, None])
  return len(real) - 2, len(predicted)


def test_predicts_one_kth_of_each_order_with_xlnets_mask(deeploc_plm):
  residues = predicted = 0
  examples = _examples(f"{deeploc_plm}_protxlnet_plm", seed=5, limit=600)
  # The same seed gives the same examples; another seed other orders.
  again, other = (_examples(f"{deeploc_plm}_protxlnet_plm", seed=s, limit=8) for s in (5, 6))
  for a, b in zip(examples, again):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  assert any(not np.array_equal(a["perm_mask"], c["perm_mask"])
             for a, c in zip(examples, other))
  for ex in examples:
    n, p = _check_xlnet_rule(ex)
    k = preprocessors.PARTIAL_PREDICTION
    assert n // k <= p <= -(-n // k)
    residues, predicted = residues + n, predicted + p
  assert residues > 100_000
  assert abs(predicted / residues - 1 / preprocessors.PARTIAL_PREDICTION) < 0.01 / 6


def test_k_is_settable_and_the_targets_length_must_hold_it(deeploc_plm):
  name = tasks.protein.protxlnet_plm_task(deeploc_plm, partial_prediction=3)
  assert name == f"{deeploc_plm}_protxlnet_plm_k3"
  lengths = {"inputs": LENGTH, "targets": preprocessors.max_predictions(LENGTH, 3)}
  residues = predicted = 0
  for ex in _examples(name, seed=0, limit=100, lengths=lengths):
    residues += int(ex["attention_mask"].sum()) - 2
    predicted += int(ex["target_weights"].sum())
  assert abs(predicted / residues - 1 / 3) < 0.01
  with pytest.raises(ValueError, match=r'TASK_FEATURE_LENGTHS\["targets"\] >= 85'):
    _examples(name, seed=0, limit=1)  # 43 rows cannot hold 254 / 3.
  with pytest.raises(ValueError, match="no corpus 'nope'"):
    tasks.protein.protxlnet_plm_task("nope")


def test_every_corpus_has_the_task_and_the_sample_yields_model_features(sample_batches):
  for corpus in (*tasks.protein.TFDS_CORPORA, "swissprot_sample", "swissprot_sample_tfds"):
    assert f"{corpus}_protxlnet_plm" in seqio.TaskRegistry.names()
  task = seqio.get_mixture_or_task("swissprot_sample_protxlnet_plm")
  assert task.output_features["inputs"].vocabulary.mask_id == XLNET.mask_id
  lengths, batches = sample_batches
  shapes = objectives.PERMUTATION_LM.batch_shapes(lengths)
  assert set(batches[0]) == set(shapes)
  for batch in batches:
    for name, value in batch.items():
      assert value.shape[1:] == shapes[name] and value.dtype == np.int32
    assert np.all(batch["input_ids"][:, -2:] == [XLNET.sep_id, XLNET.cls_id])
    assert np.all((batch["target_ids"] >= 9) | (batch["target_weights"] == 0))
  assert sum(b["target_weights"].sum() for b in batches) > 0


class _TargetRowModel(nn.Module):
  """A small real network with XLNet's call signature: embeddings, attention
  masked by the permutation and padding masks, logits at the target rows."""
  vocab_size: int = XLNET.vocab_size

  @nn.compact
  def __call__(self, input_ids, attention_mask=None, perm_mask=None,
               target_mapping=None, deterministic=True):
    h = nn.Embed(self.vocab_size, 8)(input_ids)
    hidden = (attention_mask[:, None, :] > 0) & (perm_mask < 0.5)
    scores = jnp.where(hidden, jnp.einsum("bid,bjd->bij", h, h), -1e9)
    h = jnp.einsum("bij,bjd->bid", jax.nn.softmax(scores), h)
    h = nn.Dropout(0.1, deterministic=deterministic)(h)
    return nn.Dense(self.vocab_size)(jnp.einsum("bpl,bld->bpd", target_mapping, h))


def test_objective_is_the_cross_entropy_at_the_target_rows(sample_batches):
  batch = sample_batches[1][0]
  model = _TargetRowModel()
  plm = objectives.PERMUTATION_LM
  params = jax.jit(lambda b: model.init(
      jax.random.key(0), b["input_ids"], b["attention_mask"],
      b["perm_mask"].astype(jnp.float32), b["target_mapping"].astype(jnp.float32)))(
          batch)["params"]
  # Jitted: eager dispatch compiles every op on its own.
  loss_sums = jax.jit(lambda p, b, rng: plm.loss_sums(model, p, b, rng, 0.0))
  sums = loss_sums(params, batch, None)
  logits, targets, eval_weights, extra_sums = jax.jit(lambda p, b: plm.eval_outputs(model, p, b))(
      params, batch)
  assert extra_sums == {}  # No further eval sums for the permutation LM.
  weights = batch["target_weights"].astype(np.float32)
  logits = np.asarray(logits, np.float64)
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  expected = -(np.take_along_axis(log_probs, np.asarray(batch["target_ids"])[..., None],
                                  -1)[..., 0] * weights).sum()
  np.testing.assert_allclose(float(sums["loss"]), expected, rtol=1e-5)
  assert float(sums["weight"]) == weights.sum() > 0
  assert np.array_equal(plm.loss_weights(batch), batch["target_weights"])
  assert np.array_equal(targets, batch["target_ids"])
  assert np.array_equal(eval_weights, batch["target_weights"])
  # Dropout only with an rng; eval scores every predicted token as masked.
  assert float(loss_sums(params, batch, jax.random.key(1))["loss"]) != float(sums["loss"])
  assert np.array_equal(plm.masked(batch, XLNET.mask_id), np.ones_like(targets))
