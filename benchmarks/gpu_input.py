"""The GPU input path: stage-1 images/s through the whole pipeline (shards -> stream -> device ->
MAE step) against the same step on synthetic data already on the device. Target >= 0.95 at the
fast step (`--fast`: compiled, fast LayerNorm, as `mae_step.py --fast`), for the output stage 1
reads on CUDA by default (`data.input_path=auto`: `shared.training.device_input.AUTO_OUTPUT`).

Both sides run stage 1's step as `pretrain_mae/main.py` does it: the uint8 batch normalised on
the device, the masking noise of the micro-step, forward in bf16 autocast, backward, AdamW
(fused on CUDA), zero_grad; no logging in between, so no host sync inside the timed steps
(`--sync-every-step` adds one `.item()` per step, as a loop that checks every loss would).

(a) synthetic: one uint8 batch resident on the device, reused every step: the step alone;
(b) pipeline, for each `--outputs` entry: `FaceStream` (resampled, MAE crops, `--workers`
    loader workers, pinned memory) with `output=` pixels (decoded and augmented by the
    workers), decoded (workers decode; crop, resize, flip on the GPU) or jpeg (workers read the
    JPEG header and draw the crop; nvJPEG decodes on the GPU), through
    `shared.training.device_input.DeviceBatches` (a side CUDA stream); an entry with "+thread"
    (e.g. jpeg+thread) prepares the device batches in a thread (`data.prepare_in_thread`).

The data are synthetic faces converted by the real converter (256 px JPEG q95, see
`face_data.py`); they are smaller and quicker to decode than photos, which flatters (b) with
`output=pixels` most: `--kind photo` times the harder set (noise-textured, 30-55 KB JPEGs).
Without CUDA the script prints NOT MEASURED and exits 0; `--device cpu` runs the same code on
the CPU as a check of the code path (its ratio means nothing).

    python benchmarks/gpu_input.py [--model mae_vit_base_patch16] [--batch-size 256] [--steps 50]
                                   [--warmup 10] [--images 4096] [--workers N] [--kind faces|photo]
                                   [--outputs pixels,jpeg,jpeg+thread,decoded] [--compile] [--fast]
                                   [--sync-every-step] [--device auto|cuda|cpu] [--workdir DIR] [--quick]
"""
from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from pathlib import Path

import torch
import torchvision

from common import header, not_measured, parse_device_args, result, verdict
from face_data import KINDS, make_shards
from hardware import machine
from levers import Levers, build_step
from pretrain_mae.config import DataSection
from pretrain_mae.main import mask_noise
from pretrain_mae.model import build_mae
from shared.stream import Augment, FaceStream, StreamConfig, build_sources
from shared.stream.decode import OUTPUTS
from shared.stream.synthetic import SyntheticStream
from shared.training.device_input import AUTO_OUTPUT, DeviceBatches
from shared.training.images import normalize

TARGET_RATIO = 0.95
WHAT = "stage-1 img/s, shards -> stream -> device -> MAE step, vs the same step on on-device data"
QUICK = {"cuda": dict(steps=20, warmup=5, images=1024),
         "cpu": dict(model="mae_vit_test", batch_size=8, steps=2, warmup=1, images=64, workers=1)}


class Step:
    """Stage 1's training step on uint8 batches, as pretrain_mae/main.py's loss_fn + the loop run it."""

    def __init__(self, args, device: torch.device):
        torch.manual_seed(0)
        model = build_mae(args.model).to(device)
        self.size, self.num_patches = model.patch_embed.img_size[0], model.patch_embed.num_patches
        levers = Levers(compile_mode="default" if args.compile else None, fast_norm=args.fast,
                        compile_backend="inductor" if device.type == "cuda" else "aot_eager")
        self.levers = levers.describe()
        self.step = build_step(model, levers, device, args.batch_size, "bf16" if device.type == "cuda" else "fp32")
        self.device, self.sync_every_step = device, args.sync_every_step
        self.mean, self.std = DataSection().mean, DataSection().std
        self.micro_step = 0

    def __call__(self, images: torch.Tensor) -> None:
        x = normalize(images, self.mean, self.std, self.device)
        noise = mask_noise(0, self.micro_step, 0, x.shape[0], x.shape[0], self.num_patches, self.device)
        loss = self.step(x, noise)
        self.micro_step += 1
        if self.sync_every_step:
            loss.item()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(step: Step, batches, warmup: int, steps: int, batch_size: int) -> tuple[float, float]:
    """(images/s over the timed steps, fraction of that time the host waited for a batch)."""
    it = iter(batches)
    for _ in range(warmup):
        step(next(it)["image"])
    sync(step.device)
    waited, start = 0.0, time.perf_counter()
    for _ in range(steps):
        t = time.perf_counter()
        batch = next(it)
        waited += time.perf_counter() - t
        step(batch["image"])
    sync(step.device)
    elapsed = time.perf_counter() - start
    return steps * batch_size / elapsed, waited / elapsed


def pipeline(shards: Path, args, entry: str, size: int, device: torch.device) -> DeviceBatches:
    """The input path of an `--outputs` entry: "<output>" or "<output>+thread"."""
    output, _, thread = entry.partition("+")
    sources = build_sources({"celeba": str(shards)}, pretraining=True)
    config = StreamConfig(mode="resampled", batch_size=args.batch_size, batches_per_epoch=args.warmup + args.steps + 2,
                          num_workers=args.workers, pin_memory=device.type == "cuda", shuffle_buffer=1000,
                          augment=Augment(kind="mae", size=size), output=output)
    return DeviceBatches(FaceStream(sources, config), device, thread=thread == "thread")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="mae_vit_base_patch16")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=50, help="timed steps per side")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps first (worker start-up, cuDNN/cuBLAS)")
    p.add_argument("--images", type=int, default=4096, help="synthetic faces in the shards (read resampled)")
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    p.add_argument("--workers", type=int, default=max(1, usable - 2),
                   help="loader workers (default: usable cores - 2, leaving the training process its core)")
    p.add_argument("--outputs", default="pixels,jpeg,jpeg+thread,decoded",
                   help="stream outputs to time, comma-separated; +thread: batches prepared in a thread; the target "
                        f"is on output={AUTO_OUTPUT['cuda']} (stage 1's default on CUDA)")
    p.add_argument("--kind", choices=KINDS, default="faces", help="faces (~12.5 KB JPEGs) or photo (30-55 KB)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (both sides)")
    p.add_argument("--fast", action="store_true", help="the fast step (compiled, fast LayerNorm; both sides)")
    p.add_argument("--sync-every-step", action="store_true", help="one loss.item() per step (both sides)")
    p.add_argument("--workdir", type=Path, help="keep the shards here (default: a temporary folder)")
    args = parse_device_args(p, argv, QUICK)
    args.outputs = [o.strip() for o in args.outputs.split(",") if o.strip()]
    if not args.outputs or {o.partition("+")[0] for o in args.outputs} - set(OUTPUTS) or \
            {o.partition("+")[2] for o in args.outputs} - {"", "thread"}:
        p.error("--outputs takes pixels, decoded, jpeg, each optionally with +thread")
    args.compile = args.compile or args.fast
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "none" or (args.device == "cuda" and not torch.cuda.is_available()):
        header(machine())
        name = "gpu_input" + (", photo" if args.kind == "photo" else "") + f" ({AUTO_OUTPUT['cuda']})"
        not_measured(name, f"{WHAT}{', fast step' if args.fast else ''}", f"≥ {TARGET_RATIO:g}x", "no CUDA device")
        return 0
    device = torch.device(args.device)
    with contextlib.ExitStack() as stack:
        workdir = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gpu-input-")))
        shards = make_shards(workdir, args.images, args.kind)
        step = Step(args, device)
        synthetic = SyntheticStream(batch_size=args.batch_size, image_size=step.size, batches_per_epoch=1)
        resident = next(iter(synthetic))["image"].to(device)
        on_device, _ = run(step, iter(lambda: {"image": resident}, None), args.warmup, args.steps, args.batch_size)
        rates = {}
        for output in args.outputs:
            rates[output] = run(step, pipeline(shards, args, output, step.size, device), args.warmup, args.steps,
                                args.batch_size)
        after, _ = run(step, iter(lambda: {"image": resident}, None), 2, args.steps, args.batch_size)
    header(machine(torchvision=torchvision.__version__))
    print(f"step:    {args.model}, batch {args.batch_size}, {'bf16 autocast' if device.type == 'cuda' else 'fp32'}, "
          f"{step.levers}, {'one host sync per step' if args.sync_every_step else 'no host sync in the timed steps'}; "
          f"warm-up {args.warmup}, {args.steps} timed steps per side")
    data = "synthetic faces" + (", noise-textured (photo-sized)" if args.kind == "photo" else "")
    print(f"data:    {args.images} {data} (256 px JPEG q95), {args.workers} loader workers, pinned memory")
    print()
    print(f"{'side':60s} {'img/s':>9s} {'ratio':>7s} {'data wait':>10s}")
    print(f"{'on-device synthetic batch (before the pipelines)':60s} {on_device:9.1f}")
    print(f"{'on-device synthetic batch (after, drift check)':60s} {after:9.1f}")
    reference = max(on_device, after)  # the step alone at its best: the stricter comparison
    for entry, (rate, wait) in rates.items():
        print(f"{'pipeline, stream output=' + entry:60s} {rate:9.1f} {rate / reference:6.3f}x {100 * wait:9.1f}%")
    step_kind = "fast step" if args.fast else "compiled step" if args.compile else "eager step"
    for entry, (rate, wait) in rates.items():
        ratio = rate / reference
        gated = entry == AUTO_OUTPUT["cuda"] and device.type == "cuda"
        name = "gpu_input" + (", photo" if args.kind == "photo" else "") + f" ({entry})"
        result(name, f"{WHAT}; stream output={entry}, {args.workers} workers, {step_kind}",
               f"{rate:.0f} vs {reference:.0f} img/s ({args.model}, batch {args.batch_size}, {device.type})",
               ratio=ratio, target=f"≥ {TARGET_RATIO:g}x" if gated else None,
               verdict=verdict(ratio, TARGET_RATIO) if gated else "INFO",
               note=(f"host waited {100 * wait:.0f}% of the time" if device.type == "cuda"
                     else "CPU: a check of the code path; the target is for CUDA"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
