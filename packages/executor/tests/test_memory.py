"""Peak memory: exact on known allocations, consistent around a real training step."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from partita.executor.memory import (
    CPU_METHOD,
    CUDA_METHOD,
    Baseline,
    PeakMemory,
    _Ledger,
    live_storages,
    measure,
)
from partita.models.api import build_model, synthetic_batch

MB = 1_000_000


def _bytes(*objects: Baseline) -> int:
    return sum(storage.nbytes() for storage in live_storages(objects).values())


def _profiler_running() -> bool:
    return bool(torch._C._autograd._profiler_enabled())


def test_known_allocations_are_counted_to_the_byte() -> None:
    with PeakMemory("cpu") as memory:
        a = torch.empty(MB, dtype=torch.uint8)
        b = torch.empty(MB // 4, dtype=torch.float32)
        del a
        c = torch.empty(3 * MB, dtype=torch.uint8)
        del b
    assert memory.peak_bytes == 4 * MB  # b and c live together
    assert memory.current_bytes == 3 * MB
    assert c.numel() == 3 * MB


def test_baseline_counts_from_the_start_and_its_frees_are_seen_in_order() -> None:
    existing = torch.empty(2 * MB, dtype=torch.uint8)
    with PeakMemory("cpu", baseline=[existing]) as memory:
        del existing  # freed first: the later allocation must not stack on it
        a = torch.empty(MB, dtype=torch.uint8)
    assert memory.peak_bytes == 2 * MB
    assert memory.current_bytes == MB
    assert a.numel() == MB


def test_memory_not_in_the_baseline_is_neither_counted_nor_subtracted() -> None:
    unlisted = torch.empty(2 * MB, dtype=torch.uint8)
    with PeakMemory("cpu") as memory:
        del unlisted
        a = torch.empty(MB, dtype=torch.uint8)
    assert (memory.peak_bytes, memory.current_bytes) == (MB, MB)
    assert a.numel() == MB


def test_the_baseline_is_not_kept_alive_by_the_meter() -> None:
    existing = torch.empty(MB, dtype=torch.uint8)
    memory = PeakMemory("cpu", baseline=[existing])
    del existing  # freed before start(): nothing to count
    with memory:
        pass
    assert memory.peak_bytes == 0


def test_baseline_storages_are_counted_once_with_gradients_and_optimizer_state() -> None:
    layer = torch.nn.Linear(100, 50)
    optimizer = torch.optim.Adam(layer.parameters())
    layer(torch.randn(3, 100)).sum().backward()
    optimizer.step()
    params = (100 * 50 + 50) * 4
    states = 2 * params + 2 * 4  # exp_avg and exp_avg_sq, and a float32 step per parameter
    weight_view = layer.weight[:10]
    assert _bytes(layer, optimizer, weight_view, layer.weight) == 2 * params + states


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")  # torch's own import
def test_a_zero_redundancy_optimizer_shard_is_found_in_its_inner_optimizer() -> None:
    from torch.distributed.optim import ZeroRedundancyOptimizer

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        layer = torch.nn.Linear(100, 50)
        optimizer = ZeroRedundancyOptimizer(layer.parameters(), optimizer_class=torch.optim.AdamW)
        layer(torch.randn(3, 100)).sum().backward()
        optimizer.step()
        assert _bytes(optimizer) == 2 * (100 * 50 + 50) * 4 + 2 * 4
    finally:
        dist.destroy_process_group()


def test_a_block_at_a_reused_address_replaces_the_one_freed_unseen() -> None:
    ledger = _Ledger({1: 100})
    ledger.alloc(2, 50)
    ledger.alloc(1, 30)  # address 1 was freed where no record was made
    ledger.free(3)  # a block that was never counted
    assert (ledger.current, ledger.peak) == (80, 150)


def test_measure_returns_the_result_and_the_peak() -> None:
    result, peak = measure(lambda: torch.zeros(MB, dtype=torch.uint8).sum().item())
    assert result == 0
    assert peak >= MB


def test_an_error_inside_the_window_still_stops_the_profiler() -> None:
    with pytest.raises(ZeroDivisionError), PeakMemory("cpu") as memory:
        _ = 1 / 0
    assert not _profiler_running()
    assert memory.peak_bytes == 0


def test_misuse_is_reported() -> None:
    memory = PeakMemory("cpu")
    with pytest.raises(RuntimeError, match="start"):
        memory.stop()
    with pytest.raises(RuntimeError, match="no measurement"):
        _ = memory.peak_bytes
    memory.start()
    try:
        with pytest.raises(RuntimeError, match="twice"):
            memory.start()
        with pytest.raises(RuntimeError, match="already running"):
            PeakMemory("cpu").start()
    finally:
        memory.stop()
    with pytest.raises(ValueError, match="cpu or cuda"):
        PeakMemory("meta")
    with pytest.raises(TypeError, match="tensor, module or optimizer"):
        PeakMemory("cpu", baseline=["weights"])  # type: ignore[list-item]
    assert not _profiler_running()


def test_method_names_the_measurement() -> None:
    assert PeakMemory("cpu").method == CPU_METHOD
    assert PeakMemory("cuda").method == CUDA_METHOD


class _Training:
    """gpt-tiny with AdamW: the step the executor runs, on one rank."""

    def __init__(self) -> None:
        self.model = build_model("gpt-tiny", seed=0)
        self.batch = synthetic_batch("gpt-tiny", batch_size=2)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-3)

    def step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.model.loss(self.model(self.batch), self.batch)
        loss.backward()
        self.optimizer.step()

    def saved_activation_bytes(self) -> int:
        params = {p.untyped_storage().data_ptr() for p in self.model.parameters()}
        saved: dict[int, int] = {}

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in params:
                saved[storage.data_ptr()] = storage.nbytes()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            self.model.loss(self.model(self.batch), self.batch)
        return sum(saved.values())


def test_a_training_step_is_measured_whole_and_exactly_balanced() -> None:
    training = _Training()
    training.step()  # creates the gradients and optimizer state the baseline holds
    with PeakMemory("cpu", baseline=[training.model, training.optimizer]) as memory:
        training.step()
    params = _bytes(*training.model.parameters()) // 2  # _bytes counts each gradient too
    grads, states = params, _bytes(training.optimizer)
    activations = training.saved_activation_bytes()
    # What lives after the step is exactly the parameters, gradients and optimizer state.
    assert memory.current_bytes == params + grads + states
    assert memory.peak_bytes >= params + states + max(grads, activations)
    assert memory.peak_bytes <= 2 * (params + grads + states + activations)


def test_a_window_opened_before_the_model_agrees_with_a_baseline_window() -> None:
    with PeakMemory("cpu") as from_scratch:
        training = _Training()
        for _ in range(3):
            training.step()
    with PeakMemory("cpu", baseline=[training.model, training.optimizer]) as one_step:
        training.step()
    batch = sum(tensor.nbytes for tensor in training.batch.values())
    # The only difference is the batch, which the first window saw allocated.
    assert from_scratch.peak_bytes == one_step.peak_bytes + batch
    assert from_scratch.current_bytes == one_step.current_bytes + batch


def test_one_meter_over_several_windows_keeps_the_highest_peak() -> None:
    memory = PeakMemory("cpu")
    for size in (MB, 3 * MB, 2 * MB):
        with memory:
            block = torch.empty(size, dtype=torch.uint8)
            del block
    assert memory.peak_bytes == 3 * MB
    assert memory.current_bytes == 0


def test_windows_per_step_rewalk_the_baseline() -> None:
    training = _Training()
    memory = PeakMemory("cpu", baseline=[training.model, training.optimizer])
    for _ in range(2):
        with memory:
            training.step()  # the first creates gradients and optimizer state
    assert memory.current_bytes == _bytes(training.model, training.optimizer)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_peak_covers_a_known_allocation() -> None:
    with PeakMemory("cuda") as memory:
        a = torch.empty(8 * MB, dtype=torch.uint8, device="cuda")
        del a
    assert memory.peak_bytes >= 8 * MB
    assert memory.current_bytes <= memory.peak_bytes - 8 * MB
