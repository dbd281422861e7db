"""Partita models: model loading and partition-ready wrappers for PyTorch / Hugging Face models."""

from importlib.metadata import version as _distribution_version

__all__ = ["__version__"]

# Single source of truth for the version is pyproject.toml; read it back from the
# installed distribution's metadata.
__version__: str = _distribution_version("partita-models")
