"""Fine-tuning a pre-trained encoder with a task head (LoRA or full).

The network is `downstream.finetune.FinetuneModel`; this is its training
run, on the pre-training machinery: the device mesh and logical-axis rules
(`partitioning`: adapters shard with their kernels), `train_state`'s
TrainState, `optimizers` (schedules, learning-rate injection), gradient
accumulation over microbatches (`steps.accumulate_gradients`), the run lock
and MODEL_DIR of `checkpoints.save` (params, opt_state, train_info,
model_config and integrity items), and the loop pieces of training/loop.py:
save on SIGTERM, damaged steps moved aside, the non-finite stop, the
compilation cache, profiler window, TensorBoard summaries and logged
metrics (tokens/s, MFU).

What is trained: with LoRA, the adapters, the head and the layer norms;
everything else is frozen. The step differentiates the loss with respect to
the trainable tree alone (the frozen one is a constant of the loss, so no
gradient of a frozen weight is ever formed), and the optimizer's state
mirrors only the trainable tree; frozen arrays pass through the step
untouched (bit-identical). Full fine-tuning is the same run with
`lora=None`: everything trainable.

Input: labelled proteins (downstream/readers.py) are small next to a corpus,
so they are read once into host memory and framed with the family's
tokenizer; the rows of step s are a pure function of (seed, s) (a fresh
permutation per epoch), so a resumed run sees exactly the batches of an
uninterrupted one with no data state to save. Each process builds the
global batch and contributes the rows its devices hold.

Evaluation on the validation set every `eval_period` steps: Q3/Q8 per
residue or Q10/Q2 per protein (downstream/metrics.py, the same scores as
the frozen-embedding heads); Spearman's rho for a regression head (one real
output per protein, or per residue pooled over all validation residues with
a target, trained on the mean squared error over labelled items).
"""

import dataclasses
import functools
import time
from typing import Any, Callable, Mapping, Sequence

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from prottrans_jax import checkpoints
from prottrans_jax import families
from prottrans_jax import fs
from prottrans_jax import partitioning
from prottrans_jax import run_lock
from prottrans_jax.data import sample_corpus
from prottrans_jax.data import splits
from prottrans_jax.downstream import finetune as finetune_lib
from prottrans_jax.downstream import metrics as metrics_lib
from prottrans_jax.downstream import models as heads
from prottrans_jax.downstream import readers
from prottrans_jax.models import electra
from prottrans_jax.models import lora as lora_lib
from prottrans_jax.training import loop
from prottrans_jax.training import mfu
from prottrans_jax.training import optimizers
from prottrans_jax.training import steps
from prottrans_jax.training import summaries
from prottrans_jax.training import train_state as train_state_lib

TrainState = train_state_lib.TrainState


def _unbox(tree: Any) -> Any:
  return jax.tree_util.tree_map(
      lambda x: x.value if isinstance(x, nn.meta.AxisMetadata) else x, tree,
      is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))


@dataclasses.dataclass(frozen=True)
class Layout:
  """The fine-tuning state planned from shapes alone.

  Attributes:
    abstract_params, mask: the whole tree's shapes; True where trained.
    state: abstract TrainState (opt_state over the trainable tree only).
    shardings: its shardings (a TrainState of them).
  """
  abstract_params: Any
  mask: Any
  state: TrainState
  shardings: TrainState

  @property
  def num_params(self) -> int:
    return sum(x.size for x in jax.tree_util.tree_leaves(self.abstract_params))

  @property
  def num_trainable(self) -> int:
    trainable, _ = lora_lib.split(self.abstract_params, self.mask)
    return sum(x.size for x in jax.tree_util.tree_leaves(trainable))


def plan(model: finetune_lib.FinetuneModel, tx: optax.GradientTransformation,
         mesh: jax.sharding.Mesh, rules: partitioning.LogicalRules) -> Layout:
  boxed = jax.eval_shape(lambda: model.init(jax.random.key(0)))
  abstract = _unbox(boxed)
  mask = model.trainable_mask(abstract)
  param_shardings = partitioning.params_shardings(boxed, mesh, rules)
  trainable, _ = lora_lib.split(abstract, mask)
  trainable_shardings, _ = lora_lib.split(param_shardings, mask)
  opt_state = jax.eval_shape(tx.init, trainable)
  opt_shardings = partitioning.optimizer_state_shardings(
      opt_state, trainable, trainable_shardings, mesh)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return Layout(
      abstract_params=abstract, mask=mask,
      state=TrainState(step=jax.ShapeDtypeStruct((), jnp.int32),
                       params=abstract, opt_state=opt_state),
      shardings=TrainState(step=replicated, params=param_shardings,
                           opt_state=opt_shardings))


def trainable_count_formula(model: finetune_lib.FinetuneModel,
                            abstract_params: Any) -> dict[str, int]:
  """The trainable parameter count, term by term: adapters (sum over
  targeted kernels of rank * (in + out)), head, and the base parameters
  LoRA trains alongside (`LoraConfig.trainable`); with no adapters, every
  parameter; with a frozen encoder, the head's."""
  head = sum(x.size for x in jax.tree_util.tree_leaves(
      abstract_params[finetune_lib.HEAD]))
  encoder = abstract_params[finetune_lib.ENCODER]
  config = model.config.lora
  if model.config.freeze_encoder:
    return {"head": head}
  if config is None:
    return {"encoder": sum(x.size for x in jax.tree_util.tree_leaves(encoder)),
            "head": head}
  base, _ = lora_lib.split(encoder, lora_lib.trainable_mask(encoder, config))
  return {"adapters": lora_lib.num_adapter_params(encoder, config),
          "head": head,
          "base_trainable": sum(x.size for x in jax.tree_util.tree_leaves(base))}


def labelled_counts(batch: Mapping[str, jax.Array], tasks: Sequence[str]
                    ) -> dict[str, jax.Array]:
  """Per task, the labelled items of `batch` (IGNORE or NaN excluded): the
  denominators of `task_losses`. Counted over the whole batch before any
  microbatch split, so that microbatch gradients sum to the batch's."""
  return {task: jnp.sum(readers.is_labelled(task, batch[task]).astype(
      jnp.float32)) for task in tasks}


def task_losses(logits: Mapping[str, jax.Array], batch: Mapping[str, jax.Array],
                counts: Mapping[str, jax.Array] | None = None
                ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Sum over tasks of each task's loss summed over `batch`'s labelled
  items and divided by `counts[task]` (default: `batch`'s own labelled
  count, so a mean): cross-entropy, with per-task correct/labelled sums;
  for a regression task, the squared error, with its sum and the labelled
  count."""
  if counts is None:
    counts = labelled_counts(batch, list(logits))
  total, sums = 0.0, {}
  for task, task_logits in logits.items():
    labels = batch[task]
    labelled = readers.is_labelled(task, labels)
    weight = labelled.astype(jnp.float32)
    denominator = jnp.maximum(counts[task], 1.0)
    sums[f"{task}_labelled"] = jnp.sum(weight)
    if task in readers.REGRESSION_TASKS:
      # NaN (no target) is replaced before the subtraction so no NaN can
      # reach the loss or its gradient.
      error = jnp.where(labelled, task_logits.astype(jnp.float32)
                        - jnp.where(labelled, labels, 0.0), 0.0)
      sums[f"{task}_squared_error"] = jnp.sum(error * error)
      total = total + sums[f"{task}_squared_error"] / denominator
      continue
    safe = jnp.maximum(labels, 0)
    log_probs = jax.nn.log_softmax(task_logits.astype(jnp.float32))
    nll = -jnp.take_along_axis(log_probs, safe[..., None], axis=-1)[..., 0]
    total = total + jnp.sum(nll * weight) / denominator
    sums[f"{task}_correct"] = jnp.sum(
        (jnp.argmax(task_logits, -1) == labels) * weight)
  return total, sums


def train_step(state: TrainState, batch: Mapping[str, jax.Array], *,
               model: finetune_lib.FinetuneModel, mask: Any,
               tx: optax.GradientTransformation,
               schedule: optimizers.Schedule, dropout_seed: int,
               num_microbatches: int = 1
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One update of the trainable tree; the frozen one is passed through.

  With `num_microbatches` > 1 the gradients are accumulated over
  microbatches (`steps.accumulate_gradients`, as pre-training does): the
  losses are divided by the whole batch's labelled counts, so the update
  is the whole batch's (dropout masks aside: one per microbatch).
  """
  trainable, frozen = lora_lib.split(state.params, mask)
  rng = jax.random.fold_in(jax.random.key(dropout_seed), state.step)
  counts = labelled_counts(batch, model.config.head.tasks)

  def loss_fn(trainable, microbatch, rng):
    params = lora_lib.combine(trainable, frozen)
    loss, sums = task_losses(
        model(params, microbatch["tokens"], microbatch["mask"], rng),
        microbatch, counts)
    return loss, {**sums, "loss": loss}

  grads, sums = steps.accumulate_gradients(
      jax.grad(loss_fn, has_aux=True), trainable, batch, rng,
      num_microbatches)
  learning_rate = schedule(state.step)
  opt_state = optimizers.with_learning_rate(state.opt_state, learning_rate)
  updates, opt_state = tx.update(grads, opt_state, trainable)
  trainable = optax.apply_updates(trainable, updates)
  metrics = {"loss": sums["loss"], "learning_rate": learning_rate,
             "grad_norm": optax.global_norm(grads)}
  for task in model.config.head.tasks:
    labelled = jnp.maximum(sums[f"{task}_labelled"], 1.0)
    if task in readers.REGRESSION_TASKS:
      metrics[f"{task}_mse"] = sums[f"{task}_squared_error"] / labelled
    else:
      metrics[f"{task}_accuracy"] = sums[f"{task}_correct"] / labelled
  return TrainState(step=state.step + 1,
                    params=lora_lib.combine(trainable, frozen),
                    opt_state=opt_state), metrics


class LabelledInput:
  """Every process's copy of the framed proteins; `batch(step)` is the
  global batch of that step (a pure function of seed and step)."""

  def __init__(self, model: finetune_lib.FinetuneModel,
               proteins: Sequence[readers.LabeledProtein], max_length: int,
               batch_size: int, seed: int):
    if not proteins:
      raise ValueError("no labelled proteins to fine-tune on")
    head = model.config.head
    self.arrays = finetune_lib.encode_batch(
        model.family, proteins, head.tasks, max_length,
        head.per_residue_output)
    self.batch_size, self.seed = batch_size, seed
    self.size = len(proteins)

  def indices(self, step: int) -> np.ndarray:
    first = step * self.batch_size
    positions = np.arange(first, first + self.batch_size)
    epochs = positions // self.size
    out = np.empty(self.batch_size, np.int64)
    for epoch in np.unique(epochs):
      order = np.random.default_rng([self.seed, int(epoch)]).permutation(
          self.size)
      where = epochs == epoch
      out[where] = order[positions[where] % self.size]
    return out

  def batch(self, step: int) -> dict[str, np.ndarray]:
    rows = self.indices(step)
    return {k: v[rows] for k, v in self.arrays.items()}


def _put(batch: Mapping[str, np.ndarray], mesh: jax.sharding.Mesh,
         rules: partitioning.LogicalRules) -> dict[str, jax.Array]:
  """Global arrays, rows over `data` (per-protein labels are 1-D)."""
  two_d = partitioning.batch_sharding(mesh, rules)
  one_d = jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec(two_d.spec[0]))
  out = {}
  for name, value in batch.items():
    sharding = two_d if np.ndim(value) == 2 else one_d
    out.update(partitioning.make_global_batch({name: value}, sharding))
  return out


def evaluate(forward: Callable, params: Any, model: finetune_lib.FinetuneModel,
             proteins: Sequence[readers.LabeledProtein], max_length: int,
             batch_size: int, mesh: jax.sharding.Mesh,
             rules: partitioning.LogicalRules) -> dict[str, float]:
  """Score per task over `proteins` (accuracy: Q3/Q8 per residue, Q10/Q2
  per protein; Spearman's rho for a regression task, per residue over all
  residues with a target), through
  downstream/metrics.py."""
  head = model.config.head
  predictions, labels = [], []
  for start in range(0, len(proteins), batch_size):
    chunk = list(proteins[start:start + batch_size])
    arrays = finetune_lib.encode_batch(model.family, chunk, head.tasks,
                                       max_length, head.per_residue_output)
    padded = {k: np.pad(v, [(0, batch_size - len(chunk))] + [(0, 0)] * (
        v.ndim - 1)) for k, v in arrays.items()}
    logits = jax.device_get(forward(params, _put(
        {k: padded[k] for k in ("tokens", "mask")}, mesh, rules)))
    for i in range(len(chunk)):
      rows = arrays["mask"][i] > 0
      if head.per_residue_output:
        predictions.append({t: logits[t][i][rows] for t in head.tasks})
        labels.append({t: arrays[t][i][rows] for t in head.tasks})
      else:
        predictions.append({t: logits[t][i] for t in head.tasks})
        labels.append({t: arrays[t][i:i + 1] for t in head.tasks})
  scores = metrics_lib.evaluate(predictions, labels, head.tasks)
  return {t: s.value for t, s in scores.items()}


def _initial_params(model: finetune_lib.FinetuneModel, layout: Layout,
                    seed: int, initial_checkpoint: str | None) -> Any:
  """Fresh head and adapters around the pre-trained encoder of
  `initial_checkpoint` (a MODEL_DIR or step of the encoder's family); all
  fresh without one."""
  shardings = layout.shardings.params
  params = jax.jit(lambda key: _unbox(model.init(key)),
                   out_shardings=shardings)(jax.random.key(seed))
  if not initial_checkpoint:
    return params
  step_dir = checkpoints.step_directory(initial_checkpoint)
  name, _ = checkpoints.checkpoint_model_config(step_dir)
  if name != model.family.name:
    raise ValueError(f"initial checkpoint {step_dir} holds a {name} model; "
                     f"the fine-tuning encoder is {model.family.name}")
  family, encoder_config = model.family, model.config.encoder
  target = jax.tree_util.tree_map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      layout.abstract_params[finetune_lib.ENCODER],
      shardings[finetune_lib.ENCODER])
  canonical = family.to_canonical(encoder_config, target)
  restored, _ = checkpoints.restore_params_subset(step_dir, canonical)
  encoder = jax.jit(functools.partial(family.to_layout, encoder_config),
                    out_shardings=shardings[finetune_lib.ENCODER])(restored)
  logging.info("encoder initialised from %s (%s); head%s fresh", step_dir,
               name, " and adapters" if model.config.lora else "")
  return {**params, finetune_lib.ENCODER: encoder}


def _restore_step(step: int, *, manager, layout: Layout,
                  config: finetune_lib.FinetuneConfig) -> TrainState:
  """One step of MODEL_DIR, checked against its integrity record
  (checkpoints.DamagedCheckpointError naming the step otherwise)."""
  abstract = jax.tree_util.tree_map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      (layout.state.params, layout.state.opt_state),
      (layout.shardings.params, layout.shardings.opt_state))
  restored = checkpoints.restore_train_items(
      manager, step, config=config, abstract_params=abstract[0],
      abstract_opt_state=abstract[1])
  info = restored[checkpoints.TRAIN_INFO]
  logging.info("restored fine-tuning step %d from %s", step, manager.directory)
  return TrainState(
      step=jax.device_put(jnp.int32(info["step"]), layout.shardings.step),
      params=restored[checkpoints.PARAMS],
      opt_state=restored[checkpoints.OPT_STATE])


def read_proteins(path: str, label_format: str, limit: int | None,
                  tasks: Sequence[str], setting: str = "TRAIN_FILE"
                  ) -> list[readers.LabeledProtein]:
  """The proteins of `path` that carry a label for one of `tasks`; errors
  name `setting` (the gin macro that gave `path`), the file and the line."""
  if not fs.path(path).is_file():
    raise FileNotFoundError(f"{setting} {path}: no such file")
  proteins = [p for p in readers.read_labels(path, label_format, limit)
              if readers.has_labels(p, tasks)]
  if not proteins:
    raise ValueError(f"{setting} {path} ({label_format}) has no protein "
                     f"labelled for {list(tasks)}")
  return proteins


def make_config(encoder_config: Any, head: str = "ss_cnn",
                lora: lora_lib.LoraConfig | None = lora_lib.LoraConfig(),
                head_dropout: float = 0.25, freeze_encoder: bool = False,
                regression: bool = False) -> finetune_lib.FinetuneConfig:
  """The fine-tuning network of a model gin file's config (its family's
  encoder; ProtElectra's joint network: its discriminator), a head kind of
  downstream/models.py (`regression`: one real output, task "target" of a
  per-protein head, "residue_target" of the per-residue CNN), and adapters (None: full fine-tuning;
  `freeze_encoder` with None: the head alone)."""
  if isinstance(encoder_config, electra.ElectraPretrainingConfig):
    encoder_config = encoder_config.discriminator
  family = families.of(encoder_config)
  return finetune_lib.FinetuneConfig(
      family.name, encoder_config,
      heads.HeadConfig(head, finetune_lib.encoder_width(encoder_config),
                       dropout=head_dropout, regression=regression), lora,
      freeze_encoder)


def train(*, model_dir: str, config: finetune_lib.FinetuneConfig,
          train_file: str | None = None, validation_file: str | None = None,
          label_format: str = "sample", validation_fraction: float = 0.1,
          train_limit: int | None = None, validation_limit: int | None = None,
          max_length: int = 512, batch_size: int = 8, train_steps: int = 1000,
          learning_rate: optimizers.Schedule = optimizers.constant_schedule(
              1e-3),
          optimizer: optax.GradientTransformation | None = None,
          partition: partitioning.PartitionConfig = (
              partitioning.PartitionConfig()),
          num_microbatches: int = 1,
          seed: int = 0, initial_checkpoint: str | None = None,
          checkpoint_period: int = 500, keep_checkpoints: int | None = None,
          log_period: int = 50, eval_period: int | None = None,
          peak_tflops_per_device: float | None = None,
          compilation_cache_dir: str | None = None,
          profile_first_step: int | None = None, profile_steps: int = 5,
          describe_config: Callable[[], str] | None = None,
          train_proteins: Sequence[readers.LabeledProtein] | None = None,
          validation_proteins: Sequence[readers.LabeledProtein] | None = None
          ) -> dict[str, float]:
  """Fine-tunes to `train_steps` (a total: a resumed run trains the rest).

  The loop is pre-training's (training/loop.py): SIGTERM saves the current
  step and returns; a damaged newest checkpoint step is moved aside to
  `<step>.damaged` and the newest intact one resumed; a non-finite loss,
  gradient norm or update stops the run (`loop.NonFiniteError`) without
  saving it; checkpoints carry integrity records (checkpoints.save).

  Args:
    model_dir: MODEL_DIR (local or a URL); resumed from its latest step.
    config: encoder, head and adapters (`make_config`).
    train_file, label_format, train_limit: the labelled training set
      (`readers.read_labels` formats: netsurfp, deeploc, sample,
      tsv_regression, tsv_residue_regression; the bundled sample when
      None); or pass `train_proteins`.
    validation_file, validation_limit: the validation set; without one,
      the `validation_fraction` of the training file's proteins that
      `data.splits` assigns by id (kept out of training).
    max_length: tokens per protein (longer ones are cut, labels with them).
    batch_size: global batch size (proteins).
    num_microbatches: gradient accumulation steps per batch (the update is
      the whole batch's).
    initial_checkpoint: the pre-trained encoder (a MODEL_DIR or step of its
      family) for a run that has no checkpoint yet.
    optimizer: default `optimizers.adamw()`.
    eval_period: evaluate every this many steps and at the end (None: no
      evaluation).
    describe_config: returns the text written to MODEL_DIR/config.gin
      (prottrans-finetune passes gin's operative config).
    The others as `trainer.train`.

  Returns:
    The last logged training metrics, `eval/<task>` scores (accuracy, or
    Spearman's rho for "target" and "residue_target") if evaluated, and the trainable and total
    parameter counts.
  """
  loop.check_positive(0, **{"finetune.train.train_steps": train_steps})
  loop.check_positive(**{f"finetune.train.{name}": value for name, value in (
      ("batch_size", batch_size), ("num_microbatches", num_microbatches),
      ("checkpoint_period", checkpoint_period), ("log_period", log_period),
      ("max_length", max_length))})
  if keep_checkpoints is not None:
    loop.check_positive(**{"finetune.train.keep_checkpoints": keep_checkpoints})
  if eval_period is not None:
    loop.check_positive(**{"finetune.train.eval_period": eval_period})
  if batch_size % num_microbatches:
    raise ValueError(f"finetune.train.batch_size {batch_size} is not "
                     f"divisible by num_microbatches={num_microbatches}")
  if profile_first_step is not None:
    loop.check_positive(**{"finetune.train.profile_first_step":
                           profile_first_step,
                           "finetune.train.profile_steps": profile_steps})
  tasks = config.head.tasks
  if train_proteins is None:
    train_proteins = read_proteins(
        train_file or sample_corpus.ANNOTATIONS_PATH, label_format,
        train_limit, tasks)
    if validation_file is None and validation_proteins is None:
      validation_proteins = [p for p in train_proteins if splits.split_of(
          p.id, validation_fraction) == splits.VALIDATION]
      train_proteins = [p for p in train_proteins if splits.split_of(
          p.id, validation_fraction) == splits.TRAIN]
  if validation_proteins is None and validation_file and eval_period:
    validation_proteins = read_proteins(validation_file, label_format,
                                        validation_limit, tasks,
                                        "VALIDATION_FILE")
  if compilation_cache_dir:
    loop.use_compilation_cache(compilation_cache_dir)
  optimizer = optimizer or optimizers.adamw()
  model = finetune_lib.FinetuneModel(config)
  model_dir = fs.path(model_dir)
  if jax.process_index() == 0:
    model_dir.mkdir(parents=True, exist_ok=True)
  peak = mfu.peak_tflops_per_device(peak_tflops_per_device)
  with run_lock.hold_on_process_zero(model_dir / loop.LOCK_FILE,
                                    f"fine-tuning run on {model_dir}"):
    model_dir = loop.prepare_model_dir(model_dir, describe_config)
    mesh, rules = partition.mesh(), partition.rules()
    data_shards = mesh.shape[partitioning.DATA_AXIS]
    if (batch_size // num_microbatches) % data_shards:
      raise ValueError(
          f"finetune.train.batch_size {batch_size} / num_microbatches "
          f"{num_microbatches} is not divisible by the mesh's {data_shards} "
          f"data shards ({dict(mesh.shape)})")
    # Watched from here on: a SIGTERM while restoring or compiling saves
    # the first step trained.
    with partitioning.activate(mesh, rules), \
        loop.PreemptionWatch() as preemption:
      return _train(model=model, model_dir=model_dir, config=config,
                    train_proteins=train_proteins,
                    validation_proteins=validation_proteins,
                    max_length=max_length, batch_size=batch_size,
                    train_steps=train_steps, schedule=learning_rate,
                    tx=optimizer, mesh=mesh, rules=rules,
                    num_microbatches=num_microbatches, seed=seed,
                    initial_checkpoint=initial_checkpoint,
                    checkpoint_period=checkpoint_period,
                    keep_checkpoints=keep_checkpoints, log_period=log_period,
                    eval_period=eval_period, peak=peak,
                    profile=loop.ProfileWindow(str(model_dir),
                                               profile_first_step,
                                               profile_steps),
                    preemption=preemption)


def make_step(model, layout: Layout, tx, schedule, seed: int,
              mesh: jax.sharding.Mesh, num_microbatches: int = 1) -> Callable:
  """`train_step` bound and jitted with the layout's shardings."""
  step = functools.partial(train_step, model=model, mask=layout.mask, tx=tx,
                           schedule=schedule, dropout_seed=seed,
                           num_microbatches=num_microbatches)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return jax.jit(step, in_shardings=(layout.shardings, None),
                 out_shardings=(layout.shardings, replicated),
                 donate_argnums=0)


def _train(*, model, model_dir, config, train_proteins, validation_proteins,
           max_length, batch_size, train_steps, schedule, tx, mesh, rules,
           num_microbatches, seed, initial_checkpoint, checkpoint_period,
           keep_checkpoints, log_period, eval_period, peak, profile,
           preemption) -> dict[str, float]:
  layout = plan(model, tx, mesh, rules)
  formula = trainable_count_formula(model, layout.abstract_params)
  logging.info("trainable parameters %d of %d (%s = %d); mesh %s",
               layout.num_trainable, layout.num_params,
               " + ".join(f"{k} {v}" for k, v in formula.items()),
               sum(formula.values()), dict(mesh.shape))
  if layout.num_trainable != sum(formula.values()):
    raise AssertionError(f"trainable parameters {layout.num_trainable} differ "
                         f"from the formula {formula}")
  data = LabelledInput(model, train_proteins, max_length, batch_size, seed)
  manager = checkpoints.checkpoint_manager(model_dir, keep=keep_checkpoints)
  state = loop.restore_newest_intact(manager, functools.partial(
      _restore_step, manager=manager, layout=layout, config=config))
  if state is None:
    params = _initial_params(model, layout, seed, initial_checkpoint)
    state = jax.jit(
        lambda p: TrainState(step=jnp.int32(0), params=p,
                             opt_state=tx.init(lora_lib.split(
                                 p, layout.mask)[0])),
        out_shardings=layout.shardings)(params)
  first_step = int(state.step)
  if first_step >= train_steps:
    logging.warning("%s is at step %d already, and train_steps is %d: "
                    "nothing to train", model_dir, first_step, train_steps)
  step_fn = make_step(model, layout, tx, schedule, seed, mesh,
                      num_microbatches)
  forward = jax.jit(lambda p, b: model(p, b["tokens"], b["mask"]))
  encoder_flops = model.family.encoder_flops(config.encoder, max_length)
  # Forward + backward; LoRA's backward skips the frozen weight gradients
  # (about a third of the encoder's FLOPs), which this does not count.
  flops_per_step = 3 * encoder_flops * batch_size
  train_writer = summaries.SummaryWriter(model_dir / "train")
  eval_writer = summaries.SummaryWriter(model_dir / "eval")
  last = {"trainable_params": float(layout.num_trainable),
          "total_params": float(layout.num_params)}
  timer, timed = time.perf_counter(), 0
  nonfinite = (jnp.int32(-1), jnp.zeros((2,), jnp.float32))
  for step in range(first_step, train_steps):
    done = step + 1
    profile.before(done)
    state, metrics = step_fn(state, _put(data.batch(step), mesh, rules))
    nonfinite = loop.first_nonfinite(nonfinite, jnp.int32(done), metrics)
    timed += 1
    profile.after(done, state)
    preempted = preemption.reached(manager, done)
    saving = (done % checkpoint_period == 0 or done == train_steps
              or preempted)
    if saving or done % log_period == 0:
      # Checked before any save, so a checkpoint never holds a bad step.
      loop.stop_if_nonfinite(nonfinite, manager, model_dir,
                             state.params if saving else None, done)
    if done % log_period == 0 or done == train_steps or preempted:
      metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
      seconds = time.perf_counter() - timer
      tflops = flops_per_step * timed / seconds / 1e12 / jax.device_count()
      metrics.update(
          tokens_per_second=batch_size * max_length * timed / seconds,
          tflops_per_device=tflops, mfu=tflops / peak)
      logging.info("finetune step %d %s", done, loop.format_metrics(metrics))
      train_writer.write(done, metrics)
      last.update(metrics)
      timer, timed = time.perf_counter(), 0
    if saving:
      checkpoints.save(manager, done, params=state.params,
                       opt_state=state.opt_state, train_info={"step": done},
                       config=config)
    if preempted:
      manager.wait_until_finished()
      logging.warning("preempted: saved fine-tuning step %d in %s; run the "
                      "same command again to continue", done, model_dir)
      break
    if validation_proteins and eval_period and (
        done % eval_period == 0 or done == train_steps):
      scores = evaluate(forward, state.params, model, validation_proteins,
                        max_length, batch_size, mesh, rules)
      logging.info("finetune eval step %d %s", done,
                   loop.format_metrics(scores))
      eval_writer.write(done, scores)
      last.update({f"eval/{k}": v for k, v in scores.items()})
  profile.close()
  train_writer.close()
  eval_writer.close()
  manager.wait_until_finished()
  manager.close()
  return last
