"""Run output without TensorFlow: TensorBoard scalar event files and a progress line.

TensorBoard reads ``events.out.tfevents.*`` files: TFRecord-framed ``Event`` protocol buffers. Scalars
need only a handful of fields, so they are encoded here directly (field numbers from TensorBoard's
``event.proto`` and ``summary.proto``) instead of depending on TensorFlow or tensorboardX.
"""

from __future__ import annotations

import math
import os
import socket
import struct
import sys
import time

import jax

# --------------------------------------------------------------------------------------------
# CRC-32C (Castagnoli), as TFRecord framing requires.


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# --------------------------------------------------------------------------------------------
# Minimal protobuf encoding.


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, wire_type: int, payload: bytes) -> bytes:
    return _varint(number << 3 | wire_type) + payload


def _bytes_field(number: int, payload: bytes) -> bytes:
    return _field(number, 2, _varint(len(payload)) + payload)


def _event(wall_time: float, step: int, *, file_version: str | None = None, summary: bytes = b""):
    out = _field(1, 1, struct.pack("<d", wall_time)) + _field(2, 0, _varint(step))
    if file_version is not None:
        out += _bytes_field(3, file_version.encode())
    if summary:
        out += _bytes_field(5, summary)
    return out


def _scalar_summary(scalars: dict[str, float]) -> bytes:
    values = b""
    for tag, value in scalars.items():
        v = _bytes_field(1, tag.encode()) + _field(2, 5, struct.pack("<f", float(value)))
        values += _bytes_field(1, v)
    return values


class SummaryWriter:
    """Appends scalars to a TensorBoard event file in ``logdir``; a no-op when ``enabled`` is False
    (e.g. on processes other than 0 of a multi-host run). The file is created with the first
    scalars, so a run that fails before logging anything leaves no file behind."""

    def __init__(self, logdir: str, enabled: bool = True):
        self.enabled, self.logdir = enabled, logdir
        self.path = None
        self._file = None

    def _open(self) -> None:
        os.makedirs(self.logdir, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
        self.path = os.path.join(self.logdir, name)
        self._file = open(self.path, "ab")
        self._write(_event(time.time(), 0, file_version="brain.Event:2"))

    def _write(self, record: bytes) -> None:
        header = struct.pack("<Q", len(record))
        self._file.write(header + struct.pack("<I", _masked_crc(header)))
        self._file.write(record + struct.pack("<I", _masked_crc(record)))

    def scalars(self, step: int, scalars: dict[str, float]) -> None:
        if self.enabled:
            if self._file is None:
                self._open()
            self._write(_event(time.time(), int(step), summary=_scalar_summary(scalars)))
            self._file.flush()

    def close(self) -> None:
        if self._file is not None and not self._file.closed:
            self._file.close()


def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        byte = buf[i]
        i += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return result, i


def _fields(buf: bytes):
    i = 0
    while i < len(buf):
        key, i = _read_varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _read_varint(buf, i)
        elif wire == 1:
            value, i = buf[i : i + 8], i + 8
        elif wire == 5:
            value, i = buf[i : i + 4], i + 4
        elif wire == 2:
            n, i = _read_varint(buf, i)
            value, i = buf[i : i + n], i + n
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, value


def read_scalars(path: str) -> dict[str, list[tuple[int, float]]]:
    """Reads the scalars of an event file as ``{tag: [(step, value), ...]}``, checking every CRC."""
    out: dict[str, list[tuple[int, float]]] = {}
    with open(path, "rb") as f:
        data = f.read()
    i = 0
    while i < len(data):
        header = data[i : i + 8]
        (n,) = struct.unpack("<Q", header)
        if struct.unpack("<I", data[i + 8 : i + 12])[0] != _masked_crc(header):
            raise ValueError(f"{path}: corrupt record header at byte {i}")
        record = data[i + 12 : i + 12 + n]
        if struct.unpack("<I", data[i + 12 + n : i + 16 + n])[0] != _masked_crc(record):
            raise ValueError(f"{path}: corrupt record at byte {i}")
        i += 16 + n
        step, summary = 0, b""
        for number, value in _fields(record):
            if number == 2:
                step = value
            elif number == 5:
                summary = value
        for number, value in _fields(summary):
            if number != 1:
                continue
            tag, scalar = None, None
            for vn, vv in _fields(value):
                if vn == 1:
                    tag = vv.decode()
                elif vn == 2:
                    scalar = struct.unpack("<f", vv)[0]
            if tag is not None and scalar is not None:
                out.setdefault(tag, []).append((step, scalar))
    return out


# --------------------------------------------------------------------------------------------
# Progress.


class Progress:
    """A one-line progress report with steps/s and ETA, printed every ``every`` seconds."""

    def __init__(self, total: int, start: int = 0, every: float = 5.0, stream=None):
        self.total, self.start, self.every = total, start, every
        self.stream = stream or sys.stderr
        self._t0 = time.perf_counter()
        self._last = -math.inf

    def update(self, step: int, extra: str = "", force: bool = False) -> None:
        if jax.process_index() != 0:
            return
        now = time.perf_counter()
        if not force and now - self._last < self.every:
            return
        self._last = now
        done = step - self.start
        rate = done / max(now - self._t0, 1e-9)
        eta = (self.total - step) / rate if rate > 0 else math.inf
        eta_s = "?" if not math.isfinite(eta) else time.strftime("%H:%M:%S", time.gmtime(eta))
        pct = 100.0 * step / max(self.total, 1)
        print(
            f"step {step}/{self.total} ({pct:.1f}%) {rate:.2f} steps/s ETA {eta_s} {extra}",
            file=self.stream,
            flush=True,
        )
