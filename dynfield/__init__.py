"""dynfield: an adaptive (dynamic-grain) tokenizer for scientific fields."""

__version__ = "0.1.0"


def __getattr__(name):
    # open_dfz and to_dfz import torch and xarray: only when asked for, so `python -m dynfield.x --help` starts fast
    if name in ("open_dfz", "to_dfz"):
        from .codec import lazy

        return getattr(lazy, name)
    raise AttributeError(f"module 'dynfield' has no attribute {name!r}")
