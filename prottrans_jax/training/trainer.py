"""The training loop and the evaluation run (what scripts/train.py and
scripts/eval.py call, with arguments bound by gin).

A run owns a MODEL_DIR, a local path or a URL (`gs://bucket/run`; every
path goes through `prottrans_jax.fs`): config.gin (the configuration the run
started with), checkpoints/ (each step recording the model's family and
config, and each process's input position), TensorBoard summaries in train/
and eval/, and profiler traces (plugins/profile/). Started again on the same
MODEL_DIR, a run restores the latest checkpoint and its data position and
continues as if never stopped; SIGTERM (a preemption) saves the current step
and ends the run cleanly.

Nothing silently wrong: process 0 holds MODEL_DIR/run.lock while the run
lasts (`run_lock`), so a second run on it fails naming the first; a damaged
latest step (checkpoints.DamagedCheckpointError) is moved aside to
`<step>.damaged` and the newest intact one restored, with a warning naming
it; a step without optimizer state is resumed only as an explicit
params-only start (`initial_checkpoint`); a step whose loss or gradient norm
is not finite stops the run (`loop.NonFiniteError`) before that state is saved,
so keep-N never drops a good checkpoint for a bad one. These pieces live in
training/loop.py, which the fine-tuning loop (training/finetune.py) uses too.
"""

import dataclasses
import functools
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from prottrans_jax import checkpoints
from prottrans_jax import families
from prottrans_jax import fs
from prottrans_jax import partitioning
from prottrans_jax import run_lock
from prottrans_jax.training import inputs
from prottrans_jax.training import loop
from prottrans_jax.training import mfu
from prottrans_jax.training import objectives
from prottrans_jax.training import optimizers
from prottrans_jax.training import steps
from prottrans_jax.training import summaries
from prottrans_jax.training import train_state as train_state_lib


def init_fn(family: families.ModelFamily, model: nn.Module) -> Callable[[jax.Array], Any]:
  """rng -> boxed params of `model` (what the layout is planned from)."""
  return functools.partial(family.init, model)


def _abstract(tree: Any, shardings: Any) -> Any:
  return jax.tree_util.tree_map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      tree, shardings)


@dataclasses.dataclass(frozen=True)
class TrainStep:
  """A configuration's train step, built and jitted but not yet compiled.

  What `train` runs and what the ahead-of-time tool (training/aot.py)
  compiles for a TPU topology: both get it from `build_train_step`.

  Attributes:
    family, objective, model: the model family record, its training
      objective and the Flax module.
    init: rng -> boxed params (what the layout is planned from).
    mesh, rules: the device mesh and logical-axis rules in effect.
    layout: abstract train state and its shardings.
    batch_sharding: sharding of every [batch, length] input feature.
    step_fn: `steps.make_train_step`'s jitted step.
    abstract_state, abstract_batch: the step's arguments as sharded
      ShapeDtypeStructs (nothing allocated).
    trained_lengths: the task feature lengths of each row one step trains
      on (the task's, or one segment where the memory is carried between
      steps): what tokens per second and model FLOPs count.
    segment_length: tokens of each row a step trains on where the memory
      is carried between steps (the input cuts rows into windows); None
      otherwise.
  """
  family: families.ModelFamily
  objective: Any
  model: nn.Module
  init: Callable[[jax.Array], Any]
  mesh: jax.sharding.Mesh
  rules: partitioning.LogicalRules
  layout: train_state_lib.StateLayout
  batch_sharding: jax.sharding.NamedSharding
  step_fn: Callable
  abstract_state: train_state_lib.TrainState
  abstract_batch: dict[str, jax.ShapeDtypeStruct]
  trained_lengths: dict[str, int]
  segment_length: int | None

  def lower(self) -> jax.stages.Lowered:
    """The step traced for its abstract arguments, under its mesh and rules."""
    with partitioning.activate(self.mesh, self.rules):
      return self.step_fn.lower(self.abstract_state, self.abstract_batch)


def build_train_step(*, model_config: Any, optimizer: optax.GradientTransformation,
                     learning_rate: optimizers.Schedule,
                     loss: steps.LossConfig,
                     partition: partitioning.PartitionConfig,
                     batch_size: int, task_feature_lengths: Mapping[str, int],
                     num_microbatches: int, seed: int,
                     carry_memory_between_steps: bool = False,
                     devices: Sequence[jax.Device] | None = None) -> TrainStep:
  """The train step `train` runs for these arguments (`train`'s own names).

  Args:
    devices: what the mesh is laid over; default all devices. They may be a
      TPU topology's compile-only devices (nothing is placed on them here:
      the state and batch are abstract).
  """
  family = families.of(model_config)
  objective = family.objective()
  if carry_memory_between_steps:
    if objective.between_steps is None:
      raise ValueError(
          f"trainer.train.carry_memory_between_steps: the {family.name} family "
          "has no memory to carry between steps (Transformer-XL's alone does)")
    if num_microbatches != 1:
      raise ValueError(
          f"trainer.train.num_microbatches={num_microbatches}: microbatches "
          "are not supported with carry_memory_between_steps (the memory "
          "would have to be split and joined with the rows)")
    objective = objective.between_steps
  feature_lengths = objective.step_feature_lengths(task_feature_lengths, model_config)
  mesh = partition.mesh(devices)
  rules = partition.rules()
  data_shards = mesh.shape[partitioning.DATA_AXIS]
  if batch_size < 1 or num_microbatches < 1:
    raise ValueError(f"batch size ({batch_size}) and num_microbatches "
                     f"({num_microbatches}) must be positive")
  if batch_size % num_microbatches:
    raise ValueError(f"batch size {batch_size} is not divisible by "
                     f"num_microbatches={num_microbatches}")
  if batch_size % data_shards:
    raise ValueError(f"batch size {batch_size} is not divisible by the "
                     f"mesh's {data_shards} data shards ({dict(mesh.shape)})")
  model = family.module(model_config)
  init = init_fn(family, model)
  memory = objective.memory
  segment_length = None if memory is None else memory.segment_length(model_config)
  with partitioning.activate(mesh, rules):
    layout = train_state_lib.state_layout(
        init, optimizer, mesh, rules,
        init_memory=None if memory is None else functools.partial(
            memory.init, model, batch_size),
        memory_axes=None if memory is None else memory.axes)
    batch_sharding = partitioning.batch_sharding(mesh, rules)
  step_fn = steps.make_train_step(
      model=model, objective=objective, tx=optimizer, schedule=learning_rate,
      loss_config=loss, dropout_seed=seed, num_microbatches=num_microbatches,
      layout=layout, batch_sharding=batch_sharding)
  abstract_batch = {
      name: jax.ShapeDtypeStruct((batch_size, *shape), jnp.int32, sharding=batch_sharding)
      for name, shape in objective.batch_shapes(feature_lengths).items()}
  return TrainStep(
      family=family, objective=objective, model=model, init=init, mesh=mesh,
      rules=rules, layout=layout, batch_sharding=batch_sharding,
      step_fn=step_fn,
      abstract_state=_abstract(layout.abstract_state, layout.shardings),
      abstract_batch=abstract_batch,
      trained_lengths=dict(task_feature_lengths) if segment_length is None else {
          k: segment_length for k in task_feature_lengths},
      segment_length=segment_length)


def run_eval(eval_step: Callable, params: Any,
             batches: Iterable[inputs.Batch],
             batch_sharding: jax.sharding.Sharding,
             global_batch_size: int,
             objective: objectives.Objective) -> dict[str, float]:
  """Loss, perplexity, masked-residue accuracy and the objective's own eval
  metrics (ELECTRA: the discriminator's ROC AUC) over `batches` (this
  process's rows of each global batch)."""
  totals = None
  for rows in batches:
    sums = eval_step(params, partitioning.global_batch_from_process_rows(
        rows, batch_sharding, global_batch_size))
    totals = sums if totals is None else jax.tree_util.tree_map(
        jnp.add, totals, sums)
  if totals is None:
    raise ValueError("the evaluation split yielded no batches")
  return steps.eval_metrics(jax.device_get(totals), objective)


def _restore_or_init(*, manager, layout, init, tx, seed: int,
                     initial_checkpoint: str | None, config: Any,
                     train_input: inputs.TrainInput
                     ) -> tuple[train_state_lib.TrainState, int]:
  """The state to start from and the number of batches already consumed;
  `train_input` is moved to the checkpoint's data position.

  The newest intact step of MODEL_DIR is restored: damaged newer steps
  (with an integrity record, so known to be this format's) are moved aside
  to `<step>.damaged` with a warning naming each, once an older step has
  restored; if none restores, nothing is moved and the error names the
  newest. Checkpoints hold the canonical layout; restores come back in
  `config`'s (the run's model config: scanned or not), whichever wrote them.
  """
  restored = loop.restore_newest_intact(manager, functools.partial(
      _restore_step, manager=manager, layout=layout, tx=tx,
      initial_checkpoint=initial_checkpoint, config=config,
      train_input=train_input))
  if restored is not None:
    return restored
  if initial_checkpoint:
    _, _, params = checkpoints.restore_params(
        initial_checkpoint, shardings=layout.shardings.params,
        layout_config=config)
    logging.info("initialised params from %s; optimizer state fresh",
                 initial_checkpoint)
    return train_state_lib.state_from_params(params, tx, layout, 0), 0
  return train_state_lib.init_state(init, tx, layout,
                                    jax.random.key(seed)), 0


def _restore_step(step: int, *, manager, layout, tx,
                  initial_checkpoint: str | None, config: Any,
                  train_input: inputs.TrainInput
                  ) -> tuple[train_state_lib.TrainState, int]:
  """`_restore_or_init` of one step: a training step resumes exactly
  (state, optimizer, data position); a params-only step (a converter's)
  only when the user asked for a params-only start."""
  abstract = _abstract(layout.abstract_state, layout.shardings)
  step_dir = fs.path(manager.directory) / str(step)
  record = checkpoints.read_integrity(step_dir)
  written_by_training = (
      record["kind"] == "train" if record is not None else any(
          (step_dir / item).exists() for item in (
              checkpoints.OPT_STATE, checkpoints.TRAIN_INFO,
              checkpoints.DATASET)))
  if written_by_training:
    # From the record where there is one: a carried step that lost its
    # memory/ is damaged, not a step of the other mode.
    carried = (checkpoints.MEMORY in record["items"] if record is not None
               else checkpoints.has_item(manager, step, checkpoints.MEMORY))
    if carried != (abstract.memory is not None):
      # Not damage: the other mode's data position counts other batches.
      raise ValueError(
          f"checkpoint step {step} ({step_dir}) was written by a run "
          f"{'with' if carried else 'without'} carry_memory_between_steps; "
          f"resume it with the same trainer.train.carry_memory_between_steps "
          f"({carried}), or start a new MODEL_DIR from it with "
          f"initial_checkpoint")
    data_dir = step_dir / checkpoints.DATASET
    with_data = train_input.has_state(data_dir)
    restored = checkpoints.restore_train_items(
        manager, step, config=config, abstract_params=abstract.params,
        abstract_opt_state=abstract.opt_state,
        data_state=inputs.DataStateRestore(train_input) if with_data else None,
        abstract_memory=abstract.memory)
    info = restored[checkpoints.TRAIN_INFO]
    state = train_state_lib.TrainState(
        step=jax.device_put(jnp.int32(info["step"]), layout.shardings.step),
        params=restored[checkpoints.PARAMS],
        opt_state=restored[checkpoints.OPT_STATE],
        memory=restored.get(checkpoints.MEMORY))
    batches_consumed = int(info["batches_consumed"])
    if with_data:
      logging.info("restored step %d and its data position from %s", step,
                   manager.directory)
    else:
      # A checkpoint from before data states were saved, or one written by
      # a different number of processes (its shards are not this run's).
      logging.warning(
          "restored step %d from %s, which has no data state for %s; "
          "reading and skipping %d batches of this process's input shard "
          "(slow; the data order differs from the interrupted run's if the "
          "number of processes changed)", step, manager.directory,
          train_input.state_file_name(), batches_consumed)
      train_input.skip(batches_consumed)
    return state, batches_consumed
  if not initial_checkpoint:
    raise ValueError(
        f"checkpoint step {step} ({step_dir}) is params-only (no "
        f"{checkpoints.OPT_STATE}/ or {checkpoints.TRAIN_INFO}/): resuming "
        f"from it would start a fresh optimizer and read the data from its "
        f"first batch. To fine-tune from it, set "
        f"trainer.train.initial_checkpoint (INITIAL_CHECKPOINT_PATH of "
        f"runs/finetune.gin) to {step_dir}")
  params = checkpoints.restore_train_items(
      manager, step, config=config,
      abstract_params=abstract.params)[checkpoints.PARAMS]
  logging.warning(
      "params-only start (initial_checkpoint is set): fine-tuning from the "
      "params-only checkpoint at step %d in %s, which takes precedence over "
      "initial_checkpoint; optimizer state initialised fresh, data read from "
      "its first batch", step, manager.directory)
  return train_state_lib.state_from_params(params, tx, layout, step), 0


def train(*, model_dir: str, model_config: Any, task_name: str,
          task_feature_lengths: Mapping[str, int], batch_size: int,
          train_steps: int, learning_rate: optimizers.Schedule,
          optimizer: optax.GradientTransformation,
          partition: partitioning.PartitionConfig = (
              partitioning.PartitionConfig()),
          loss: steps.LossConfig = steps.LossConfig(),
          num_microbatches: int = 1, seed: int = 0,
          carry_memory_between_steps: bool = False,
          checkpoint_period: int = 1000, keep_checkpoints: int | None = None,
          log_period: int = 100, eval_period: int | None = None,
          eval_batches: int | None = None,
          peak_tflops_per_device: float | None = None,
          initial_checkpoint: str | None = None,
          compilation_cache_dir: str | None = None,
          profile_first_step: int | None = None, profile_steps: int = 5,
          describe_config: Callable[[], str] | None = None
          ) -> dict[str, float]:
  """Trains to `train_steps` (a total: a resumed run trains the rest).

  Args:
    model_dir: MODEL_DIR (local or a URL such as gs://bucket/run);
      checkpoints, summaries, traces and configs go here.
    model_config: the network: a config of any family of
      prottrans_jax/families.py (which gives its init and objective).
    task_name: seqio task or mixture (MIXTURE_OR_TASK_NAME).
    task_feature_lengths: {"inputs": n, "targets": m}.
    batch_size: global batch size (examples after packing); each process
      reads its shard's share (training/inputs.py).
    train_steps: step to train to.
    learning_rate: schedule evaluated at the train state's step.
    optimizer: an `optimizers` transformation (learning rate injected).
    partition: mesh shape and logical-axis rules.
    loss: z-loss and loss normalizing factor.
    num_microbatches: gradient accumulation steps per batch.
    seed: parameter init, data order and dropout all derive from it.
    carry_memory_between_steps: train as Transformer-XL trains: each packed
      row is a stream of `segment_length` segments, one step trains on the
      next segment of every row with the memory the previous step left (a
      part of the train state, checkpointed with it), the parameters
      updated every segment (objectives.CarriedMemory). Only families with
      such a memory (transfo_xl); off, a row trains in one step.
    checkpoint_period: save every this many steps (and at the end, and
      when preempted).
    keep_checkpoints: how many to keep (None: all).
    log_period: log and summarise every this many steps (and at the end).
    eval_period: evaluate on the validation split every this many steps and
      at the end; None: no evaluation during training.
    eval_batches: cap on validation batches per evaluation (None: the
      whole split).
    peak_tflops_per_device: MFU denominator; default by device kind.
    initial_checkpoint: params-only start (fine-tuning) when MODEL_DIR has
      no checkpoint yet: a MODEL_DIR or step directory.
    compilation_cache_dir: JAX's persistent compilation cache (local or a
      URL); None: no cache.
    profile_first_step: first step to trace with the JAX profiler (counted
      from 1); None: no trace.
    profile_steps: how many steps to trace.
    describe_config: returns the configuration text written to
      MODEL_DIR/config.gin at the start (scripts pass gin's operative config).

  Returns:
    The last logged training metrics, plus `eval/...` ones if evaluated.

  Raises:
    run_lock.LockHeldError: another run holds MODEL_DIR.
    checkpoints.DamagedCheckpointError: no intact step to resume (naming
      the newest damaged one).
    loop.NonFiniteError: a step's loss or gradient norm was not finite.
  """
  arguments = dict(locals())
  # TRAIN_STEPS=0 sets MODEL_DIR up, compiles the step and stops (logged:
  # "nothing to train"), a check of a configuration before a long run.
  loop.check_positive(0, **{"TRAIN_STEPS (trainer.train.train_steps)": train_steps})
  loop.check_positive(**{"BATCH_SIZE (trainer.train.batch_size)": batch_size,
                    "trainer.train.num_microbatches": num_microbatches,
                    "trainer.train.checkpoint_period": checkpoint_period,
                    "trainer.train.log_period": log_period})
  if keep_checkpoints is not None:
    loop.check_positive(**{"trainer.train.keep_checkpoints": keep_checkpoints})
  if eval_period is not None:
    loop.check_positive(**{"trainer.train.eval_period": eval_period})
  if profile_first_step is not None and (profile_first_step < 1
                                         or profile_steps < 1):
    raise ValueError(
        f"profile_first_step ({profile_first_step}) and profile_steps "
        f"({profile_steps}) must be >= 1: steps are counted from 1")
  if compilation_cache_dir:
    loop.use_compilation_cache(compilation_cache_dir)
  model_dir = fs.path(model_dir)
  if jax.process_index() == 0:
    model_dir.mkdir(parents=True, exist_ok=True)
  with run_lock.hold_on_process_zero(model_dir / loop.LOCK_FILE,
                                    f"training run on {model_dir}"):
    return _train_holding_lock(**arguments)


def _train_holding_lock(*, model_dir: str, model_config: Any, task_name: str,
                        task_feature_lengths: Mapping[str, int],
                        batch_size: int, train_steps: int,
                        learning_rate: optimizers.Schedule,
                        optimizer: optax.GradientTransformation,
                        partition: partitioning.PartitionConfig,
                        loss: steps.LossConfig, num_microbatches: int,
                        seed: int, carry_memory_between_steps: bool,
                        checkpoint_period: int,
                        keep_checkpoints: int | None, log_period: int,
                        eval_period: int | None, eval_batches: int | None,
                        peak_tflops_per_device: float | None,
                        initial_checkpoint: str | None,
                        compilation_cache_dir: str | None,
                        profile_first_step: int | None, profile_steps: int,
                        describe_config: Callable[[], str] | None
                        ) -> dict[str, float]:
  """`train` once MODEL_DIR is locked (its arguments, checked)."""
  del compilation_cache_dir  # In effect already.
  model_dir = loop.prepare_model_dir(model_dir, describe_config)

  # Measured (on CPU) before the mesh is in effect: the benchmark runs on
  # one device.
  peak = mfu.peak_tflops_per_device(peak_tflops_per_device)
  train_step = build_train_step(
      model_config=model_config, optimizer=optimizer,
      learning_rate=learning_rate, loss=loss, partition=partition,
      batch_size=batch_size, task_feature_lengths=task_feature_lengths,
      num_microbatches=num_microbatches, seed=seed,
      carry_memory_between_steps=carry_memory_between_steps)
  family, objective = train_step.family, train_step.objective
  model, init = train_step.model, train_step.init
  mesh, rules = train_step.mesh, train_step.rules
  with partitioning.activate(mesh, rules):
    layout, batch_sharding = train_step.layout, train_step.batch_sharding
    shard = inputs.input_shard(batch_sharding, batch_size)
    inputs.log_shard(shard, batch_size)
    train_input = inputs.TrainInput(task_name, task_feature_lengths, shard,
                                    seed, objective.feature_converter,
                                    train_step.segment_length)
    manager = checkpoints.checkpoint_manager(model_dir, keep=keep_checkpoints)
    state, batches_consumed = _restore_or_init(
        manager=manager, layout=layout, init=init, tx=optimizer, seed=seed,
        initial_checkpoint=initial_checkpoint, config=model_config,
        train_input=train_input)
    first_step = int(state.step)
    if first_step >= train_steps:
      logging.warning("%s is at step %d already, and train_steps is %d: "
                      "nothing to train", model_dir, first_step, train_steps)

    compile_start = time.perf_counter()
    step_fn = train_step.lower().compile()
    logging.info("train step compiled in %.1fs; mesh %s; params %d",
                 time.perf_counter() - compile_start, dict(mesh.shape),
                 sum(x.size for x in jax.tree_util.tree_leaves(
                     layout.abstract_state.params)))
    eval_step = steps.make_eval_step(
        model=model, objective=objective, mask_id=inputs.mask_id(task_name),
        params_shardings=layout.shardings.params,
        batch_sharding=batch_sharding) if eval_period else None

    # Aligned (masked-LM) inputs and targets are one token stream.
    trained = train_step.trained_lengths
    tokens_per_step = batch_size * sum(trained[k] for k in objective.length_keys)
    flops_per_step = family.training_flops(model_config, trained) * batch_size
    train_summaries = summaries.SummaryWriter(model_dir / "train")
    eval_summaries = summaries.SummaryWriter(model_dir / "eval")
    profile = loop.ProfileWindow(str(model_dir), profile_first_step, profile_steps)
    last = {}
    timer, timed_steps = time.perf_counter(), 0
    nonfinite = (jnp.int32(-1), jnp.zeros((2,), jnp.float32))
    with loop.PreemptionWatch() as preemption:
      for step in range(first_step, train_steps):
        done = step + 1
        profile.before(done)
        batch = partitioning.global_batch_from_process_rows(
            next(train_input), batch_sharding, batch_size)
        state, metrics = step_fn(state, batch)
        nonfinite = loop.first_nonfinite(nonfinite, jnp.int32(done), metrics)
        batches_consumed += 1
        timed_steps += 1
        profile.after(done, state)
        preempted = preemption.reached(manager, done)
        saving = (done % checkpoint_period == 0 or done == train_steps
                  or preempted)
        if saving or done % log_period == 0:
          loop.stop_if_nonfinite(nonfinite, manager, model_dir,
                             state.params if saving else None, done)
        if done % log_period == 0 or done == train_steps or preempted:
          metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
          seconds = time.perf_counter() - timer
          tflops = flops_per_step * timed_steps / seconds / 1e12 / (
              jax.device_count())
          metrics.update({
              "tokens_per_second": tokens_per_step * timed_steps / seconds,
              "tflops_per_device": tflops,
              "mfu": tflops / peak,
          })
          logging.info(
              "step %d loss %.6g learning_rate %.4g tokens/s %.1f "
              "TFLOP/s/device %.4g MFU %.2f%% (%s)", done, metrics["loss"],
              metrics["learning_rate"], metrics["tokens_per_second"], tflops,
              100 * metrics["mfu"], loop.format_metrics(metrics))
          train_summaries.write(done, metrics)
          last = metrics
        if saving:
          checkpoints.save(
              manager, done, params=state.params, opt_state=state.opt_state,
              train_info={"step": done, "batches_consumed": batches_consumed},
              config=model_config,
              data_state=inputs.DataStateSave(train_input),
              memory=state.memory)
        if preempted:
          manager.wait_until_finished()
          logging.warning("preempted: saved step %d in %s; run the same "
                          "command again to continue", done, model_dir)
          break
        if eval_step is not None and (done % eval_period == 0 or
                                      done == train_steps):
          evaluated = run_eval(
              eval_step, state.params,
              inputs.eval_batches(
                  task_name, task_feature_lengths, shard,
                  max_batches=eval_batches,
                  feature_converter=objective.feature_converter),
              batch_sharding, batch_size, objective)
          logging.info("eval step %d %s", done, loop.format_metrics(evaluated))
          eval_summaries.write(done, evaluated)
          last.update({f"eval/{k}": v for k, v in evaluated.items()})
        if done % log_period == 0:
          timer, timed_steps = time.perf_counter(), 0
    profile.close()
    train_summaries.close()
    eval_summaries.close()
    manager.wait_until_finished()
    manager.close()
  return last


def evaluate(*, model_dir: str, task_name: str,
             task_feature_lengths: Mapping[str, int], batch_size: int,
             partition: partitioning.PartitionConfig = (
                 partitioning.PartitionConfig()),
             split: str = "validation", eval_batches: int | None = None,
             checkpoint: str | None = None) -> dict[str, float]:
  """Evaluates a checkpoint (default: MODEL_DIR's latest) on a split.

  Reports loss, perplexity, token accuracy, masked-residue accuracy and the
  most-common-residue baseline; writes them to MODEL_DIR/eval_<split>.
  Each process reads its shard of the split, as in training.
  """
  model_dir = fs.path(model_dir)
  mesh, rules = partition.mesh(), partition.rules()
  with partitioning.activate(mesh, rules):
    step_dir = checkpoints.step_directory(checkpoint or model_dir)
    model_name, config = checkpoints.checkpoint_model_config(step_dir)
    family = families.get(model_name)
    objective = family.objective()
    shardings = partitioning.params_shardings(
        families.abstract_params(family, config), mesh, rules)
    _, _, params = checkpoints.restore_params(step_dir, shardings=shardings)
    batch_sharding = partitioning.batch_sharding(mesh, rules)
    eval_step = steps.make_eval_step(
        model=family.module(config), objective=objective,
        mask_id=inputs.mask_id(task_name), params_shardings=shardings,
        batch_sharding=batch_sharding)
    shard = inputs.input_shard(batch_sharding, batch_size)
    metrics = run_eval(
        eval_step, params,
        inputs.eval_batches(task_name, task_feature_lengths, shard,
                            split=split, max_batches=eval_batches,
                            feature_converter=objective.feature_converter),
        batch_sharding, batch_size, objective)
  logging.info("eval %s of %s: %s", split, step_dir, loop.format_metrics(metrics))
  writer = summaries.SummaryWriter(model_dir / f"eval_{split}")
  writer.write(int(step_dir.name), metrics)
  writer.close()
  return metrics
