"""Pieces of a training loop that pre-training (trainer.py) and fine-tuning
(finetune.py) share, so both runs behave the same where it matters:

- `PreemptionWatch`: SIGTERM (or JAX's preemption sync point across
  processes) makes the loop save the current step and end cleanly.
- `restore_newest_intact` / `move_aside`: a damaged newest checkpoint step
  (checkpoints.DamagedCheckpointError) is moved aside to `<step>.damaged`
  once an older step has restored, with a warning naming it.
- `first_nonfinite` / `stop_if_nonfinite`: a step whose loss, gradient norm
  or updated parameters are not finite stops the run (`NonFiniteError`)
  before that state is saved.
- `ProfileWindow` (JAX profiler traces of chosen steps),
  `use_compilation_cache` (JAX's persistent cache), `check_positive`
  (settings refused by their gin names) and `format_metrics` (log lines).
"""

import dataclasses
import signal
import threading
from typing import Any, Callable, Mapping, Sequence, TypeVar

from absl import logging
from etils import epath
import jax
import jax.numpy as jnp

from prottrans_jax import checkpoints
from prottrans_jax import fs

CONFIG_FILE = "config.gin"
LOCK_FILE = "run.lock"
DAMAGED_SUFFIX = ".damaged"

T = TypeVar("T")


class NonFiniteError(RuntimeError):
  """The loss or gradient norm of a step was not finite: the run stopped
  without saving that state."""


def format_metrics(metrics: Mapping[str, float]) -> str:
  return " ".join(f"{k} {v:.6g}" for k, v in metrics.items())


def restore_newest_intact(manager, restore_step: Callable[[int], T]
                          ) -> T | None:
  """`restore_step(step)` of the newest step of `manager` that restores.

  Damaged newer steps (with an integrity record, so known to be this
  format's) are moved aside to `<step>.damaged` with a warning naming each,
  once an older step has restored; if none restores, nothing is moved and
  the error names the newest. None when there is no step at all.
  """
  damaged = []
  for step in sorted(manager.all_steps(), reverse=True):
    step_dir = fs.path(manager.directory) / str(step)
    try:
      restored = restore_step(step)
    except checkpoints.DamagedCheckpointError as e:
      if not (step_dir / checkpoints.INTEGRITY).exists():
        raise  # Written before integrity records: cannot tell damage apart.
      logging.warning("%s; trying the step before it", e)
      damaged.append(e)
      continue
    move_aside(manager, damaged)
    return restored
  if damaged:
    raise checkpoints.DamagedCheckpointError(
        damaged[0].step_dir,
        f"{damaged[0].reason}; and no older step of {manager.directory} is "
        f"intact (damaged: {', '.join(e.step_dir.name for e in damaged)})")
  return None


class PreemptionWatch:
  """Whether the run has been asked to stop (SIGTERM, as schedulers and TPU
  maintenance events send) and should save and exit.

  One process: a SIGTERM handler sets a flag, checked after every step.
  Several: JAX's preemption service (started by `jax.distributed`) catches
  the signal on any host and agrees on one step at which every process
  stops (`reached_preemption_sync_point`, through Orbax), so they all save
  the same step.
  """

  def __init__(self):
    self._signalled = False
    self._previous = None

  def __enter__(self) -> "PreemptionWatch":
    if (jax.process_count() == 1
        and threading.current_thread() is threading.main_thread()):
      self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
    return self

  def __exit__(self, *exc_info) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def _on_sigterm(self, signum, frame) -> None:
    del signum, frame
    logging.warning("SIGTERM received: saving at the end of this step")
    self._signalled = True

  def reached(self, manager, step: int) -> bool:
    if jax.process_count() > 1:
      return manager.reached_preemption(step)
    return self._signalled


@dataclasses.dataclass
class ProfileWindow:
  """Traces steps `first_step` .. `first_step + num_steps - 1` (counted from
  1, as logged) into `directory` (TensorBoard's profile plugin reads
  `directory/plugins/profile/`)."""
  directory: str
  first_step: int | None
  num_steps: int
  active: bool = False

  def before(self, step: int) -> None:
    if self.first_step is not None and step == self.first_step:
      jax.profiler.start_trace(self.directory)
      self.active = True

  def after(self, step: int, state: Any) -> None:
    if self.active and step == self.first_step + self.num_steps - 1:
      jax.block_until_ready(state)
      jax.profiler.stop_trace()
      self.active = False
      logging.info("profiled steps %d-%d into %s/plugins/profile",
                   self.first_step, step, self.directory)

  def close(self) -> None:
    if self.active:
      jax.profiler.stop_trace()
      self.active = False


def use_compilation_cache(directory: fs.PathLike) -> None:
  """Keeps every compiled program in `directory` (JAX's persistent cache),
  so a restarted or resumed run skips compiling the same step again."""
  jax.config.update("jax_compilation_cache_dir", str(fs.path(directory)))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def check_positive(minimum: int = 1, **values: Any) -> None:
  """Raises ValueError naming each setting (its gin name) that is not an
  integer >= `minimum`: settings that would otherwise do nothing, or fail
  deep in TensorFlow or XLA."""
  bad = [f"{name} must be an integer >= {minimum}, got {value!r}"
         for name, value in values.items()
         if not isinstance(value, int) or isinstance(value, bool)
         or value < minimum]
  if bad:
    raise ValueError("; ".join(bad))


@jax.jit
def first_nonfinite(first: tuple[jax.Array, jax.Array], step: jax.Array,
                     metrics: Mapping[str, jax.Array]
                     ) -> tuple[jax.Array, jax.Array]:
  """(step, [loss, grad_norm]) of the first step whose loss or gradient norm
  was not finite (step -1 while none): kept on the device, so checking every
  step costs no host round trip."""
  finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
  record = (first[0] < 0) & ~finite
  values = jnp.stack([metrics["loss"], metrics["grad_norm"]]).astype(
      jnp.float32)
  return (jnp.where(record, step, first[0]),
          jnp.where(record, values, first[1]))


@jax.jit
def all_finite(tree: Any) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x))
                            for x in jax.tree_util.tree_leaves(tree)]))


def stop_if_nonfinite(first: jax.Array, manager, model_dir: epath.Path,
                       params: Any = None, step: int = 0) -> None:
  """Raises NonFiniteError (after the saves in flight, all of earlier good
  steps, have finished) if a step's loss or gradient norm was not finite,
  or `params` (about to be saved after `step`) are not: an update can
  overflow where the loss and gradients were still finite."""
  bad_step, (loss, grad_norm) = jax.device_get(first)
  if bad_step >= 0:
    what = (f"step {int(bad_step)}: the loss ({float(loss)}) or gradient "
            f"norm ({float(grad_norm)}) is not finite")
  elif params is not None and not bool(all_finite(params)):
    what = f"step {step}: the parameters after the update are not finite"
  else:
    return
  manager.wait_until_finished()
  latest = manager.latest_step()
  manager.close()
  raise NonFiniteError(
      f"{what}; training stopped without saving that state. The last "
      f"checkpoint is "
      + (f"step {latest} in {model_dir}" if latest is not None
         else f"none (nothing saved in {model_dir})")
      + "; every earlier checkpoint is kept. Look for damaged inputs or "
      "parameters, or lower the learning rate, before resuming")


def move_aside(manager, damaged: Sequence[Any]) -> None:
  """Renames each damaged step directory to `<step>.damaged` (kept for
  inspection, no longer a step: the run saves that step number again)."""
  if not damaged:
    return
  if jax.process_index() == 0:
    for error in damaged:
      target = error.step_dir.with_name(error.step_dir.name + DAMAGED_SUFFIX)
      suffix = 1
      while target.exists():
        suffix += 1
        target = error.step_dir.with_name(
            f"{error.step_dir.name}{DAMAGED_SUFFIX}-{suffix}")
      error.step_dir.rename(target)
      logging.warning("moved damaged checkpoint step %s aside to %s",
                      error.step_dir.name, target)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices("prottrans_jax damaged steps moved")
  manager.reload()


def prepare_model_dir(model_dir: fs.PathLike,
                      describe_config: Callable[[], str] | None
                      ) -> epath.Path:
  """MODEL_DIR created (by process 0) with config.gin written in it."""
  model_dir = fs.path(model_dir)
  if jax.process_index() == 0:
    model_dir.mkdir(parents=True, exist_ok=True)
    if describe_config is not None:
      (model_dir / CONFIG_FILE).write_text(describe_config())
  return model_dir
