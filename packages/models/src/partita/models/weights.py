"""Pretrained weights read piece by piece from a Hugging Face safetensors folder.

:class:`PretrainedWeights` fills the same boxes :class:`partita.models.init.Materializer`
draws random values into, with the checkpoint's values there instead. Which checkpoint
tensor each of our parameters comes from is found once, on ``meta``, by running the family's
``from_hf_state_dict`` on the checkpoint's shapes and tracking where each output came from:

* a parameter that *is* a checkpoint tensor (a rename: every LLaMA-style tensor, GPT-2's
  norms, embeddings, head and output biases) is read as the box alone, with safetensors'
  ``get_slice`` (only those bytes leave the file);
* any other (a transpose, a split or a fusion: GPT-2's Conv1D weights and split q/k/v
  biases) reads its whole source tensors, applies the family's mapping to them, and keeps the
  box. The last such result is kept, so q, k and v split from one tensor read it once.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from transformers import PretrainedConfig

from partita.models.families import family_of
from partita.models.hf_io import INDEX_FILE, SINGLE_FILE
from partita.models.init import Box, _Provenance


def weights_file(directory: str | Path) -> str | None:
    """The weights file a Hugging Face folder holds (the index of a sharded one), or None."""
    from partita.models.presets import all_presets

    root = Path(directory)
    if str(directory) in all_presets() or not root.is_dir():
        return None  # a preset name wins over a folder of that name (``load_config``)
    for name in (INDEX_FILE, SINGLE_FILE):
        if (root / name).is_file():
            return name
    return None


class _Tensors(dict[str, torch.Tensor]):
    """The checkpoint's tensors for the mapping; one it lacks is a ValueError naming it."""

    def __init__(self, tensors: Mapping[str, torch.Tensor], source: Path) -> None:
        super().__init__(tensors)
        self.source = source

    def __missing__(self, key: str) -> torch.Tensor:
        raise ValueError(f"{self.source}: the checkpoint has no tensor {key!r}")


class PretrainedWeights:
    """Fills boxes of our parameters (one-process names) from ``directory``'s weights."""

    def __init__(self, directory: str | Path, config: PretrainedConfig) -> None:
        self.root = Path(directory)
        self.config = config
        self.family = family_of(config)
        self.index_name = weights_file(self.root)
        if self.index_name is None:
            raise ValueError(f"{self.root}: no {SINGLE_FILE} or {INDEX_FILE} (no weights)")
        self._handles: dict[str, Any] = {}  # safetensors' handles (untyped)
        self.files = self._files()  # checkpoint tensor -> its file
        self.meta = _Tensors(
            {name: self._meta(name) for name in self.files}, self.root / self.index_name
        )
        self.renamed, self.sources = self._sources()
        self._cached: tuple[frozenset[str], dict[str, torch.Tensor]] | None = None
        self.bytes_read = 0  # what this process took out of the files

    def _files(self) -> dict[str, str]:
        if self.index_name == SINGLE_FILE:
            return dict.fromkeys(self._open(SINGLE_FILE).keys(), SINGLE_FILE)
        path = self.root / INDEX_FILE
        try:
            weight_map = json.loads(path.read_text(encoding="utf-8"))["weight_map"]
            return {str(k): str(v) for k, v in weight_map.items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"{path}: unreadable shard index: {error}") from None

    def _open(self, file: str) -> Any:
        if file not in self._handles:
            path = self.root / file
            if not path.is_file():
                raise ValueError(f"{path}: shard named in {INDEX_FILE} is missing")
            try:
                self._handles[file] = safe_open(str(path), framework="pt")
            except (SafetensorError, OSError) as error:
                raise ValueError(f"{path}: unreadable safetensors file: {error}") from None
        return self._handles[file]

    def _slice(self, name: str) -> Any:
        try:
            return self._open(self.files[name]).get_slice(name)
        except SafetensorError as error:
            raise ValueError(f"{self.root / self.files[name]}: {name}: {error}") from None

    def _meta(self, name: str) -> torch.Tensor:
        part = self._slice(name)
        dtype = getattr(torch, _TORCH_DTYPES.get(part.get_dtype(), "float32"))
        return torch.empty(part.get_shape(), dtype=dtype, device="meta")

    def _sources(self) -> tuple[dict[str, str], dict[str, frozenset[str]]]:
        """Ours that are a checkpoint tensor (ours -> its name), and every one's sources."""
        by_id = {id(t): name for name, t in self.meta.items()}
        tracker = _Provenance(by_id)
        with tracker:
            ours = self.family.from_hf_state_dict(self.meta, self.config)
        renamed = {name: by_id[id(t)] for name, t in ours.items() if id(t) in by_id}
        self.shapes = {name: tuple(t.shape) for name, t in ours.items()}
        sources = {name: frozenset(tracker.sources.get(id(t), ())) for name, t in ours.items()}
        return renamed, sources

    def check(self, expected: Mapping[str, tuple[int, ...]]) -> None:
        """Refuse a checkpoint that lacks one of our parameters (name -> shape) or holds it
        in another shape, before anything is read."""
        for name, shape in expected.items():
            if name not in self.shapes:
                raise ValueError(f"{self.root}: the checkpoint does not provide {name}")
            self._check_shape(name, self.shapes[name], Box.whole(shape))

    def close(self) -> None:
        """Let go of the files and the last transformed tensor (once every piece is filled)."""
        self._handles.clear()
        self._cached = None

    def describe(self) -> str:
        return f"{self.index_name}, {len(self.files)} tensors"

    def read(self, name: str, index: tuple[slice, ...]) -> torch.Tensor:
        """The part ``index`` of checkpoint tensor ``name`` (only those bytes are read)."""
        piece: torch.Tensor = self._slice(name)[index] if index else self._whole(name)
        self.bytes_read += piece.numel() * piece.element_size()
        return piece

    def _whole(self, name: str) -> torch.Tensor:
        whole: torch.Tensor = self._open(self.files[name]).get_tensor(name)
        return whole

    def fill(self, tensor: torch.Tensor, name: str, box: Box) -> torch.Tensor:
        """Fill ``tensor``, the piece ``box`` of our parameter ``name``, from the checkpoint."""
        if name not in self.sources:
            raise ValueError(f"{self.root}: the checkpoint does not provide {name}")
        assert tensor.dim() == len(box.whole_shape), (name, tensor.shape, box)
        if tensor.numel() == 0:
            return tensor  # an empty FSDP chunk of a short tensor: nothing to read
        index = tuple(slice(o, o + n) for o, n in zip(box.offsets, tensor.shape, strict=True))
        if name in self.renamed:
            source = self.renamed[name]
            self._check_shape(name, tuple(self.meta[source].shape), box)
            piece = self.read(source, index)
        else:
            whole = self._transformed(name)
            self._check_shape(name, tuple(whole.shape), box)
            piece = whole[index]
        with torch.no_grad():
            tensor.copy_(piece)
        return tensor

    def _check_shape(self, name: str, shape: tuple[int, ...], box: Box) -> None:
        if shape != tuple(box.whole_shape):
            raise ValueError(
                f"{self.root}: tensor for {name} has shape {shape} but config.json implies "
                f"{tuple(box.whole_shape)}"
            )

    def _transformed(self, name: str) -> torch.Tensor:
        """Our whole parameter ``name``: the mapping applied to its sources read whole (the
        others stay on ``meta``)."""
        sources = self.sources[name]
        if self._cached is None or self._cached[0] != sources:
            tensors = {
                key: self.read(key, ()) if key in sources else meta
                for key, meta in self.meta.items()
            }
            ours = self.family.from_hf_state_dict(_Tensors(tensors, self.root), self.config)
            self._cached = (sources, ours)
        return self._cached[1][name]


# safetensors' dtype names -> torch's, for the shapes-only view of the checkpoint.
_TORCH_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}
