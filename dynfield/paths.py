"""Where dynfield keeps generated data and finds its configs."""

import os
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent

# The small pretrained tokenizer shipped with the package (see `make pretrained`).
BUNDLED_TOKENIZER = _PACKAGE_DIR / "pretrained" / "tokenizer.pt"
# The tokenizers shipped before it, named by the first 16 hex digits of their weights' SHA-256, so that
# files made with them still decode.
RETIRED_TOKENIZERS = _PACKAGE_DIR / "pretrained" / "retired"


def retired_tokenizer(sha256):
    """Where the formerly bundled tokenizer whose weights hash to `sha256` is kept (if it is)."""
    return RETIRED_TOKENIZERS / f"{sha256[:16]}.pt"


def source_root():
    """The repository root when running from a source checkout, else None."""
    root = _PACKAGE_DIR.parent
    return root if (root / "pyproject.toml").is_file() and (root / "conf").is_dir() else None


def default_data_dir():
    """Directory for generated data sets.

    ``$DYNFIELD_DATA_DIR`` if set, else ``datasets/`` of a source checkout
    (beside the recipes), else ``~/.cache/dynfield``.
    """
    if os.environ.get("DYNFIELD_DATA_DIR"):
        return Path(os.environ["DYNFIELD_DATA_DIR"]).expanduser().resolve()
    root = source_root()
    if root is not None:
        return root / "datasets"
    return Path.home() / ".cache" / "dynfield"


def config_dir():
    """Absolute path of the Hydra configs, from a checkout or an installed wheel.

    Hydra resolves a relative ``config_path`` against the calling module's
    package under ``python -m``, which breaks as soon as the configs live
    outside it; an absolute path works from any working directory.
    """
    root = source_root()
    if root is not None:
        return str(root / "conf")
    from importlib.resources import files

    return str(files("dynfield.conf"))
