"""Each speed lever of the MAE step alone and combined: images/s of our stage-1 step against the
eager step with the reference's decoder input (the code before the levers), one variant after
another on the same GPU, with the baseline timed first and last (drift check).

Variants (`--variants`, comma-separated names; `levers.py` says what each lever does):

    reference     eager, the reference decoder input (cat + gather + cat)      the baseline
    eager         eager, the scatter decoder input (the model's default)
    fast-norm     eager + timm's fast LayerNorm (bf16 under autocast)
    bf16-weights  eager + bf16 weights with float32 masters in AdamW
    graph         eager + bf16 weights, the whole step as one CUDA graph      (CUDA only)
    compile       torch.compile, default mode
    compile-norm  torch.compile + fast LayerNorm (the stage-1 fast configuration, mae_step.py --fast)
    overhead      torch.compile mode=reduce-overhead (CUDA graphs of forward and backward)
    autotune      torch.compile mode=max-autotune-no-cudagraphs (long compile: not in the default list)
    batch512      compile-norm at twice the batch
    batch1024     compile-norm at four times the batch (not in the default list)

Every variant starts from the same weights and sees the same images and masks. Prints a table
(images/s, the ratio to the baseline, peak memory on CUDA, the compile/warm-up time) and one
INFO row per variant for the suite. Without CUDA: NOT MEASURED, unless `--device cpu` (a check
of the code path on the tiny model in CPU bf16 autocast, compile with aot_eager; its ratios mean
nothing).

`--decoder-input` times only what the scatter replaces: the decoder input (cat + gather + cat +
add, or one scatter), forward and backward, at the model's sizes (the figure that does not
drown in the rest of the step on a noisy machine).

    python benchmarks/mae_levers.py [--variants LIST] [--model mae_vit_base_patch16] [--batch-size 256]
                                    [--steps 30] [--warmup 5] [--decoder-input] [--device auto|cuda|cpu]
                                    [--quick]
"""
from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

import torch

from common import header, not_measured, parse_device_args, result
from hardware import machine
from levers import Levers, build_step
from pretrain_mae.model import build_mae

COMPILED = Levers(compile_mode="default")
VARIANTS = {  # name -> (levers, batch multiplier)
    "reference": (Levers(decoder_scatter=False), 1),
    "eager": (Levers(), 1),
    "fast-norm": (Levers(fast_norm=True), 1),
    "bf16-weights": (Levers(bf16_weights=True), 1),
    "graph": (Levers(bf16_weights=True, cuda_graph=True), 1),
    "compile": (COMPILED, 1),
    "compile-norm": (replace(COMPILED, fast_norm=True), 1),
    "overhead": (Levers(compile_mode="reduce-overhead", fast_norm=True), 1),
    "autotune": (Levers(compile_mode="max-autotune-no-cudagraphs", fast_norm=True), 1),
    "batch512": (replace(COMPILED, fast_norm=True), 2),
    "batch1024": (replace(COMPILED, fast_norm=True), 4),
}
DEFAULT = "reference,eager,fast-norm,bf16-weights,graph,compile,compile-norm,overhead,batch512"
CPU_SMOKE = "reference,eager,fast-norm,bf16-weights,compile-norm"
QUICK = {"cuda": dict(steps=10, warmup=3), "cpu": dict(model="mae_vit_test", batch_size=4, steps=2, warmup=1)}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(name: str, args, device: torch.device) -> dict:
    """Build the variant from the seed's weights, warm it up (compiling it), time `args.steps` steps."""
    levers, times = VARIANTS[name]
    if device.type == "cpu" and levers.compile_mode is not None:
        levers = replace(levers, compile_backend="aot_eager")  # no C++ code generation on the smoke run
    batch = args.batch_size * times
    torch.manual_seed(args.seed)
    model = build_mae(args.model).to(device)
    step = build_step(model, levers, device, batch, "bf16")  # the levers are about bf16, on CPU too
    gen = torch.Generator().manual_seed(args.seed)
    size, patches = model.patch_embed.img_size[0], model.patch_embed.num_patches
    images = torch.randn(batch, 3, size, size, generator=gen).to(device)
    noises = torch.rand(args.warmup + args.steps, batch, patches, generator=gen).to(device)
    start = time.perf_counter()
    for i in range(args.warmup):
        step(images, noises[i])
    sync(device)
    warm = time.perf_counter() - start
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for i in range(args.warmup, args.warmup + args.steps):
        step(images, noises[i])
    sync(device)
    rate = args.steps * batch / (time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"name": name, "levers": levers.describe(), "batch": batch, "rate": rate, "peak": peak, "warm": warm}


def decoder_input(args, device: torch.device) -> None:
    """Forward + backward of the decoder input alone, the reference's against the scatter."""
    torch.manual_seed(args.seed)
    model = build_mae(args.model).to(device)
    n, length = args.batch_size, model.patch_embed.num_patches
    kept = int(length * 0.25)
    latent = torch.randn(n, 1 + kept, model.decoder_embed.out_features, device=device, requires_grad=True)
    ids_restore = torch.argsort(torch.argsort(torch.rand(n, length, device=device), 1), 1)
    ways = {"reference (cat + gather + cat + add)": model._decoder_input_gather, "scatter": model._decoder_input_scatter}
    times: dict[str, list[float]] = {name: [] for name in ways}
    for repeat in range(args.warmup + args.steps):  # interleaved: drift hits both alike
        for name, way in ways.items():
            sync(device)
            start = time.perf_counter()
            out = way(latent, ids_restore)
            out.backward(torch.ones_like(out))
            sync(device)
            if repeat >= args.warmup:
                times[name].append(time.perf_counter() - start)
    header(machine())
    print(f"decoder input: {args.model}, (N, 1+L, Dd) = {tuple(out.shape)}, float32, forward + backward, "
          f"{args.steps} interleaved repeats, median")
    for name, values in times.items():
        print(f"  {name:40s} {1000 * statistics.median(values):8.3f} ms")
    ratios = [a / b for a, b in zip(*times.values())]
    ratio = statistics.median(ratios)
    print(f"  reference / scatter: {ratio:.2f}x (per repeat {min(ratios):.2f}..{max(ratios):.2f})")
    result("mae_levers: decoder input", f"forward + backward of the decoder input, reference / scatter ({args.model}, "
           f"batch {n}, {device.type})", f"{1000 * statistics.median(times['scatter']):.2f} ms vs "
           f"{1000 * statistics.median(times[next(iter(ways))]):.2f} ms", ratio=ratio)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", help=f"comma-separated, from {', '.join(VARIANTS)} (default: {DEFAULT}; "
                                      f"on CPU: {CPU_SMOKE})")
    p.add_argument("--model", default="mae_vit_base_patch16")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=30, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation, graph capture)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--decoder-input", action="store_true", help="time only the decoder input, reference vs scatter")
    args = parse_device_args(p, argv, QUICK)
    names = [n.strip() for n in (args.variants or (DEFAULT if args.device == "cuda" else CPU_SMOKE)).split(",")]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    if args.device == "cpu" and any(VARIANTS[n][0].cuda_graph for n in names):
        p.error("the graph variant needs CUDA")
    args.variants = ["reference", *[n for n in names if n != "reference"]]  # the baseline always runs
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "none" or (args.device == "cuda" and not torch.cuda.is_available()):
        header(machine())
        not_measured("mae_levers", "MAE step img/s per speed lever vs the eager reference step", None, "no CUDA device")
        return 0
    device = torch.device(args.device)
    if args.decoder_input:
        decoder_input(args, device)
        return 0
    runs = [measure(name, args, device) for name in args.variants]
    runs.append({**measure("reference", args, device), "name": "reference (again: drift check)"})
    header(machine())
    print(f"step:    {args.model}, batch {args.batch_size} (x the variant's multiplier), "
          f"bf16 autocast, AdamW, zero_grad; {args.warmup} warm-up + "
          f"{args.steps} timed steps per variant, one variant after another")
    baseline = max(runs[0]["rate"], runs[-1]["rate"])
    print(f"\n{'variant':32s} {'batch':>5s} {'img/s':>9s} {'vs ref':>7s} {'peak GiB':>9s} {'warm-up s':>9s}  levers")
    for r in runs:
        peak = f"{r['peak']:9.2f}" if r["peak"] is not None else f"{'-':>9s}"
        print(f"{r['name']:32s} {r['batch']:5d} {r['rate']:9.1f} {r['rate'] / baseline:6.3f}x {peak} "
              f"{r['warm']:9.1f}  {r['levers']}")
    for r in runs[1:-1]:
        memory = f", {r['peak']:.1f} GiB" if r["peak"] is not None else ""
        result(f"mae_levers: {r['name']}", f"{r['levers']}, batch {r['batch']} ({args.model}, {device.type})",
               f"{r['rate']:.0f} vs {baseline:.0f} img/s{memory}", ratio=r["rate"] / baseline,
               note="vs eager with the reference decoder input" + ("" if device.type == "cuda" else
                                                                   "; CPU: a check of the code path"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
