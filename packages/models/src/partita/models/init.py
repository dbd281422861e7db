"""Models built without memory, and parameters filled piece by piece, the same whatever piece.

A real-size model cannot be built whole on each rank (llama2-70b in fp32 is 280 GB). So the
layered model is built with its parameters on the ``meta`` device (:func:`build_empty`:
shapes only; buffers, which are small and computed, stay real), each rank cuts out what it
holds, and fills only that (:func:`fill_box`). One process fills every parameter whole
(:func:`materialize`), through the same function, so any rank's piece equals the same box of
the one-process model bit for bit.

What each parameter is filled with follows transformers: the reference model is built on
``meta`` and its own ``_init_weights`` is run with transformers' init functions
(``transformers.initialization``) recording instead of filling (:func:`init_specs`). The
record maps through the family's ``from_hf_state_dict`` (run on meta tensors, tracking which
reference tensors each of ours comes from) to our parameter names: each gets the last
distribution set on its source (normal, truncated normal, uniform or a constant) and the rows
set to zero after it (an embedding's padding row).

Values are drawn tile by tile: the parameter, seen as a matrix (dim 0 by the product of the
others), is cut in tiles of ``TILE_ROWS x TILE_COLS`` elements, and each tile is drawn on the
host from its own generator, seeded by the run's seed, the parameter's name and the tile's
position. A piece (a tensor-parallel slice, an FSDP chunk of it) is filled from the tiles it
overlaps, so a rank draws about its own share, never the whole tensor, and the values do not
depend on the device (the host draws, the device receives). These are not the numbers
transformers would draw with the same seed: the distributions are its, the stream is ours.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import PretrainedConfig

from partita.models.families import family_of
from partita.models.layered import LayeredModel

TILE_ROWS = 256
TILE_COLS = 4096
# transformers' init functions a reference model's ``_init_weights`` may call, by kind.
_DISTRIBUTIONS = ("normal_", "trunc_normal_", "uniform_")
_CONSTANTS = ("zeros_", "ones_", "constant_")
_IGNORED = ("copy_",)  # buffers (position ids, rotary frequencies): computed, not drawn


@dataclass(frozen=True)
class InitSpec:
    """How one parameter is filled: ``kind`` ("normal", "trunc_normal", "uniform" or
    "constant") with its arguments, then ``zero_rows`` set to zero."""

    kind: str
    args: tuple[tuple[str, float], ...] = ()
    zero_rows: tuple[int, ...] = ()

    def arg(self, name: str, default: float) -> float:
        return dict(self.args).get(name, default)


@contextlib.contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Modules built inside register their parameters on ``meta`` (their default init then
    touches no memory); buffers stay where they are made."""
    register = nn.Module.register_parameter

    def on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    nn.Module.register_parameter = on_meta  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = register  # type: ignore[method-assign]


def build_empty(config: PretrainedConfig) -> LayeredModel:
    """The layered model with every parameter on ``meta`` (shapes only) and real buffers."""
    family = family_of(config)
    family.check_config(config)
    with _parameters_on_meta():
        return family.build(config)


# --- what transformers fills each parameter with -----------------------------------------------


@dataclass
class _Call:
    function: str
    tensor: torch.Tensor
    kwargs: dict[str, Any]


@contextlib.contextmanager
def _recording(calls: list[_Call]) -> Iterator[None]:
    import transformers.initialization as init

    def recorder(function: str):  # type: ignore[no-untyped-def]
        def record(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            names = {
                "normal_": ("mean", "std"),
                "trunc_normal_": ("mean", "std", "a", "b"),
                "uniform_": ("a", "b"),
                "constant_": ("val",),
            }.get(function, ())
            kwargs = {**dict(zip(names, args, strict=False)), **kwargs}
            kwargs.pop("generator", None)
            calls.append(_Call(function, tensor, kwargs))
            return tensor

        return record

    known = (*_DISTRIBUTIONS, *_CONSTANTS, *_IGNORED)
    saved = {name: getattr(init, name) for name in dir(init) if name.endswith("_")}
    try:
        for name in saved:
            if not name.startswith("_"):
                setattr(init, name, recorder(name))
        yield
    finally:
        for name, function in saved.items():
            setattr(init, name, function)
    unknown = sorted({c.function for c in calls} - set(known))
    if unknown:
        raise ValueError(
            f"{', '.join(unknown)}: transformers initialises this model with functions "
            "partita.models.init does not draw piece by piece"
        )


def _reference_specs(config: PretrainedConfig) -> dict[str, InitSpec]:
    """The reference model's parameters (every name of a tied one) -> how transformers fills
    them."""
    family = family_of(config)
    with torch.device("meta"):
        reference = family.reference_model(config)
    # transformers initialises a model before tying its tables, then keeps the first one
    # (the input embedding): untie them here, each name its own tensor, and give every name
    # of a tied table what its first name got.
    first: dict[str, str] = {}
    kept: dict[int, str] = {}
    for name, param in list(reference.named_parameters(remove_duplicate=False)):
        first[name] = kept.setdefault(id(param), name)
        if first[name] != name:
            owner_path, _, attr = name.rpartition(".")
            owner = reference.get_submodule(owner_path) if owner_path else reference
            owner._parameters[attr] = nn.Parameter(torch.empty_like(param, device="meta"))
    names: dict[int, list[str]] = {}
    for name, param in reference.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name)
        with contextlib.suppress(AttributeError):
            del param._is_hf_initialized
    for module in reference.modules():
        with contextlib.suppress(AttributeError):
            del module._is_hf_initialized  # so that initialize_weights visits it again
    calls: list[_Call] = []
    with _recording(calls):
        if hasattr(reference, "initialize_weights"):
            reference.initialize_weights()
        else:  # transformers before initialize_weights: the same walk, without sub-models
            reference.apply(reference._init_weights)
    fills: dict[int, InitSpec] = {}
    for call in calls:
        if call.function in _IGNORED:
            continue
        base = call.tensor if call.tensor._base is None else call.tensor._base
        if id(base) not in names:
            continue  # a buffer
        if base is call.tensor:
            fills[id(base)] = _spec_of(call)
            continue
        if call.function != "zeros_":
            raise ValueError(f"{names[id(base)][0]}: {call.function} on a part of it")
        previous = fills[id(base)]
        rows = _rows_of_view(call.tensor, base)
        fills[id(base)] = InitSpec(
            previous.kind, previous.args, tuple(sorted({*previous.zero_rows, *rows}))
        )
    missing = [ns[0] for key, ns in names.items() if key not in fills]
    if missing:
        raise ValueError(f"{missing[0]}: transformers' _init_weights does not initialise it")
    by_name = {name: fills[key] for key, ns in names.items() for name in ns}
    return {name: by_name[first[name]] for name in first}


def _spec_of(call: _Call) -> InitSpec:
    kind = call.function.removesuffix("_")
    if kind in ("zeros", "ones", "constant"):
        value = {"zeros": 0.0, "ones": 1.0}.get(kind, call.kwargs.get("val", 0.0))
        return InitSpec("constant", (("value", float(value)),))
    return InitSpec(kind, tuple(sorted((k, float(v)) for k, v in call.kwargs.items())))


def _rows_of_view(view: torch.Tensor, base: torch.Tensor) -> range:
    """The rows (dim 0) of ``base`` that ``view``, whole rows of it, covers."""
    row = math.prod(base.shape[1:])
    start = view.storage_offset() - base.storage_offset()
    if start % row or view.numel() % row:
        raise ValueError("an initialisation on part of a parameter that is not whole rows")
    return range(start // row, (start + view.numel()) // row)


class _Provenance(TorchDispatchMode):
    """Which tracked tensors each tensor made inside was computed from."""

    def __init__(self, sources: dict[int, str]) -> None:
        super().__init__()
        self.sources: dict[int, set[str]] = {key: {name} for key, name in sources.items()}
        self.keep: list[torch.Tensor] = []  # ids stay valid while the tensors live

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if func is torch.ops.aten.equal.default:
            # Meta tensors hold no values: a table is equal to itself (a tied head) only.
            return args[0] is args[1]
        out = func(*args, **(kwargs or {}))
        found: set[str] = set()
        for value in torch.utils._pytree.tree_leaves((args, kwargs)):
            if isinstance(value, torch.Tensor):
                found |= self.sources.get(id(value), set())
        for value in torch.utils._pytree.tree_leaves(out):
            if isinstance(value, torch.Tensor) and found:
                self.sources.setdefault(id(value), set()).update(found)
                self.keep.append(value)
        return out


def init_specs(config: PretrainedConfig) -> dict[str, InitSpec]:
    """Our parameter names (every name of a tied one) -> how they are filled, as transformers
    fills the reference parameters they come from."""
    family = family_of(config)
    reference = _reference_specs(config)
    with torch.device("meta"):
        model = family.reference_model(config)
    # One meta tensor per reference tensor, under each of its names (a tied table is one).
    made: dict[int, torch.Tensor] = {}
    hf = {
        name: made.setdefault(id(tensor), torch.empty_like(tensor, device="meta"))
        for name, tensor in (
            *model.named_parameters(remove_duplicate=False),
            *model.named_buffers(remove_duplicate=False),
        )
    }
    tracker = _Provenance({id(t): name for name, t in hf.items()})
    with tracker:
        ours = family.from_hf_state_dict(hf, config)
    specs = {}
    for name, tensor in ours.items():
        sources = sorted(tracker.sources.get(id(tensor), set()) & set(reference))
        if not sources:
            raise ValueError(f"{name}: comes from no parameter of the reference model")
        found = {reference[s] for s in sources}
        if len(found) > 1 or (
            next(iter(found)).zero_rows and tuple(tensor.shape) != tuple(hf[sources[0]].shape)
        ):
            raise ValueError(f"{name}: its sources {sources} are initialised differently")
        specs[name] = found.pop()
    return specs


# --- filling pieces -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Box:
    """A piece of a whole tensor: its offsets and the whole tensor's shape."""

    offsets: tuple[int, ...]
    whole_shape: tuple[int, ...]

    @classmethod
    def whole(cls, shape: Sequence[int]) -> Box:
        return cls(tuple(0 for _ in shape), tuple(shape))


def _tile_seed(seed: int, name: str, row: int, col: int) -> int:
    digest = hashlib.blake2b(f"{seed}/{name}/{row}/{col}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def _draw(spec: InitSpec, shape: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    out = torch.empty(shape, dtype=torch.float32)
    if spec.kind == "normal":
        return out.normal_(spec.arg("mean", 0.0), spec.arg("std", 1.0), generator=generator)
    if spec.kind == "uniform":
        return out.uniform_(spec.arg("a", 0.0), spec.arg("b", 1.0), generator=generator)
    if spec.kind == "trunc_normal":
        mean, std = spec.arg("mean", 0.0), spec.arg("std", 1.0)
        a, b = spec.arg("a", -2.0), spec.arg("b", 2.0)
        # Inverse CDF of the normal over [a, b], as torch.nn.init.trunc_normal_ draws it.
        low, high = (0.5 * (1 + math.erf((x - mean) / std / math.sqrt(2))) for x in (a, b))
        out.uniform_(2 * low - 1, 2 * high - 1, generator=generator).erfinv_()
        return out.mul_(std * math.sqrt(2.0)).add_(mean).clamp_(min=a, max=b)
    assert spec.kind == "constant", spec.kind
    return out.fill_(spec.arg("value", 0.0))


def fill_box(
    tensor: torch.Tensor, spec: InitSpec, *, seed: int, name: str, box: Box
) -> torch.Tensor:
    """Fill ``tensor``, the piece ``box`` of the whole parameter ``name``, with what the whole
    parameter holds there (any device and dtype; the host draws)."""
    whole = box.whole_shape
    rows, cols = whole[0] if whole else 1, math.prod(whole[1:])
    if len(whole) > 2 and tuple(tensor.shape[1:]) != tuple(whole[1:]):
        raise ValueError(f"{name}: a piece of a {len(whole)}-d parameter cut past dim 0")
    r0 = box.offsets[0] if whole else 0
    c0 = box.offsets[1] if len(whole) == 2 else 0
    r1 = r0 + (tensor.shape[0] if tensor.dim() else 1)
    c1 = c0 + (tensor.shape[1] if tensor.dim() == 2 else cols)
    piece = torch.empty((r1 - r0, c1 - c0), dtype=torch.float32)
    generator = torch.Generator()
    for tr in range(r0 // TILE_ROWS, -(-r1 // TILE_ROWS)):
        for tc in range(c0 // TILE_COLS, -(-c1 // TILE_COLS)):
            top, left = tr * TILE_ROWS, tc * TILE_COLS
            height, width = min(TILE_ROWS, rows - top), min(TILE_COLS, cols - left)
            if spec.kind == "constant":
                tile = _draw(spec, (height, width), generator)
            else:
                generator.manual_seed(_tile_seed(seed, name, tr, tc))
                tile = _draw(spec, (height, width), generator)
            y0, y1 = max(r0, top), min(r1, top + height)
            x0, x1 = max(c0, left), min(c1, left + width)
            piece[y0 - r0 : y1 - r0, x0 - c0 : x1 - c0] = tile[
                y0 - top : y1 - top, x0 - left : x1 - left
            ]
    for row in spec.zero_rows:
        if r0 <= row < r1:
            piece[row - r0].zero_()
    with torch.no_grad():
        tensor.copy_(piece.reshape(tensor.shape))
    return tensor


class WeightsSource(Protocol):
    """Values to fill pieces with instead of random ones (``partita.models.weights``)."""

    def fill(self, tensor: torch.Tensor, name: str, box: Box) -> torch.Tensor: ...


@dataclass
class Materializer:
    """Fills meta parameters on ``device``, each as a piece of the whole one-process parameter
    it stands for; tied copies (``canonical``: a name -> the tie's first name) are drawn alike,
    and a parameter shared by several modules of one ``module`` call is filled once. With
    ``weights``, pieces are read from it instead of drawn."""

    specs: Mapping[str, InitSpec]
    seed: int
    device: torch.device
    canonical: Mapping[str, str] = field(default_factory=dict)
    weights: WeightsSource | None = None

    def fill(self, tensor: torch.Tensor, name: str, box: Box) -> None:
        """Fill ``tensor`` in place: the piece ``box`` of the one-process parameter ``name``."""
        if self.weights is not None:
            self.weights.fill(tensor, name, box)
            return
        key = self.canonical.get(name, name)
        fill_box(tensor, self.specs[name], seed=self.seed, name=key, box=box)

    def parameter(self, name: str, meta: nn.Parameter, box: Box | None = None) -> nn.Parameter:
        """A real parameter on the device for ``meta``, ``name`` in the one-process model."""
        tensor = torch.empty(meta.shape, dtype=meta.dtype, device=self.device)
        self.fill(tensor, name, box or Box.whole(meta.shape))
        return nn.Parameter(tensor, requires_grad=meta.requires_grad)

    def module(
        self,
        module: nn.Module,
        names: Mapping[int, str],
        boxes: Mapping[int, Box] | None = None,
    ) -> None:
        """Replace every meta parameter of ``module`` in place and move its buffers to the
        device. ``names``: id(meta parameter) -> its one-process name; ``boxes``: id(meta
        parameter) -> its piece of the whole (default: whole)."""
        made: dict[int, nn.Parameter] = {}
        for owner in module.modules():
            for attr, param in list(owner._parameters.items()):
                if param is None or param.device.type != "meta":
                    continue
                if id(param) not in made:
                    if id(param) not in names:
                        raise ValueError(f"a {tuple(param.shape)} parameter with no name to fill")
                    box = (boxes or {}).get(id(param))
                    made[id(param)] = self.parameter(names[id(param)], param, box)
                owner._parameters[attr] = made[id(param)]
            for attr, buffer in list(owner._buffers.items()):
                if buffer is not None:
                    owner._buffers[attr] = buffer.to(self.device)


def one_process_names(model: nn.Module) -> dict[int, str]:
    """id(parameter) -> its name in the one-process model (a tied one's first name)."""
    names: dict[int, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), name)
    return names


def materialize(
    model: LayeredModel,
    *,
    seed: int,
    device: torch.device | str = "cpu",
    weights: WeightsSource | None = None,
) -> LayeredModel:
    """Fill every parameter of a :func:`build_empty` model whole (what one process trains),
    drawn, or read from ``weights``."""
    specs = {} if weights is not None else init_specs(model.config)
    canonical = {name: tie.names[0] for tie in model.tied for name in tie.names}
    materializer = Materializer(specs, seed, torch.device(device), canonical, weights)
    materializer.module(model, one_process_names(model))
    return model
