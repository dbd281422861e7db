"""Config checks shared by the families: one clear ValueError naming what is wrong."""

from __future__ import annotations

from transformers import PretrainedConfig


def require_family_config(config: PretrainedConfig, expected: type, family: str) -> None:
    if not isinstance(config, expected):
        raise ValueError(
            f"{family}: expected a {expected.__name__}, got {type(config).__name__} "
            f"(model_type {getattr(config, 'model_type', '?')!r})"
        )


def require_divisible(size: int, by: int, size_name: str, by_name: str) -> None:
    if by <= 0 or size % by:
        raise ValueError(f"{by_name} {by} does not divide {size_name} {size}")


def require_positive(value: int, name: str) -> None:
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
