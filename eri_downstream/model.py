"""Stage 3b: the multimodal Emotion Reaction Intensity model (Qiu et al., ABAW 2023, ERI track).

Three branches turn padded feature sequences into one 64-d vector each; a small MLP fuses them:

    visual (B, K, 768) ViT features  -> TemporalSE -> BiGRU x2 -> LayerNorm -> Linear -> mean -> Linear -> (B, 64)
    audio  (B, T, 768) HuBERT        -> causal TCN -> TransformerEncoder -> mean -> Linear          -> (B, 64)
    text   (B, T, 1024) DeBERTa      -> Conv1d     -> TransformerEncoder -> mean -> Linear          -> (B, 64)
    concat (B, 64 * n) -> Dropout -> Linear -> ReLU -> Linear -> sigmoid -> (B, 7)   (trained with MSE)

Batch convention (eri_downstream/data.py `collate`): for each modality m, `batch[m]` is float
(B, T, D) zero-padded at the end and `batch[m + "_mask"]` is bool (B, T), True on real steps.
Masks must be left-aligned (real steps first), which is what collate and mixup produce.

Masking rule, everywhere: padded steps never reach a statistic. Padded inputs are overwritten
with zeros on entry (so garbage, even NaN, cannot leak through a 'same' convolution), the GRU
sees packed sequences, attention ignores padded keys, and every mean over time is a masked mean.
Hence appending more padding never changes the output (tests/test_eri_model.py checks this).

A modality whose mask is all False for a video (missing features) yields a zero vector from
`masked_mean` (its denominator is clamped to >= 1), i.e. the branch contributes only its output
bias; no NaN can appear. Text with no speech is stored as one all-zero DeBERTa step (length 1)
and needs no special case.

`save_eri_model(model, folder, extra)` writes model.safetensors + config.json (the published
form, see `affect-publish`); `load_eri_model(folder)` rebuilds the model from them.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from shared.atomic import write_json, write_safetensors
from shared.errors import UserError

MODALITIES = ("visual", "audio", "text")


@dataclass
class ERIModelConfig:
    modalities: tuple[str, ...] = ("visual", "audio", "text")  # any non-empty subset: V, A, T, V+A, V+A+T
    # input feature sizes: ViT-B (768), HuBERT-base last layer (768), DeBERTa-large (1024)
    visual_dim: int = 768
    audio_dim: int = 768
    text_dim: int = 1024
    branch_dim: int = 64  # the paper's per-modality feature size
    # visual branch
    num_frames: int = 32  # K of segment sampling: the temporal SE has one "channel" per frame slot
    temporal_se: bool = True
    se_reduction: int = 4  # SE bottleneck K -> K / r -> K (32 -> 8 -> 32)
    gru_hidden: int = 128  # per direction; the BiGRU emits 256
    gru_layers: int = 2
    # audio branch: dilated causal TCN (dilation 2**i for block i), then a transformer of width tcn_channels[-1]
    tcn_channels: tuple[int, ...] = (128, 128)
    tcn_kernel: int = 3
    audio_layers: int = 1
    audio_heads: int = 4
    audio_ff: int = 256
    # text branch: one 'same' temporal conv to text_channels, then a transformer of that width
    text_channels: int = 128
    text_conv_kernel: int = 3
    text_layers: int = 1
    text_heads: int = 4
    text_ff: int = 256
    # fusion head
    fusion_hidden: int = 64
    dropout: float = 0.3  # before the fusion MLP (paper: "dropout" after the concatenation)
    branch_dropout: float = 0.1  # inside GRU stack, TCN blocks and transformer layers
    num_outputs: int = 7  # Adoration, Amusement, Anxiety, Disgust, Empathic-Pain, Fear, Surprise

    def __post_init__(self):
        mods = tuple(self.modalities)
        unknown = [m for m in mods if m not in MODALITIES]
        if not mods or unknown or len(set(mods)) != len(mods):
            raise ValueError(f"modalities must be a non-empty subset of {MODALITIES} without repeats, got {mods}")
        self.modalities = tuple(m for m in MODALITIES if m in mods)  # canonical order = concat order
        self.tcn_channels = tuple(int(c) for c in self.tcn_channels)  # YAML gives lists
        if not self.tcn_channels:
            raise ValueError("tcn_channels must name at least one block")
        if self.tcn_channels[-1] % self.audio_heads or self.text_channels % self.text_heads:
            raise ValueError("transformer widths (tcn_channels[-1], text_channels) must divide by their head counts")
        if self.text_conv_kernel % 2 == 0:
            raise ValueError("text_conv_kernel must be odd ('same' padding must be symmetric)")


# -- masking helpers ---------------------------------------------------------------------------
def zero_padded(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T, D) with padded steps set to 0. masked_fill, not x * mask: NaN * 0 is NaN."""
    return x.masked_fill(~mask[..., None], 0.0)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real steps: (B, T, D), (B, T) -> (B, D). A row without real steps gives zeros
    (denominator clamped to 1) instead of 0 / 0 = NaN."""
    total = zero_padded(x, mask).sum(1)  # (B, D)
    count = mask.sum(1, keepdim=True).clamp(min=1).to(x.dtype)  # (B, 1)
    return total / count


def key_padding_mask(mask: torch.Tensor) -> torch.Tensor:
    """nn.Transformer's src_key_padding_mask (True = ignore). A row with no real step would make
    every attention score -inf and softmax NaN (also in the backward pass), so such rows attend
    to their (zeroed) first step instead; masked_mean discards their outputs anyway."""
    empty = ~mask.any(1, keepdim=True)  # (B, 1)
    first = torch.arange(mask.shape[1], device=mask.device) == 0  # (T,)
    return ~mask & ~(empty & first)  # (B, T); no host sync: the same mask whether or not a row is empty


def transformer_encoder(width: int, heads: int, ff: int, layers: int, dropout: float) -> nn.TransformerEncoder:
    # pre-LN (norm_first) trains stably without warmup; no nested tensors so eval and train
    # take the same code path (and padded outputs are not silently zeroed in one of them)
    layer = nn.TransformerEncoderLayer(width, heads, ff, dropout, activation="gelu", batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(width), enable_nested_tensor=False)


# -- visual branch -------------------------------------------------------------------------------
class TemporalSE(nn.Module):
    """Squeeze-and-Excitation with frames as the channels: each frame is squeezed to one number
    (the mean of its features), a bottleneck MLP over the K frame slots produces one weight in
    (0, 1) per frame, and frames are re-weighted by it. This lets the model emphasise the few
    frames where the reaction happens.

    Padded frames are squeezed to 0 (they carry no statistic), get weight 0 and come out as 0.
    The frame axis has a fixed size `num_frames` (the FC layers are per slot); shorter batches are
    zero-extended, longer ones are accepted only if the steps beyond `num_frames` are padding.
    """

    def __init__(self, num_frames: int, reduction: int):
        super().__init__()
        self.num_frames = num_frames
        hidden = max(1, num_frames // reduction)
        self.fc1 = nn.Linear(num_frames, hidden)
        self.fc2 = nn.Linear(hidden, num_frames)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        K = self.num_frames
        if T > K and mask[:, K:].any():
            raise ValueError(f"{int(mask.sum(1).max())} real frames but the temporal SE has num_frames={K}: "
                             f"set the model's num_frames to the data's k")
        z = zero_padded(x, mask).mean(-1)  # squeeze: (B, T), one number per frame, 0 for padding
        z = F.pad(z[:, :K], (0, K - min(T, K)))  # (B, K): frame slots, zero-extended
        w = torch.sigmoid(self.fc2(F.relu(self.fc1(z))))  # excitation: (B, K) one weight per slot
        w = F.pad(w[:, :T], (0, max(0, T - K)))  # (B, T) back to the batch's length
        w = w.masked_fill(~mask, 0.0)  # padded frames get no weight
        return zero_padded(x, mask) * w[..., None]  # (B, T, D)


class VisualBranch(nn.Module):
    """(B, K, visual_dim) per-frame ViT features -> (B, branch_dim)."""

    def __init__(self, cfg: ERIModelConfig):
        super().__init__()
        self.se = TemporalSE(cfg.num_frames, cfg.se_reduction) if cfg.temporal_se else None
        H = cfg.gru_hidden
        self.gru = nn.GRU(cfg.visual_dim, H, num_layers=cfg.gru_layers, batch_first=True, bidirectional=True,
                          dropout=cfg.branch_dropout if cfg.gru_layers > 1 else 0.0)
        self.norm = nn.LayerNorm(2 * H)
        self.proj = nn.Linear(2 * H, H)
        self.out = nn.Linear(H, cfg.branch_dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """`lengths`: mask.sum(1).clamp(min=1) on the host, when the caller already has it."""
        B, T, _ = x.shape
        x = self.se(x, mask) if self.se is not None else zero_padded(x, mask)  # (B, T, Dv)
        # packing makes the backward direction start at each video's last real frame, not at the
        # padding; an empty row is run on its zeroed first frame and discarded by masked_mean
        lengths = mask.sum(1).clamp(min=1).cpu() if lengths is None else lengths  # (B,)
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        h, _ = self.gru(packed)
        h, _ = pad_packed_sequence(h, batch_first=True, total_length=T)  # (B, T, 2H), zeros at padding
        h = F.gelu(self.proj(self.norm(h)))  # (B, T, H)
        return self.out(masked_mean(h, mask))  # (B, branch_dim)


# -- audio branch --------------------------------------------------------------------------------
class CausalConv1d(nn.Conv1d):
    """Conv1d padded on the left only, so output t sees inputs <= t. (B, C, T) -> (B, C', T)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, dilation: int):
        super().__init__(c_in, c_out, kernel, dilation=dilation)
        self.left = (kernel - 1) * dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, (self.left, 0)))


class TCNBlock(nn.Module):
    """Two dilated causal convolutions with a residual connection (Bai et al., 2018)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, dilation: int, dropout: float):
        super().__init__()
        self.conv1 = CausalConv1d(c_in, c_out, kernel, dilation)
        self.conv2 = CausalConv1d(c_out, c_out, kernel, dilation)
        self.drop = nn.Dropout(dropout)
        self.skip = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()  # match widths

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, T) -> (B, C_out, T)
        h = self.drop(F.relu(self.conv1(x)))
        h = self.drop(F.relu(self.conv2(h)))
        return F.relu(h + self.skip(x))


class CausalTCN(nn.Module):
    """Stack of TCN blocks with dilations 1, 2, 4, ...: the receptive field grows exponentially
    with depth while every output stays causal. (B, T, c_in) -> (B, T, channels[-1]). Causality
    also means real steps never see the right-hand padding."""

    def __init__(self, c_in: int, channels: Sequence[int], kernel: int, dropout: float):
        super().__init__()
        widths = [c_in, *channels]
        self.blocks = nn.Sequential(*[TCNBlock(widths[i], widths[i + 1], kernel, 2 ** i, dropout)
                                      for i in range(len(channels))])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x.transpose(1, 2)).transpose(1, 2)  # convs want (B, C, T)


class AudioBranch(nn.Module):
    """(B, T, audio_dim) HuBERT features -> (B, branch_dim). The TCN's convolutions also give
    the (position-free) transformer its sense of order."""

    def __init__(self, cfg: ERIModelConfig):
        super().__init__()
        width = cfg.tcn_channels[-1]
        self.tcn = CausalTCN(cfg.audio_dim, cfg.tcn_channels, cfg.tcn_kernel, cfg.branch_dropout)
        self.encoder = transformer_encoder(width, cfg.audio_heads, cfg.audio_ff, cfg.audio_layers, cfg.branch_dropout)
        self.out = nn.Linear(width, cfg.branch_dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.tcn(zero_padded(x, mask))  # (B, T, W)
        h = self.encoder(zero_padded(h, mask), src_key_padding_mask=key_padding_mask(mask))  # (B, T, W)
        return self.out(masked_mean(h, mask))  # (B, branch_dim)


# -- text branch ---------------------------------------------------------------------------------
class TextBranch(nn.Module):
    """(B, T, text_dim) DeBERTa features -> (B, branch_dim). The 'same' convolution looks one
    step right as well: zeroing the padded input makes the last real step see exactly the zero
    padding it would see in an unpadded sequence."""

    def __init__(self, cfg: ERIModelConfig):
        super().__init__()
        W = cfg.text_channels
        self.conv = nn.Conv1d(cfg.text_dim, W, cfg.text_conv_kernel, padding=cfg.text_conv_kernel // 2)
        self.encoder = transformer_encoder(W, cfg.text_heads, cfg.text_ff, cfg.text_layers, cfg.branch_dropout)
        self.out = nn.Linear(W, cfg.branch_dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.conv(zero_padded(x, mask).transpose(1, 2))).transpose(1, 2)  # (B, T, W)
        h = self.encoder(zero_padded(h, mask), src_key_padding_mask=key_padding_mask(mask))  # (B, T, W)
        return self.out(masked_mean(h, mask))  # (B, branch_dim)


# -- the model -----------------------------------------------------------------------------------
BRANCHES = {"visual": VisualBranch, "audio": AudioBranch, "text": TextBranch}


class ERIModel(nn.Module):
    """batch {"<m>": (B, T, D), "<m>_mask": (B, T) bool} -> (B, num_outputs) intensities in [0, 1].
    Only the configured modalities' branches are built (no dead parameters for EMA/DDP)."""

    def __init__(self, config: ERIModelConfig):
        super().__init__()
        self.config = config
        self.branches = nn.ModuleDict({m: BRANCHES[m](config) for m in config.modalities})
        self.head = nn.Sequential(
            nn.Dropout(config.dropout),
            nn.Linear(config.branch_dim * len(config.modalities), config.fusion_hidden),
            nn.ReLU(),
            nn.Linear(config.fusion_hidden, config.num_outputs),
        )

    def forward(self, batch: dict) -> torch.Tensor:
        inputs = {}
        for m in self.branches:
            if m not in batch:
                raise KeyError(f"the model uses modality {m!r} but the batch has no {m!r} entry")
            x = batch[m]  # (B, T, D)
            mask = batch.get(f"{m}_mask")
            inputs[m] = x, torch.ones(x.shape[:2], dtype=torch.bool, device=x.device) if mask is None else mask.bool()
        visual_lengths = self._check_masks(inputs)
        features = [branch(*inputs[m], visual_lengths) if m == "visual" else branch(*inputs[m])
                    for m, branch in self.branches.items()]  # (B, branch_dim) each
        fused = torch.cat(features, dim=-1)  # (B, branch_dim * n_modalities)
        return torch.sigmoid(self.head(fused))  # (B, num_outputs)

    @staticmethod
    def _check_masks(inputs: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor | None:
        """Raises ValueError unless every mask is left-aligned (GRU packing and the TCN assume real
        steps come first); returns the visual branch's packing lengths on the host. One read from
        the device for all of it: on a GPU each read is a sync that stalls the queue of kernels."""
        parts = []
        for x, mask in inputs.values():
            aligned = torch.arange(x.shape[1], device=mask.device) < mask.sum(1, keepdim=True)
            parts.append((mask == aligned).all().long().reshape(1))
        if "visual" in inputs:
            parts.append(inputs["visual"][1].sum(1).clamp(min=1))
        host = torch.cat(parts).cpu()
        for m, ok in zip(inputs, host.tolist()):
            if not ok:
                raise ValueError(f"{m}_mask must be left-aligned: real steps first, padding after")
        return host[len(inputs):] if "visual" in inputs else None


# -- saving and loading --------------------------------------------------------------------------
MODEL_FORMAT = "eri-model/1"
# the first layer of each branch: its input width is the modality's feature size
INPUT_LAYERS = {"visual": "branches.visual.gru.weight_ih_l0", "audio": "branches.audio.tcn.blocks.0.conv1.weight",
                "text": "branches.text.conv.weight"}


def input_dims(state_dict: dict[str, torch.Tensor]) -> dict[str, int]:
    """{"<m>_dim": feature size} of each modality an ERIModel state dict has a branch for."""
    return {f"{m}_dim": state_dict[key].shape[1] for m, key in INPUT_LAYERS.items() if key in state_dict}


def save_eri_model(model: ERIModel, folder, extra: dict | None = None) -> Path:
    """folder/model.safetensors + folder/config.json (every ERIModelConfig field, then `extra`:
    emotion names, where the features came from, ...); `load_eri_model(folder)` rebuilds it."""
    folder = Path(folder)
    config = {"format": MODEL_FORMAT, **asdict(model.config)}
    clash = sorted(set(config) & set(extra or {}))
    if clash:
        raise ValueError(f"extra keys {clash} would replace the model's configuration")
    write_safetensors(folder / "model.safetensors", model.state_dict(), {"format": "pt"})
    write_json(folder / "config.json", {**config, **(extra or {})}, indent=2)
    return folder


def load_eri_model(folder) -> ERIModel:
    """The model `save_eri_model` wrote, in eval mode; keys of config.json that are not
    ERIModelConfig fields (the `extra` of the save) are ignored."""
    folder = Path(folder)
    path = folder / "config.json"
    if not path.is_file() or not (folder / "model.safetensors").is_file():
        raise UserError(f"{folder}: expected config.json and model.safetensors written by save_eri_model")
    config = json.loads(path.read_text())
    if config.get("format") != MODEL_FORMAT:
        raise UserError(f"{path}: format {config.get('format')!r}, expected {MODEL_FORMAT!r}")
    names = {f.name for f in fields(ERIModelConfig)}
    model = ERIModel(ERIModelConfig(**{k: v for k, v in config.items() if k in names}))
    model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=True)
    return model.eval()
