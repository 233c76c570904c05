"""TensorBoard scalar summaries, written through the filesystem layer.

An event file is a TFRecord stream of `Event` protos: each record is its
length (uint64, little endian), the masked CRC-32C of the length, the bytes,
and their masked CRC-32C. Writing it here rather than with `tf.summary`
keeps summaries on the same path handling as everything else a run writes
(`prottrans_jax.fs`: `gs://` run directories, and tests that check them).
Scalars are stored as `tf.summary.write` stores them (a float tensor with
the scalars plugin's metadata), so TensorBoard and
`tf.compat.v1.train.summary_iterator` read them as before.
"""

import socket
import struct
import time
from typing import Mapping

import jax
from tensorflow.core.framework import summary_pb2
from tensorflow.core.framework import tensor_pb2
from tensorflow.core.framework import tensor_shape_pb2
from tensorflow.core.framework import types_pb2
from tensorflow.core.util import event_pb2

from prottrans_jax import fs

_SCALARS = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))


def _crc32c_table() -> list[int]:
  table = []
  for byte in range(256):
    crc = byte
    for _ in range(8):
      crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    table.append(crc)
  return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
  """CRC-32C (Castagnoli), the checksum TFRecord framing uses. Summaries are
  a few hundred bytes per log step, so a table in Python is fast enough."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord(data: bytes) -> bytes:
  """One TFRecord: framed and checksummed `data`."""
  length = struct.pack("<Q", len(data))
  return (length + struct.pack("<I", _masked_crc(length)) + data
          + struct.pack("<I", _masked_crc(data)))


def _scalar_value(tag: str, value: float) -> summary_pb2.Summary.Value:
  tensor = tensor_pb2.TensorProto(
      dtype=types_pb2.DT_FLOAT, tensor_shape=tensor_shape_pb2.TensorShapeProto(),
      float_val=[float(value)])
  return summary_pb2.Summary.Value(tag=tag, tensor=tensor, metadata=_SCALARS)


class SummaryWriter:
  """Scalars in one TensorBoard event file under `directory` (a run's
  `train/` or `eval/`), written by process 0 only; every call flushes, so a
  killed run keeps what it logged."""

  def __init__(self, directory: fs.PathLike):
    self._file = None
    if jax.process_index() != 0:
      return
    directory = fs.path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # TensorBoard's naming: events.out.tfevents.<time>.<host>; each writer
    # (each run of the trainer) opens a new file, which readers merge.
    name = f"events.out.tfevents.{time.time():.6f}.{socket.gethostname()}"
    self._file = (directory / name).open("wb")
    self._append(event_pb2.Event(wall_time=time.time(),
                                 file_version="brain.Event:2"))

  def _append(self, event: event_pb2.Event) -> None:
    self._file.write(tfrecord(event.SerializeToString()))
    self._file.flush()

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    if self._file is None:
      return
    self._append(event_pb2.Event(
        wall_time=time.time(), step=step,
        summary=summary_pb2.Summary(value=[
            _scalar_value(tag, value) for tag, value in scalars.items()])))

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None
