"""Runs scripts/embed.py in fresh processes, fast.

Crash tests start the embed command dozens of times, killing most runs. A
fresh Python process pays ~8 s importing TensorFlow (through seqio) before
it does anything; here every run is a child of one multiprocessing
*forkserver* that imported the scripts' modules once: each child is a new
process (its own JAX backend, its own devices, killed for real with SIGKILL)
started from that warm state, and compiles through a persistent compilation
cache shared by the children. What runs in the child is the script's
`main` under `absl.app.run`, exactly as from the command line.
"""

import multiprocessing
import os
import pathlib
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
PAUSED_MARKER = "PROTTRANS_JAX_PAUSED"
# One script per forkserver: absl flags are global, and two scripts' flags
# (--output, --overwrite, ...) would collide.
_PRELOAD = ["prottrans_jax.commands.embed"]


def _child(argv: list[str], env: dict[str, str],
           log_path: str, cache_dir: str) -> None:
  """The child: output to `log_path`, the environment, then the script."""
  log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
  os.dup2(log, 1)
  os.dup2(log, 2)
  sys.stdout = os.fdopen(1, "w", buffering=1)
  sys.stderr = os.fdopen(2, "w", buffering=1)
  os.environ.update(env)
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_compilation_cache_dir", cache_dir)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  from absl import app  # pylint: disable=g-import-not-at-top
  from prottrans_jax.commands import embed  # pylint: disable=g-import-not-at-top
  sys.argv = ["embed.py", *argv]
  app.run(embed.main)


class ForkedRunner:
  """Starts scripts/embed.py in children of one warm forkserver."""

  def __init__(self, work_dir: pathlib.Path, devices: int = 2):
    self._context = multiprocessing.get_context("forkserver")
    self._context.set_forkserver_preload(_PRELOAD)
    if str(REPO) not in sys.path:
      sys.path.insert(0, str(REPO))
    self._work_dir = work_dir
    self._cache_dir = str(work_dir / "compilation_cache")
    self._env = {"JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "2",
                 "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    self._runs = 0

  def start(self, argv: list, env: dict[str, str] | None = None):
    """Starts embed.py with `argv`; returns (process, log path)."""
    self._runs += 1
    log = self._work_dir / f"embed_{self._runs}.log"
    process = self._context.Process(
        target=_child, args=(list(map(str, argv)),
                             dict(self._env, **(env or {})), str(log),
                             self._cache_dir))
    process.start()
    return process, log

  def run(self, argv: list, env: dict[str, str] | None = None,
          check: bool = True, timeout: float = 600) -> tuple[int, str]:
    """Runs embed.py to the end; returns (exit code, its output). With
    `check`, anything but exit code 0 fails the test."""
    process, log = self.start(argv, env)
    process.join(timeout)
    if process.exitcode is None:
      process.kill()
      process.join()
    output = log.read_text()
    if check and process.exitcode != 0:
      raise AssertionError(f"embed.py {argv} exited {process.exitcode}:\n"
                           f"{output[-4000:]}")
    return process.exitcode, output

  def run_until_paused(self, argv: list, pause_at: str, timeout: float = 600):
    """Runs embed.py with the test hook PROTTRANS_JAX_PAUSE_AT=`pause_at`,
    waits until it reports the pause, and SIGKILLs it there. Returns the
    paused line, or None if the run ended first (it then exited 0)."""
    process, log = self.start(argv, {"PROTTRANS_JAX_PAUSE_AT": pause_at})
    deadline = time.monotonic() + timeout
    while True:
      paused = [line for line in log.read_text().splitlines()
                if line.startswith(PAUSED_MARKER)] if log.exists() else []
      if paused:
        process.kill()
        process.join()
        return paused[0]
      if not process.is_alive():
        process.join()
        if process.exitcode != 0:
          raise AssertionError(f"embed.py exited {process.exitcode} before "
                               f"pausing at {pause_at}:\n"
                               f"{log.read_text()[-4000:]}")
        return None
      if time.monotonic() > deadline:
        process.kill()
        raise AssertionError(f"embed.py did not pause at {pause_at} in "
                             f"{timeout} s:\n{log.read_text()[-4000:]}")
      time.sleep(0.02)
