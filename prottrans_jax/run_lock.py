"""One writer per run directory: a lock file naming its holder.

Two training runs on one MODEL_DIR, or two embeddings into one output, write
over each other's checkpoints or chunks. Process 0 of such a run holds a lock
file for as long as it runs (`hold`, `hold_on_process_zero`): a JSON record of
the owner's host, pid, start time and a heartbeat that a daemon thread
refreshes. A second run fails at once with `LockHeldError` naming the holder
and the directory; a lock whose owner is gone is reclaimed with a log line:
one left by a dead process of this host, or one whose heartbeat is older
than `stale_after_s` (the owner's host died or lost the storage).

Creation is atomic on local filesystems (O_CREAT | O_EXCL; reclaiming renames
the stale file aside, so of two reclaimers only one succeeds). epath has no
create-if-absent for URLs (gs://...): there the lock is written when absent
and read back after a moment to see who won, which closes all but a narrow
window between two runs started within that moment of each other.
"""

import contextlib
import datetime
import json
import os
import socket
import threading
import time
import uuid
from typing import Any, Iterator

from absl import logging
import jax

from prottrans_jax import fs

HEARTBEAT_S = 30.0
STALE_AFTER_S = 600.0
# How long a remote lock is left before being read back to see who won.
_REMOTE_SETTLE_S = 0.5


class LockHeldError(RuntimeError):
  """Another live run holds the lock."""


def _now_text(seconds: float) -> str:
  return datetime.datetime.fromtimestamp(seconds).isoformat(timespec="seconds")


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Alive, owned by another user.
    return True
  return True


class RunLock:
  """The lock file at `path`, held by this process between `acquire` and
  `release` (or as a context manager).

  Args:
    path: the lock file (local path or URL); its directory must exist.
    what: what the lock guards, for messages ("training run", "embedding").
    heartbeat_s: how often the holder refreshes its heartbeat.
    stale_after_s: a lock whose heartbeat is older than this is reclaimed
      (it must be well above `heartbeat_s`).
  """

  def __init__(self, path: fs.PathLike, what: str, *,
               heartbeat_s: float = HEARTBEAT_S,
               stale_after_s: float = STALE_AFTER_S):
    if stale_after_s <= heartbeat_s:
      raise ValueError(f"stale_after_s ({stale_after_s}) must exceed "
                       f"heartbeat_s ({heartbeat_s})")
    self.path = fs.path(path)
    self.what = what
    self.heartbeat_s = heartbeat_s
    self.stale_after_s = stale_after_s
    self._token = uuid.uuid4().hex
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None
    self._record: dict[str, Any] = {}

  def __enter__(self) -> "RunLock":
    self.acquire()
    return self

  def __exit__(self, *exc_info) -> None:
    self.release()

  def _new_record(self) -> dict[str, Any]:
    now = time.time()
    return {"what": self.what, "host": socket.gethostname(),
            "pid": os.getpid(), "started": now, "heartbeat": now,
            "token": self._token}

  def read(self) -> dict[str, Any] | None:
    """The current holder's record; None when there is no lock file."""
    try:
      return json.loads(self.path.read_text())
    except FileNotFoundError:
      return None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      # A holder caught between creating and writing, or a damaged file:
      # its age decides (see `_stale_reason`).
      return {"unreadable": repr(e)}

  def _describe(self, holder: dict[str, Any]) -> str:
    if "unreadable" in holder:
      return f"an unreadable lock file ({holder['unreadable']})"
    return (f"{holder.get('what', 'a run')} of pid {holder.get('pid')} on host "
            f"{holder.get('host')}, running since "
            f"{_now_text(holder.get('started', 0))} (heartbeat "
            f"{_now_text(holder.get('heartbeat', 0))})")

  def _stale_reason(self, holder: dict[str, Any]) -> str | None:
    """Why `holder` no longer holds the lock, or None while it does."""
    if "unreadable" in holder:
      try:
        age = time.time() - self.path.stat().mtime
      except FileNotFoundError:
        return "the lock file disappeared"
      return (f"unreadable for {age:.0f}s" if age > self.stale_after_s
              else None)
    if (holder.get("host") == socket.gethostname()
        and not _pid_alive(int(holder.get("pid", -1)))):
      return f"process {holder.get('pid')} of this host is gone"
    age = time.time() - float(holder.get("heartbeat", 0))
    if age > self.stale_after_s:
      return f"no heartbeat for {age:.0f}s"
    return None

  def acquire(self) -> None:
    """Takes the lock, reclaiming a stale one; raises LockHeldError when a
    live run holds it."""
    try:
      self.path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
      raise OSError(f"cannot make the directory of the lock {self.path}: "
                    f"{e}") from e
    for _ in range(3):
      self._record = self._new_record()
      if self._create():
        break
      holder = self.read()
      if holder is None:  # Released meanwhile: try again.
        continue
      reason = self._stale_reason(holder)
      if reason is None:
        raise LockHeldError(
            f"{self.path.parent} is in use by {self._describe(holder)}; "
            f"lock file {self.path}. Wait for that run to end or stop it; "
            f"if it is dead, remove the lock file.")
      logging.warning("reclaiming the stale lock %s (%s): it was held by %s",
                      self.path, reason, self._describe(holder))
      self._remove_stale(holder)
    else:
      raise LockHeldError(f"could not take the lock {self.path}: others "
                          f"keep taking it")
    self._stop.clear()
    self._thread = threading.Thread(target=self._beat, daemon=True,
                                    name=f"heartbeat {self.path}")
    self._thread.start()
    logging.info("locked %s for this %s", self.path, self.what)

  def _create(self) -> bool:
    """Writes this process's record if there is no lock file; whether it did."""
    text = json.dumps(self._record)
    if not fs.is_remote(self.path):
      try:
        fd = os.open(os.fspath(self.path), os.O_CREAT | os.O_EXCL | os.O_WRONLY,
                     0o644)
      except FileExistsError:
        return False
      with os.fdopen(fd, "w") as f:
        f.write(text)
      return True
    if self.path.exists():
      return False
    self.path.write_text(text)
    time.sleep(_REMOTE_SETTLE_S)
    holder = self.read()
    return bool(holder) and holder.get("token") == self._token

  def _remove_stale(self, holder: dict[str, Any]) -> None:
    """Removes the lock file if it still holds `holder`'s record."""
    if fs.is_remote(self.path):
      if self.read() == holder:
        self.path.unlink(missing_ok=True)
      return
    aside = self.path.with_name(f"{self.path.name}.stale-{self._token}")
    try:
      os.rename(os.fspath(self.path), os.fspath(aside))
    except FileNotFoundError:
      return
    moved = json.loads(aside.read_text() or "{}") if aside.exists() else None
    if "unreadable" not in holder and moved != holder:
      # Another reclaimer was faster and this moved its fresh lock: put it
      # back (link fails if a third run locked meanwhile, which then wins).
      with contextlib.suppress(FileExistsError):
        os.link(os.fspath(aside), os.fspath(self.path))
    aside.unlink(missing_ok=True)

  def _beat(self) -> None:
    while not self._stop.wait(self.heartbeat_s):
      try:
        current = self.read()
        if not current or current.get("token") != self._token:
          logging.error("lost the lock %s: it now holds %s", self.path,
                        self._describe(current) if current else "nothing")
          return
        self._record["heartbeat"] = time.time()
        self._write_record()
      except OSError as e:  # A storage hiccup: the next beat tries again.
        logging.warning("could not refresh the lock %s: %r", self.path, e)

  def _write_record(self) -> None:
    text = json.dumps(self._record)
    if fs.is_remote(self.path):
      self.path.write_text(text)
      return
    temporary = self.path.with_name(f"{self.path.name}.{self._token}")
    temporary.write_text(text)
    os.replace(os.fspath(temporary), os.fspath(self.path))

  def release(self) -> None:
    """Stops the heartbeat and removes the lock file if it is still ours."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
      self._thread = None
    current = self.read()
    if current and current.get("token") == self._token:
      self.path.unlink(missing_ok=True)
      logging.info("released the lock %s", self.path)


@contextlib.contextmanager
def hold_on_process_zero(path: fs.PathLike, what: str, **options
                         ) -> Iterator[None]:
  """Holds the lock `path` on process 0 for the block (a `RunLock`; options
  as there). With several processes every one raises when process 0 could
  not take it, so that none waits for the others at a collective."""
  lock = RunLock(path, what, **options) if jax.process_index() == 0 else None
  error = None
  if lock is not None:
    try:
      lock.acquire()
    except LockHeldError as e:
      error = e
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    failed = multihost_utils.broadcast_one_to_all(
        jax.numpy.int32(error is not None))
    if int(failed) and error is None:
      raise LockHeldError(f"process 0 could not take the lock {path}: "
                          f"another run holds it (process 0's log names it)")
  if error is not None:
    raise error
  try:
    yield
  finally:
    if lock is not None:
      lock.release()
