"""What Partita writes for TorchTitan and DeepSpeed passes those trainers' own parsers.

TorchTitan 0.2.2's ``ConfigManager`` reads each exported TOML job config into its
``JobConfig`` (it rejects unknown keys) and its ``ParallelDims`` checks the degrees;
DeepSpeed 0.19.8's ``DeepSpeedConfig`` (what ``deepspeed.initialize`` builds from a config:
pydantic models that forbid unknown keys, and the batch arithmetic) checks the exported JSON.
Neither trainer is a dependency of Partita: each test skips, naming the install, where its
trainer is missing. The integration session installs them without touching torch::

    pip install -c constraints.txt --no-deps torchtitan==0.2.2 tyro==1.0.17 \\
        docstring-parser typeguard
    DS_BUILD_OPS=0 pip install -c constraints.txt --no-deps --no-build-isolation \\
        deepspeed==0.19.8 hjson psutil einops msgpack ninja

Megatron-LM's ``arguments.py`` ships in no wheel (megatron-core has no training arguments):
``packages/simulator/tests/test_interop_trainers.py`` checks every exported flag against
the flags that file defines.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from partita.formats import ModelDescription
from partita.formats.architectures import describe_config, presets
from partita.simulator.interop import deepspeed as deepspeed_interop
from partita.simulator.interop import torchtitan as torchtitan_interop
from partita.simulator.interop.uniform import Uniform

TORCHTITAN_INSTALL = (
    "pip install -c constraints.txt --no-deps torchtitan==0.2.2 tyro==1.0.17 "
    "docstring-parser typeguard"
)
DEEPSPEED_INSTALL = (
    "DS_BUILD_OPS=0 pip install -c constraints.txt --no-deps --no-build-isolation "
    "deepspeed==0.19.8 hjson psutil einops msgpack ninja"
)


def _model() -> ModelDescription:
    """16 blocks, 8 heads over 4 kv heads: tensor parallelism up to 4 splits it."""
    config = {
        **presets()["llama-tiny"],
        "num_hidden_layers": 16,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
    }
    return describe_config(config, name="llama-tiny-16")


def _settings(trainer: types.ModuleType) -> list[Uniform]:
    """Settings over degrees, modes, schedules and precisions, each moved to what
    ``trainer`` expresses (distinct ones only)."""
    seen: dict[str, Uniform] = {}
    for tp, pp, dp, ckpt, precision, interleaved in itertools.product(
        (1, 2, 4),
        (1, 2, 4),
        ("ddp", "zero1", "zero2", "zero3"),
        ("none", "attention", "selective-op", "full"),
        ("fp32", "bf16", "fp16"),
        (False, True),
    ):
        if interleaved and pp == 1:
            continue
        u = Uniform(
            world_size=16,
            global_batch_size=64,
            micro_batch_size=2,
            precision=precision,  # type: ignore[arg-type]
            tp=tp,
            pp=pp,
            sp="megatron" if tp > 1 else "none",
            dp=dp,  # type: ignore[arg-type]
            ckpt=ckpt,  # type: ignore[arg-type]
            schedule="interleaved-1f1b" if interleaved else "1f1b",
            chunks=2 if interleaved else 1,
            vocab_sp=tp > 1,
        )
        near, _ = trainer.nearest(u)
        seen[repr(near)] = near
    return list(seen.values())


# --------------------------------------------------------------------------- TorchTitan


@pytest.fixture(scope="module")
def torchtitan_config() -> Any:
    """``torchtitan.config`` of the installed 0.2.2, imported without running the package's
    ``__init__``: that one imports the MoE kernels (triton, which a CPU machine lacks), which
    the config parser does not use."""
    spec = importlib.util.find_spec("torchtitan")
    if spec is None or spec.submodule_search_locations is None:
        pytest.skip(f"torchtitan is not installed ({TORCHTITAN_INSTALL})")
    pytest.importorskip("tyro", reason=f"tyro is not installed ({TORCHTITAN_INSTALL})")
    saved = {name: module for name, module in sys.modules.items() if name.startswith("torchtitan")}
    package = types.ModuleType("torchtitan")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["torchtitan"] = package
    try:
        from importlib.metadata import version

        if version("torchtitan") != "0.2.2":
            pytest.skip(f"torchtitan {version('torchtitan')} is installed ({TORCHTITAN_INSTALL})")
        import torchtitan.config as config
        import torchtitan.distributed.parallel_dims as parallel_dims

        yield types.SimpleNamespace(
            ConfigManager=config.ConfigManager, ParallelDims=parallel_dims.ParallelDims
        )
    finally:
        for name in [name for name in sys.modules if name.startswith("torchtitan")]:
            del sys.modules[name]
        sys.modules.update(saved)


def test_torchtitan_parses_every_exported_config(torchtitan_config: Any, tmp_path: Path) -> None:
    model = _model()
    settings = _settings(torchtitan_interop)
    for index, u in enumerate(settings):
        path = tmp_path / f"job{index}.toml"
        path.write_text(torchtitan_interop.export(u, model))
        job = torchtitan_config.ConfigManager().parse_args(["--job.config_file", str(path)])
        parallelism = job.parallelism
        dims = torchtitan_config.ParallelDims(
            dp_replicate=parallelism.data_parallel_replicate_degree,
            dp_shard=parallelism.data_parallel_shard_degree,
            cp=parallelism.context_parallel_degree,
            tp=parallelism.tensor_parallel_degree,
            pp=parallelism.pipeline_parallel_degree,
            ep=parallelism.expert_parallel_degree,
            etp=parallelism.expert_tensor_parallel_degree,
            world_size=u.world_size,
        )
        assert (dims.tp, dims.pp, dims.dp_replicate * dims.dp_shard) == (
            u.tp,
            u.pp,
            u.data_parallel,
        )
        assert job.training.seq_len % dims.seq_len_divisor == 0
        assert (
            job.training.global_batch_size % (job.training.local_batch_size * u.data_parallel) == 0
        )
        if u.pp > 1:
            parts = parallelism.module_fqns_per_model_part
            assert len(parts) == u.pp * u.chunks
            assert (
                job.training.local_batch_size % parallelism.pipeline_parallel_microbatch_size == 0
            )
        assert job.activation_checkpoint.mode in ("none", "selective", "full")
    assert len(settings) > 30


# --------------------------------------------------------------------------- DeepSpeed


class _DataParallelUnit:
    """The one method ``DeepSpeedConfig`` asks a model-parallel unit (``mpu``) for."""

    def __init__(self, size: int) -> None:
        self.size = size

    def get_data_parallel_world_size(self) -> int:
        return self.size


@pytest.fixture(scope="module")
def deepspeed_config() -> Any:
    deepspeed = pytest.importorskip(
        "deepspeed", reason=f"deepspeed is not installed ({DEEPSPEED_INSTALL})"
    )
    if deepspeed.__version__ != "0.19.8":
        pytest.skip(f"deepspeed {deepspeed.__version__} is installed ({DEEPSPEED_INSTALL})")
    from deepspeed.runtime import config

    return config


def test_deepspeed_accepts_every_exported_config(
    deepspeed_config: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # DeepSpeedConfig takes the data-parallel size from the mpu once a process group
    # answers get_rank(); answer it here rather than start one (its CPU backend compiles a
    # communication op first).
    monkeypatch.setattr(deepspeed_config.dist, "get_rank", lambda *args, **kwargs: 0)
    model = _model()
    settings = _settings(deepspeed_interop)
    for u in settings:
        text = deepspeed_interop.export(u, model)
        parsed = deepspeed_config.DeepSpeedConfig(
            json.loads(text), mpu=_DataParallelUnit(u.data_parallel)
        )
        assert parsed.world_size == u.data_parallel
        assert (
            parsed.train_batch_size,
            parsed.train_micro_batch_size_per_gpu,
            parsed.gradient_accumulation_steps,
        ) == (u.global_batch_size, u.micro_batch_size, u.num_micro_batches)
        assert parsed.zero_optimization_stage == ("ddp", "zero1", "zero2", "zero3").index(u.dp)
        assert parsed.bfloat16_config.enabled == (u.precision == "bf16")
        assert parsed.float16_config.enabled == (u.precision == "fp16")
        assert parsed.tensor_parallel_config.autotp_size == (u.tp if u.tp > 1 else 0)
        assert parsed.activation_checkpointing_config.partition_activations is False
    assert len(settings) > 20


def test_deepspeed_rejects_what_it_does_not_define(
    deepspeed_config: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check above has teeth: an unknown key and wrong batch arithmetic fail."""
    monkeypatch.setattr(deepspeed_config.dist, "get_rank", lambda *args, **kwargs: 0)
    good = deepspeed_interop.config(
        Uniform(world_size=8, global_batch_size=16, micro_batch_size=1, precision="bf16")
    )
    deepspeed_config.DeepSpeedConfig(good, mpu=_DataParallelUnit(8))
    with pytest.raises(Exception, match=r"stages|Extra inputs"):
        deepspeed_config.DeepSpeedConfig(
            {**good, "zero_optimization": {"stages": 1}}, mpu=_DataParallelUnit(8)
        )
    with pytest.raises(AssertionError, match="train_batch_size"):
        deepspeed_config.DeepSpeedConfig(good, mpu=_DataParallelUnit(4))
