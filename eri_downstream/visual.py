"""Face crops through the frozen encoder: the one computation behind the visual cache
(`extract.py visual`) and end-to-end training (`train.py data.end_to_end`), so the two agree.

The crops are prepared as the encoder's folder says it was evaluated (its pretrained_cfg:
centre crop share, input size, interpolation, mean, std; shared.eval_transform), never assumed.
"""
from __future__ import annotations

import logging

import torch

from shared.encoders import load_frozen_encoder
from shared.eval_transform import EvalTransform

log = logging.getLogger("eri_downstream")


class FrameEncoder:
    def __init__(self, folder, device):
        self.encoder, self.info = load_frozen_encoder(folder)
        self.preprocess = EvalTransform.from_pretrained_cfg(self.encoder.encoder.pretrained_cfg, str(folder))
        log.info("frozen encoder %s; frames: %s", self.info.summary(), self.preprocess.describe())
        self.encoder.to(device)
        self.device, self.size = device, self.info.input_size[-1]

    @torch.no_grad()
    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, S, S) face crops -> float32 (N, D) pooled features (bf16 on GPU)."""
        x = self.preprocess(frames, self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            return self.encoder(x).float()
