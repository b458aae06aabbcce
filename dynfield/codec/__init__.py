"""The dynfield codec: fields -> tokens -> bytes in the ``.dfz`` container, with an optional error bound."""

from dynfield.checkpoint import weights_hash

from .codec import compress_file, decompress_file, inspect_file, prior_code_length
from .field import compress_field, decompress_field, default_checkpoint, tokenize
from .container import CodecError
from .entropy import TokenModel

__all__ = [
    "CodecError",
    "TokenModel",
    "compress_field",
    "compress_file",
    "decompress_field",
    "decompress_file",
    "default_checkpoint",
    "inspect_file",
    "prior_code_length",
    "tokenize",
    "weights_hash",
]
