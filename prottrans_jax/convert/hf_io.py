"""Hugging Face checkpoint files on disk: read lazily, write streaming.

The file format only; which tensor is which parameter is the converters'
business (hf_t5.py, hf_bert.py through mapping.py), and formats.py puts the
two together.

Reading: `config.json` plus `model.safetensors`, the sharded
`model.safetensors.index.json` layout, or `pytorch_model.bin` (torch
needed). Tensors are read one at a time on access (`LazyStateDict`), and the
safetensors file is opened per tensor so its memory map never keeps the
whole checkpoint resident.

Writing: safetensors files written tensor by tensor (the header is known up
front from the shapes), so peak memory is one tensor whatever the size;
sharded with an index above `max_shard_bytes`. No torch needed.

Local directories only (safetensors memory-maps, torch.load): formats.py
and the embedding loader read and write URLs (`gs://...`) through local
copies (`prottrans_jax.fs.local_copy` / `staged_output`); a URL given here
is an error, never a local directory named `gs:`.

Model ids: wherever a Hugging Face directory is accepted, a Hub model id
(`Rostlab/prot_t5_xl_half_uniref50-enc`, optionally `@revision`) is too;
`resolve_model` turns it into its directory in the Hub's local cache,
downloading what the readers need when online.
"""
import json
import logging
import os
import pathlib
import re
import struct
from typing import Callable, Iterator, Mapping, NamedTuple, Optional, Sequence

import ml_dtypes
import numpy as np
import safetensors

from prottrans_jax import fs
from prottrans_jax.convert import mapping

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_FILE = "pytorch_model.bin"
DEFAULT_MAX_SHARD_BYTES = 5 * 2**30

# safetensors dtype names of the dtypes an export may use.
_SAFETENSORS_DTYPES = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16",
                       np.dtype(ml_dtypes.bfloat16): "BF16"}
EXPORT_DTYPES = {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16),
                 "bfloat16": np.dtype(ml_dtypes.bfloat16)}


# owner/name[@revision], in the characters the Hub allows in names; a
# revision may be a branch with slashes (refs/pr/1).
_MODEL_ID = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<revision>\S+))?")
# What the readers use, fetched in this order: a checkpoint with both
# safetensors and torch weights is fetched once, as safetensors. Tokenizer
# files are small and keep the cached directory usable by transformers.
_HUB_FILES = [CONFIG_FILE, "model*.safetensors", SAFETENSORS_INDEX, "spiece.model",
              "vocab.txt", "tokenizer.json", "tokenizer_config.json",
              "special_tokens_map.json"]
_HUB_TORCH_FILES = [TORCH_FILE]


class ModelLocation(NamedTuple):
  """Where `resolve_model` found a model."""
  directory: str  # Local directory or URL, to read.
  source: str  # What to record: the spec given, or a model id pinned to its commit.


def _env_true(name: str) -> bool:
  return os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE")


def hub_cache_dir() -> str:
  """The Hugging Face Hub cache, from the environment as it is now:
  huggingface_hub reads these variables once, when first imported."""
  for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
    if os.environ.get(name):
      return os.path.expanduser(os.environ[name])
  home = os.environ.get("HF_HOME") or os.path.join(
      os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
      "huggingface")
  return os.path.join(os.path.expanduser(home), "hub")


def resolve_model(spec: os.PathLike) -> ModelLocation:
  """A Hugging Face model directory given as a path, a URL or a Hub model id.

  An existing local path or a URL (`gs://...`) is returned as it is; any
  other `owner/name` or `owner/name@revision` is a model id, looked up in
  the Hub cache (`hub_cache_dir()`: HF_HUB_CACHE, else HF_HOME/hub):
  online, the files the readers use are downloaded into it (only what is
  missing); offline (HF_HUB_OFFLINE=1, or the Hub unreachable) the cached
  snapshot is used. A path that does not exist and is not id-shaped is
  returned as it is, for the reader to report missing.

  Raises:
    FileNotFoundError: the id is neither cached nor downloadable; the
      message names the id, the cache and the ways to fix it.
    ValueError: an id-shaped string the Hub rejects as a name.
  """
  text = os.fspath(spec)
  match = _MODEL_ID.fullmatch(text) if isinstance(spec, str) else None
  if match is None or fs.is_remote(text) or os.path.exists(text):
    return ModelLocation(text, text)
  # Imported here: only a model id needs the Hub client.
  import huggingface_hub  # pylint: disable=g-import-not-at-top
  from huggingface_hub import errors  # pylint: disable=g-import-not-at-top
  repo_id, revision = match["repo"], match["revision"]
  cache_dir = hub_cache_dir()
  offline = _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE")
  not_a_path = f"{text!r} is not a local path, so it was taken as a Hugging Face model id"
  fetch = lambda patterns: huggingface_hub.snapshot_download(
      repo_id, revision=revision, cache_dir=cache_dir, allow_patterns=patterns,
      local_files_only=offline)
  try:
    directory = fetch(_HUB_FILES)
    if not any((pathlib.Path(directory) / name).is_file()
               for name in (SAFETENSORS_FILE, SAFETENSORS_INDEX)):
      directory = fetch(_HUB_TORCH_FILES)
  except errors.RevisionNotFoundError as e:
    raise FileNotFoundError(f"{not_a_path}: {repo_id} has no revision {revision!r}") from e
  except errors.RepositoryNotFoundError as e:  # Also gated.
    raise FileNotFoundError(
        f"{not_a_path}, but the Hub has no model {repo_id} this user may read (a "
        "private or gated model needs `hf auth login` or HF_TOKEN)") from e
  except errors.LocalEntryNotFoundError as e:
    # A snapshot cached in part: the Hub's message lists what is missing
    # (huggingface_hub releases before this error only say "not found").
    if isinstance(e, getattr(errors, "IncompleteSnapshotError", ())):
      why = str(e)
    elif offline:
      why = "HF_HUB_OFFLINE is set, so nothing is downloaded"
    else:
      cause = e.__cause__ or e  # The network's error, not the Hub's advice.
      why = f"the Hub could not be reached ({type(cause).__name__}: {cause})"
    raise FileNotFoundError(
        f"{not_a_path}, and {repo_id} (revision {revision or 'main'}) is not in the "
        f"Hugging Face cache {cache_dir}: {why}. Download it once while online "
        f"(without HF_HUB_OFFLINE, or `hf download {repo_id}"
        + (f" --revision {revision}" if revision else "")
        + "`), point HF_HUB_CACHE "
        "or HF_HOME at the cache that holds it, or pass its local directory") from e
  except errors.HFValidationError as e:
    raise ValueError(f"{not_a_path}, which the Hub rejects: {e}") from e
  # The snapshot's directory is named after its commit, which pins the id
  # to the weights read, whichever cache or host read them.
  source = f"{repo_id}@{pathlib.Path(directory).name}"
  logger.info("Hugging Face model %s resolved to %s (%s)", text, directory, source)
  return ModelLocation(directory, source)


def _local(directory: os.PathLike) -> pathlib.Path:
  if fs.is_remote(directory):
    raise ValueError(
        f"{directory}: Hugging Face files are read and written in local "
        "directories; copy through prottrans_jax.fs (local_copy / "
        "staged_output), as formats.py does")
  return pathlib.Path(directory)


def _require_dir(directory: os.PathLike) -> pathlib.Path:
  path = _local(directory)
  if not path.is_dir():
    raise FileNotFoundError(f"Checkpoint directory does not exist: {path}")
  return path


def _read_json(path: pathlib.Path) -> dict:
  try:
    return json.loads(path.read_text())
  except (ValueError, UnicodeDecodeError) as e:
    raise ValueError(f"{path} is not valid JSON ({e}); download it again "
                     "or fix it") from e


def load_hf_config(directory: os.PathLike) -> dict:
  path = _require_dir(directory) / CONFIG_FILE
  if not path.is_file():
    raise FileNotFoundError(f"No {CONFIG_FILE} in {directory}")
  return _read_json(path)


def _damaged(path: pathlib.Path, error: Exception) -> ValueError:
  return ValueError(f"{path} is not a readable safetensors file (truncated "
                    f"or damaged? {error}); download or convert it again")


class LazyStateDict(Mapping[str, np.ndarray]):
  """A checkpoint's tensors by Hugging Face name, read from disk on access."""

  def __init__(self, directory: os.PathLike):
    path = _require_dir(directory)
    self._torch_state = None
    if (path / SAFETENSORS_INDEX).is_file():
      weight_map = _read_json(path / SAFETENSORS_INDEX)["weight_map"]
      self._files = {name: path / file for name, file in weight_map.items()}
    elif (path / SAFETENSORS_FILE).is_file():
      try:
        with safetensors.safe_open(path / SAFETENSORS_FILE,
                                   framework="numpy") as f:
          self._files = {name: path / SAFETENSORS_FILE for name in f.keys()}
      except safetensors.SafetensorError as e:
        raise _damaged(path / SAFETENSORS_FILE, e) from e
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
    try:
      with safetensors.safe_open(self._files[name], framework="numpy") as f:
        if f.get_slice(name).get_dtype() == "BF16":  # numpy has no bfloat16
          return _read_bf16(self._files[name], name)
        return f.get_tensor(name)
    except safetensors.SafetensorError as e:
      raise _damaged(self._files[name], e) from e

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


def write_safetensors(directory: os.PathLike,
                      tensors: Sequence[tuple[str, tuple[int, ...], mapping.Loader]],
                      dtype: np.dtype, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
                      on_tensor: Optional[Callable[[str], None]] = None) -> list[pathlib.Path]:
  """Writes (name, shape, loader) tensors as safetensors files in `directory`.

  Each tensor is loaded (already in `dtype`) and written before the next is
  read. One `model.safetensors` up to `max_shard_bytes`, else numbered shards
  plus `model.safetensors.index.json`. `on_tensor(name)` is called after
  each tensor (a progress bar). Returns the files written.
  """
  sizes = [int(np.prod(shape)) * dtype.itemsize for _, shape, _ in tensors]
  shards = _shard(sizes, max_shard_bytes)
  out = _local(directory)
  out.mkdir(parents=True, exist_ok=True)
  names = ([SAFETENSORS_FILE] if len(shards) == 1 else
           [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
  written = []
  for file_name, indices in zip(names, shards):
    entries = [(tensors[i][0], tensors[i][1], dtype) for i in indices]
    with open(out / file_name, "wb") as f:
      f.write(_safetensors_header(entries))
      for i in indices:
        name, shape, load = tensors[i]
        array = np.ascontiguousarray(load())
        if array.shape != tuple(shape) or array.dtype != dtype:
          raise ValueError(f"{name}: loaded {array.dtype}{array.shape}, declared "
                           f"{dtype}{tuple(shape)}")
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
  return written
