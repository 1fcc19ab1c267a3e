"""An encoder's evaluation preprocessing, as its timm folder records it, applied to face crops.

Stage 2 evaluates on the stored face crops cut to a centred square (`crop_pct` of the side) and
resized to the encoder's input with its interpolation; its export writes those values into the
folder's `pretrained_cfg` (shared/export.py). Whoever uses the encoder downstream (stage 3's
frame encoder) reads them back here, through timm's own `resolve_data_config` (so a folder that
says nothing gets timm's defaults, as `timm.create_model('local-dir:...')` users get), and
applies the same geometry as stage 2's validation (shared.stream.decode.centre_crop_box), on
the device.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from shared.errors import UserError
from shared.stream.decode import INTERPOLATIONS, centre_crop_box
from shared.training.images import normalize


@dataclass(frozen=True)
class EvalTransform:
    input_size: tuple[int, int, int]  # (C, H, W) the encoder takes
    crop_pct: float  # share of the crop's shorter side kept, centred, before resizing
    interpolation: str  # "bicubic" | "bilinear" (antialiased)
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def from_pretrained_cfg(cls, pretrained_cfg: dict, source: str = "the encoder") -> "EvalTransform":
        """timm's resolution of a pretrained_cfg (input_size, crop_pct, interpolation, mean, std;
        timm's defaults for missing ones). Raises UserError for values this code cannot apply."""
        from timm.data import resolve_data_config

        cfg = resolve_data_config(pretrained_cfg=dict(pretrained_cfg))
        if cfg["interpolation"] not in INTERPOLATIONS:
            raise UserError(f"{source}: interpolation {cfg['interpolation']!r}; supported: {', '.join(INTERPOLATIONS)}")
        if cfg.get("crop_mode", "center") != "center":
            raise UserError(f"{source}: crop_mode {cfg['crop_mode']!r}; only 'center' is supported")
        if not 0 < float(cfg["crop_pct"]) <= 1:
            raise UserError(f"{source}: crop_pct {cfg['crop_pct']} is not in (0, 1]")
        return cls(tuple(int(v) for v in cfg["input_size"]), float(cfg["crop_pct"]), cfg["interpolation"],
                   tuple(float(v) for v in cfg["mean"]), tuple(float(v) for v in cfg["std"]))

    def describe(self) -> str:
        """One line, also the visual cache's record of how its frames were prepared."""
        h, w = self.input_size[1:]
        return (f"centre {self.crop_pct:g} -> {h}x{w} {self.interpolation}, "
                f"mean {list(self.mean)}, std {list(self.std)}")

    def pixels(self, frames: torch.Tensor, device) -> torch.Tensor:
        """uint8 (N, 3, S, S') crops -> uint8-valued float (N, 3, H, W) on `device`: the centred
        crop_pct square resized with antialiasing, within a level of stage 2's validation inputs.

        Stage 2 resizes uint8 images on the CPU, which PyTorch does in two passes (width, then
        height), rounding and clamping to 8 bits after each; one float pass differs by up to 5
        levels at edges, so the two passes are repeated here, on any device."""
        height, width = frames.shape[-2:]
        left, top, side, _ = centre_crop_box(width, height, self.crop_pct)
        x = frames[..., top:top + side, left:left + side].to(device, non_blocking=True).float()
        out_h, out_w = self.input_size[1:]
        for size in ((side, out_w), (out_h, out_w)):
            if tuple(x.shape[-2:]) != size:
                x = F.interpolate(x, size=size, mode=self.interpolation, antialias=True).round_().clamp_(0, 255)
        return x

    def __call__(self, frames: torch.Tensor, device) -> torch.Tensor:
        """uint8 (N, 3, S, S') face crops -> normalised float (N, 3, H, W) on `device`."""
        return normalize(self.pixels(frames, device), self.mean, self.std, device)
