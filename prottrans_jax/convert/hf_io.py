"""Hugging Face checkpoint directories on disk: read lazily, write streaming.

Reading: `config.json` plus `model.safetensors`, the sharded
`model.safetensors.index.json` layout, or `pytorch_model.bin` (torch
needed). Tensors are read one at a time on access (`LazyStateDict`), and the
safetensors file is opened per tensor so its memory map never keeps the
whole checkpoint resident.

Writing: safetensors files written tensor by tensor (the header is known up
front from the config), so peak memory is one tensor whatever the size;
sharded with an index above `max_shard_bytes`. No torch needed.
"""
import json
import os
import pathlib
import struct
from typing import Any, Callable, Iterator, Mapping, Optional

import ml_dtypes
import numpy as np
import safetensors

from prottrans_jax import vocab as vocab_lib
from prottrans_jax.convert import hf_bert
from prottrans_jax.convert import hf_t5
from prottrans_jax.convert import params as params_lib
from prottrans_jax.models import t5

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_FILE = "pytorch_model.bin"
TOKENIZER_NOTE = "TOKENIZER.md"
VOCAB_FILE = "vocab.txt"
TOKENIZER_CONFIG = "tokenizer_config.json"
DEFAULT_MAX_SHARD_BYTES = 5 * 2**30

# safetensors dtype names of the dtypes an export may use.
_SAFETENSORS_DTYPES = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16",
                       np.dtype(ml_dtypes.bfloat16): "BF16"}
EXPORT_DTYPES = {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16),
                 "bfloat16": np.dtype(ml_dtypes.bfloat16)}

_TOKENIZER_TEXT = """# Tokenizer

This export carries no tokenizer files: use the released ProtT5 tokenizer,
whose ids this model was trained with (`<pad>` 0, `</s>` 1, `<unk>` 2,
residues `ALGVSREDTIPKFQNYMHWCXBOUZ` at 3..27, `<extra_id_k>` at 127 - k):

    from transformers import T5Tokenizer
    tokenizer = T5Tokenizer.from_pretrained("Rostlab/prot_t5_xl_uniref50", do_lower_case=False)

Residues are given space-separated, with U, Z, O, B mapped to X first.
"""

_BERT_TOKENIZER_TEXT = """# Tokenizer

This model was trained with ProtBert's vocabulary (`vocab.txt` here, read
by `BertTokenizer(do_lower_case=False)`): `[PAD]` 0, `[UNK]` 1, `[CLS]` 2,
`[SEP]` 3, `[MASK]` 4, residues `LAGVESIKRDTPNQFYMHCWXUBZO` at 5..29. Input
is `[CLS]` + space-separated residues + `[SEP]`, with U, Z, O, B mapped to
X first.
"""


def _bert_tokenizer_files(model_type: str) -> dict[str, str]:
  """Tokenizer files of a BERT-family export (ids of ProtBertVocabulary)."""
  vocab = vocab_lib.ProtBertVocabulary()
  pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(
      vocab.residue_ids, key=vocab.residue_ids.get)
  files = {TOKENIZER_NOTE: _BERT_TOKENIZER_TEXT}
  # ALBERT's tokenizer class reads a sentencepiece model, not vocab.txt.
  if model_type != "albert":
    files[VOCAB_FILE] = "\n".join(pieces) + "\n"
    files[TOKENIZER_CONFIG] = json.dumps(
        {"tokenizer_class": "BertTokenizer", "do_lower_case": False}, indent=2) + "\n"
  return files


def _require_dir(directory: os.PathLike) -> pathlib.Path:
  path = pathlib.Path(directory)
  if not path.is_dir():
    raise FileNotFoundError(f"Checkpoint directory does not exist: {path}")
  return path


def load_hf_config(directory: os.PathLike) -> dict:
  path = _require_dir(directory) / CONFIG_FILE
  if not path.is_file():
    raise FileNotFoundError(f"No {CONFIG_FILE} in {directory}")
  return json.loads(path.read_text())


class LazyStateDict(Mapping[str, np.ndarray]):
  """A checkpoint's tensors by Hugging Face name, read from disk on access."""

  def __init__(self, directory: os.PathLike):
    path = _require_dir(directory)
    self._torch_state = None
    if (path / SAFETENSORS_INDEX).is_file():
      weight_map = json.loads((path / SAFETENSORS_INDEX).read_text())["weight_map"]
      self._files = {name: path / file for name, file in weight_map.items()}
    elif (path / SAFETENSORS_FILE).is_file():
      with safetensors.safe_open(path / SAFETENSORS_FILE, framework="numpy") as f:
        self._files = {name: path / SAFETENSORS_FILE for name in f.keys()}
    elif (path / TORCH_FILE).is_file():
      self._torch_state = _load_torch_state(path / TORCH_FILE)
      self._files = {name: path / TORCH_FILE for name in self._torch_state}
    else:
      raise FileNotFoundError(
          f"No weights in {path}: expected {SAFETENSORS_FILE}, {SAFETENSORS_INDEX} "
          f"or {TORCH_FILE}")

  def __getitem__(self, name: str) -> np.ndarray:
    if self._torch_state is not None:
      return _torch_to_numpy(self._torch_state[name])
    # Opened per tensor: closing unmaps the file, so the pages read so far
    # do not stay in this process's resident memory.
    with safetensors.safe_open(self._files[name], framework="numpy") as f:
      if f.get_slice(name).get_dtype() == "BF16":  # numpy has no bfloat16
        return _read_bf16(self._files[name], name)
      return f.get_tensor(name)

  def __iter__(self) -> Iterator[str]:
    return iter(self._files)

  def __len__(self) -> int:
    return len(self._files)


def _read_header(path: pathlib.Path) -> tuple[dict, int]:
  """A safetensors header (the format's documented JSON) and its data start."""
  with open(path, "rb") as f:
    (size,) = struct.unpack("<Q", f.read(8))
    return json.loads(f.read(size)), 8 + size


def _read_bf16(path: pathlib.Path, name: str) -> np.ndarray:
  header, data_start = _read_header(path)
  begin, end = header[name]["data_offsets"]
  with open(path, "rb") as f:
    f.seek(data_start + begin)
    raw = np.frombuffer(f.read(end - begin), dtype=ml_dtypes.bfloat16)
  return raw.reshape(header[name]["shape"])


def _load_torch_state(path: pathlib.Path):
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f"Reading {path} needs torch; convert it to safetensors "
                      "or install torch") from e
  # mmap: tensors are paged in when converted, not all at once.
  return torch.load(path, map_location="cpu", mmap=True, weights_only=True)


def _torch_to_numpy(tensor) -> np.ndarray:
  import torch  # pylint: disable=g-import-not-at-top
  if tensor.dtype == torch.bfloat16:
    return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
  return tensor.numpy()


def read_hf_checkpoint(directory: os.PathLike, encoder_only: Optional[bool] = None,
                       **config_overrides) -> tuple[Any, dict[str, hf_t5.Loader], bool]:
  """(config, {our name: loader}, encoder_only) of a Hugging Face directory.

  T5 (ProtT5) or a BERT-family model (ProtBert, ProtAlbert, ProtElectra),
  by config.json's model_type. `encoder_only` defaults to what the
  checkpoint holds (True for T5EncoderModel; for the BERT family, True when
  no head or pooler is kept); forcing it skips the decoder / heads. Names
  and shapes are checked before anything large is read.
  """
  hf_config = load_hf_config(directory)
  if hf_config.get("model_type") in hf_bert.FAMILIES:
    _, architecture = hf_bert.architecture(hf_config)
    config = hf_bert.config_from_hf(hf_config, **config_overrides)
    loaders, heads = hf_bert.param_loaders(LazyStateDict(directory), config, architecture,
                                           bool(encoder_only))
    return config, loaders, not heads
  architecture = hf_t5.architecture(hf_config)
  if encoder_only is None:
    encoder_only = architecture in hf_t5.ENCODER_ONLY_ARCHITECTURES
  elif not encoder_only and architecture in hf_t5.ENCODER_ONLY_ARCHITECTURES:
    raise params_lib.ConversionError(
        f"{directory} holds a {architecture}: it has no decoder to convert")
  config = hf_t5.t5_config_from_hf(hf_config, **config_overrides)
  loaders = hf_t5.param_loaders(LazyStateDict(directory), config, encoder_only)
  return config, loaders, encoder_only


def _safetensors_header(entries: list[tuple[str, tuple[int, ...], np.dtype]]) -> bytes:
  header, offset = {"__metadata__": {"format": "pt"}}, 0
  for name, shape, dtype in entries:
    size = int(np.prod(shape)) * dtype.itemsize
    header[name] = {"dtype": _SAFETENSORS_DTYPES[dtype], "shape": list(shape),
                    "data_offsets": [offset, offset + size]}
    offset += size
  encoded = json.dumps(header, separators=(",", ":")).encode()
  encoded += b" " * (-len(encoded) % 8)  # the format aligns data to 8 bytes
  return struct.pack("<Q", len(encoded)) + encoded


def _shard(sizes: list[int], max_shard_bytes: int) -> list[list[int]]:
  """Consecutive tensor indices grouped into shards of at most max_shard_bytes."""
  shards, current, current_bytes = [], [], 0
  for i, size in enumerate(sizes):
    if current and current_bytes + size > max_shard_bytes:
      shards.append(current)
      current, current_bytes = [], 0
    current.append(i)
    current_bytes += size
  return shards + [current] if current else shards


def write_hf_checkpoint(directory: os.PathLike, params: Mapping[str, hf_t5.Loader],
                        config: Any, *, encoder_only: bool = False,
                        dtype: str = "float32",
                        max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
                        on_tensor: Optional[Callable[[str], None]] = None) -> list[pathlib.Path]:
  """Writes config.json and safetensors (sharded with an index if large).

  `params` maps our flat names to loaders (`params.loaders_of` wraps arrays);
  each tensor is loaded, converted and written before the next is read.
  `on_tensor(hf_name)` is called after each tensor (a progress bar).
  `config` is a T5Config or a BERT-family config; for the latter the
  architecture follows the heads `params` hold (hf_bert.py), none with
  `encoder_only`. Returns the files written.
  """
  if dtype not in EXPORT_DTYPES:
    raise ValueError(f"dtype must be one of {sorted(EXPORT_DTYPES)}, got {dtype!r}")
  np_dtype = EXPORT_DTYPES[dtype]
  if isinstance(config, t5.T5Config):
    tensors = list(hf_t5.hf_loaders(params, config, encoder_only, np_dtype).items())
    architecture = "T5EncoderModel" if encoder_only else "T5ForConditionalGeneration"
    hf_config = hf_t5.hf_config_from_t5(config, architecture_name=architecture,
                                        torch_dtype=dtype)
    tokenizer_files = {TOKENIZER_NOTE: _TOKENIZER_TEXT}
  else:
    tensors = list(hf_bert.hf_loaders(params, config, encoder_only, np_dtype).items())
    heads = [] if encoder_only else hf_bert.heads_of_params(list(params))
    hf_config = hf_bert.hf_config(config, hf_bert.architecture_of(config, heads), dtype)
    tokenizer_files = _bert_tokenizer_files(hf_config["model_type"])
  sizes = [int(np.prod(shape)) * np_dtype.itemsize for _, (shape, _) in tensors]
  shards = _shard(sizes, max_shard_bytes)
  out = pathlib.Path(directory)
  out.mkdir(parents=True, exist_ok=True)
  names = ([SAFETENSORS_FILE] if len(shards) == 1 else
           [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
  written = []
  for file_name, indices in zip(names, shards):
    entries = [(tensors[i][0], tensors[i][1][0], np_dtype) for i in indices]
    with open(out / file_name, "wb") as f:
      f.write(_safetensors_header(entries))
      for i in indices:
        name, (shape, load) = tensors[i]
        array = np.ascontiguousarray(load())
        f.write(array.tobytes())
        if on_tensor is not None:
          on_tensor(name)
    written.append(out / file_name)
  if len(shards) > 1:
    index = {"metadata": {"total_size": sum(sizes)},
             "weight_map": {tensors[i][0]: file_name
                            for file_name, indices in zip(names, shards) for i in indices}}
    (out / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2) + "\n")
    written.append(out / SAFETENSORS_INDEX)
  (out / CONFIG_FILE).write_text(json.dumps(hf_config, indent=2) + "\n")
  for name, text in tokenizer_files.items():
    (out / name).write_text(text)
  return written + [out / CONFIG_FILE] + [out / name for name in tokenizer_files]

