"""Decode tables: every data type in every byte/word order, against registers built independently with struct."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.decode import (BYTE_ORDERS, DATA_TYPES, REGISTER_COUNT, WORD_ORDERS, block_codec, decode_registers,
                               encode_registers, make_decoder, register_bytes)
from edge_agent.errors import DecodeError

# (type, struct format, sample values) — extremes and signs for the integers, awkward floats for the floats
CASES = [
    ("int16", "h", [0, 1, -1, 12345, -32768, 32767]),
    ("uint16", "H", [0, 1, 0x1234, 65535]),
    ("int32", "i", [0, -1, 70000, -2**31, 2**31 - 1, 0x12345678]),
    ("uint32", "I", [0, 1, 0x12345678, 2**32 - 1]),
    ("float32", "f", [0.0, 1.0, -2.5, 58.2, 1e-7, 3.4e38, -123456.75]),
    ("float64", "d", [0.0, -1.5, math.pi, 1e300, -2.2250738585072014e-308, 120873.9451491001]),
]
ORDERS = [("big", "big"), ("big", "little"), ("little", "big"), ("little", "little")]


def wire_registers(fmt: str, value: float, byte_order: str, word_order: str) -> list[int]:
    """The registers a device sends, derived from the big-endian bytes ("ABCD…") by hand."""
    raw = struct.pack(">" + fmt, value)
    words = [raw[i:i + 2] for i in range(0, len(raw), 2)]          # most significant word first
    if word_order == "little":
        words.reverse()
    if byte_order == "little":
        words = [w[::-1] for w in words]
    return [int.from_bytes(w, "big") for w in words]


@pytest.mark.parametrize("byte_order,word_order", ORDERS)
@pytest.mark.parametrize("data_type,fmt,values", CASES)
def test_decode_every_type_and_order(data_type: str, fmt: str, values: list[float], byte_order: str, word_order: str) -> None:
    for value in values:
        registers = wire_registers(fmt, value, byte_order, word_order)
        assert len(registers) == REGISTER_COUNT[data_type]
        decoded = decode_registers(registers, data_type, byte_order, word_order)
        if fmt == "f":   # float32 decodes to the shortest decimal of the same float32
            assert struct.pack(">f", decoded) == struct.pack(">f", value), (value, decoded)
        else:
            assert decoded == value, (data_type, byte_order, word_order, value, registers)


def test_known_float32_layouts() -> None:
    # 1.0 is 0x3F800000: the four layouts Modbus devices use in the wild
    assert decode_registers([0x3F80, 0x0000], "float32", "big", "big") == 1.0          # ABCD
    assert decode_registers([0x0000, 0x3F80], "float32", "big", "little") == 1.0       # CDAB
    assert decode_registers([0x803F, 0x0000], "float32", "little", "big") == 1.0       # BADC
    assert decode_registers([0x0000, 0x803F], "float32", "little", "little") == 1.0    # DCBA
    assert decode_registers([0x4268, 0xCCCD], "float32") == 58.2                       # shortest decimal


def test_int16_byte_order_and_signs() -> None:
    assert decode_registers([0xFFFE], "int16") == -2
    assert decode_registers([0xFEFF], "int16", "little") == -2
    assert decode_registers([0xFFFE], "uint16") == 65534
    assert decode_registers([0x0001, 0x0000], "int32", word_order="little") == 1
    assert decode_registers([0x0000, 0x0001], "int32") == 1


def test_bool_is_any_nonzero_register() -> None:
    assert decode_registers([0], "bool") == 0.0
    assert decode_registers([1], "bool") == 1.0
    assert decode_registers([0x8000], "bool") == 1.0


def test_wrong_register_count_names_the_point() -> None:
    with pytest.raises(DecodeError, match=r"point 'SENSOR_01': float32 needs 2 registers, got 1"):
        decode_registers([1], "float32", point="SENSOR_01")


@pytest.mark.parametrize("pattern", [[0x7FC0, 0x0000], [0x7F80, 0x0000], [0xFF80, 0x0000]])
def test_nan_and_infinity_are_refused(pattern: list[int]) -> None:
    with pytest.raises(DecodeError, match=r"point 'X': float32 value is (nan|inf|-inf)"):
        decode_registers(pattern, "float32", point="X")


@pytest.mark.parametrize("byte_order,word_order", ORDERS)
@pytest.mark.parametrize("data_type", [t for t in DATA_TYPES if t != "bool"])
def test_encode_is_the_inverse_used_by_the_simulator(data_type: str, byte_order: str, word_order: str) -> None:
    fmt = {"int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "float32": "f", "float64": "d"}[data_type]
    value = {"int16": -1234, "uint16": 54321, "int32": -7654321, "uint32": 3000000000,
             "float32": -12.5, "float64": 98765.4321}[data_type]
    assert encode_registers(value, data_type, byte_order, word_order) == wire_registers(fmt, value, byte_order, word_order)


_field = st.tuples(st.integers(0, 3), st.sampled_from(DATA_TYPES), st.sampled_from(BYTE_ORDERS),
                   st.sampled_from(WORD_ORDERS))


@settings(max_examples=300, deadline=None)
@given(st.lists(_field, min_size=1, max_size=8), st.data())
def test_a_block_codec_decodes_every_point_as_decode_registers_does(specs: list, data: st.DataObject) -> None:
    """Points laid out with gaps (any type and order) in one block: the codec's numbers, with the
    listed points redone by their decoders, equal ``decode_registers`` of each point's registers."""
    fields, offset = [], 0
    for gap, data_type, byte_order, word_order in specs:
        fields.append((offset + gap, data_type, byte_order, word_order))
        offset += gap + REGISTER_COUNT[data_type]
    registers = data.draw(st.lists(st.integers(0, 0xFFFF), min_size=offset, max_size=offset))
    buf = register_bytes(registers)
    codec, redo = block_codec(fields)
    numbers = list(map(float, codec.unpack_from(buf)))
    for i, (start, data_type, byte_order, word_order) in enumerate(fields):
        regs = registers[start:start + REGISTER_COUNT[data_type]]
        try:
            expected = decode_registers(regs, data_type, byte_order, word_order)
        except DecodeError:
            assert i in redo
            continue
        got = make_decoder(data_type, byte_order, word_order)(buf, start) if i in redo else numbers[i]
        assert got == expected or (math.isnan(got) and math.isnan(expected))


def test_overlapping_points_have_no_block_codec() -> None:
    assert block_codec([(0, "uint32", "big", "big"), (1, "uint16", "big", "big")]) is None
