"""Which weights made an embedding: a cheap fingerprint of a model's files.

An embedding output records the fingerprint of the weights it was made with
(`run.embed_fasta`), so a resume with other weights at the same path (a
MODEL_DIR retrained to the same step, a re-downloaded model) is refused
instead of mixing two models' embeddings in one file.

The fingerprint digests, for every weight file in name order, its path
relative to the model's directory and its size, and:

- a step of our checkpoints: the step and the whole content of its small
  files (Orbax's metadata: the tree, array metadata, the OCDBT manifests,
  which name the data files). Tensorstore names each data file it writes at
  random, so rewriting a step, even with weights of the same shapes, gives
  other names and another fingerprint; the tensors are not read.
- a Hugging Face directory: samples of each file (the whole file up to
  `_WHOLE_BYTES`; otherwise its head, its tail and `_BLOCKS` evenly spaced
  blocks). The head holds a safetensors file's header (names, dtypes,
  shapes, offsets) and the tail a torch zip's directory (each entry's
  CRC-32); the blocks tell apart weights of one architecture trained
  differently, whose headers and sizes are identical.

So an 11 GB model costs at most a few megabytes of reads. Modification times
are left out, so a copy of the same files (a local copy of a bucket) has
the same fingerprint. This says which files made an output, not whether
they are intact: detecting damage is the checkpoints' own checksums' job.
"""

import hashlib
from typing import Iterable

from etils import epath

from prottrans_jax import fs

_WHOLE_BYTES = 1 << 20
_METADATA_BYTES = 1 << 16  # A checkpoint's files up to this are metadata.
_END_BYTES = 1 << 16
_BLOCK_BYTES = 1 << 12
_BLOCKS = 16
# Files of a Hugging Face directory that hold the model (not its README or
# tokenizer files).
_HF_SUFFIXES = (".safetensors", ".safetensors.index.json", ".bin")
_HF_CONFIG = "config.json"


def _sample(path: epath.Path, size: int, digest) -> None:
  with fs.open_read(path) as f:
    if size <= _WHOLE_BYTES:
      digest.update(f.read())
      return
    stride = (size - 2 * _END_BYTES) // (_BLOCKS + 1)
    spans = ([(0, _END_BYTES)] +
             [(_END_BYTES + stride * (i + 1), _BLOCK_BYTES)
              for i in range(_BLOCKS)] + [(size - _END_BYTES, _END_BYTES)])
    for offset, length in spans:
      f.seek(offset)
      digest.update(f.read(length))


def _files_under(root: epath.Path) -> Iterable[epath.Path]:
  for child in sorted(root.iterdir(), key=lambda p: p.name):
    if child.is_dir():
      yield from _files_under(child)
    else:
      yield child


def of_files(root: fs.PathLike, files: Iterable[epath.Path], label: str = "",
             sample_above: int | None = None) -> str:
  """The fingerprint of `files` (under `root`, which their names are taken
  relative to); `label` (e.g. the step) is digested first. A file larger
  than `sample_above` bytes counts by its name and size only (None: every
  file's content is sampled)."""
  root = fs.path(root)
  digest = hashlib.blake2b(label.encode(), digest_size=16)
  count = 0
  for path in files:
    size = path.stat().length
    relative = str(path)[len(str(root)):].lstrip("/")
    digest.update(f"\n{relative}\t{size}\n".encode())
    if sample_above is None or size <= sample_above:
      _sample(path, size, digest)
    count += 1
  if not count:
    raise FileNotFoundError(f"{root}: no weight files to fingerprint")
  return digest.hexdigest()


def of_checkpoint_step(step_dir: fs.PathLike,
                       items: Iterable[str]) -> str:
  """The fingerprint of one step of our checkpoints: the names and sizes of
  the files of its `items` (the parameters and the model config), the
  content of the small ones, and the step."""
  step_dir = fs.path(step_dir)
  files = [f for item in sorted(items) for f in _files_under(step_dir / item)]
  return of_files(step_dir, files, label=f"step {step_dir.name}",
                  sample_above=_METADATA_BYTES)


def of_hf_directory(directory: fs.PathLike) -> str:
  """The fingerprint of a Hugging Face directory: config.json and its
  weight files (safetensors, their index, pytorch_model.bin)."""
  directory = fs.path(directory)
  files = [p for p in sorted(directory.iterdir(), key=lambda p: p.name)
           if not p.is_dir() and (p.name == _HF_CONFIG
                                  or p.name.endswith(_HF_SUFFIXES))]
  return of_files(directory, files)
