"""The supported model families, looked up by name or by transformers ``model_type``."""

from __future__ import annotations

from transformers import PretrainedConfig

from partita.models.families import bert, gpt, llama, swin, t5, vit
from partita.models.families.base import Family

# One entry per family module; keep the order of the support table.
FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (gpt.FAMILY, llama.FAMILY, bert.FAMILY, t5.FAMILY, vit.FAMILY, swin.FAMILY)
}


def family_for_model_type(model_type: str) -> Family:
    for family in FAMILIES.values():
        if model_type in family.model_types:
            return family
    supported = ", ".join(f"{f.name} ({'/'.join(f.model_types)})" for f in FAMILIES.values())
    raise ValueError(f"unsupported model_type {model_type!r}; supported families: {supported}")


def family_of(config: PretrainedConfig) -> Family:
    return family_for_model_type(config.model_type)


__all__ = ["FAMILIES", "Family", "family_for_model_type", "family_of"]
