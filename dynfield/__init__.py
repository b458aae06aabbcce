"""dynfield: an adaptive (dynamic-grain) tokenizer for scientific fields."""

__version__ = "0.1.0"
