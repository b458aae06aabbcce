"""dynfield in zarr format 3 arrays: the numcodecs codec as an array-to-bytes codec (a serializer).

Zarr format 3 passes a compressor only bytes, without the chunk's shape; the
dynfield codec needs the 2D fields, so in a format-3 array it is the
serializer, the codec that turns the chunk array into bytes:

    from dynfield.codec.zarr3 import DynfieldSerializer
    ds.to_zarr(store, encoding={"vorticity": {"serializer": DynfieldSerializer(rel_error=1e-2),
                                              "compressors": None, "chunks": (1, 256, 256)}})

Its configuration is the numcodecs codec's (``Dynfield.get_config``), and
zarr finds it by the name ``dynfield`` through the ``zarr.codecs`` entry
point once dynfield is installed.
"""

from dataclasses import dataclass

from zarr.abc.codec import ArrayBytesCodec
from zarr.core.common import parse_named_configuration

from .numcodecs_codec import Dynfield

NAME = "dynfield"


@dataclass(frozen=True)
class DynfieldSerializer(ArrayBytesCodec):
    """Array chunk <-> dynfield chunk bytes; keyword arguments as for ``Dynfield``."""

    is_fixed_size = False
    codec: Dynfield

    def __init__(self, **config):
        object.__setattr__(self, "codec", Dynfield(**config))

    @classmethod
    def from_dict(cls, data):
        _, config = parse_named_configuration(data, NAME, require_configuration=False)
        return cls(**(config or {}))

    def to_dict(self):
        config = {k: v for k, v in self.codec.get_config().items() if k != "id"}
        return {"name": NAME, "configuration": config}

    async def _encode_single(self, chunk_array, chunk_spec):
        return chunk_spec.prototype.buffer.from_bytes(self.codec.encode(chunk_array.as_numpy_array()))

    async def _decode_single(self, chunk_bytes, chunk_spec):
        values = self.codec.decode(chunk_bytes.as_numpy_array()).reshape(chunk_spec.shape)
        return chunk_spec.prototype.nd_buffer.from_numpy_array(values)

    def compute_encoded_size(self, input_byte_length, chunk_spec):
        raise NotImplementedError("a dynfield chunk's size depends on its values")
