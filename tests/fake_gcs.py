"""`gs://` URLs served from a local directory, for tests of path handling.

Tests cannot reach Cloud Storage. What they check is that a `gs://` run
directory stays a URL all the way down (nothing turns it into the local
directory `gs:/bucket/...`) and that every write goes through the package's
filesystem layer (`prottrans_jax.fs`, etils epath). Here `gs://BUCKET/KEY`
is fsspec's local filesystem under a root directory, and epath is told to use
fsspec rather than TensorFlow for URLs; the bucket metadata Orbax asks Cloud
Storage for (through google-cloud-storage) comes from a small local HTTP
server named by `STORAGE_EMULATOR_HOST`, the client's documented emulator
setting. The code under test is unchanged.
"""

import contextlib
import http.server
import json
import os
import pathlib
import threading
from typing import Iterator
from unittest import mock

from etils.epath import gpath
from fsspec.implementations import local
import fsspec

_SCHEME = "gs://"


class FakeGcsFileSystem(local.LocalFileSystem):
  """fsspec's local filesystem, with `gs://BUCKET/KEY` at `root/BUCKET/KEY`."""

  protocol = ("gs", "gcs")
  root: pathlib.Path | None = None

  def __init__(self, *args, finalize_on_close=None, **kwargs):
    del finalize_on_close  # gcsfs's option; nothing to finalize locally.
    super().__init__(*args, **kwargs)

  @classmethod
  def _strip_protocol(cls, path):
    path = os.fspath(path)
    for scheme in ("gs://", "gcs://"):
      if path.startswith(scheme):
        if cls.root is None:
          raise RuntimeError("fake_gcs.serve() is not in effect")
        return os.path.join(str(cls.root), path[len(scheme):]).rstrip("/")
    return super()._strip_protocol(path)

  def glob(self, path, **kwargs):
    # epath puts the scheme back in front of what glob returns.
    prefix = str(self.root) + "/"
    return [p[len(prefix):] if p.startswith(prefix) else p
            for p in super().glob(path, **kwargs)]


class _BucketMetadata(http.server.BaseHTTPRequestHandler):
  """Answers the JSON API's bucket lookup (`GET /storage/v1/b/BUCKET`)."""

  def do_GET(self):  # pylint: disable=invalid-name
    parts = self.path.split("?")[0].strip("/").split("/")
    if len(parts) != 4 or parts[:3] != ["storage", "v1", "b"]:
      self.send_error(404)
      return
    body = json.dumps({"kind": "storage#bucket", "name": parts[3],
                       "id": parts[3]}).encode()
    self.send_response(200)
    self.send_header("Content-Type", "application/json")
    self.send_header("Content-Length", str(len(body)))
    self.end_headers()
    self.wfile.write(body)

  def log_message(self, *args):
    del args


def _forget_epath_backend_choice() -> None:
  """epath reads EPATH_USE_TF once per process (a cached `_is_tf_installed`,
  first called for any path, local ones included): a test that touched epath
  before `serve` would otherwise send gs:// to TensorFlow, i.e. the real
  Cloud Storage. Forgotten on entry and exit, so it follows the environment.
  """
  gpath._is_tf_installed.cache_clear()  # pylint: disable=protected-access


@contextlib.contextmanager
def serve(root: pathlib.Path) -> Iterator[pathlib.Path]:
  """`gs://` URLs resolve under `root` while the block runs."""
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _BucketMetadata)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  fsspec.register_implementation("gs", FakeGcsFileSystem, clobber=True)
  fsspec.register_implementation("gcs", FakeGcsFileSystem, clobber=True)
  FakeGcsFileSystem.root = root
  try:
    with mock.patch.dict(os.environ, {
        "EPATH_USE_TF": "false",
        "STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{server.server_port}"}):
      _forget_epath_backend_choice()
      yield root
  finally:
    _forget_epath_backend_choice()
    FakeGcsFileSystem.root = None
    server.shutdown()
    server.server_close()


def local_path_of(url: str) -> pathlib.Path:
  """Where `serve` keeps the object named by `url`."""
  assert url.startswith(_SCHEME) and FakeGcsFileSystem.root is not None
  return FakeGcsFileSystem.root / url[len(_SCHEME):]

