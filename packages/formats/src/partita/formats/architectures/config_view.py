"""A Hugging Face ``config.json`` read the way transformers reads it, without transformers.

transformers fills every field a file leaves out with its config class's default, some of
them derived from other fields (LLaMA's ``head_dim`` from the hidden size and heads,
Qwen2's ``layer_types`` from ``use_sliding_window`` and ``max_window_layers``). Each
architecture lists the defaults its description reads, per ``model_type``; a test in the
models package checks them against transformers' own classes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

Default = Any | Callable[["ConfigView"], Any]


class ConfigView:
    """Attribute access to a config mapping: the file's value when it has the key (``None``
    included, as transformers keeps it), else the architecture's default (a callable default
    is computed from the view), else ``AttributeError``. ``source`` names the file in errors."""

    def __init__(
        self,
        raw: Mapping[str, Any],
        defaults: Mapping[str, Default],
        *,
        source: str = "config",
        derived: frozenset[str] = frozenset(),
    ) -> None:
        self._raw = dict(raw)
        self._defaults = defaults
        self._derived = derived
        self.source = source

    def __getattr__(self, key: str) -> Any:
        if key.startswith("_"):
            raise AttributeError(key)
        if key in self._raw and not (key in self._derived and self._raw[key] is None):
            return self._raw[key]
        if key in self._defaults:
            default = self._defaults[key]
            return default(self) if callable(default) else default
        raise AttributeError(key)

    def has(self, key: str) -> bool:
        return key in self._raw

    def positive(self, *keys: str) -> None:
        """Each field must be a positive integer (booleans are not)."""
        for key in keys:
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{self.source}: {key} must be a positive integer, got {value!r}")

    def divisible(self, key: str, by: str) -> None:
        value, divisor = getattr(self, key), getattr(self, by)
        if value % divisor:
            raise ValueError(
                f"{self.source}: {key} ({value}) must be divisible by {by} ({divisor})"
            )
