"""Profile of one stage-3b training epoch from the feature cache: where an epoch's time goes.

A feature store with the real shapes (`eri_epoch.py`'s: visual 768-d at 6 frames/s, sampled to
K=32; audio 50 x 768 per second, 300-800 steps; text 1-64 tokens x 1024) is written to a
temporary folder for `--videos` training videos (default 64: 4 batches of 16, where the real
epoch has 988), then one epoch runs as `eri_downstream/train.py` runs it: `FeatureDataset` and
`EpochLoader` (`--workers 0` by default, so loading shows in the profile), batches to the
device, mixup, the ERI model's forward and MSE, backward, the gradient norm, AdamW, the EMA of
the weights. One warm-up step first. Prints the top ops by self CPU time (and self CUDA time on
a GPU) and the time per section, and writes a chrome trace to `--out`.

    python benchmarks/profile_eri_epoch.py [--videos 64] [--workers 0] [--rows 20] [--out runs/profiles]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.utils import ModelEmaV3
from torch.profiler import record_function

from common import header
from eri_downstream.data import FeatureDataset, collate, mixup
from eri_downstream.dataset import EMOTIONS, VideoEntry, write_table
from eri_downstream.loader import EpochLoader
from eri_downstream.model import ERIModel, ERIModelConfig
from eri_downstream.store import FeatureStore
from hardware import machine
from profiling import UPDATE_SECTIONS, profiled_update, run_profiled
from shared.training.config import OptimConfig
from shared.training.optim import adamw

BATCH, K = 16, 32
SECTIONS = ["data: next batch", "data: to device", "mixup", "forward + loss", *UPDATE_SECTIONS, "ema update"]


def write_store(root: Path, videos: int, seed: int = 0) -> list[VideoEntry]:
    """Training videos with the real feature shapes; lengths as `eri_epoch.py` draws them."""
    g = torch.Generator().manual_seed(seed)
    store, entries = FeatureStore(root), []
    for i in range(videos):
        file_id = f"{i:05d}"
        audio = int(torch.randint(300, 801, (), generator=g))
        text = int(torch.randint(1, 65, (), generator=g))
        frames = audio * 6 // 50  # 6 face frames per second of audio
        store.save("visual", file_id, torch.randn(frames, 768, generator=g), status="ok")
        store.save("audio", file_id, torch.randn(audio, 768, generator=g), status="ok")
        store.save("text", file_id, torch.randn(text, 1024, generator=g), status="ok")
        entries.append(VideoEntry(file_id, "train", torch.rand(len(EMOTIONS), generator=g).tolist(), "", "", None,
                                  None))
    write_table(entries, store.table)
    return entries


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--videos", type=int, default=64, help="training videos (batches of 16)")
    p.add_argument("--workers", type=int, default=0, help="loader workers (0: loading shows in the profile)")
    p.add_argument("--rows", type=int, default=20, help="ops listed")
    p.add_argument("--out", type=Path, default=Path("runs/profiles"), help="folder for the chrome trace")
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="profile-eri-") as tmp:
        entries = write_store(Path(tmp), args.videos)
        dataset = FeatureDataset(tmp, entries, k=K, train=True)
        loader = EpochLoader(dataset, batch_size=BATCH, collate_fn=collate, seed=0, rank=0, world_size=1,
                             num_workers=args.workers)
        model = ERIModel(ERIModelConfig(num_frames=K)).to(device).train()
        optimizer = adamw(model, OptimConfig(lr=1e-4, weight_decay=0.01, betas=(0.9, 0.999)), device)
        for group in optimizer.param_groups:
            group["lr"] = 1e-4
        ema = ModelEmaV3(model, decay=0.999, device=device)
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

        def epoch(steps: int | None = None) -> None:
            batches = iter(loader)
            for i in range(steps or len(loader)):
                with record_function("data: next batch"):
                    batch = next(batches)
                with record_function("data: to device"):
                    batch = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
                with record_function("mixup"):
                    batch = mixup(batch, 0.2, torch.Generator().manual_seed(i))
                with record_function("forward + loss"), autocast:
                    loss = F.mse_loss(model(batch).float(), batch["labels"])
                profiled_update(loss, model, optimizer)
                with record_function("ema update"):
                    ema.update(model, step=i)

        epoch(1)  # warm-up: allocations, first-call dispatch
        loader.load_state_dict({"epoch": 1, "batch": 0})  # then a whole epoch of its own
        header(machine())
        print(f"profile: one stage-3b epoch from the cache, {args.videos} videos = {len(loader)} steps of batch "
              f"{BATCH} (the real epoch: 988 steps), K={K}, {device.type}, {args.workers} loader workers, "
              f"torch threads {torch.get_num_threads()}")
        run_profiled(epoch, out=args.out, name="profile_eri_epoch", rows=args.rows, sections=SECTIONS,
                     description=f"stage-3b epoch from the cache, {args.videos} videos, {device.type}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
