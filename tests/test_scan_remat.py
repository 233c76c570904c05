"""Scan over layers and rematerialisation (config fields `scan_layers`,
`remat_policy`): the same training whatever the setting, one checkpoint
layout, and less memory at ProtT5-XL's and ProtBert's layer shapes.

Everything runs on 8 host devices (tests/conftest.py); the XL-shaped steps
are compiled, never run.
"""

import dataclasses
import itertools

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import prottrans_jax.tasks  # pylint: disable=unused-import  (registers the seqio tasks)
from prottrans_jax import checkpoints
from prottrans_jax import families
from prottrans_jax import gin_utils
from prottrans_jax import partitioning
from prottrans_jax.convert import formats
from prottrans_jax.convert import mapping
from prottrans_jax.data import fasta
from prottrans_jax.inference import engine
from prottrans_jax.inference import loading
from prottrans_jax.models import albert
from prottrans_jax.models import bert
from prottrans_jax.models import layers
from prottrans_jax.models import t5
from prottrans_jax.models import transfo_xl
from prottrans_jax.models import xlnet
from prottrans_jax.training import inputs
from prottrans_jax.training import optimizers
from prottrans_jax.training import steps
from prottrans_jax.training import train_state as train_state_lib
from prottrans_jax.training import trainer

MESH = (4, 2)
BATCH_SIZE = 8
LENGTHS = {"inputs": 64, "targets": 64}
T5_TASK = "swissprot_sample_prott5_denoise"
BERT_TASK = "swissprot_sample_protbert_mlm"
# Float32 and no dropout, so that the two layouts can be compared exactly
# (with dropout they draw different, equally valid, masks).
T5_TINY = dataclasses.replace(t5.T5_CONFIGS["tiny"], dtype="float32", dropout_rate=0.0)
BERT_TINY = dataclasses.replace(bert.BERT_CONFIGS["tiny"], dtype="float32",
                                hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
TASKS = {"t5": T5_TASK, "bert": BERT_TASK, "xlnet": "swissprot_sample_protxlnet_plm",
         "transfo_xl": "swissprot_sample_prottxl_lm"}
CONFIGS = {"t5": T5_TINY, "bert": BERT_TINY,
           "xlnet": dataclasses.replace(xlnet.XLNET_CONFIGS["tiny"], dtype="float32",
                                        dropout=0.0),
           # Segments of 16: a 64-token row runs as 4 segments with the memory.
           "transfo_xl": dataclasses.replace(transfo_xl.TRANSFO_XL_CONFIGS["tiny"],
                                             dtype="float32", dropout=0.0)}
# Adafactor factors only matrices whose two largest dimensions reach
# min_dim_size_to_factor; 32 makes it factor the tiny ones, as T5's
# settings do at full size.
OPTIMIZERS = {
    "adafactor": lambda: optimizers.adafactor(min_dim_size_to_factor=32),
    "lamb": optimizers.lamb,
}


def _scanned(config, scan_layers=True, remat_policy=None):
  return config.with_layer_options(scan_layers=scan_layers, remat_policy=remat_policy)


def _is_key_bias(path) -> bool:
  """BERT's attention key bias: its gradient is zero up to round-off (a
  constant added to every logit of a query leaves the softmax unchanged),
  and Adafactor and Adam normalise that round-off into full-size steps, so
  after an update it is noise in any two runs that round differently."""
  names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
  return names[-2:] == ["key", "bias"]


def _max_difference(a, b, skip=lambda path: False) -> float:
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
  return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
             for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0],
                                     jax.tree_util.tree_leaves(b))
             if not skip(path))


def _canonical_params(config, seed=1):
  family = families.of(config)
  return jax.jit(lambda key: nn.meta.unbox(family.init(family.module(config), key)))(
      jax.random.key(seed))



@pytest.fixture(scope="module")
def batches():
  """The first 3 training batches of each family's task."""
  out = {}
  for name, task in TASKS.items():
    objective = families.of(CONFIGS[name]).objective()
    # A causal LM has targets only (seqio's decoder converter reads "inputs"
    # as a prefix-LM's).
    lengths = {"targets": LENGTHS["targets"]} if name == "transfo_xl" else LENGTHS
    out[name] = list(itertools.islice(
        inputs.TrainInput(task, lengths, inputs.InputShard.whole(BATCH_SIZE),
                          seed=0, feature_converter=objective.feature_converter), 3))
  return out


def _train_steps(config, tx, canonical_params, batches, with_grads=False):
  """Losses of a few train steps on the (4, 2) mesh from `canonical_params`,
  and the final params, optimizer state and first gradients, canonical."""
  family = families.of(config)
  model = family.module(config)
  objective = family.objective()
  partition = partitioning.PartitionConfig(mesh_shape=MESH)
  mesh, rules = partition.mesh(), partition.rules()
  init = trainer.init_fn(family, model)
  with partitioning.activate(mesh, rules):
    layout = train_state_lib.state_layout(init, tx, mesh, rules)
    params = jax.device_put(family.to_layout(config, canonical_params),
                            layout.shardings.params)
    state = train_state_lib.state_from_params(params, tx, layout, 0)
    sharding = partitioning.batch_sharding(mesh, rules)
    step = steps.make_train_step(
        model=model, objective=objective, tx=tx,
        schedule=optimizers.constant_schedule(0.01), loss_config=steps.LossConfig(),
        dropout_seed=0, num_microbatches=1, layout=layout, batch_sharding=sharding)
    grads = None
    if with_grads:
      grad_fn = jax.jit(jax.grad(
          lambda p, b: objective.loss_sums(model, p, b, None, 1e-4)["loss"]))
      grads = family.to_canonical(config, grad_fn(
          state.params, partitioning.make_global_batch(batches[0], sharding)))
    losses = []
    for batch in batches:
      state, metrics = step(state, partitioning.make_global_batch(batch, sharding))
      losses.append(float(metrics["loss"]))
  return (losses, family.to_canonical(config, state.params),
          family.to_canonical(config, state.opt_state), grads)


@pytest.mark.parametrize("name,optimizer", [
    ("t5", "adafactor"), ("t5", "lamb"), ("bert", "adafactor"), ("bert", "lamb"),
    ("xlnet", "adafactor"), ("transfo_xl", "adafactor")])
def test_scanned_and_unscanned_take_the_same_steps(name, optimizer, batches):
  """Same params, same batches, on a (4, 2) mesh: the same losses over 3
  steps, the same gradients and the same params and optimizer state after
  (compared in the canonical layout)."""
  config, with_grads = CONFIGS[name], optimizer == "adafactor"
  params = _canonical_params(config)
  runs = [_train_steps(c, OPTIMIZERS[optimizer](), params, batches[name], with_grads)
          for c in (config, _scanned(config))]
  (losses, final, opt_state, grads), (s_losses, s_final, s_opt_state, s_grads) = runs
  print(f"{name} {optimizer} losses: unscanned {losses}, scanned {s_losses}")
  np.testing.assert_allclose(s_losses, losses, rtol=0, atol=1e-5)
  assert losses[-1] < losses[0]  # the steps did something
  skip = _is_key_bias
  if name in ("xlnet", "transfo_xl"):
    # The relative-position projection (XLNet's `rel_attn/r`,
    # Transformer-XL's `attention/r_net`), for the key bias's reason: the
    # sinusoids of the lowest frequencies are nearly constant over 64
    # relative distances, so the rows they feed add an almost constant
    # logit to each query row, which the softmax cancels; their gradients
    # are round-off (measured on XLNet: the last cosine rows' gradients are
    # 1e-8 to 2e-9 and differ between the layouts by 1e-10, where the other
    # rows' are 1e-4 and agree to 1e-7 relative), which Adafactor normalises
    # into full-size steps (up to 5e-4 apart after 3 steps). Losses and
    # gradients are still compared whole.
    position_projection = ("['r']", "['r_net']")
    skip = lambda path: _is_key_bias(path) or any(
        projection in jax.tree_util.keystr(path) for projection in position_projection)
  assert _max_difference(s_final, final, skip) < 1e-5
  assert _max_difference(s_opt_state, opt_state, skip) < 1e-5
  if with_grads:
    scale = max(float(np.max(np.abs(g))) for g in jax.tree_util.tree_leaves(grads))
    assert _max_difference(s_grads, grads) < 1e-5 * scale


@pytest.mark.parametrize("optimizer", ["adafactor", "lamb", "adamw"])
def test_optimizer_steps_each_scanned_layer_as_its_own_parameter(optimizer):
  """`optimizers.per_layer` (inside every optimizer of optimizers.py): on a
  stacked [layers, ...] leaf the updates and state equal the unscanned
  ones; the bare optax transformation mixes the layers and does not."""
  config = dataclasses.replace(T5_TINY, d_model=128, d_ff=256)  # Adafactor factors these
  scanned = _scanned(config)
  family = families.of(config)
  # Layers of different sizes, as trained layers are: a parameter-scale RMS
  # or trust ratio over the stack would then be wrong for every layer.
  params = jax.tree_util.tree_map_with_path(
      lambda path, x: x * 4 if "layers_1" in jax.tree_util.keystr(path) else x,
      _canonical_params(config))
  rng = np.random.default_rng(0)
  grads = jax.tree_util.tree_map(
      lambda x: (rng.standard_normal(x.shape) * rng.uniform(0.1, 10)).astype(np.float32),
      params)
  tx = {"adafactor": optimizers.adafactor, "lamb": optimizers.lamb,
        "adamw": optimizers.adamw}[optimizer]()

  def run(tx, config):
    p, g = family.to_layout(config, params), family.to_layout(config, grads)
    state = optimizers.with_learning_rate(jax.jit(tx.init)(p), 0.01)
    for _ in range(3):
      updates, state = jax.jit(tx.update)(g, state, p)
      p = optax.apply_updates(p, updates)
    assert float(state.hyperparams["learning_rate"]) == pytest.approx(0.01)
    return family.to_canonical(config, p), state

  unscanned_params, unscanned_state = run(tx, config)
  scanned_params, scanned_state = run(tx, scanned)
  assert _max_difference(scanned_params, unscanned_params) < 1e-6
  # The state of a stacked leaf is its layers' states, stacked.
  assert _max_difference(family.to_canonical(scanned, scanned_state), unscanned_state) < 1e-6
  if optimizer != "adamw":  # AdamW is elementwise: nothing to mix.
    mixed_params, _ = run(_bare(optimizer), scanned)
    assert _max_difference(mixed_params, unscanned_params) > 1e-4


def _bare(optimizer):
  """The optimizer without `per_layer`: optax's per-leaf rules as they are."""
  if optimizer == "adafactor":
    return optax.inject_hyperparams(optax.adafactor, static_args=(
        "min_dim_size_to_factor", "multiply_by_parameter_scale", "factored",
        "dtype_momentum"))(learning_rate=0.0, clipping_threshold=1.0)
  return optax.inject_hyperparams(optimizers._bert_lamb)(  # pylint: disable=protected-access
      learning_rate=0.0, b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.01)


# --- One checkpoint layout whatever the setting. ------------------------------


def _train(model_dir, config, train_steps):
  return trainer.train(
      model_dir=str(model_dir), model_config=config, task_name=T5_TASK,
      task_feature_lengths=LENGTHS, batch_size=BATCH_SIZE, train_steps=train_steps,
      learning_rate=optimizers.constant_schedule(0.01),
      optimizer=OPTIMIZERS["adafactor"](),
      partition=partitioning.PartitionConfig(mesh_shape=MESH),
      checkpoint_period=2, log_period=1)


def _restored_items(model_dir, step, config):
  """Params and optimizer state of a step, restored into `config`'s layout."""
  family = families.of(config)
  tx = OPTIMIZERS["adafactor"]()
  partition = partitioning.PartitionConfig(mesh_shape=MESH)
  mesh, rules = partition.mesh(), partition.rules()
  with partitioning.activate(mesh, rules):
    layout = train_state_lib.state_layout(
        trainer.init_fn(family, family.module(config)), tx, mesh, rules)
    abstract = jax.tree_util.tree_map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        layout.abstract_state, layout.shardings)
    manager = checkpoints.checkpoint_manager(model_dir)
    restored = checkpoints.restore_train_items(
        manager, step, config=config, abstract_params=abstract.params,
        abstract_opt_state=abstract.opt_state)
    manager.close()
  params, opt_state = restored[checkpoints.PARAMS], restored[checkpoints.OPT_STATE]
  assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(
      abstract.params)
  assert jax.tree_util.tree_structure(opt_state) == jax.tree_util.tree_structure(
      abstract.opt_state)
  # Placed as the run's layout says, stacked leaves included.
  for leaf, sharding in zip(jax.tree_util.tree_leaves(params),
                            jax.tree_util.tree_leaves(layout.shardings.params)):
    assert leaf.sharding == sharding
  return params, opt_state


def _embed(loaded):
  embedder = engine.Embedder(loaded.config, loaded.params, engine.EmbedSettings())
  records = [fasta.FastaRecord(f"p{i}", f"p{i}", p, i + 1) for i, p in enumerate(
      ("MVLSPADKTNVKAAWGKVGAHAGEYGAEALERMFLSFPTTKTYFPHF", "MKTAYIAKQRQISFVKSHFSRQ"))]
  return {r.id: e for batch in embedder.embed(records) for r, e in batch}


def test_checkpoints_resume_embed_and_convert_across_the_scan_setting(tmp_path):
  """2 unscanned steps, resumed scanned to step 4, equal 4 unscanned steps;
  the checkpoints on disk have the unscanned names whichever run wrote them,
  restore into either layout, evaluate and embed the same and convert to
  Hugging Face."""
  scanned = _scanned(T5_TINY)
  straight, resumed = tmp_path / "straight", tmp_path / "resumed"
  straight_metrics = _train(straight, T5_TINY, 4)
  _train(resumed, T5_TINY, 2)
  resumed_metrics = _train(resumed, scanned, 4)
  assert abs(resumed_metrics["loss"] - straight_metrics["loss"]) < 1e-5

  # On disk: canonical names, the config as the run had it.
  name, config, lazy = checkpoints.lazy_params(resumed)
  assert (name, config) == ("t5", scanned)
  flat = mapping.flatten(lazy)
  assert "encoder/layers_1/mlp/wi/kernel" in flat
  assert not any(n.startswith(("encoder/layers/", "decoder/layers/")) for n in flat)

  # restore_params: the returned config's layout (or the one asked for).
  _, _, straight_params = checkpoints.restore_params(straight)
  _, config, resumed_params = checkpoints.restore_params(resumed)
  assert config == scanned
  assert resumed_params["encoder"]["layers"]["mlp"]["wi"]["kernel"].shape == (
      2, T5_TINY.d_model, T5_TINY.d_ff)
  assert _max_difference(families.of(config).to_canonical(config, resumed_params),
                         straight_params) < 1e-5
  _, _, as_unscanned = checkpoints.restore_params(resumed, layout_config=T5_TINY)
  assert _max_difference(as_unscanned, straight_params) < 1e-5

  # Step 4 was written by the scanned run, step 4 of `straight` unscanned:
  # each restores into either layout, params and optimizer state alike.
  for layout_config in (T5_TINY, scanned):
    params, opt_state = _restored_items(resumed, 4, layout_config)
    straight_params, straight_state = _restored_items(straight, 4, layout_config)
    assert _max_difference(params, straight_params) < 1e-5
    assert _max_difference(opt_state, straight_state) < 1e-5

  # Evaluation restores the recorded (scanned) layout.
  evaluated = [trainer.evaluate(
      model_dir=str(d), task_name=T5_TASK, task_feature_lengths=LENGTHS,
      batch_size=BATCH_SIZE, partition=partitioning.PartitionConfig(mesh_shape=MESH),
      eval_batches=2) for d in (straight, resumed)]
  assert abs(evaluated[0]["loss"] - evaluated[1]["loss"]) < 1e-5

  # Embedding: a checkpoint recorded scanned embeds exactly as the same
  # params recorded unscanned.
  canonical = jax.tree_util.tree_map(np.asarray, as_unscanned)
  checkpoints.write_params_checkpoint(tmp_path / "unscanned", canonical, T5_TINY)
  from_scanned = _embed(loading.from_checkpoint(str(resumed)))
  from_unscanned = _embed(loading.from_checkpoint(str(tmp_path / "unscanned")))
  assert from_scanned.keys() == from_unscanned.keys()
  for key, embedding in from_scanned.items():
    np.testing.assert_array_equal(embedding, from_unscanned[key])

  # Conversion: the scanned run's checkpoint exports to Hugging Face.
  formats.convert_checkpoint("native", "hf", resumed, tmp_path / "hf", progress=False)
  hf = loading.from_hf(str(tmp_path / "hf"))
  assert hf.config.with_dtype("float32") == T5_TINY  # unscanned: HF has no such thing
  hf_flat = mapping.flatten(hf.params)
  for n, array in mapping.flatten(canonical).items():
    if n.startswith(("encoder/", "token_embedder/")):
      np.testing.assert_array_equal(hf_flat[n], array, err_msg=n)
  from_hf = _embed(hf)
  for key, embedding in from_scanned.items():
    np.testing.assert_array_equal(embedding, from_hf[key])


# --- Rematerialisation. --------------------------------------------------------


def _loss_fn(config):
  family = families.of(config)
  model, objective = family.module(config), family.objective()
  return lambda params, batch, rng: objective.loss_sums(model, params, batch, rng, 1e-4)["loss"]


@pytest.mark.parametrize("name,scan_layers", [("t5", False), ("t5", True), ("bert", True)])
def test_every_remat_policy_gives_the_loss_and_gradients_of_none(name, scan_layers, batches):
  config = _scanned(CONFIGS[name], scan_layers)
  family = families.of(config)
  params = family.to_layout(config, _canonical_params(CONFIGS[name]))
  batch = batches[name][0]
  results = {}
  for policy in layers.REMAT_POLICIES:
    loss_fn = _loss_fn(config.with_layer_options(remat_policy=policy))
    results[policy] = jax.jit(jax.value_and_grad(loss_fn))(params, batch, None)
  loss, grads = results["none"]
  scale = max(float(np.max(np.abs(g))) for g in jax.tree_util.tree_leaves(grads))
  for policy in ("minimal", "full"):
    other_loss, other_grads = results[policy]
    assert abs(float(other_loss) - float(loss)) < 1e-6 * abs(float(loss)), policy
    assert _max_difference(other_grads, grads) < 1e-6 * scale, policy


def _compiled_temp_bytes(config, lengths) -> int:
  """Temporary bytes of the compiled gradient of the loss (one example,
  dropout on): shapes only, nothing allocated or run."""
  family = families.of(config)
  objective = family.objective()
  params = jax.eval_shape(
      lambda: nn.meta.unbox(family.init(family.module(config), jax.random.key(0))))
  batch = {name: jax.ShapeDtypeStruct((1, lengths[length]), jnp.int32)
           for name, length in objective.features.items()}
  compiled = jax.jit(jax.grad(_loss_fn(config))).lower(
      params, batch, jax.random.key(0)).compile()
  analysis = compiled.memory_analysis()
  assert analysis is not None
  return analysis.temp_size_in_bytes


# ProtT5-XL's and ProtBert's layer shapes, bfloat16 activations, dropout as
# in pre-training. The stacks are scanned, two layers each: the compiled
# loop runs one layer's body (so compiling costs about one layer) and its
# backward pass recomputes inside the loop. (XLA:CPU does not keep the
# recomputation of unscanned layers late: their compiled temporaries are the
# same with or without remat on CPU; TPUs schedule them by memory.)
XL_SHAPED = {
    "prott5_xl": (dataclasses.replace(t5.T5_CONFIGS["prott5_xl"], num_encoder_layers=2,
                                      num_decoder_layers=2, scan_layers=True),
                  {"inputs": 512, "targets": 512}),
    "protbert": (dataclasses.replace(bert.BERT_CONFIGS["protbert"], num_hidden_layers=2,
                                     scan_layers=True),
                 {"inputs": 512}),
}


@pytest.mark.parametrize("name", sorted(XL_SHAPED))
def test_remat_compiles_to_fewer_temporaries_at_full_size_layer_shapes(name):
  config, lengths = XL_SHAPED[name]
  temp = {policy: _compiled_temp_bytes(config.with_layer_options(remat_policy=policy),
                                       lengths)
          for policy in layers.REMAT_POLICIES}
  print(f"{name} layer shapes, 2 scanned layers per stack, batch 1 x "
        f"{'+'.join(str(n) for n in lengths.values())}, bfloat16: compiled temporaries "
        + ", ".join(f"{policy} {size / 2**20:.0f} MiB" for policy, size in temp.items()))
  assert temp["minimal"] < temp["none"]
  assert temp["full"] < temp["none"]
  assert temp["full"] <= temp["minimal"]  # it saves a subset of what minimal saves


# --- Configuration. ------------------------------------------------------------


@pytest.mark.parametrize("make", [
    lambda **kw: dataclasses.replace(T5_TINY, **kw),
    lambda **kw: dataclasses.replace(BERT_TINY, **kw),
    lambda **kw: dataclasses.replace(albert.ALBERT_CONFIGS["tiny"], **kw),
], ids=["t5", "bert", "albert"])
def test_bad_layer_options_are_clear_errors(make):
  assert make().scan_layers is False and make().remat_policy == "none"
  with pytest.raises(ValueError, match=r"remat_policy 'partial' is not one of 'none', "
                                       r"'minimal', 'full'"):
    make(remat_policy="partial")
  with pytest.raises(ValueError, match="scan_layers must be True or False, got 'yes'"):
    make(scan_layers="yes")
  with pytest.raises(ValueError, match="scan_unroll must be a positive int, got 0"):
    make(scan_unroll=0)


@pytest.mark.parametrize("name", ["t5", "bert"])
def test_scan_unroll_runs_the_same_layers(name, batches):
  """Two layers per loop iteration (how the AOT tool counts one layer's
  cost) computes what one per iteration does, from the same parameters."""
  config = _scanned(CONFIGS[name])
  params = families.of(config).to_layout(config, _canonical_params(CONFIGS[name]))
  batch = batches[name][0]
  results = [jax.jit(jax.value_and_grad(_loss_fn(config.with_layer_options(scan_unroll=unroll))))(
      params, batch, None) for unroll in (1, 2)]
  (loss, grads), (unrolled_loss, unrolled_grads) = results
  scale = max(float(np.max(np.abs(g))) for g in jax.tree_util.tree_leaves(grads))
  assert abs(float(unrolled_loss) - float(loss)) < 1e-6 * abs(float(loss))
  assert _max_difference(unrolled_grads, grads) < 1e-6 * scale


def test_gin_sets_scan_and_remat_per_family_and_network():
  gin.clear_config()
  try:
    gin_utils.parse(["models/prott5_tiny.gin", "runs/quickstart.gin"],
                    ["t5.T5Config.scan_layers = True", "t5.T5Config.remat_policy = 'minimal'"])
    config = gin.query_parameter("trainer.train.model_config").scoped_configurable_fn()
    assert (config.scan_layers, config.remat_policy) == (True, "minimal")
    gin.clear_config()
    gin_utils.parse(["models/protelectra_tiny.gin", "runs/pretrain_bert.gin"],
                    ["MODEL_DIR = '/tmp/unused'", "TRAIN_STEPS = 1",
                     "discriminator/electra.ElectraConfig.scan_layers = True",
                     "electra.ElectraConfig.remat_policy = 'full'"])
    config = gin.query_parameter("trainer.train.model_config").scoped_configurable_fn()
    assert (config.generator.scan_layers, config.discriminator.scan_layers) == (False, True)
    assert config.generator.remat_policy == config.discriminator.remat_policy == "full"
    assert families.of(config).scanned_stacks(config) == {("discriminator",): 2}
  finally:
    gin.clear_config()


def test_albert_shares_one_weight_set_over_its_scanned_layers():
  """ProtAlbert's one group: scanned, a [1, ...] stack whose set every layer
  uses; two groups of two layers each work the same way."""
  for groups in (1, 2):
    config = dataclasses.replace(albert.ALBERT_CONFIGS["tiny"], dtype="float32",
                                 num_hidden_layers=4, num_hidden_groups=groups)
    scanned = _scanned(config)
    family = families.of(config)
    params = _canonical_params(config)
    stacked = family.to_layout(scanned, params)
    assert stacked["encoder"]["layers"]["mlp"]["wi"]["kernel"].shape == (groups, 64, 128)
    boxed = families.abstract_params(family, scanned)
    assert boxed["encoder"]["layers"]["mlp"]["wi"]["kernel"].names == (
        "layers", "embed", "mlp")
    tokens = np.array([[2, 5, 6, 7, 8, 3, 0, 0]], np.int32)
    encode = lambda c, p: family.module(c).apply({"params": p}, tokens, method=family.encode)
    np.testing.assert_allclose(encode(scanned, stacked), encode(config, params),
                               rtol=1e-6, atol=1e-6)
