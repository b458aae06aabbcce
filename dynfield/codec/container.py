"""The ``.dfz`` container: framing, checksums, and the JSON form of metadata.

Layout (all integers little-endian)::

    MAGIC (8 bytes) | version u16
    header length u32 | header (zlib-compressed JSON) | CRC32 of the header u32
    per chunk:  b"C" | length u64 | payload | CRC32 of length and payload u32
    trailer:    b"E" | chunk count u64 | CRC32 of the count u32 | END_MAGIC (8 bytes)

The header says how many chunks follow, and the trailer repeats the count,
so a file cut anywhere is refused: before its trailer is read (the reader
checks the end of the file first), or at the chunk that runs past the end.
Every damaged or foreign file raises ``CodecError`` with a message that says
what is wrong; nothing is decoded from bytes whose checksum fails.
"""

import base64
import contextlib
import json
import os
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np

MAGIC = b"\x89DFZ\r\n\x1a\n"  # like PNG's: a text-mode transfer or a 7-bit channel breaks it visibly
END_MAGIC = b"DFZ-END\n"
VERSION = 3  # 2: residual sections name their integer transform; 3: SPERR/SZ3 residuals, units without tokens
READABLE = (2, 3)  # version 3 only adds to what version 2 may hold

_CHUNK, _END = b"C", b"E"
_TRAILER = struct.Struct("<cQI8s")


class CodecError(ValueError):
    """A ``.dfz`` file is damaged, foreign, or does not match the model given to decode it."""


@contextlib.contextmanager
def atomic_output(path):
    """Yield a temporary path beside `path`; rename it to `path` only if the block succeeds.

    Any exception, KeyboardInterrupt included, removes the temporary file, so
    `path` is either complete or untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# --------------------------------------------------------------------------- varints, floats, blobs

class ByteWriter:
    """Append unsigned varints, float64s and length-prefixed blobs to a bytearray."""

    def __init__(self):
        self.buf = bytearray()

    def uvarint(self, n):
        n = int(n)
        if n < 0:
            raise ValueError(f"varints are unsigned, got {n}")
        while n >= 0x80:
            self.buf.append((n & 0x7F) | 0x80)
            n >>= 7
        self.buf.append(n)

    def f64(self, x):
        self.buf += struct.pack("<d", x)

    def blob(self, data):
        self.uvarint(len(data))
        self.buf += data

    def extend(self, data):
        """Append bytes as they are (what another writer wrote)."""
        self.buf += data

    def bytes(self):
        return bytes(self.buf)


class ByteReader:
    """Read what ``ByteWriter`` wrote; running past the end is a ``CodecError``."""

    def __init__(self, data, what="chunk"):
        self.data, self.pos, self.what = memoryview(data), 0, what

    def _take(self, n):
        if n < 0 or self.pos + n > len(self.data):
            raise CodecError(f"{self.what} ends early: its content is inconsistent (corrupt file)")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def uvarint(self):
        n, shift = 0, 0
        while True:
            byte = self._take(1)[0]
            n |= (byte & 0x7F) << shift
            if byte < 0x80:
                return n
            shift += 7
            if shift > 63:
                raise CodecError(f"{self.what} holds an overlong integer (corrupt file)")

    def f64(self):
        return struct.unpack("<d", self._take(8))[0]

    def raw(self, n):
        """The next n bytes as they are."""
        return bytes(self._take(n))

    def blob(self):
        return bytes(self._take(self.uvarint()))

    def done(self):
        if self.pos != len(self.data):
            raise CodecError(f"{self.what} has {len(self.data) - self.pos} unread bytes (corrupt file)")


# --------------------------------------------------------------------------- JSON for attributes and arrays

def to_json(value):
    """A JSON-able form of an attribute value or array that ``from_json`` restores exactly."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value  # Python floats print their shortest round-trip form; NaN/inf use JSON's extension
    if isinstance(value, bytes):
        return {"__bytes__": base64.b64encode(value).decode()}
    if isinstance(value, (np.ndarray, np.generic)):
        arr = np.asarray(value)
        if arr.dtype.kind in "OUS":
            return {"__strings__": [str(v.decode() if isinstance(v, bytes) else v) for v in arr.ravel()],
                    "shape": list(arr.shape), "scalar": isinstance(value, np.generic)}
        arr = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
        return {"__array__": arr.dtype.str, "shape": list(arr.shape), "scalar": isinstance(value, np.generic),
                "data": base64.b64encode(arr.tobytes()).decode()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    raise CodecError(f"cannot store a value of type {type(value).__name__}: {value!r}")


def from_json(obj):
    """Inverse of ``to_json``."""
    if isinstance(obj, list):
        return [from_json(v) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__bytes__" in obj:
        return base64.b64decode(obj["__bytes__"])
    if "__strings__" in obj:
        arr = np.array(obj["__strings__"], dtype=object).reshape(obj["shape"])
        return arr[()] if obj["scalar"] else arr
    if "__array__" in obj:
        arr = np.frombuffer(base64.b64decode(obj["data"]), dtype=np.dtype(obj["__array__"])).reshape(obj["shape"])
        arr = arr.astype(arr.dtype.newbyteorder("="))
        return arr[()] if obj["scalar"] else arr
    return {k: from_json(v) for k, v in obj.items()}


# --------------------------------------------------------------------------- writing

def encode_header(header):
    """The header's bytes as the container stores them (zlib-compressed compact JSON)."""
    return zlib.compress(json.dumps(header, separators=(",", ":")).encode())


class ContainerWriter:
    """Write a ``.dfz`` stream: ``write_header`` once, ``write_chunk`` per chunk, then ``finish``."""

    def __init__(self, f):
        self.f, self.n_chunks, self.expected = f, 0, None

    def write_header(self, header):
        data = encode_header(header)
        self.f.write(MAGIC + struct.pack("<H", VERSION) + struct.pack("<I", len(data)) + data)
        self.f.write(struct.pack("<I", zlib.crc32(data)))
        self.expected = header["n_chunks"]

    def write_chunk(self, payload):
        length = struct.pack("<Q", len(payload))
        self.f.write(_CHUNK + length + payload + struct.pack("<I", zlib.crc32(payload, zlib.crc32(length))))
        self.n_chunks += 1

    def finish(self):
        if self.n_chunks != self.expected:
            raise RuntimeError(f"wrote {self.n_chunks} chunks, the header announced {self.expected}")
        count = struct.pack("<Q", self.n_chunks)
        self.f.write(_TRAILER.pack(_END, self.n_chunks, zlib.crc32(count), END_MAGIC))


# --------------------------------------------------------------------------- reading

class ContainerReader:
    """Open a ``.dfz`` file, check its magic, version, header and trailer; iterate its chunks.

    Use as a context manager. ``header`` is the decoded JSON header,
    ``version`` the format version, ``size`` the file size in bytes.
    """

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no such file: {self.path}")
        self.f = open(self.path, "rb")
        try:
            self.size = os.fstat(self.f.fileno()).st_size
            self.header = self._read_header()
            self._check_trailer()
        except BaseException:
            self.f.close()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def _read(self, n, what):
        data = self.f.read(n)
        if len(data) != n:
            raise CodecError(f"{self.path} is truncated: it ends inside {what}")
        return data

    def _read_header(self):
        magic = self.f.read(len(MAGIC))
        if magic != MAGIC:
            raise CodecError(f"{self.path} is not a dynfield .dfz file (bad magic bytes {magic[:8]!r})")
        (self.version,) = struct.unpack("<H", self._read(2, "the format version"))
        if self.version < 1:
            raise CodecError(f"{self.path} has an invalid .dfz format version {self.version} (corrupt file)")
        if self.version not in READABLE:
            raise CodecError(f"{self.path} has .dfz format version {self.version}; this dynfield reads versions "
                             f"{', '.join(map(str, READABLE))}: decode it with the dynfield release that wrote it")
        (length,) = struct.unpack("<I", self._read(4, "the header length"))
        if length > self.size:
            raise CodecError(f"{self.path}: header length {length} exceeds the file size {self.size} "
                             f"(corrupt or truncated)")
        data = self._read(length, "the header")
        (crc,) = struct.unpack("<I", self._read(4, "the header checksum"))
        if zlib.crc32(data) != crc:
            raise CodecError(f"{self.path}: header checksum mismatch (corrupt file)")
        header = json.loads(zlib.decompress(data))
        self.chunks_start = self.f.tell()
        return header

    def _check_trailer(self):
        if self.size - self.chunks_start < _TRAILER.size:
            raise CodecError(f"{self.path} is truncated: no end marker")
        self.f.seek(self.size - _TRAILER.size)
        tag, count, crc, end = _TRAILER.unpack(self.f.read(_TRAILER.size))
        if tag != _END or end != END_MAGIC:
            raise CodecError(f"{self.path} is truncated or corrupt: no end marker")
        if zlib.crc32(struct.pack("<Q", count)) != crc or count != self.header["n_chunks"]:
            raise CodecError(f"{self.path}: the end marker counts {count} chunks, the header "
                             f"{self.header['n_chunks']} (corrupt file)")
        self.f.seek(self.chunks_start)

    def _read_chunk(self, what):
        """The payload of the chunk at the current position, checksum verified."""
        tag = self._read(1, what)
        if tag != _CHUNK:
            raise CodecError(f"{self.path}: {what} has a bad tag {tag!r} (corrupt file)")
        length_bytes = self._read(8, what)
        (length,) = struct.unpack("<Q", length_bytes)
        if length > self.size - self.f.tell():
            raise CodecError(f"{self.path}: {what} claims {length} bytes, more than the rest of "
                             f"the file (corrupt or truncated)")
        payload = self._read(length, what)
        (crc,) = struct.unpack("<I", self._read(4, what))
        if zlib.crc32(payload, zlib.crc32(length_bytes)) != crc:
            raise CodecError(f"{self.path}: {what} checksum mismatch (corrupt file)")
        return payload

    def chunks(self):
        """Yield each chunk's payload, checksum verified, in file order."""
        self.f.seek(self.chunks_start)
        for i in range(self.header["n_chunks"]):
            yield self._read_chunk(f"chunk {i}")
        if self.f.tell() != self.size - _TRAILER.size or self._read(1, "the end marker") != _END:
            raise CodecError(f"{self.path}: unexpected data between the last chunk and the end marker (corrupt file)")

    def chunk_at(self, offset):
        """The payload of the chunk that starts at byte `offset`, checksum verified."""
        if not self.chunks_start <= offset < self.size - _TRAILER.size:
            raise CodecError(f"{self.path}: no chunk at byte {offset}")
        self.f.seek(offset)
        return self._read_chunk(f"the chunk at byte {offset}")
