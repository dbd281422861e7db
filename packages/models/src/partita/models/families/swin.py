"""Swin Transformers (transformers ``swin``): shifted-window attention in stages of halving size.

Each Swin block is one layer and so is each patch merging between stages; the hidden tensor is
``[batch, tokens, channels]`` with a shape that changes between stages, and every layer knows
its feature-map resolution from the config (the images must have the config's size).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel, SwinConfig, SwinForImageClassification

from partita.formats.architectures.swin import (
    ARCHITECTURE,
    PRESETS,
    Stage,
    layer_plan,
    num_positions,
    round_up,
    stage_tokens,
    stages,
)
from partita.models.attention import Attends
from partita.models.families._vision import (
    KeyTriple,
    activation,
    check_classification,
    check_image_geometry,
    check_pixels,
    check_seq_len,
    image_batch,
    pair,
    pick,
)
from partita.models.families.base import (
    Family,
    StateDict,
    default_seq_len_through,
    describe_through,
)
from partita.models.heads import merge_heads, split_heads
from partita.models.layered import Activations, LayeredModel
from partita.models.losses import classification_loss
from partita.models.tp_layout import TPLayout
from partita.models.validation import require_divisible, require_family_config, require_positive

# transformers' patch-embedding and patch-merging norms keep LayerNorm's default epsilon.
_DEFAULT_LN_EPS = 1e-5


def _drop_path_rates(config: SwinConfig) -> list[float]:
    total = sum(config.depths)
    return [config.drop_path_rate * i / max(total - 1, 1) for i in range(total)]


class SwinEmbedding(nn.Module):
    def __init__(self, config: SwinConfig) -> None:
        super().__init__()
        self.config = config
        patch = pair(config.patch_size)
        self.projection = nn.Conv2d(
            config.num_channels, config.embed_dim, kernel_size=patch, stride=patch
        )
        self.norm = nn.LayerNorm(config.embed_dim, eps=_DEFAULT_LN_EPS)
        self.position_embeddings = (
            nn.Parameter(torch.zeros(1, num_positions(config), config.embed_dim))
            if config.use_absolute_embeddings
            else None
        )
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, acts: Activations) -> Activations:
        pixels_bchw = acts["pixel_values"]
        check_pixels(pixels_bchw, self.config, "swin")
        # The batch stays float32 when the model runs in half precision.
        pixels_bchw = pixels_bchw.to(self.projection.weight.dtype)
        height, width = pixels_bchw.shape[-2:]
        patch_h, patch_w = self.projection.kernel_size
        pad_w, pad_h = (-width) % patch_w, (-height) % patch_h
        if pad_w or pad_h:  # partial patches at the right and bottom see zeros
            pixels_bchw = F.pad(pixels_bchw, (0, pad_w, 0, pad_h))
        hidden_bsh = self.norm(self.projection(pixels_bchw).flatten(2).transpose(1, 2))
        if self.position_embeddings is not None:
            hidden_bsh = hidden_bsh + self.position_embeddings
        return {"hidden": self.dropout(hidden_bsh)}


def _relative_position_index(window: int) -> torch.Tensor:
    """For each (query, key) pair of a window, its row in the relative position table."""
    coords_h, coords_w = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    coords_2n = torch.stack((coords_h.flatten(), coords_w.flatten()))
    relative_nn2 = (coords_2n[:, :, None] - coords_2n[:, None, :]).permute(1, 2, 0) + window - 1
    return (relative_nn2[..., 0] * (2 * window - 1) + relative_nn2[..., 1]).flatten()


class WindowAttention(nn.Module):
    """Self-attention inside each shifted window, with a learned bias per relative position
    and head. The projections work token by token on ``[batch, tokens, c]``, so they run on
    whatever part of the map the layer holds; ``windows`` attends over the whole map."""

    def __init__(self, config: SwinConfig, stage: Stage, shift: int) -> None:
        super().__init__()
        window, dim = config.window_size, stage.dim  # the table is sized by the configured window
        self.head_dim = dim // stage.heads
        self.q_proj = nn.Linear(dim, dim, bias=config.qkv_bias)
        self.k_proj = nn.Linear(dim, dim, bias=config.qkv_bias)
        self.v_proj = nn.Linear(dim, dim, bias=config.qkv_bias)
        self.o_proj = nn.Linear(dim, dim)
        # Last dimension indexes heads, so tensor parallelism splits it with the projections.
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window - 1) ** 2, stage.heads)
        )
        index = _relative_position_index(window)
        self.relative_position_index = nn.Buffer(index, persistent=False)
        self.windows = ShiftedWindows(stage, shift, config.attention_probs_dropout_prob)

    def position_bias(self) -> torch.Tensor:
        """[1, local heads, window area, window area]."""
        area = int(self.relative_position_index.numel() ** 0.5)
        bias_nnh = self.relative_position_bias_table[self.relative_position_index]
        return bias_nnh.view(area, area, -1).permute(2, 0, 1).contiguous().unsqueeze(0)

    def forward(self, x_bsc: torch.Tensor) -> torch.Tensor:
        q, k, v = (
            split_heads(p(x_bsc), self.head_dim) for p in (self.q_proj, self.k_proj, self.v_proj)
        )
        out_bhsd = self.windows(
            q,
            k,
            v,
            position_bias=self.position_bias(),
            pad_k=self._projected_zero(self.k_proj),
            pad_v=self._projected_zero(self.v_proj),
        )
        return self.o_proj(merge_heads(out_bhsd))

    def _projected_zero(self, proj: nn.Module) -> torch.Tensor | None:
        """What a zero token projects to, ``[1, heads, 1, head_dim]`` (None: zeros)."""
        bias = proj.bias
        return None if bias is None else split_heads(bias.view(1, 1, -1), self.head_dim)


class ShiftedWindows(Attends):
    """Attention of q, k, v ``[batch, heads, tokens, head_dim]`` of the whole feature map within
    its windows: the map is padded to whole windows, cyclically shifted and cut into windows;
    ``core`` attends in each; the result is put back in place.

    transformers pads the hidden states with zeros before projecting them, so a padded token's
    key and value are the projections' biases: ``pad_k`` and ``pad_v`` (``[1, heads, 1, d]``,
    None for zeros). Padded queries only make outputs that are cropped, so they are zeros.
    """

    def __init__(self, stage: Stage, shift: int, dropout: float) -> None:
        super().__init__()
        self.stage, self.shift, self.attn_dropout = stage, shift, dropout

    def forward(
        self,
        q_bhsd: torch.Tensor,
        k_bhsd: torch.Tensor,
        v_bhsd: torch.Tensor,
        *,
        position_bias: torch.Tensor,
        pad_k: torch.Tensor | None = None,
        pad_v: torch.Tensor | None = None,
    ) -> torch.Tensor:
        head_dim, tokens = q_bhsd.shape[-1], q_bhsd.shape[2]
        if tokens != self.stage.tokens:
            raise ValueError(
                f"swin: the windowed attention of stage {self.stage.index} needs the whole "
                f"{self.stage.height}x{self.stage.width} map, got {tokens} tokens"
            )
        q, k, v = (
            split_heads(self._to_windows(t, pad), head_dim)
            for t, pad in ((q_bhsd, None), (k_bhsd, pad_k), (v_bhsd, pad_v))
        )
        bias = position_bias
        if self.shift:  # same window mask for every image of the batch
            mask_wnn = self._mask(q_bhsd)
            windows, area = mask_wnn.shape[0], q.shape[2]
            per_image = mask_wnn.unsqueeze(1).unsqueeze(0)
            expanded = per_image.expand(q.shape[0] // windows, -1, -1, -1, -1)
            bias = bias + expanded.reshape(-1, 1, area, area)
        dropout_p = self.attn_dropout if self.training else 0.0
        out_bhnd = self.core(q, k, v, bias=bias, scale=head_dim**-0.5, dropout_p=dropout_p)
        out_bsc = self._from_windows(merge_heads(out_bhnd))
        return split_heads(out_bsc, head_dim)

    def _to_windows(self, x_bhsd: torch.Tensor, pad: torch.Tensor | None) -> torch.Tensor:
        """``[batch, heads, tokens, d]`` -> ``[batch * windows, window area, heads * d]``."""
        stage, window = self.stage, self.stage.window
        x_bsc = merge_heads(x_bhsd)
        batch, _, channels = x_bsc.shape
        x_bhwc = _pad_map(x_bsc.view(batch, stage.height, stage.width, channels), window, pad)
        if self.shift:
            x_bhwc = torch.roll(x_bhwc, shifts=(-self.shift, -self.shift), dims=(1, 2))
        return window_partition(x_bhwc, window).view(-1, window * window, channels)

    def _from_windows(self, windows_wnc: torch.Tensor) -> torch.Tensor:
        """The inverse of ``_to_windows``, to ``[batch, tokens, channels]``."""
        stage, shift, window = self.stage, self.shift, self.stage.window
        channels = windows_wnc.shape[-1]
        height, width = round_up(stage.height, window), round_up(stage.width, window)
        windows = windows_wnc.view(-1, window, window, channels)
        out_bhwc = window_reverse(windows, window, height, width)
        if shift:
            out_bhwc = torch.roll(out_bhwc, shifts=(shift, shift), dims=(1, 2))
        if height != stage.height or width != stage.width:
            out_bhwc = out_bhwc[:, : stage.height, : stage.width, :].contiguous()
        return out_bhwc.view(out_bhwc.shape[0], stage.tokens, channels)

    def _mask(self, like: torch.Tensor) -> torch.Tensor:
        window = self.stage.window
        height, width = round_up(self.stage.height, window), round_up(self.stage.width, window)
        return shift_mask(height, width, window, self.shift, like)


def _pad_map(x_bhwc: torch.Tensor, window: int, value: torch.Tensor | None) -> torch.Tensor:
    """Pads the map at the right and bottom to whole windows with ``value`` (``[1, heads, 1,
    d]``, one vector for every padded token) or zeros."""
    batch, height, width, channels = x_bhwc.shape
    pad_w, pad_h = (-width) % window, (-height) % window
    if value is None:
        return F.pad(x_bhwc, (0, 0, 0, pad_w, 0, pad_h))
    fill_c = merge_heads(value).view(channels).to(x_bhwc.dtype)
    if pad_w:
        x_bhwc = torch.cat([x_bhwc, fill_c.expand(batch, height, pad_w, channels)], dim=2)
    if pad_h:
        x_bhwc = torch.cat([x_bhwc, fill_c.expand(batch, pad_h, width + pad_w, channels)], dim=1)
    return x_bhwc


class SwinMLP(nn.Module):
    def __init__(self, config: SwinConfig, dim: int, ffn: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, ffn)
        self.fc2 = nn.Linear(ffn, dim)
        self.act = activation(config, "swin")

    def forward(self, x_bsh: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x_bsh)))


class DropPath(nn.Module):
    """Stochastic depth: drop a whole residual branch per sample (transformers' SwinDropPath)."""

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.rate = rate

    def forward(self, x_bsh: torch.Tensor) -> torch.Tensor:
        if self.rate == 0.0 or not self.training:
            return x_bsh
        keep = 1 - self.rate
        shape = (x_bsh.shape[0],) + (1,) * (x_bsh.dim() - 1)
        mask = torch.floor(torch.rand(shape, dtype=x_bsh.dtype, device=x_bsh.device) + keep)
        return x_bsh.div(keep) * mask


def window_partition(x_bhwc: torch.Tensor, window: int) -> torch.Tensor:
    """[batch, height, width, c] -> [batch * windows, window, window, c], row-major windows."""
    batch, height, width, channels = x_bhwc.shape
    x = x_bhwc.view(batch, height // window, window, width // window, window, channels)
    return x.transpose(2, 3).contiguous().view(-1, window, window, channels)


def window_reverse(windows: torch.Tensor, window: int, height: int, width: int) -> torch.Tensor:
    channels = windows.shape[-1]
    x = windows.view(-1, height // window, width // window, window, window, channels)
    return x.transpose(2, 3).contiguous().view(-1, height, width, channels)


def shift_mask(
    height: int, width: int, window: int, shift: int, like: torch.Tensor
) -> torch.Tensor:
    """[windows, area, area]: -100 between tokens that the cyclic shift brought together.

    The rolled map has three regions per axis (unshifted, last window, wrapped-around shift);
    tokens of a window may attend only to tokens of their own region, as in transformers.
    """
    rows = torch.arange(height, device=like.device)
    cols = torch.arange(width, device=like.device)
    row_region = (rows >= height - window).long() + (rows >= height - shift).long()
    col_region = (cols >= width - window).long() + (cols >= width - shift).long()
    region_1hw1 = (row_region[None, :, None, None] * 3 + col_region[None, None, :, None]).to(
        like.dtype
    )
    region_wn = window_partition(region_1hw1, window).view(-1, window * window)
    differs_wnn = region_wn.unsqueeze(1) - region_wn.unsqueeze(2)
    return differs_wnn.masked_fill(differs_wnn != 0, -100.0).masked_fill(differs_wnn == 0, 0.0)


class SwinBlock(nn.Module):
    """Norms, MLP and the attention's projections work token by token; the windowed attention
    between the projections (``attention.windows``) needs the whole (shifted) feature map."""

    def __init__(self, config: SwinConfig, stage: Stage, shifted: bool, drop_path: float) -> None:
        super().__init__()
        self.stage = stage
        self.shift = stage.shift if shifted else 0
        eps = config.layer_norm_eps
        self.layernorm_before = nn.LayerNorm(stage.dim, eps=eps)
        self.attention = WindowAttention(config, stage, self.shift)
        self.layernorm_after = nn.LayerNorm(stage.dim, eps=eps)
        self.mlp = SwinMLP(config, stage.dim, stage.ffn)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.drop_path = DropPath(drop_path)

    def forward(self, acts: Activations) -> Activations:
        x_bsc = acts["hidden"]
        attended_bsc = self.dropout(self.attention(self.layernorm_before(x_bsc)))
        x_bsc = x_bsc + self.drop_path(attended_bsc)
        x_bsc = self.dropout(self.mlp(self.layernorm_after(x_bsc))) + x_bsc
        return {**acts, "hidden": x_bsc}


class SwinPatchMerging(nn.Module):
    """Concatenates each 2x2 neighbourhood (4 x channels) and projects it to 2 x channels."""

    def __init__(self, stage: Stage) -> None:
        super().__init__()
        self.stage = stage
        self.norm = nn.LayerNorm(4 * stage.dim, eps=_DEFAULT_LN_EPS)
        self.reduction = nn.Linear(4 * stage.dim, 2 * stage.dim, bias=False)

    def forward(self, acts: Activations) -> Activations:
        x_bsc = acts["hidden"]
        batch, tokens, channels = x_bsc.shape
        height, width = self._rows(tokens), self.stage.width
        x_bhwc = x_bsc.view(batch, height, width, channels)
        if height % 2 or width % 2:
            x_bhwc = F.pad(x_bhwc, (0, 0, 0, width % 2, 0, height % 2))
        # Order (0,0), (1,0), (0,1), (1,1) as in transformers, so its weights load unchanged.
        merged = torch.cat([x_bhwc[:, r::2, c::2, :] for c in range(2) for r in range(2)], dim=-1)
        merged_bsc = merged.view(batch, -1, 4 * channels)
        return {**acts, "hidden": self.reduction(self.norm(merged_bsc))}

    def _rows(self, tokens: int) -> int:
        """Rows of the map in ``hidden``: all of them, or (under sequence parallelism) a band.

        A band of an even number of whole rows merges on its own into a band of the merged map,
        and bands in rank order make the merged map in order.
        """
        stage = self.stage
        if tokens == stage.tokens:
            return stage.height
        rows, rest = divmod(tokens, stage.width)
        if rest or rows % 2:
            raise ValueError(
                f"swin: patch merging of stage {stage.index} got {tokens} of its "
                f"{stage.height}x{stage.width} tokens; a sequence shard must be an even number "
                "of whole rows (the sequence-parallel degree must divide the map's height in "
                "bands of even height)"
            )
        return rows


class SwinHead(nn.Module):
    def __init__(self, config: SwinConfig) -> None:
        super().__init__()
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, acts: Activations) -> Activations:
        normed_bsc = self.layernorm(acts["hidden"])
        pooled_bc = F.adaptive_avg_pool1d(normed_bsc.transpose(1, 2), 1).flatten(1)
        return {"logits": self.classifier(pooled_bc)}


def check_config(config: PretrainedConfig) -> None:
    require_family_config(config, SwinConfig, "swin")
    for name in ("embed_dim", "window_size"):
        require_positive(getattr(config, name), name)
    if not config.depths or len(config.depths) != len(config.num_heads):
        raise ValueError(
            f"swin: depths {list(config.depths)} and num_heads {list(config.num_heads)} "
            "must be non-empty and of the same length"
        )
    check_image_geometry(config, "swin")
    for stage in stages(config):
        require_positive(stage.depth, f"depths[{stage.index}]")
        require_positive(stage.ffn, f"mlp_ratio * channels of stage {stage.index}")
        require_divisible(
            stage.dim, stage.heads, f"stage {stage.index} channels", f"num_heads[{stage.index}]"
        )
        if min(stage.height, stage.width) < config.window_size:
            # transformers sizes the position table for the configured window, which then
            # does not match the clamped one and fails; we refuse what it cannot run.
            raise ValueError(
                f"swin: stage {stage.index} feature map {stage.height}x{stage.width} is smaller "
                f"than window_size {config.window_size}; use a larger image or smaller window"
            )
    if config.use_absolute_embeddings and num_positions(config) != stage_tokens(config):
        raise ValueError(
            "swin: use_absolute_embeddings needs image_size to be a multiple of patch_size"
        )
    check_classification(config, "swin")
    activation(config, "swin")


def build(config: PretrainedConfig) -> LayeredModel:
    check_config(config)
    rates = iter(_drop_path_rates(config))
    plan = layer_plan(config)
    layers: list[nn.Module] = []
    for _, layer_type, stage, block in plan:
        if layer_type == "swin_embedding":
            layers.append(SwinEmbedding(config))
        elif layer_type == "swin_head":
            layers.append(SwinHead(config))
        elif block < 0:
            layers.append(SwinPatchMerging(stage))  # type: ignore[arg-type]
        else:
            # Odd blocks of a stage use shifted windows; drop-path grows linearly with depth.
            layers.append(SwinBlock(config, stage, block % 2 == 1, next(rates)))  # type: ignore[arg-type]
    return LayeredModel(
        family="swin",
        layer_names=[name for name, *_ in plan],
        layer_types=[layer_type for _, layer_type, *_ in plan],
        layers=layers,
        loss_fn=classification_loss,
        config=config,
    )


# Sequence parallelism: norms, MLP, patch merging (on bands of whole rows) and the attention's
# projections work token by token on a band of the map; the shifted windows need the whole map.
# Megatron: the column-parallel q/k/v projections gather the sequence for this rank's heads,
# the row-parallel output projection reduce-scatters it. Ulysses: weights stay whole; q/k/v
# projected on the band are exchanged for the whole map of this rank's heads around
# ``attention.windows`` (with its heads of the position bias and of the padding values).
def tp_layouts(config: PretrainedConfig) -> dict[str, TPLayout]:
    layouts = {
        "swin_embedding": TPLayout(
            replicated_note="patch convolution, its norm and positions replicated"
        ),
        "swin_patch_merging": TPLayout(
            sequence_parallel=("norm", "reduction"),
            replicated_note="norm and reduction replicated (on bands of rows under sequence "
            "parallelism)",
        ),
        "swin_head": TPLayout(
            vocab_head=("classifier",),
            replicated_note="final norm replicated, classifier split over labels",
        ),
    }
    for stage in range(len(config.depths)):
        layouts[f"swin_block_stage{stage}"] = TPLayout(
            colwise=("attention.q_proj", "attention.k_proj", "attention.v_proj", "mlp.fc1"),
            rowwise=("attention.o_proj", "mlp.fc2"),
            sequence_parallel=("layernorm_before", "layernorm_after", "drop_path"),
            head_parameters=("attention.relative_position_bias_table",),
            ulysses_exchange=("attention.windows",),
            replicated_note="layer norms replicated; the windowed attention runs on the whole "
            "feature map (for this rank's heads) under sequence parallelism",
        )
    return layouts


def synthetic_batch(
    config: PretrainedConfig, batch_size: int, seq_len: int, generator: torch.Generator
) -> Activations:
    check_seq_len(seq_len, stage_tokens(config), "swin")
    return image_batch(config, batch_size, generator)


def reference_model(config: PretrainedConfig) -> PreTrainedModel:
    return SwinForImageClassification(config)


def reference_outputs(
    model: PreTrainedModel, batch: Activations
) -> tuple[torch.Tensor, torch.Tensor]:
    out = model(pixel_values=batch["pixel_values"], labels=batch["labels"])
    return out.logits, out.loss


_QKV = ("attention.q_proj", "attention.k_proj", "attention.v_proj")
_BLOCK_MODULES = (  # (ours, transformers in memory, transformers checkpoint), per block
    ("layernorm_before", "layernorm_before", "layernorm_before"),
    ("attention.q_proj", "attention.q_proj", "attention.self.query"),
    ("attention.k_proj", "attention.k_proj", "attention.self.key"),
    ("attention.v_proj", "attention.v_proj", "attention.self.value"),
    ("attention.o_proj", "attention.o_proj", "attention.output.dense"),
    ("layernorm_after", "layernorm_after", "layernorm_after"),
    ("mlp.fc1", "mlp.fc1", "intermediate.dense"),
    ("mlp.fc2", "mlp.fc2", "output.dense"),
)


def _block_keys(config: SwinConfig, ours: str, hf: str) -> list[KeyTriple]:
    table = "relative_position_bias_table"
    triples = [
        (
            f"{ours}attention.{table}",
            f"{hf}attention.relative_position_bias.{table}",
            f"{hf}attention.self.{table}",
        )
    ]
    for module, current, legacy in _BLOCK_MODULES:
        biased = config.qkv_bias or module not in _QKV
        for param in ("weight", "bias") if biased else ("weight",):
            triples.append(
                (f"{ours}{module}.{param}", f"{hf}{current}.{param}", f"{hf}{legacy}.{param}")
            )
    return triples


def _keys(config: SwinConfig) -> list[KeyTriple]:
    pairs = [
        ("projection.weight", "swin.embeddings.patch_embeddings.projection.weight"),
        ("projection.bias", "swin.embeddings.patch_embeddings.projection.bias"),
        ("norm.weight", "swin.embeddings.norm.weight"),
        ("norm.bias", "swin.embeddings.norm.bias"),
    ]
    if config.use_absolute_embeddings:
        pairs.append(("position_embeddings", "swin.embeddings.position_embeddings"))
    triples = [(f"layers.0.{ours}", hf, hf) for ours, hf in pairs]
    for index, (_, layer_type, stage, block) in enumerate(layer_plan(config)):
        ours, hf = f"layers.{index}.", f"swin.encoder.layers.{stage.index if stage else 0}."
        if layer_type == "swin_head":
            for ours_name, hf_name in (
                ("layernorm", "swin.layernorm"),
                ("classifier", "classifier"),
            ):
                for param in ("weight", "bias"):
                    triples.append(
                        (f"{ours}{ours_name}.{param}", f"{hf_name}.{param}", f"{hf_name}.{param}")
                    )
        elif layer_type == "swin_patch_merging":
            for name in ("reduction.weight", "norm.weight", "norm.bias"):
                triples.append(
                    (f"{ours}{name}", f"{hf}downsample.{name}", f"{hf}downsample.{name}")
                )
        elif layer_type != "swin_embedding":
            triples.extend(_block_keys(config, ours, f"{hf}blocks.{block}."))
    return triples


def from_hf_state_dict(hf: StateDict, config: PretrainedConfig) -> StateDict:
    return {ours: pick(hf, current, legacy) for ours, current, legacy in _keys(config)}


def to_hf_state_dict(ours: StateDict, config: PretrainedConfig) -> StateDict:
    return {current: ours[name] for name, current, _ in _keys(config)}


FAMILY = Family(
    name="swin",
    model_types=("swin",),
    unit="samples",
    check_config=check_config,
    build=build,
    describe=describe_through(ARCHITECTURE),
    tp_layouts=tp_layouts,
    synthetic_batch=synthetic_batch,
    reference_model=reference_model,
    reference_outputs=reference_outputs,
    from_hf_state_dict=from_hf_state_dict,
    to_hf_state_dict=to_hf_state_dict,
    default_seq_len=default_seq_len_through(ARCHITECTURE),
    presets=PRESETS,
)
