"""Reconstruction figures: original | masked | reconstruction | reconstruction with the
visible patches pasted back, the standard way to watch an MAE learn."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from shared.plots import image_grid
from shared.training.images import normalize, to_uint8_hwc


@torch.no_grad()
def reconstruction_figure(model, images: torch.Tensor, *, mean, std, mask_ratio: float, seed: int,
                          path: str | Path, title: str = "") -> np.ndarray:
    """`images` uint8 (N, 3, H, W). The mask comes from its own generator: figures never touch
    the training RNG."""
    device = next(model.parameters()).device
    x = normalize(images, mean, std, device)
    n, num_patches = x.shape[0], model.patch_embed.num_patches
    noise = torch.rand(n, num_patches, generator=torch.Generator(device=device).manual_seed(seed), device=device)
    was_training = model.training
    model.eval()
    _, pred, mask = model(x, mask_ratio=mask_ratio, noise=noise)  # pred (N, L, p*p*3), mask (N, L)
    model.train(was_training)
    pred = pred.float()
    if model.norm_pix_loss:  # predictions are per-patch normalised: undo with the true patch statistics
        target = model.patchify(x)
        pred = pred * (target.var(dim=-1, keepdim=True) + 1e-6) ** 0.5 + target.mean(dim=-1, keepdim=True)
    recon = model.unpatchify(pred)
    removed = model.unpatchify(mask.unsqueeze(-1).expand_as(pred).float())  # 1 on masked pixels
    masked = x * (1 - removed)  # masked patches at the mean colour
    pasted = x * (1 - removed) + recon * removed
    columns = [to_uint8_hwc(t, mean, std) for t in (x, masked, recon, pasted)]
    rows = [list(row) for row in zip(*columns)]
    titles = ["original", f"masked {mask_ratio:.0%}", "reconstruction", "reconstruction + visible"]
    return image_grid(rows, titles, path, title=title)
