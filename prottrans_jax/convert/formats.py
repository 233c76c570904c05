"""Reading and writing each checkpoint format, and converting between them.

Formats: "hf" (a Hugging Face directory: config.json + safetensors or
pytorch_model.bin), "t5x" (native T5X, both layouts) and "native" (this
project's Orbax MODEL_DIR). Which model a Hugging Face directory holds is
its config.json's `model_type`, looked up in the family records
(prottrans_jax/families.py), whose `hf_converter` knows the names; the
file formats themselves are hf_io.py, t5x.py and prottrans_jax/checkpoints.py.

Every reader returns `{our flat name: loader}` (mapping.Loader); every
writer pulls tensors through the loaders one at a time, so every conversion
streams: peak memory is about one tensor whatever the checkpoint's size
(bench/convert_memory.py measures it on ProtT5-XL). Native checkpoints are
read one leaf per restore and written with `checkpoints.LazyArray` leaves.

A Hugging Face input may also be a Hub model id (`owner/name[@revision]`,
resolved to its directory in the Hub cache by `hf_io.resolve_model`).

Inputs and outputs may be URLs (`gs://bucket/...`), through
`prottrans_jax.fs`: Orbax reads and writes native checkpoints there itself;
Hugging Face and T5X files are read from a local copy of the input
(`convert_checkpoint` copies a URL input to a temporary directory first:
local disk for the checkpoint's size), and a Hugging Face export to a URL is
written to a temporary directory and uploaded when it is complete.
"""
import contextlib
import dataclasses
import json
import logging
import os
import pathlib
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import tqdm

from prottrans_jax import checkpoints
from prottrans_jax import families
from prottrans_jax import fs
from prottrans_jax.convert import hf_io
from prottrans_jax.convert import mapping
from prottrans_jax.convert import t5x
from prottrans_jax.convert import tokenizer_files

logger = logging.getLogger(__name__)

SOURCES = ("hf", "t5x", "native")
TARGETS = ("native", "hf")
# config.json files from before transformers wrote `model_type` are T5's.
_DEFAULT_MODEL_TYPE = "t5"


def _hf_family(hf_config: dict) -> families.ModelFamily:
  try:
    return families.for_hf_model_type(hf_config.get("model_type", _DEFAULT_MODEL_TYPE))
  except ValueError as e:
    raise mapping.ConversionError(str(e)) from None


def _converter(config: Any) -> mapping.HfConverter:
  family = families.of(config)
  if family.hf_converter is None:
    raise mapping.ConversionError(
        f"a {family.name!r} model has no Hugging Face counterpart"
        + ("; export its generator or discriminator (models/electra.py "
           "generator_params / discriminator_params)" if family.name == "electra_pretraining"
           else ""))
  return family.hf_converter


def read_hf_checkpoint(directory: os.PathLike, encoder_only: Optional[bool] = None,
                       **config_overrides: Any
                       ) -> tuple[Any, dict[str, mapping.Loader], bool]:
  """(config, {our name: loader}, encoder_only) of a local Hugging Face
  directory or a Hub model id (`hf_io.resolve_model`); the loaders read it
  when called (copy a URL with `fs.local_copy` and call them inside its
  block).

  Any model type a family record has a converter for (ProtT5, ProtBert,
  ProtAlbert, ProtElectra, ProtXLNet). `encoder_only=None` keeps what the
  checkpoint holds (a T5EncoderModel, a BertModel without pooler or an
  XLNetModel is encoder-only);
  True skips the decoder / heads. Names and shapes are checked before
  anything large is read.
  """
  directory = hf_io.resolve_model(directory).directory
  hf_config = hf_io.load_hf_config(directory)
  converter = _hf_family(hf_config).hf_converter
  architecture = converter.architecture(hf_config)
  config = converter.config_from_hf(hf_config, **config_overrides)
  loaders, parts = mapping.read_state_dict(hf_io.LazyStateDict(directory), converter, config,
                                           architecture, bool(encoder_only))
  return config, loaders, not parts


def write_hf_checkpoint(directory: os.PathLike, params: dict[str, mapping.Loader],
                        config: Any, *, encoder_only: bool = False, dtype: str = "float32",
                        max_shard_bytes: int = hf_io.DEFAULT_MAX_SHARD_BYTES,
                        on_tensor: Optional[Callable[[str], None]] = None,
                        tokenizer_from: Optional[os.PathLike] = None
                        ) -> list[os.PathLike]:
  """Writes config.json, safetensors (sharded above `max_shard_bytes`) and
  the tokenizer files of `config`'s model type (convert/tokenizer_files.py:
  ours, or with `tokenizer_from` the files of that local directory, checked
  to give every token our id).

  `params` maps our flat names to loaders (`mapping.loaders_of` wraps
  arrays); the architecture follows the parts they hold (none with
  `encoder_only`). `directory` may be a URL: the files are written to a
  local temporary directory and uploaded once all are written. Returns the
  files written (under `directory`).
  """
  if dtype not in hf_io.EXPORT_DTYPES:
    raise ValueError(f"dtype must be one of {sorted(hf_io.EXPORT_DTYPES)}, got {dtype!r}")
  converter = _converter(config)
  np_dtype = hf_io.EXPORT_DTYPES[dtype]
  architecture, tensors = mapping.hf_tensors(params, converter, config, encoder_only, np_dtype)
  # Checked before any tensor is written: a mismatch costs no export time.
  tokenizer = (converter.tokenizer_files(config) if tokenizer_from is None else
               tokenizer_files.released_files(tokenizer_from, converter.model_type))
  files = {hf_io.CONFIG_FILE: json.dumps(converter.hf_config(config, architecture, dtype),
                                         indent=2) + "\n", **tokenizer}
  with fs.staged_output(directory) as local:
    written = hf_io.write_safetensors(
        local, [(name, shape, load) for name, (shape, load) in tensors.items()], np_dtype,
        max_shard_bytes, on_tensor)
    for name, content in files.items():
      if isinstance(content, bytes):
        (local / name).write_bytes(content)
      else:
        (local / name).write_text(content, encoding="utf-8")
    if fs.is_remote(directory):
      logger.info("uploading %s to %s", local, directory)
  # Every file is directly in the directory; named under `directory` as given.
  out = fs.path(directory) if fs.is_remote(directory) else pathlib.Path(directory)
  return [out / p.name for p in written] + [out / name for name in files]


def read_checkpoint(source: str, input_dir: os.PathLike, encoder_only: Optional[bool] = None
                    ) -> tuple[Any, dict[str, mapping.Loader], bool, Optional[int]]:
  """(config, loaders, encoder_only, step) of a checkpoint in format `source`.

  `encoder_only=None` keeps what the checkpoint holds; True drops
  everything outside the encoder (T5's decoder, the BERT family's heads).
  A "native" `input_dir` may be a URL (Orbax reads it); "hf" and "t5x" are
  read from local disk and their loaders read it when called
  (`convert_checkpoint` copies a URL to a local directory for its run). An
  "hf" `input_dir` may be a Hub model id (`hf_io.resolve_model`).
  """
  if source == "hf":
    input_dir = hf_io.resolve_model(input_dir).directory
  _require_input(input_dir)
  if source == "hf":
    config, loaders, encoder_only = read_hf_checkpoint(input_dir, encoder_only)
    return config, loaders, encoder_only, None
  if source == "t5x":
    config, loaders, step = t5x.read_t5x_checkpoint(input_dir, bool(encoder_only))
    return config, loaders, bool(encoder_only), step
  if source == "native":
    _, config, params = checkpoints.lazy_params(input_dir)
    _converter(config)  # Only models with a Hugging Face counterpart convert.
    outside = families.of(config).non_encoder_parts
    flat = mapping.flatten(params)
    encoder_only = bool(encoder_only) or not any(mapping.top_level(n) in outside for n in flat)
    if encoder_only:
      flat = {n: a for n, a in flat.items() if mapping.top_level(n) not in outside}
    return config, {n: lazy.load for n, lazy in flat.items()}, encoder_only, None
  raise ValueError(f"Unknown source format {source!r}; expected one of {SOURCES}")


def _our_shapes(config: Any, encoder_only: bool,
                names: Sequence[str]) -> dict[str, tuple[int, ...]]:
  """Our parameter names and shapes for `config`; `names` (what the source
  holds) say which parts (decoder, heads) it has."""
  converter = _converter(config)
  return converter.expected_shapes(config, () if encoder_only else
                                   converter.parts_of_params(names))


def mapping_lines(source: str, target: str, input_dir: os.PathLike, config: Any,
                  encoder_only: bool, names: Sequence[str]) -> list[str]:
  """One line per tensor: source name -> our name -> target name, shape."""
  shapes = _our_shapes(config, encoder_only, names)
  converter = _converter(config)
  parts = () if encoder_only else converter.parts_of_params(names)
  architecture = (converter.architecture(hf_io.load_hf_config(input_dir)) if source == "hf"
                  else converter.architecture_for(config, parts))
  hf_names = {m.ours: m.hf for m in converter.tensor_plan(config, architecture, parts)}
  name_in = {"hf": hf_names.get, "t5x": lambda n: f"target/{n}", "native": str}
  name_out = {"hf": hf_names.get, "native": lambda n: f"params/{n}"}
  return [f"{name_in[source](n)} -> {n} -> {name_out[target](n)} {shape}"
          for n, shape in shapes.items()]


def _require_input(input_dir: os.PathLike) -> None:
  if not fs.path(input_dir).is_dir():
    raise FileNotFoundError(f"Input directory does not exist: {input_dir}")


@contextlib.contextmanager
def _local_input(source: str, input_dir: os.PathLike) -> Iterator[os.PathLike]:
  """`input_dir` where `source`'s reader can read it for the whole block: as
  it is when local or native (Orbax reads URLs); a Hugging Face or T5X URL
  is copied to a temporary directory (T5X: only the checkpoint read, not
  every step of a model dir)."""
  _require_input(input_dir)
  if source not in ("hf", "t5x") or not fs.is_remote(input_dir):
    yield input_dir
    return
  remote = t5x.checkpoint_directory(input_dir) if source == "t5x" else fs.path(input_dir)
  logger.info("copying %s to local disk (the %s reader reads local files)", remote, source)
  with fs.local_copy(remote) as local:
    yield local


def _same_directory(a: os.PathLike, b: os.PathLike) -> bool:
  if fs.is_remote(a) or fs.is_remote(b):
    return str(fs.path(a)).rstrip("/") == str(fs.path(b)).rstrip("/")
  return pathlib.Path(a).resolve() == pathlib.Path(b).resolve()


def _check_output(output_dir: os.PathLike, input_dir: os.PathLike, overwrite: bool) -> bool:
  """Raises if `output_dir` may not be written; whether it must be emptied."""
  if _same_directory(output_dir, input_dir):
    raise ValueError("The output directory must differ from the input directory")
  out = fs.path(output_dir)
  if out.exists() and any(out.iterdir()):
    if not overwrite:
      raise FileExistsError(
          f"Output directory {output_dir} exists and is not empty; pass "
          "--overwrite to replace it")
    return True
  return False


def convert_checkpoint(source: str, target: str, input_dir: os.PathLike,
                       output_dir: os.PathLike, *, encoder_only: Optional[bool] = None,
                       dtype: Optional[str] = None, dry_run: bool = False,
                       overwrite: bool = False,
                       max_shard_bytes: int = hf_io.DEFAULT_MAX_SHARD_BYTES,
                       progress: bool = True,
                       tokenizer_from: Optional[os.PathLike] = None) -> list[str]:
  """Converts `input_dir` (format `source`) into `output_dir` (format `target`).

  Either directory may be a URL (`gs://...`; the module docstring says what
  is copied through local disk); an "hf" input may be a Hub model id
  (`hf_io.resolve_model`: its directory in the Hub cache, downloaded when
  online).

  Args:
    source: "hf", "t5x" or "native".
    target: "native" (an Orbax MODEL_DIR our trainer restores) or "hf".
    encoder_only: None keeps what the input holds; True drops the decoder
      (the released `prot_t5_xl_half_uniref50-enc` is such an export).
    dtype: "float32", "float16" or "bfloat16": the exported tensors' dtype
      for hf (default float32), the parameter dtype for native (default the
      config's param_dtype).
    dry_run: only check the input and return the mapping, write nothing.
    overwrite: replace a non-empty `output_dir`.
    max_shard_bytes: hf output is sharded above this size.
    progress: show a progress bar.
    tokenizer_from: hf only: a local directory of released tokenizer files
      (spiece.model / vocab.txt, tokenizer.json, configs) to copy instead of
      writing ours; refused, naming the first differing token, unless every
      id they define is ours.

  Returns:
    The mapping lines (dry run) or the paths written.
  """
  if target not in TARGETS:
    raise ValueError(f"Unknown target format {target!r}; expected one of {TARGETS}")
  if dtype is not None and dtype not in hf_io.EXPORT_DTYPES:
    raise ValueError(f"dtype must be one of {sorted(hf_io.EXPORT_DTYPES)}, got {dtype!r}")
  if tokenizer_from is not None and target != "hf":
    raise ValueError("--tokenizer_from applies to Hugging Face output (--to hf) only")
  if source == "hf":
    input_dir = hf_io.resolve_model(input_dir).directory
  if not dry_run and fs.is_remote(input_dir):
    _check_output(output_dir, input_dir, overwrite)  # Before downloading the input.
  with _local_input(source, input_dir) as local_input:
    config, loaders, encoder_only, step = read_checkpoint(source, local_input, encoder_only)
    if dry_run:
      return mapping_lines(source, target, local_input, config, encoder_only, list(loaders))
    replace = _check_output(output_dir, input_dir, overwrite)
    return _written_whole(output_dir, replace, lambda out: _write(
        target, out, config, loaders, encoder_only, step, dtype,
        max_shard_bytes, progress, f"{source} -> {target}", tokenizer_from))


_PARTIAL_MARK = ".partial"


def _written_whole(output_dir: os.PathLike, replace: bool,
                   write: Callable[[os.PathLike], list[str]]) -> list[str]:
  """Runs `write` so that a failed conversion leaves no partial output that
  would block its rerun. Locally it writes a hidden sibling directory,
  renamed to `output_dir` once complete (an older output, with
  `replace`, stays until then; a killed run leaves only the sibling, which
  the next one deletes). A URL has no rename: its output is deleted if
  the writing fails."""
  out = fs.path(output_dir)
  if fs.is_remote(out):
    if replace:
      out.rmtree()
    try:
      return write(output_dir)
    except BaseException:
      if out.exists():
        logger.warning("conversion failed: deleting the partial %s", out)
        out.rmtree()
      raise
  staging = out.parent / f".{out.name}{_PARTIAL_MARK}"
  out.parent.mkdir(parents=True, exist_ok=True)
  if staging.exists():
    logger.info("deleting %s, left by a conversion that stopped", staging)
    staging.rmtree()
  try:
    written = write(staging)
  except BaseException:
    if staging.exists():
      staging.rmtree()
    raise
  if replace:
    out.rmtree()
  elif out.exists():
    out.rmdir()  # Empty (`_check_output`).
  os.replace(os.fspath(staging), os.fspath(out))
  return [os.fspath(out) + path[len(os.fspath(staging)):] for path in written]


def _write(target: str, output_dir: os.PathLike, config: Any,
           loaders: dict[str, mapping.Loader], encoder_only: bool, step: Optional[int],
           dtype: Optional[str], max_shard_bytes: int, progress: bool,
           description: str, tokenizer_from: Optional[os.PathLike] = None) -> list[str]:
  """convert_checkpoint's writing, while the input is readable."""
  bar = tqdm.tqdm(total=len(loaders), unit="tensor", disable=not progress,
                  desc=description)
  if target == "hf":
    written = write_hf_checkpoint(
        output_dir, loaders, config, encoder_only=encoder_only, dtype=dtype or "float32",
        max_shard_bytes=max_shard_bytes, on_tensor=lambda _: bar.update(1),
        tokenizer_from=tokenizer_from)
    bar.close()
    return [str(p) for p in written]

  if dtype is not None:
    config = dataclasses.replace(config, param_dtype=dtype)
  param_dtype = hf_io.EXPORT_DTYPES[config.param_dtype]
  shapes = _our_shapes(config, encoder_only, list(loaders))

  def load_counted(load: mapping.Loader) -> np.ndarray:
    array = np.asarray(load(), dtype=param_dtype)
    bar.update(1)
    return array

  # Read only while Orbax writes each one: about one tensor in memory.
  lazy = {name: checkpoints.LazyArray(shapes[name], param_dtype,
                                      lambda load=load: load_counted(load))
          for name, load in loaders.items()}
  step_dir = checkpoints.write_params_checkpoint(
      output_dir, mapping.unflatten(lazy), config, step=step or 0)
  bar.close()
  return [str(step_dir)]
