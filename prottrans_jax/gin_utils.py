"""Gin at the edges: T5X-style `--gin_file` / `--gin.NAME=VALUE` handling.

Library functions take plain arguments; gin files bind them through
dynamic registration (`from __gin__ import dynamic_registration` and
`import prottrans_jax.training.trainer as trainer`), so no library module
depends on gin. Scripts call `parse` and then the configured function.
"""

import dataclasses
import pathlib
import re
import sys
from typing import Any, Callable, Mapping, Sequence

from absl import app
from absl import flags
from absl import logging
import gin
import seqio

from prottrans_jax import cli

# The gin files shipped in the package. Searched after the working
# directory, so `--gin_file=models/prott5_tiny.gin` (canonical), the older
# `--gin_file=gin/models/prott5_tiny.gin` and `include 'runs/pretrain.gin'`
# inside gin files resolve from any working directory, installed or not.
GIN_DIR = pathlib.Path(__file__).resolve().parent / "gin"
_SEARCH_PATHS = (str(GIN_DIR), str(GIN_DIR.parent))
_added_search_paths: set[str] = set()
_BINDING_FLAG = re.compile(r"^--gin\.(.+)$")
_MACRO = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=")


class GinConfigError(ValueError):
  """A gin file or binding that cannot configure the run."""


def split_gin_bindings(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """(argv without them, bindings) from `--gin.NAME=VALUE` arguments.

  absl would reject these as unknown flags, so they are taken out first.
  """
  rest, bindings = [], []
  for arg in argv:
    match = _BINDING_FLAG.match(arg)
    if match:
      bindings.append(match.group(1))
    else:
      rest.append(arg)
  return rest, bindings


def _add_search_paths() -> None:
  """Adds the package's gin directories to gin's search path, once: gin
  keeps its search path across `gin.clear_config()`."""
  for path in _SEARCH_PATHS:
    if path not in _added_search_paths:
      gin.add_config_file_search_path(path)
      _added_search_paths.add(path)


def _is_required(value: Any) -> bool:
  return (isinstance(value, gin.config.ConfigurableReference)
          and str(value) == "%gin.REQUIRED")


def parse(gin_files: Sequence[str], bindings: Sequence[str],
          unused_macros: Mapping[str, str] | None = None) -> None:
  """Parses files then bindings; every mistake is a `GinConfigError`.

  Caught here, naming the binding: an unknown configurable or parameter
  (gin's own check), a macro set on the command line that no gin file
  defines (a typo gin would otherwise accept silently), a value that does not
  parse, and a macro left at `%gin.REQUIRED` (e.g. MODEL_DIR).

  `unused_macros` maps macros whose value the caller does not need (the
  ahead-of-time compiler has no MODEL_DIR) to a gin value they take where
  they are left `%gin.REQUIRED`.
  """
  gin.clear_config()
  _add_search_paths()
  try:
    gin.parse_config_files_and_bindings(list(gin_files), [],
                                        finalize_config=False)
  except (ValueError, SyntaxError, IOError, NameError) as e:
    # NameError: a configurable's module is not imported in the file
    # (`from __gin__ import dynamic_registration` needs the import line).
    raise GinConfigError(f"in --gin_file: {e}") from e
  for binding in bindings:
    macro = _MACRO.match(binding)
    if macro and "." not in macro.group(1):
      try:
        gin.query_parameter("%" + macro.group(1))
      except ValueError:
        raise GinConfigError(
            f"--gin.{binding}: no gin file defines a macro named "
            f"{macro.group(1)}") from None
    try:
      gin.parse_config_files_and_bindings([], [binding],
                                          finalize_config=False)
    except (ValueError, SyntaxError, NameError) as e:
      raise GinConfigError(f"--gin.{binding}: {e}") from e
  for macro, placeholder in (unused_macros or {}).items():
    try:
      value = gin.query_parameter("%" + macro)
    except ValueError:
      continue  # no gin file defines it
    if _is_required(value):
      gin.parse_config_files_and_bindings([], [f"{macro} = {placeholder}"],
                                          finalize_config=False)
  try:
    gin.finalize()
  except ValueError as e:
    # gin's wording is "X/macro.value set to `%gin.REQUIRED` but not
    # subsequently overridden"; say which flag sets it.
    required = re.match(r"(\w+)/macro\.value", str(e))
    if required:
      raise GinConfigError(
          f"required gin macro {required.group(1)} is not set: pass "
          f"--gin.{required.group(1)}=...") from e
    raise GinConfigError(str(e)) from e


def configured_arguments(fn: Callable[..., Any]) -> dict[str, Any]:
  """The keyword arguments the parsed gin files bind to `fn`: references
  called (`@f()`), macros read; {} if no gin file configures `fn`.

  What the configured `fn` would be called with, less its own defaults; how
  a tool reuses a run's configuration without running it.
  """
  try:
    return dict(gin.get_bindings(fn, resolve_references=True))
  except ValueError:
    return {}


@dataclasses.dataclass(frozen=True)
class GinFlags:
  gin_files: flags.FlagHolder
  tfds_data_dir: flags.FlagHolder


def define_gin_flags() -> GinFlags:
  """--gin_file (repeatable) and --tfds_data_dir, as in T5X; --gin.NAME=VALUE
  bindings are taken from argv by `run_gin_main`."""
  return GinFlags(
      flags.DEFINE_multi_string(
          "gin_file", [], "gin files, in order (model first, then run); "
          "--gin.NAME=VALUE binds a macro or parameter after them."),
      flags.DEFINE_string(
          "tfds_data_dir", None, "Data dir of the TFDS corpora built by "
          "scripts/prepare_corpus.py (uniref50, bfd, ... tasks read there)."))


def run_gin_main(run: Callable[[], None], gin_flags: GinFlags,
                 distributed: cli.DistributedFlags) -> None:
  """Runs `run` after parsing the gin files and --gin.NAME=VALUE bindings.

  A gin typo or a missing required macro exits non-zero with a message that
  names the binding.
  """
  argv, bindings = split_gin_bindings(sys.argv)

  def main(argv):
    del argv
    distributed.initialize()
    if gin_flags.tfds_data_dir.value:
      seqio.set_tfds_data_dir_override(gin_flags.tfds_data_dir.value)
    try:
      parse(gin_flags.gin_files.value, bindings)
    except GinConfigError as e:
      raise app.UsageError(str(e)) from e
    logging.set_verbosity(logging.INFO)
    run()

  app.run(main, argv=argv)


def gin_command(name: str, module_name: str, run: Callable[[], None],
                errors: tuple[type[BaseException], ...] = ()
                ) -> Callable[[], None]:
  """The `start()` of a gin-configured command (prottrans-train, -finetune,
  -eval), one start-up for all of them.

  Call it once, when the command's module (`module_name`, its `__name__`)
  is imported: it defines --gin_file, --tfds_data_dir and the distributed
  flags (listed by that module's --help). The returned function parses the
  command line, the gin files and --gin.NAME=VALUE bindings, and calls
  `run`; an exception of `errors` (ones whose message names the step, file
  or setting) ends the process with "NAME: error: MESSAGE" and status 1
  instead of a traceback.
  """
  gin_flags = define_gin_flags()
  distributed = cli.define_distributed_flags()
  for flag in flags.FLAGS.get_key_flags_for_module(cli.__name__):
    flags.FLAGS.register_key_flag_for_module(module_name, flag)

  def guarded() -> None:
    try:
      run()
    except errors as e:
      sys.exit(f"{name}: error: {e}")

  def start() -> None:
    """Parses the command line and runs the command."""
    run_gin_main(guarded, gin_flags, distributed)

  return start

