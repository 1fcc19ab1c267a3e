"""Profile of one stage-1 pretraining step: where a step's time goes, op by op.

The step is the training loop's, on a real stream batch: the next batch from `FaceStream`
(face shards made by the real converter, MAE crops; `--workers 0` by default, so decoding runs
in this process and shows in the profile), the copy to the device, normalisation and masking
noise as in `pretrain_mae/main.py`, forward (bf16 autocast on CUDA), backward, the gradient norm
(`clip_grad_norm_`, as the loop computes it every step), AdamW, zero_grad. One warm-up step, then
`--steps` profiled steps. Prints the top ops by self CPU time (and self CUDA time on a GPU) and
the time per section, and writes a chrome trace to `--out`. On CUDA one more step runs under
`torch.cuda.set_sync_debug_mode("warn")` and every host-device sync is listed by source line.

    python benchmarks/profile_step.py [--model mae_vit_base_patch16] [--batch-size 8] [--steps 1]
                                      [--workers 0] [--output pixels|decoded|jpeg] [--fused-adamw]
                                      [--rows 20] [--out runs/profiles]
"""
from __future__ import annotations

import argparse
import contextlib
import tempfile
import warnings
from collections import Counter
from pathlib import Path

import torch
from torch.profiler import record_function

from common import header
from face_data import make_shards
from hardware import machine
from pretrain_mae.config import DataSection
from pretrain_mae.main import mask_noise
from pretrain_mae.model import build_mae
from profiling import UPDATE_SECTIONS, profiled_update, run_profiled
from shared.stream import Augment, FaceStream, StreamConfig, build_sources
from shared.training.config import OptimConfig
from shared.training.device_input import DeviceBatches
from shared.training.images import normalize
from shared.training.optim import adamw

SECTIONS = ["data: next batch", "data: to device", "forward", *UPDATE_SECTIONS]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="mae_vit_base_patch16")
    p.add_argument("--batch-size", type=int, help="default 8 on CPU, 256 on CUDA")
    p.add_argument("--steps", type=int, default=1, help="profiled steps (after one warm-up step)")
    p.add_argument("--workers", type=int, default=0, help="loader workers (0: decoding shows in the profile)")
    p.add_argument("--output", choices=("pixels", "decoded", "jpeg"), default="pixels", help="stream output")
    p.add_argument("--fused-adamw", action="store_true",
                   help="fused AdamW kernels on the CPU too (optim.fused=true; by default they are used on CUDA only)")
    p.add_argument("--rows", type=int, default=20, help="ops listed")
    p.add_argument("--out", type=Path, default=Path("runs/profiles"), help="folder for the chrome trace")
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    batch_size = args.batch_size or (256 if device.type == "cuda" else 8)
    torch.manual_seed(0)
    model = build_mae(args.model).to(device).train()
    size, num_patches = model.patch_embed.img_size[0], model.patch_embed.num_patches
    optimizer = adamw(model, OptimConfig(fused=True if args.fused_adamw else None), device)
    data_cfg = DataSection()
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" \
        else contextlib.nullcontext
    with tempfile.TemporaryDirectory(prefix="profile-step-") as tmp:
        shards = make_shards(Path(tmp), max(64, 2 * batch_size))
        stream = FaceStream(build_sources({"celeba": str(shards)}, pretraining=True), StreamConfig(
            mode="resampled", batch_size=batch_size, batches_per_epoch=args.steps + 2, num_workers=args.workers,
            pin_memory=device.type == "cuda", augment=Augment(kind="mae", size=size), output=args.output))
        batches = iter(DeviceBatches(stream, device))

        def step(i: int) -> None:
            with record_function("data: next batch"):
                batch = next(batches)
            with record_function("data: to device"):
                x = normalize(batch["image"], data_cfg.mean, data_cfg.std, device)
                noise = mask_noise(0, i, 0, batch_size, batch_size, num_patches, device)
            with record_function("forward"), autocast():
                loss = model(x, mask_ratio=0.75, noise=noise)[0]
            profiled_update(loss, model, optimizer)

        step(0)  # warm-up: allocations, first-call dispatch
        header(machine())
        print(f"profile: one stage-1 step x {args.steps}, {args.model}, batch {batch_size}, {device.type}"
              f"{' bf16 autocast' if device.type == 'cuda' else ' fp32'}, stream output={args.output}, "
              f"{args.workers} loader workers, torch threads {torch.get_num_threads()}, AdamW "
              f"{'fused' if any(g.get('fused') for g in optimizer.param_groups) else 'single-tensor'}")
        run_profiled(lambda: [step(i) for i in range(1, args.steps + 1)], out=args.out, name="profile_step",
                     description=f"stage-1 step, {args.model}, batch {batch_size}, {device.type}", rows=args.rows,
                     sections=SECTIONS)
        if device.type == "cuda":
            report_syncs(lambda: step(args.steps + 1))
    return 0


def report_syncs(fn) -> None:
    """Run `fn` under `torch.cuda.set_sync_debug_mode("warn")` and print every operation that
    made the host wait for the device, with the line of Python that issued it."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = Counter(f"{Path(w.filename).name}:{w.lineno}" for w in caught if "synchroniz" in str(w.message))
    print(f"\nhost-device syncs in one step (torch.cuda.set_sync_debug_mode): {sum(syncs.values())}")
    for where, count in syncs.most_common():
        print(f"  {count:3d} x {where}")


if __name__ == "__main__":
    raise SystemExit(main())
