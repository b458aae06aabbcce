"""The .dfz container: framing round trips; damaged, truncated and foreign files are refused."""

import struct

import numpy as np
import pytest

from dynfield.codec import CodecError
from dynfield.codec.container import MAGIC, ContainerReader, ContainerWriter, atomic_output, from_json, to_json

HEADER = {"format": "test", "n_chunks": 3, "note": "x" * 50}
CHUNKS = [b"first chunk", b"", bytes(range(256)) * 4]


@pytest.fixture
def container(tmp_path):
    path = tmp_path / "c.dfz"
    with open(path, "wb") as f:
        w = ContainerWriter(f)
        w.write_header(HEADER)
        for c in CHUNKS:
            w.write_chunk(c)
        w.finish()
    return path


def read_all(path):
    with ContainerReader(path) as r:
        return r.header, list(r.chunks())


def test_round_trip(container):
    header, chunks = read_all(container)
    assert header == HEADER and chunks == CHUNKS


def header_span(path):
    (length,) = struct.unpack("<I", path.read_bytes()[10:14])
    return 14, 14 + length


@pytest.mark.parametrize("where, message", [("header", "header checksum"), ("chunk", "chunk 2 checksum"),
                                            ("magic", "not a dynfield"), ("trailer", "end marker")])
def test_flipped_byte_is_refused(container, where, message):
    data = bytearray(container.read_bytes())
    start, end = header_span(container)
    pos = {"header": (start + end) // 2, "chunk": len(data) - 60, "magic": 3, "trailer": len(data) - 3}[where]
    data[pos] ^= 0x10
    container.write_bytes(bytes(data))
    with pytest.raises(CodecError, match=message):
        read_all(container)


@pytest.mark.parametrize("fraction", [0.0, 0.001, 0.05, 0.3, 0.6, 0.9, 0.999])
def test_truncated_file_is_refused(container, fraction):
    data = container.read_bytes()
    container.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(CodecError, match="truncated|not a dynfield"):
        read_all(container)


def test_other_versions_and_trailing_data_are_refused(container):
    data = container.read_bytes()
    container.write_bytes(MAGIC + struct.pack("<H", 99) + data[10:])
    with pytest.raises(CodecError, match="version 99"):
        read_all(container)
    container.write_bytes(MAGIC + struct.pack("<H", 1) + data[10:])  # an older format: refused, not misread
    with pytest.raises(CodecError, match="version 1; this dynfield reads versions 2, 3"):
        read_all(container)
    container.write_bytes(data + b"junk")
    with pytest.raises(CodecError, match="end marker"):
        read_all(container)


def test_writer_checks_the_announced_count(tmp_path):
    with open(tmp_path / "c.dfz", "wb") as f:
        w = ContainerWriter(f)
        w.write_header({"n_chunks": 2})
        w.write_chunk(b"only one")
        with pytest.raises(RuntimeError, match="announced 2"):
            w.finish()


def test_json_values_round_trip_exactly():
    values = {"s": "text", "i": 3, "f": 0.1, "nan": float("nan"), "list": [1, 2.5],
              "f32": np.float32(1.1), "arr": np.arange(6, dtype=">i2").reshape(2, 3),
              "time": np.array(["2000-01-01T00:00:00.000000001"], dtype="datetime64[ns]"),
              "strings": np.array(["a", "bc"]), "bytes": b"\x00\x01"}
    back = from_json(to_json(values))
    assert back["s"] == "text" and back["i"] == 3 and back["f"] == 0.1 and np.isnan(back["nan"])
    assert back["f32"] == np.float32(1.1) and back["f32"].dtype == np.float32
    assert np.array_equal(back["arr"], values["arr"]) and back["arr"].dtype == np.int16
    assert np.array_equal(back["time"], values["time"])
    assert back["strings"].tolist() == ["a", "bc"] and back["bytes"] == b"\x00\x01"
    with pytest.raises(CodecError, match="cannot store"):
        to_json(object())


def test_atomic_output_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(KeyboardInterrupt):
        with atomic_output(target) as tmp:
            tmp.write_bytes(b"partial")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    with atomic_output(target) as tmp:
        tmp.write_bytes(b"done")
    assert target.read_bytes() == b"done" and list(tmp_path.iterdir()) == [target]
