"""Registers → numbers: the data types and byte/word orders of ``sensors.conf``.

A Modbus register is 16 bits sent big-endian on the wire; pymodbus hands us
each register as an ``int`` 0..65535. Devices disagree about everything
wider or differently ordered, so each point names:

=============  ==========================================================
``type``       ``int16 uint16 int32 uint32 float32 float64 bool``
``byte_order`` ``big`` (AB, the Modbus norm) or ``little`` (BA) inside each register
``word_order`` ``big`` (the first register holds the most significant word)
               or ``little`` (the first register holds the least significant word)
=============  ==========================================================

So a float32 ``1.0`` (0x3F800000) reads as registers ``[0x3F80, 0x0000]``
with big/big ("ABCD"), ``[0x0000, 0x3F80]`` with word_order little ("CDAB"),
``[0x803F, 0x0000]`` with byte_order little ("BADC"), ``[0x0000, 0x803F]``
with both little ("DCBA"). Plain ``struct``; no pymodbus here.
"""

from __future__ import annotations

import math
import struct
from typing import Callable, Sequence

from edge_agent.errors import DecodeError

__all__ = ["DATA_TYPES", "BYTE_ORDERS", "WORD_ORDERS", "REGISTER_COUNT", "Decoder", "block_codec", "decode_registers",
           "encode_registers", "make_decoder", "register_bytes"]

#: data type → (struct format character, registers it occupies)
_FORMATS: dict[str, tuple[str, int]] = {
    "int16": ("h", 1),
    "uint16": ("H", 1),
    "int32": ("i", 2),
    "uint32": ("I", 2),
    "float32": ("f", 2),
    "float64": ("d", 4),
    "bool": ("H", 1),
}
DATA_TYPES: tuple[str, ...] = tuple(_FORMATS)
BYTE_ORDERS = ("big", "little")
WORD_ORDERS = ("big", "little")
#: registers one value of each data type occupies (a bool on a coil or discrete input is one bit)
REGISTER_COUNT: dict[str, int] = {name: count for name, (_, count) in _FORMATS.items()}


def register_bytes(registers: Sequence[int]) -> bytes:
    """Registers as they travel on the wire: two big-endian bytes each."""
    return struct.pack(f">{len(registers)}H", *registers)


Decoder = Callable[[bytes, int], float]


def make_decoder(data_type: str, byte_order: str = "big", word_order: str = "big", *, point: str = "?") -> Decoder:
    """A function ``(block_bytes, register_offset) -> value`` for one point, prepared once.

    ``block_bytes`` is ``register_bytes(...)`` of a whole read; the poller
    converts each response once and decodes every point from it. Raises
    DecodeError for NaN or infinite floats.
    """
    fmt, count = _FORMATS[data_type]
    if data_type == "bool":
        return lambda buf, off: 1.0 if buf[2 * off] or buf[2 * off + 1] else 0.0
    codec = struct.Struct(">" + fmt)
    size = 2 * count
    plain = byte_order == "big" and word_order == "big"

    def decode(buf: bytes, off: int) -> float:
        start = 2 * off
        if plain:
            raw = buf[start:start + size]
        else:
            words = [buf[i:i + 2] for i in range(start, start + size, 2)]
            if word_order == "little":
                words.reverse()
            if byte_order == "little":
                words = [w[::-1] for w in words]
            raw = b"".join(words)
        (value,) = codec.unpack(raw)
        if fmt == "f" or fmt == "d":
            if not math.isfinite(value):
                raise DecodeError(point, f"{data_type} value is {value} (bytes {raw.hex()})")
            if fmt == "f":
                return _shortest_float32(value, raw)
        return float(value)

    return decode


def decode_registers(registers: Sequence[int], data_type: str, byte_order: str = "big",
                     word_order: str = "big", *, point: str = "?") -> float:
    """The value of ``registers`` (each 0..65535) read as ``data_type``.

    ``bool`` is 1.0 when the register is non-zero. Raises DecodeError for a
    wrong register count or a NaN/infinite float (a device's "no value" marker
    must not reach the telemetry as a number).
    """
    count = _FORMATS[data_type][1]
    if len(registers) != count:
        raise DecodeError(point, f"{data_type} needs {count} registers, got {len(registers)}")
    return make_decoder(data_type, byte_order, word_order, point=point)(register_bytes(registers), 0)


def _shortest_float32(value: float, raw: bytes) -> float:
    """The shortest decimal that is the same float32 (58.2, not 58.20000076293945)."""
    for digits in range(6, 9):
        candidate = float(f"{value:.{digits}g}")
        if struct.pack(">f", candidate) == raw:
            return candidate
    return value


def encode_registers(value: float, data_type: str, byte_order: str = "big", word_order: str = "big") -> list[int]:
    """The registers a device would hold for ``value`` (used by the simulator)."""
    fmt, count = _FORMATS[data_type]
    if data_type == "bool":
        return [1 if value else 0]
    number = float(value) if fmt in "fd" else int(round(value))
    raw = struct.pack(">" + fmt, number)
    words = [(raw[i] << 8) | raw[i + 1] if byte_order == "big" else (raw[i + 1] << 8) | raw[i]
             for i in range(0, len(raw), 2)]
    return words if word_order == "big" else list(reversed(words))


#: data types a block codec unpacks directly (big-endian bytes and words), and their struct characters
_DIRECT = {"int16": "h", "uint16": "H", "int32": "i", "uint32": "I"}
#: a placeholder of the same size for a point that is then decoded by its own decoder
_PLACEHOLDER = {1: "H", 2: "I", 4: "Q"}


def block_codec(fields: Sequence[tuple[int, str, str, str]]) -> tuple[struct.Struct, tuple[int, ...]] | None:
    """One ``struct.Struct`` that unpacks a block's bytes into one number per point, prepared once per block.

    ``fields`` holds each point's ``(register offset in the block, type, byte_order, word_order)`` in
    address order. Integer points in the Modbus byte and word order come out as their value; the
    others (floats, bools, other orders) as a placeholder integer of their size, listed in the second
    item: decode those with ``make_decoder``. None when points overlap (one struct cannot unpack them).
    """
    parts, redo = [">"], []
    end = 0
    for i, (offset, data_type, byte_order, word_order) in enumerate(fields):
        count = _FORMATS[data_type][1]
        if offset < end:
            return None
        if offset > end:
            parts.append(f"{2 * (offset - end)}x")
        char = _DIRECT.get(data_type)
        if char is None or byte_order != "big" or (word_order != "big" and count > 1):
            char = _PLACEHOLDER[count]
            redo.append(i)
        parts.append(char)
        end = offset + count
    return struct.Struct("".join(parts)), tuple(redo)
