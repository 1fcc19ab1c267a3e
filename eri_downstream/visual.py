"""Face crops through the frozen encoder: the one computation behind the visual cache
(`extract.py visual`) and end-to-end training (`train.py data.end_to_end`), so the two agree."""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from shared.encoders import load_frozen_encoder
from shared.training.images import normalize

log = logging.getLogger("eri_downstream")


class FrameEncoder:
    def __init__(self, folder, device):
        self.encoder, self.info = load_frozen_encoder(folder)
        log.info("frozen encoder %s", self.info.summary())
        self.encoder.to(device)
        self.device, self.size = device, self.info.input_size[-1]

    @torch.no_grad()
    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, S, S) face crops -> float32 (N, D) pooled features (bf16 on GPU)."""
        x = normalize(frames, self.info.mean, self.info.std, self.device)
        if x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bicubic", antialias=True)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            return self.encoder(x).float()
