"""Checkpoint conversion between Hugging Face, native T5X and this project.

ProtT5 in all three formats; the BERT family (ProtBert, ProtAlbert,
ProtElectra) between Hugging Face and this project.

Every reader returns `{our flat name: loader}` (see params.Loader); every
writer pulls tensors through the loaders one at a time, so every conversion
streams: peak memory is about one tensor whatever the checkpoint's size
(bench/convert_memory.py measures it on ProtT5-XL). Native checkpoints are
read one leaf per restore and written with `checkpoints.LazyArray` leaves.
"""
import dataclasses
import os
import pathlib
import shutil
from typing import Any, Optional, Sequence

import numpy as np
import tqdm

from prottrans_jax import checkpoints
from prottrans_jax.convert import hf_bert
from prottrans_jax.convert import hf_io
from prottrans_jax.convert import hf_t5
from prottrans_jax.convert import params as params_lib
from prottrans_jax.convert import t5x
from prottrans_jax.models import t5

SOURCES = ("hf", "t5x", "native")
TARGETS = ("native", "hf")
# Families with a Hugging Face counterpart. A jointly trained ELECTRA
# (electra_pretraining) is two HF models: export one with
# `electra.generator_params` / `electra.discriminator_params`.
CONVERTIBLE = ("t5", "bert", "albert", "electra")


def read_checkpoint(source: str, input_dir: os.PathLike, encoder_only: Optional[bool] = None
                    ) -> tuple[Any, dict[str, params_lib.Loader], bool, Optional[int]]:
  """(config, loaders, encoder_only, step) of a checkpoint in format `source`.

  `encoder_only=None` keeps what the checkpoint holds (a T5EncoderModel is
  encoder-only); True drops the decoder (T5) or the heads (BERT family).
  """
  if not pathlib.Path(input_dir).is_dir():
    raise FileNotFoundError(f"Input directory does not exist: {input_dir}")
  if source == "hf":
    config, loaders, encoder_only = hf_io.read_hf_checkpoint(input_dir, encoder_only)
    return config, loaders, encoder_only, None
  if source == "t5x":
    config, loaders, step = t5x.read_t5x_checkpoint(input_dir, bool(encoder_only))
    return config, loaders, bool(encoder_only), step
  if source == "native":
    model_name, config, params = checkpoints.lazy_params(input_dir)
    if model_name not in CONVERTIBLE:
      raise params_lib.ConversionError(
          f"{input_dir} holds a {model_name!r} model; convertible: {', '.join(CONVERTIBLE)}")
    flat = params_lib.flatten(params)
    # Everything outside the encoder: T5's decoder or the BERT family's heads.
    extra = ("decoder",) if model_name == "t5" else hf_bert.HEADS
    has_extra = any(n.split("/")[0] in extra for n in flat)
    encoder_only = bool(encoder_only) or not has_extra
    if encoder_only:
      flat = {n: a for n, a in flat.items() if n.split("/")[0] not in extra}
    return config, {n: lazy.load for n, lazy in flat.items()}, encoder_only, None
  raise ValueError(f"Unknown source format {source!r}; expected one of {SOURCES}")


def mapping_lines(source: str, target: str, config: Any, encoder_only: bool,
                  names: Sequence[str]) -> list[str]:
  """One line per tensor: source name -> our name -> target name, shape.

  `names` are our parameter names the source holds (they say which heads a
  BERT-family model has).
  """
  if isinstance(config, t5.T5Config):
    mappings = hf_t5.tensor_mappings(config, encoder_only)
  else:
    heads = [] if encoder_only else hf_bert.heads_of_params(names)
    mappings = hf_bert.tensor_mappings(config, heads)
  shapes = _expected_shapes(config, encoder_only, names)
  hf_names = {m.ours: m.hf for m in mappings}
  name_in = {"hf": hf_names.get, "t5x": lambda n: f"target/{n}", "native": str}
  name_out = {"hf": hf_names.get, "native": lambda n: f"params/{n}"}
  return [f"{name_in[source](n)} -> {n} -> {name_out[target](n)} {shape}"
          for n, shape in shapes.items()]


def _expected_shapes(config: Any, encoder_only: bool,
                     names: Sequence[str]) -> dict[str, tuple[int, ...]]:
  """Our parameter names and shapes for `config`; `names` (what the source
  holds) say which heads a BERT-family model has."""
  if isinstance(config, t5.T5Config):
    return params_lib.expected_shapes(config, encoder_only)
  return hf_bert.expected_shapes(
      config, [] if encoder_only else hf_bert.heads_of_params(names))


def _prepare_output(output_dir: pathlib.Path, input_dir: os.PathLike, overwrite: bool) -> None:
  if output_dir.resolve() == pathlib.Path(input_dir).resolve():
    raise ValueError("The output directory must differ from the input directory")
  if output_dir.exists() and any(output_dir.iterdir()):
    if not overwrite:
      raise FileExistsError(
          f"Output directory {output_dir} exists and is not empty; pass "
          "--overwrite to replace it")
    shutil.rmtree(output_dir)


def convert_checkpoint(source: str, target: str, input_dir: os.PathLike,
                       output_dir: os.PathLike, *, encoder_only: Optional[bool] = None,
                       dtype: Optional[str] = None, dry_run: bool = False,
                       overwrite: bool = False,
                       max_shard_bytes: int = hf_io.DEFAULT_MAX_SHARD_BYTES,
                       progress: bool = True) -> list[str]:
  """Converts `input_dir` (format `source`) into `output_dir` (format `target`).

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

  Returns:
    The mapping lines (dry run) or the paths written.
  """
  if target not in TARGETS:
    raise ValueError(f"Unknown target format {target!r}; expected one of {TARGETS}")
  if dtype is not None and dtype not in hf_io.EXPORT_DTYPES:
    raise ValueError(f"dtype must be one of {sorted(hf_io.EXPORT_DTYPES)}, got {dtype!r}")
  config, loaders, encoder_only, step = read_checkpoint(source, input_dir, encoder_only)
  if dry_run:
    return mapping_lines(source, target, config, encoder_only, list(loaders))
  output_dir = pathlib.Path(output_dir)
  _prepare_output(output_dir, input_dir, overwrite)
  bar = tqdm.tqdm(total=len(loaders), unit="tensor", disable=not progress,
                  desc=f"{source} -> {target}")
  if target == "hf":
    written = hf_io.write_hf_checkpoint(
        output_dir, loaders, config, encoder_only=encoder_only, dtype=dtype or "float32",
        max_shard_bytes=max_shard_bytes, on_tensor=lambda _: bar.update(1))
    bar.close()
    return [str(p) for p in written]

  if dtype is not None:
    config = dataclasses.replace(config, param_dtype=dtype)
  param_dtype = hf_io.EXPORT_DTYPES[config.param_dtype]
  shapes = _expected_shapes(config, encoder_only, list(loaders))

  def load_counted(load: params_lib.Loader) -> np.ndarray:
    array = np.asarray(load(), dtype=param_dtype)
    bar.update(1)
    return array

  # Read only while Orbax writes each one: about one tensor in memory.
  lazy = {name: checkpoints.LazyArray(shapes[name], param_dtype,
                                      lambda load=load: load_counted(load))
          for name, load in loaders.items()}
  step_dir = checkpoints.write_params_checkpoint(
      output_dir, params_lib.unflatten(lazy), config, step=step or 0)
  bar.close()
  return [str(step_dir)]
