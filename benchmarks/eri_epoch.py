"""Stage 3b: the time of one training epoch over the 15,806 Hume-Reaction training videos, from
the feature cache and end to end (face crops through the frozen encoder), as a ratio.

Synthetic inputs with the real shapes, in memory (disk excluded on both sides): visual K=32
frames x 768 (ViT-B/16 features) or 32 face crops of 224x224; audio up to 800 x 768 (HuBERT);
text up to 64 tokens x 1024 (DeBERTa). A step is the ERI model's forward, MSE, backward and AdamW
step, batch 16; end to end adds the frozen ViT-B/16 (random weights) over the batch's 512 crops.
A few batches are timed and the epoch (988 batches) extrapolated. `--e2e-crops N` (N < 512)
times the encoder on N crops only and scales it to 512, since it is linear in the crops: a
short run for the suite's `--quick`.

The device cache (`data.device_cache=true`, `eri_downstream/device_cache.py`): `--cache-videos`
synthetic videos with those shapes (visual 6 frames per second of audio) packed into device
memory, then one whole epoch as `eri_downstream/train.py` runs it: `DeviceEpochLoader` batches
(segment sampling, padding, masks made on the device), mixup, forward in bf16 autocast on CUDA,
MSE, backward, the gradient norm, the loop's finiteness check (its one host sync), AdamW, the
EMA. On CUDA the whole 15,806-video epoch is timed, target < 5 s; without CUDA a few of its
steps are timed (`--cache-batches`) and the row is NOT MEASURED.

    python benchmarks/eri_epoch.py [--batches 3] [--e2e-batches 1] [--e2e-crops 512] [--cache-videos N]
                                   [--cache-batches 3] [--device auto] [--quick]
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F

from common import header, not_measured, parse_sized_args, result
from eri_downstream.config import ERIConfig
from eri_downstream.data import FeatureDataset, mixup
from eri_downstream.dataset import EMOTIONS, VideoEntry
from eri_downstream.device_cache import DeviceEpochLoader
from eri_downstream.model import ERIModel, ERIModelConfig
from hardware import machine
from shared.stream.reading import derive_seed
from shared.training.optim import adamw

TRAIN_VIDEOS, BATCH, K = 15_806, 16, 32
QUICK = dict(batches=1, e2e_batches=1, e2e_crops=16, cache_videos=48, cache_batches=1)
CACHE_TARGET_SECONDS = 5.0
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


def cache_loader(videos: int, device: torch.device, seed: int = 0) -> DeviceEpochLoader:
    """`videos` synthetic training videos with the real shapes, packed on `device`."""
    g = torch.Generator().manual_seed(seed)
    audio = torch.randint(300, 801, (videos,), generator=g)
    lengths = {"visual": audio * 6 // 50, "audio": audio, "text": torch.randint(1, 65, (videos,), generator=g)}
    features = {}
    for modality, dim in (("visual", 768), ("audio", 768), ("text", 1024)):
        rows = torch.randn(int(lengths[modality].sum()), dim, dtype=torch.float16, device=device)
        features[modality] = list(rows.split(lengths[modality].tolist()))
    entries = [VideoEntry(f"{i:05d}", "train", torch.rand(len(EMOTIONS), generator=g).tolist(), "", "", None, None)
               for i in range(videos)]
    dataset = FeatureDataset(Path("synthetic"), entries, k=K, train=True, seed=seed)  # no store is read
    return DeviceEpochLoader(dataset, batch_size=BATCH, seed=seed, rank=0, world_size=1, device=device,
                             features=features)


def cache_epoch(videos: int, batches: int | None, device: torch.device) -> tuple[float, int]:
    """(seconds, steps) of one epoch from the device cache (or of its first `batches` steps),
    after a warm-up of a few steps, each step as eri_downstream/train.py's loss_fn and loop."""
    from timm.utils import ModelEmaV3
    loader = cache_loader(videos, device)
    cfg = ERIConfig()
    model = ERIModel(ERIModelConfig()).to(device).train()
    optimizer = adamw(model, cfg.optim, device)
    ema = ModelEmaV3(model, decay=cfg.ema_decay, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step(batch: dict, i: int) -> None:
        g = torch.Generator().manual_seed(derive_seed(0, "mixup", i) % 2**63)
        batch = mixup(batch, cfg.data.mixup, g)
        with autocast:
            loss = F.mse_loss(model(batch).float(), batch["labels"])
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), math.inf)
        if torch.isfinite(loss + norm).item():  # the loop's finiteness check
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.update(model, step=i)

    for i, batch in zip(range(5), loader):  # warm-up: allocations, cuDNN plans (epoch 0)
        step(batch, i)
    loader.load_state_dict({"epoch": 1, "batch": 0})
    sync(device)
    start, steps = time.perf_counter(), 0
    for batch in loader:
        step(batch, 5 + steps)
        steps += 1
        if batches is not None and steps == batches:
            break
    sync(device)
    return time.perf_counter() - start, steps


def report_cache(args, device: torch.device) -> None:
    videos = args.cache_videos or (TRAIN_VIDEOS if device.type == "cuda" else 64)
    batches = None if device.type == "cuda" else args.cache_batches
    seconds, steps = cache_epoch(videos, batches, device)
    epoch_steps = -(-TRAIN_VIDEOS // BATCH)
    epoch = seconds / steps * epoch_steps
    how = f"{steps} of {-(-videos // BATCH)} steps over {videos} videos timed" + \
        ("" if steps == epoch_steps else f", scaled to the {epoch_steps} steps of {TRAIN_VIDEOS}")
    print(f"device cache:   {seconds / steps * 1000:.1f} ms/step -> epoch of {epoch_steps} steps: {epoch:.1f} s ({how})")
    what = (f"one stage-3b training epoch from the device cache ({TRAIN_VIDEOS} videos, batch {BATCH}: mixup, "
            f"forward, MSE, backward, AdamW, EMA; {device.type})")
    if device.type != "cuda":
        not_measured("eri_epoch (device cache)", what, f"< {CACHE_TARGET_SECONDS:g} s",
                     f"no CUDA device; CPU: {epoch:.0f} s an epoch ({how})")
        return
    result("eri_epoch (device cache)", what, f"{epoch:.2f} s an epoch, {seconds / steps * 1000:.2f} ms/step",
           ratio=epoch, unit="s", target=f"< {CACHE_TARGET_SECONDS:g} s",
           verdict="PASS" if epoch < CACHE_TARGET_SECONDS else "FAIL", note=how)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", type=int, default=3, help="timed steps from the cache")
    p.add_argument("--e2e-batches", type=int, default=1, help="timed steps end to end")
    p.add_argument("--e2e-crops", type=int, default=BATCH * K,
                   help=f"crops through the encoder per timed step, scaled to {BATCH * K} (default: all)")
    p.add_argument("--cache-videos", type=int, help=f"videos in the device cache (default {TRAIN_VIDEOS} on CUDA, "
                                                     "64 on CPU)")
    p.add_argument("--cache-batches", type=int, default=3, help="without CUDA: timed steps of the cache epoch")
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
    report_cache(args, device)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
