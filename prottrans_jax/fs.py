"""The one filesystem layer: every path a run reads or writes goes through it.

Local paths and URLs (`gs://bucket/run`, `s3://...`) are both `etils.epath`
paths, the layer Orbax itself uses: with TensorFlow installed, epath reaches
remote storage through `tf.io.gfile`, otherwise through fsspec (gcsfs for
`gs://`). `pathlib` would turn `gs://bucket/run` into the local directory
`gs:/bucket/run`: nothing here (or anywhere in the package) builds a run's
paths with it.

Libraries that only open local files (h5py, safetensors, TensorFlow's
iterator checkpoints written through a local directory) go through
`local_copy` and `staged_output`, which copy through a local temporary
directory when the path is remote and are the identity when it is local.
Streams read front to back (FASTA, label files) open through `open_read`
instead, without a copy.
"""

import contextlib
import io
import os
import pathlib
import tempfile
from typing import BinaryIO, Iterator

from etils import epath

PathLike = str | os.PathLike


def path(p: PathLike) -> epath.Path:
  """`p` as an epath: URLs stay URLs; local paths become absolute, so a
  directory a run records does not depend on the caller's working
  directory."""
  if isinstance(p, epath.Path):
    return p if is_remote(p) else epath.Path(os.path.abspath(os.fspath(p)))
  text = os.fspath(p)
  if is_remote(text):
    return epath.Path(text)
  return epath.Path(os.path.abspath(text))


def is_remote(p: PathLike) -> bool:
  """Whether `p` is a URL (`gs://`, `s3://`, ...) rather than a local path."""
  return "://" in os.fspath(p)


def _copy_tree(source: epath.Path, target: epath.Path) -> None:
  target.mkdir(parents=True, exist_ok=True)
  for child in source.iterdir():
    if child.is_dir():
      _copy_tree(child, target / child.name)
    else:
      child.copy(target / child.name, overwrite=True)


@contextlib.contextmanager
def local_copy(p: PathLike) -> Iterator[pathlib.Path]:
  """A local path with the contents of file or directory `p`, for readers
  that only open local files; `p` itself when it is local."""
  source = path(p)
  if not is_remote(source):
    yield pathlib.Path(os.fspath(source))
    return
  if not source.exists():
    raise FileNotFoundError(f"{source} does not exist")
  with tempfile.TemporaryDirectory(prefix="prottrans_fs_") as tmp:
    local = epath.Path(tmp) / source.name
    if source.is_dir():
      _copy_tree(source, local)
    else:
      source.copy(local)
    yield pathlib.Path(os.fspath(local))


@contextlib.contextmanager
def staged_output(p: PathLike, *,
                  copy_existing: bool = False) -> Iterator[pathlib.Path]:
  """A local path to write file or directory `p` through.

  Local `p` is yielded as it is. Remote `p`: the caller writes a local
  temporary path, which is copied to `p` when the block exits normally (on
  an exception nothing is copied, so `p` is never left half written by this
  layer). With `copy_existing`, a remote file `p` that exists is copied to
  the local path first, so the caller can add to it (a resumed output).
  """
  target = path(p)
  if not is_remote(target):
    yield pathlib.Path(os.fspath(target))
    return
  with tempfile.TemporaryDirectory(prefix="prottrans_fs_") as tmp:
    local = pathlib.Path(tmp) / target.name
    if copy_existing and target.is_file():
      target.copy(epath.Path(local))
    yield local
    if local.is_dir():
      _copy_tree(epath.Path(local), target)
    elif local.exists():
      target.parent.mkdir(parents=True, exist_ok=True)
      epath.Path(local).copy(target, overwrite=True)


class _RawReader(io.RawIOBase):
  """The `io` interface over a file object that only has `read(n)` (what
  epath's TensorFlow backend returns for URLs), so `io.BufferedReader`,
  `gzip` and `io.TextIOWrapper` can read through it."""

  def __init__(self, f):
    super().__init__()
    self._f = f

  def readable(self) -> bool:
    return True

  def readinto(self, buffer) -> int:
    data = self._f.read(len(buffer))
    buffer[:len(data)] = data
    return len(data)

  # Both epath backends (tf.io.gfile, fsspec) seek, so a reader that wants
  # one range of a large object (a FASTA shard) need not read what precedes.
  def seekable(self) -> bool:
    return callable(getattr(self._f, "seek", None))

  def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
    self._f.seek(offset, whence)
    return self._f.tell()

  def tell(self) -> int:
    return self._f.tell()


@contextlib.contextmanager
def open_read(p: PathLike) -> Iterator[BinaryIO]:
  """File `p` opened for reading bytes front to back, as a buffered binary
  stream: Python's own file when local, epath's (wrapped, whichever backend
  it uses) for a URL; both seek. Wrap it in `gzip.GzipFile` or `io.TextIOWrapper` for
  compressed or text content."""
  source = path(p)
  if not is_remote(source):
    with open(os.fspath(source), "rb") as f:
      yield f
    return
  with source.open("rb") as f:
    yield io.BufferedReader(_RawReader(f))
