"""Every family's tiny preset against the unmodified transformers model, and its description.

Parametrized over all registered families: a new family is tested by registering it and its
``<family>-tiny`` preset.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoConfig, AutoModel

from partita.models.api import build_model, describe_model, resolve_config, synthetic_batch
from partita.models.attention import Attends, eager_attention, hidden_keys, set_attention_core
from partita.models.families import FAMILIES, family_of
from partita.models.families.llama import sliding_window
from partita.models.hf_io import load_hf_checkpoint, save_hf_checkpoint
from partita.models.layered import LayeredModel
from partita.models.presets import preset_names

# Every family's tiny preset, plus those of the other model types the LLaMA family builds
# (each switches traits on: sliding windows, q/k/v bias, per-head q/k norms).
FAMILY_NAMES = [*sorted(FAMILIES), "mistral", "qwen2", "qwen3"]
BATCH = 2
TOLERANCE = {"rtol": 1e-6, "atol": 1e-6}


def _tiny(name: str) -> str:
    return f"{name}-tiny"


def _pair(name: str) -> tuple[LayeredModel, torch.nn.Module]:
    """Our model and the transformers model, with the same weights."""
    config = resolve_config(_tiny(name))
    family = family_of(config)
    torch.manual_seed(0)
    reference = family.reference_model(config)
    model = build_model(config)
    model.load_state_dict(family.from_hf_state_dict(reference.state_dict(), config))
    return model, reference


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_forward_and_backward_equal_transformers(name: str) -> None:
    model, reference = _pair(name)
    family = family_of(model.config)
    batch = synthetic_batch(_tiny(name), batch_size=BATCH)
    outputs = model(batch)
    loss = model.loss(outputs, batch)
    loss.backward()
    ref_logits, ref_loss = family.reference_outputs(reference, batch)
    ref_loss.backward()
    torch.testing.assert_close(outputs["logits"], ref_logits, **TOLERANCE)
    torch.testing.assert_close(loss, ref_loss, **TOLERANCE)
    ref_grads = {k: p.grad for k, p in reference.named_parameters() if p.grad is not None}
    mapped = family.from_hf_state_dict(ref_grads, model.config)
    ours = dict(model.named_parameters(remove_duplicate=False))
    assert set(mapped) == set(ours)
    for key, param in ours.items():
        assert param.grad is not None, key
        torch.testing.assert_close(param.grad, mapped[key], **TOLERANCE, msg=key)


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_description_matches_the_module(name: str) -> None:
    model = build_model(_tiny(name))
    description = describe_model(_tiny(name))
    assert [layer.name for layer in description.layers] == list(model.layer_names)
    assert [layer.layer_type for layer in description.layers] == list(model.layer_types)
    assert description.params == sum(p.numel() for p in model.parameters())
    for layer, module in zip(description.layers, model.layers, strict=True):
        own = {id(p): p.numel() for p in module.parameters()}
        tied_elsewhere = sum(
            n for pid, n in own.items() if any(pid == id(q) for q in _earlier(model, module))
        )
        assert layer.params == sum(own.values()) - tied_elsewhere, layer.name


@pytest.mark.parametrize("name", FAMILY_NAMES)
@pytest.mark.parametrize("tie", [True, False])
def test_shared_vocabulary_names_the_layers_holding_the_tied_table(name: str, tie: bool) -> None:
    config = resolve_config(_tiny(name))
    config.tie_word_embeddings = tie
    model = build_model(config)
    holders = [tuple(model.layer_names[int(n.split(".")[1])] for n in t.names) for t in model.tied]
    assert len(holders) <= 1  # one vocabulary table per model
    assert describe_model(config).shared_vocabulary == (holders[0] if holders else ())


def _earlier(model: LayeredModel, module: torch.nn.Module) -> list[torch.nn.Parameter]:
    index = list(model.layers).index(module)
    return [p for earlier in model.layers[:index] for p in earlier.parameters()]


@pytest.mark.parametrize("preset", preset_names())
def test_description_params_equal_transformers_at_every_preset(preset: str) -> None:
    config = resolve_config(preset)
    with torch.device("meta"):  # real sizes, no memory
        reference = family_of(config).reference_model(config)
    assert describe_model(preset).params == sum(p.numel() for p in reference.parameters())


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_flops_formula_within_2_percent_of_torch_counter(name: str) -> None:
    model = build_model(_tiny(name), seed=0)
    set_attention_core(model, eager_attention)  # SDPA's CPU kernel is invisible to the counter
    batch = synthetic_batch(_tiny(name), batch_size=BATCH)
    # Eager attention computes a window as a mask over the whole product: compare with the
    # description of the same model unwindowed (the window's count: the next test).
    config = resolve_config(_tiny(name))
    if hasattr(config, "sliding_window"):
        config.sliding_window = None
    description = describe_model(config)
    with FlopCounterMode(display=False) as forward_counter:
        outputs = model(batch)
    with FlopCounterMode(display=False) as backward_counter:
        model.loss(outputs, batch).backward()
    forward = sum(layer.forward_flops_per_sample for layer in description.layers)
    backward = sum(layer.backward_flops_per_sample for layer in description.layers)
    assert forward == pytest.approx(forward_counter.get_total_flops() / BATCH, rel=0.02)
    assert backward == pytest.approx(backward_counter.get_total_flops() / BATCH, rel=0.02)


@pytest.mark.parametrize("name", ["mistral", "qwen2"])
def test_sliding_window_flops_count_the_pairs_the_window_leaves(name: str) -> None:
    """A windowed block is described with the query-key pairs a window-aware kernel computes:
    the pairs the mask leaves visible, on the description's dense scale."""
    config = resolve_config(_tiny(name))
    windows = [sliding_window(config, i) for i in range(config.num_hidden_layers)]
    windowed = describe_model(config).blocks
    config.sliding_window = None
    dense = describe_model(config).blocks
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    s, q_width = dense[0].seq_len, config.num_attention_heads * head_dim
    assert any(w is not None and w < s for w in windows)  # the tiny presets slide
    causal_pairs = int((~hidden_keys(s, s, None, torch.device("cpu"))).sum())
    for window, slid, whole in zip(windows, windowed, dense, strict=True):
        if window is None or window >= s:
            assert slid == whole
            continue
        pairs = int((~hidden_keys(s, s, window, torch.device("cpu"))).sum())
        keys = s * pairs / causal_pairs
        saved = 4 * s * (s - keys) * q_width
        assert whole.forward_flops_per_sample - slid.forward_flops_per_sample == pytest.approx(
            saved, rel=1e-9
        )
        assert slid.activation_bytes_per_sample == whole.activation_bytes_per_sample


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_every_cut_between_layers_gives_the_same_result(name: str) -> None:
    model = build_model(_tiny(name), seed=0)
    batch = synthetic_batch(_tiny(name), batch_size=BATCH)
    full = model(batch)["logits"]
    for cut in range(1, len(model.layers)):
        middle = model.run_layers(dict(batch), 0, cut)
        assert all(isinstance(t, torch.Tensor) for t in middle.values())
        shipped = {k: v.detach().clone() for k, v in middle.items()}  # as a pipeline would
        torch.testing.assert_close(model.run_layers(shipped, cut)["logits"], full, rtol=0, atol=0)


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_attention_core_is_swappable(name: str) -> None:
    model = build_model(_tiny(name), seed=0)
    batch = synthetic_batch(_tiny(name), batch_size=BATCH)
    sdpa_logits = model(batch)["logits"]
    changed = set_attention_core(model, eager_attention)
    assert changed == sum(isinstance(m, Attends) for m in model.modules()) > 0
    torch.testing.assert_close(model(batch)["logits"], sdpa_logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_tp_layout_names_existing_modules(name: str) -> None:
    config = resolve_config(_tiny(name))
    model = build_model(config)
    layouts = family_of(config).tp_layouts(config)
    assert set(model.layer_types) <= set(layouts)
    for layer_type, layer in zip(model.layer_types, model.layers, strict=True):
        layout = layouts[layer_type]
        modules = dict(layer.named_modules())
        for path in (*layout.colwise, *layout.rowwise, *layout.vocab_head):
            assert isinstance(modules.get(path), torch.nn.Linear), (layer_type, path)
        for path in layout.vocab_embedding:
            assert isinstance(modules.get(path), torch.nn.Embedding), (layer_type, path)
        for path in layout.sequence_parallel:
            assert path in modules, (layer_type, path)
        params = dict(layer.named_parameters())
        for path in layout.head_parameters:
            assert path in params, (layer_type, path)


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_hf_save_and_load_round_trip(name: str, tmp_path: Path) -> None:
    model, _ = _pair(name)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():  # trained weights, not the initialisation
            param.add_(1e-3 * torch.randn(param.shape, generator=generator))
    save_hf_checkpoint(model, tmp_path / "out")
    loaded = load_hf_checkpoint(tmp_path / "out")
    state, reloaded = model.state_dict(), loaded.state_dict()
    assert state.keys() == reloaded.keys()
    for key in state:
        assert torch.equal(state[key], reloaded[key]), key
    batch = synthetic_batch(_tiny(name), batch_size=BATCH)
    family = family_of(model.config)
    hf_config = AutoConfig.from_pretrained(tmp_path / "out", local_files_only=True)
    assert hf_config.model_type == model.config.model_type
    hf_model = type(family.reference_model(model.config)).from_pretrained(
        tmp_path / "out", local_files_only=True
    )
    hf_logits, _ = family.reference_outputs(hf_model, batch)
    torch.testing.assert_close(model(batch)["logits"], hf_logits, **TOLERANCE)
    assert AutoModel.from_pretrained(tmp_path / "out", local_files_only=True) is not None


@pytest.mark.parametrize("preset", ["gpt-tiny", "llama-tiny", "bert-tiny", "t5-tiny", "vit-tiny"])
def test_only_blocks_holding_the_vocabulary_table_are_marked_vocab_parallel(preset: str) -> None:
    marked = [layer.name for layer in describe_model(preset).layers if layer.vocab_parallel]
    assert marked == (["decoder_embedding"] if preset.startswith("t5") else [])
