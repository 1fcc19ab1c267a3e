"""Stage 3b: the time of one training epoch over the 15,806 Hume-Reaction training videos, from
the feature cache and end to end (face crops through the frozen encoder), as a ratio.

Synthetic inputs with the real shapes, in memory (disk excluded on both sides): visual K=32
frames x 768 (ViT-B/16 features) or 32 face crops of 224x224; audio up to 800 x 768 (HuBERT);
text up to 64 tokens x 1024 (DeBERTa). A step is the ERI model's forward, MSE, backward and AdamW
step, batch 16; end to end adds the frozen ViT-B/16 (random weights) over the batch's 512 crops.
A few batches are timed and the epoch (988 batches) extrapolated. `--e2e-crops N` (N < 512)
times the encoder on N crops only and scales it to 512, since it is linear in the crops: a
short run for the suite's `--quick`.

    python benchmarks/eri_epoch.py [--batches 3] [--e2e-batches 1] [--e2e-crops 512] [--device auto] [--quick]
"""
from __future__ import annotations

import argparse
import time

import timm
import torch
import torch.nn.functional as F

from common import header, parse_sized_args, result
from eri_downstream.model import ERIModel, ERIModelConfig
from hardware import machine

TRAIN_VIDEOS, BATCH, K = 15_806, 16, 32
QUICK = dict(batches=1, e2e_batches=1, e2e_crops=16)
# the cache exists to be faster than running the encoder in every step: it must be, by any margin
TARGET_RATIO = 1.0


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


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def encode(encoder, crops: int, device: torch.device) -> torch.Tensor:
    """Features of `crops` random uint8 face crops through the frozen encoder (bf16 on CUDA)."""
    images = torch.randint(0, 256, (crops, 3, 224, 224), dtype=torch.uint8, device=device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        return encoder(images.float().div(255)).float()


def time_steps(model, optimizer, batches: list[dict], device: torch.device, encoder=None, crops: int = BATCH * K
               ) -> float:
    """Seconds per step, over the given batches (after one warm-up step). With an encoder, the
    visual features come from `crops` crops (repeated to fill the batch's B x K frames)."""
    def step(batch):
        if encoder is not None:
            features = encode(encoder, crops, device)
            batch = {**batch, "visual": features.repeat(-(-BATCH * K // crops), 1)[:BATCH * K].view(BATCH, K, -1)}
        loss = F.mse_loss(model(batch), batch["labels"])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
    step(batches[0])
    start = time.perf_counter()
    for batch in batches:
        step(batch)
    return (time.perf_counter() - start) / len(batches)


def encoder_seconds(encoder, crops: int, device: torch.device, repeats: int = 2) -> float:
    encode(encoder, crops, device)
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        encode(encoder, crops, device)
    sync(device)
    return (time.perf_counter() - start) / repeats


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", type=int, default=3, help="timed steps from the cache")
    p.add_argument("--e2e-batches", type=int, default=1, help="timed steps end to end")
    p.add_argument("--e2e-crops", type=int, default=BATCH * K,
                   help=f"crops through the encoder per timed step, scaled to {BATCH * K} (default: all)")
    p.add_argument("--device", default="auto")
    args = parse_sized_args(p, argv, QUICK)
    if not 1 <= args.e2e_crops <= BATCH * K:
        p.error(f"--e2e-crops must be in 1..{BATCH * K}")
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    g = torch.Generator().manual_seed(0)
    model = ERIModel(ERIModelConfig()).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    cache = time_steps(model, optimizer, [batch_of(device, g) for _ in range(args.batches)], device)
    encoder = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0).to(device).eval()
    if args.e2e_crops == BATCH * K:
        e2e = time_steps(model, optimizer, [batch_of(device, g) for _ in range(args.e2e_batches)], device, encoder)
        how = f"{args.e2e_batches} end-to-end steps timed"
    else:  # the encoder is linear in the crops: time it on fewer and scale up
        e2e = cache + encoder_seconds(encoder, args.e2e_crops, device) * BATCH * K / args.e2e_crops
        how = f"encoder timed on {args.e2e_crops} crops, scaled to {BATCH * K}"
    steps = -(-TRAIN_VIDEOS // BATCH)
    header(machine(timm=timm.__version__))
    print(f"from the cache: {cache:.3f} s/step -> epoch of {steps} steps: {cache * steps / 60:.1f} min")
    print(f"end to end:     {e2e:.3f} s/step -> epoch of {steps} steps: {e2e * steps / 60:.1f} min ({how})")
    ratio = e2e / cache
    print(f"ratio end to end / cache: {ratio:.1f}x")
    result("eri_epoch", f"stage-3b epoch ({TRAIN_VIDEOS} videos, batch {BATCH}) end to end vs from the cache "
           f"({device.type})", f"{e2e * steps / 60:.1f} vs {cache * steps / 60:.1f} min", ratio=ratio,
           target=f"> {TARGET_RATIO:g}x", verdict="PASS" if ratio > TARGET_RATIO else "FAIL",
           note=f"{args.batches} cache steps; {how}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
