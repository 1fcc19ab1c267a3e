"""Stage 3b: the time of one training epoch over the 15,806 Hume-Reaction training videos, from
the feature cache and end to end (face crops through the frozen encoder), as a ratio.

Synthetic inputs with the real shapes, in memory (disk excluded on both sides): visual K=32
frames x 768 (ViT-B/16 features) or 32 face crops of 224x224; audio up to 800 x 768 (HuBERT);
text up to 64 tokens x 1024 (DeBERTa). A step is the ERI model's forward, MSE, backward and AdamW
step, batch 16; end to end adds the frozen ViT-B/16 (random weights) over the batch's 512 crops.
A few batches are timed and the epoch (988 batches) extrapolated.

    python benchmarks/eri_epoch.py [--batches 3] [--e2e-batches 1] [--device auto]
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time

import timm
import torch
import torch.nn.functional as F

from eri_downstream.model import ERIModel, ERIModelConfig
from hardware import cores, cpu_model

TRAIN_VIDEOS, BATCH, K = 15_806, 16, 32


def batch_of(device, generator) -> dict:
    """One batch with the real shapes and variable audio / text lengths (padded, masked)."""
    lengths = {"audio": torch.randint(300, 801, (BATCH,), generator=generator),
               "text": torch.randint(1, 65, (BATCH,), generator=generator)}
    batch = {"visual": torch.randn(BATCH, K, 768, generator=generator),
             "visual_mask": torch.ones(BATCH, K, dtype=torch.bool), "labels": torch.rand(BATCH, 7, generator=generator)}
    for name, dim in (("audio", 768), ("text", 1024)):
        longest = int(lengths[name].max())
        batch[name] = torch.randn(BATCH, longest, dim, generator=generator)
        batch[f"{name}_mask"] = torch.arange(longest)[None] < lengths[name][:, None]
    return {k: v.to(device) for k, v in batch.items()}


def time_steps(model, optimizer, batches: list[dict], encoder=None) -> float:
    """Seconds per step, over the given batches (after one warm-up step)."""
    def step(batch):
        if encoder is not None:
            crops = torch.randint(0, 256, (BATCH * K, 3, 224, 224), dtype=torch.uint8, device=batch["labels"].device)
            with torch.no_grad(), torch.autocast(crops.device.type, dtype=torch.bfloat16,
                                                 enabled=crops.device.type == "cuda"):
                batch = {**batch, "visual": encoder(crops.float().div(255)).float().view(BATCH, K, -1)}
        loss = F.mse_loss(model(batch), batch["labels"])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if batch["labels"].device.type == "cuda":
            torch.cuda.synchronize()
    step(batches[0])
    start = time.perf_counter()
    for batch in batches:
        step(batch)
    return (time.perf_counter() - start) / len(batches)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", type=int, default=3, help="timed steps from the cache")
    p.add_argument("--e2e-batches", type=int, default=1, help="timed steps end to end")
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    g = torch.Generator().manual_seed(0)
    model = ERIModel(ERIModelConfig()).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    cache = time_steps(model, optimizer, [batch_of(device, g) for _ in range(args.batches)])
    encoder = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0).to(device).eval()
    e2e = time_steps(model, optimizer, [batch_of(device, g) for _ in range(args.e2e_batches)], encoder)
    steps = -(-TRAIN_VIDEOS // BATCH)
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else "none"
    print(f"machine: {cpu_model()}, {cores()}, GPU {gpu}; torch {torch.__version__}, timm {timm.__version__}")
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    print(f"from the cache: {cache:.3f} s/step -> epoch of {steps} steps: {cache * steps / 60:.1f} min")
    print(f"end to end:     {e2e:.3f} s/step -> epoch of {steps} steps: {e2e * steps / 60:.1f} min")
    print(f"ratio end to end / cache: {e2e / cache:.1f}x")


if __name__ == "__main__":
    main()
