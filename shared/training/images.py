"""uint8 batches from the stream become normalised float tensors on the device, and back."""
from __future__ import annotations

import functools

import numpy as np
import torch


@functools.lru_cache(maxsize=16)
def _channel_stats(mean: tuple, std: tuple, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, C, 1, 1) mean and std on `device`, made once: building them from Python numbers every
    step would copy from pageable memory, a host-device sync per batch."""
    return (torch.tensor(mean, device=device).view(1, -1, 1, 1), torch.tensor(std, device=device).view(1, -1, 1, 1))


def normalize(images: torch.Tensor, mean, std, device) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float (B, 3, H, W) on `device`; the copy is asynchronous from
    pinned memory and the float conversion happens on the device, where it is cheap."""
    x = images.to(device, non_blocking=True).float().div_(255)
    m, s = _channel_stats(tuple(map(float, mean)), tuple(map(float, std)), torch.device(device))
    return x.sub_(m).div_(s)


def to_uint8_hwc(x: torch.Tensor, mean, std) -> list[np.ndarray]:
    """Normalised float (B, 3, H, W) -> list of HxWx3 uint8 arrays, for figures."""
    m = torch.tensor(mean, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, -1, 1, 1)
    pixels = (x.float() * s + m).clamp(0, 1).mul(255).round().to(torch.uint8)
    return [img.permute(1, 2, 0).cpu().numpy() for img in pixels]
