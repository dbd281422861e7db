"""``torch.distributed.checkpoint`` planners for :class:`~partita.executor.sharded_state.Piece`
state dicts: each rank writes its boxes of whole tensors and reads back whichever boxes its
own plan needs.

DCP's default planners take a plain tensor as a whole tensor at offset 0; ours tell it each
tensor's whole shape and offsets instead. The rest is DCP's own: the coordinator removes boxes
that several ranks hold (replicas; the rank with the least to write keeps each), checks that
the boxes of every tensor cover it exactly once, and writes the metadata; reading takes the
overlaps of each requested box with the stored ones.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import torch
from torch.distributed.checkpoint import DefaultLoadPlanner, DefaultSavePlanner
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    TensorProperties,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.planner import (
    LoadItemType,
    LoadPlan,
    ReadItem,
    SavePlan,
    TensorWriteData,
    WriteItem,
    WriteItemType,
)
from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list

from partita.executor.sharded_state import Piece


def _chunk(piece: Piece) -> ChunkStorageMetadata:
    return ChunkStorageMetadata(
        offsets=torch.Size(piece.offsets), sizes=torch.Size(piece.tensor.shape)
    )


class PieceSavePlanner(DefaultSavePlanner):
    """Saves ``pieces`` (boxes of whole tensors) and ``objects`` (pickled, e.g. this rank's
    random generator states under a key of its own)."""

    def __init__(self, pieces: Mapping[str, Piece], objects: Mapping[str, Any]) -> None:
        super().__init__(flatten_state_dict=False, flatten_sharded_tensors=False)
        self.pieces, self.objects = pieces, objects

    def create_local_plan(self) -> SavePlan:
        items = []
        for fqn, piece in self.pieces.items():
            if piece.tensor.numel() == 0 and piece.tensor.dim() > 0:
                continue  # an empty FSDP shard holds nothing
            items.append(
                WriteItem(
                    index=MetadataIndex(fqn, piece.offsets),
                    type=WriteItemType.SHARD,
                    tensor_data=TensorWriteData(
                        chunk=_chunk(piece),
                        properties=TensorProperties.create_from_tensor(piece.tensor),
                        size=torch.Size(piece.whole_shape),
                    ),
                )
            )
        items += [
            WriteItem(index=MetadataIndex(fqn), type=WriteItemType.BYTE_IO) for fqn in self.objects
        ]
        self.plan = SavePlan(items)
        return self.plan

    def finish_plan(self, new_plan: SavePlan) -> SavePlan:
        # What this rank writes once the coordinator dropped replicas: with the save's
        # metadata it names the files this rank wrote (``checkpoint.save_checkpoint``).
        self.final_plan = super().finish_plan(new_plan)
        return self.final_plan

    def lookup_object(self, index: MetadataIndex) -> Any:
        if index.fqn in self.objects:
            return self.objects[index.fqn]
        return self.pieces[index.fqn].tensor


class PieceLoadPlanner(DefaultLoadPlanner):
    """Reads the stored boxes overlapping each of ``pieces`` into it, and the pickled objects
    named in ``object_keys`` into :attr:`objects`."""

    def __init__(self, pieces: Mapping[str, Piece], object_keys: tuple[str, ...] = ()) -> None:
        super().__init__(flatten_state_dict=False, flatten_sharded_tensors=False)
        self.pieces, self.object_keys = pieces, object_keys
        self.objects: dict[str, Any] = {}

    def set_up_planner(
        self,
        state_dict: dict[str, Any],
        metadata: Metadata | None = None,
        is_coordinator: bool = False,
    ) -> None:
        self.state_dict, self.metadata, self.is_coordinator = state_dict, metadata, is_coordinator

    def create_local_plan(self) -> LoadPlan:
        assert self.metadata is not None
        stored = self.metadata.state_dict_metadata
        items: list[ReadItem] = []
        for fqn, piece in self.pieces.items():
            md = stored[fqn]
            assert isinstance(md, TensorStorageMetadata), fqn  # checked by the caller
            if piece.tensor.numel() == 0 and piece.tensor.dim() > 0:
                continue
            items += create_read_items_for_chunk_list(fqn, md, [_chunk(piece)])
        for fqn in self.object_keys:
            assert isinstance(stored[fqn], BytesStorageMetadata), fqn
            zero = torch.Size((0,))
            index = MetadataIndex(fqn)
            items.append(ReadItem(LoadItemType.BYTE_IO, index, zero, index, zero, zero))
        return LoadPlan(items)

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        self.objects[read_item.dest_index.fqn] = torch.load(value, weights_only=True)

    def lookup_tensor(self, index: MetadataIndex) -> torch.Tensor:
        return self.pieces[index.fqn].tensor
