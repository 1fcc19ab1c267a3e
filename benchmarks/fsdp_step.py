"""Why FSDP on one GPU trains slower than the plain run: the MAE step under each FSDP setting.

The first GPU run measured stage 1 with `launch/accelerate/fsdp_vit.yaml --num_processes 1` at
about 0.55x the plain bf16 run. On one process FSDP has nothing to shard, so every difference is
overhead, and this benchmark takes the config apart, one setting at a time, against the plain
step (the same model, batch, masks and fused AdamW), in one process:

    plain          bf16 autocast, no FSDP (the reference)
    accelerate     what the config builds: FULL_SHARD, each timm Block a unit, use_orig_params,
                   MixedPrecision(param, reduce, buffer = bf16) *and* autocast, limit_all_gathers
    no_shard       the same with NO_SHARD: no all-gather / free of each unit's parameters
    no_mp_policy   FULL_SHARD without FSDP's MixedPrecision: fp32 parameters, autocast only
    no_autocast    FULL_SHARD with MixedPrecision but without autocast
    no_limit       FULL_SHARD, limit_all_gathers off (no CPU waits on the rate limiter)

Each row is that variant's images/s over the plain step's (paired, interleaved repeats, as in
mae_step.py). The variant that closes the gap names the cause. On a machine without CUDA every
row is NOT MEASURED, unless `--device cpu` asks for a CPU smoke run (gloo, fp32, tiny model).

    python benchmarks/fsdp_step.py [--model NAME] [--batch-size B] [--steps N] [--repeats R]
                                   [--device cuda|cpu] [--quick]
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import os
import time

import torch

from common import header, not_measured, paired_ratio, result, split
from hardware import machine
from pretrain_mae.model import build_mae
from shared.training.config import OptimConfig
from shared.training.optim import adamw

VARIANTS = ("accelerate", "no_shard", "no_mp_policy", "no_autocast", "no_limit")
ROW = "fsdp_step (1 process)"
WHAT = "FSDP variant vs plain step, same model, batch and masks"


def wrap(model, variant: str, device):
    """`model` under FSDP as the variant builds it (see the module docstring)."""
    from timm.models.vision_transformer import Block
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp import MixedPrecision, ShardingStrategy
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy
    bf16 = device.type == "cuda"
    policy = None if variant == "no_mp_policy" or not bf16 else MixedPrecision(
        param_dtype=torch.bfloat16, reduce_dtype=torch.bfloat16, buffer_dtype=torch.bfloat16)
    return FSDP(model, auto_wrap_policy=functools.partial(transformer_auto_wrap_policy, transformer_layer_cls={Block}),
                sharding_strategy=ShardingStrategy.NO_SHARD if variant == "no_shard" else ShardingStrategy.FULL_SHARD,
                mixed_precision=policy, use_orig_params=True, limit_all_gathers=variant != "no_limit",
                device_id=device)


def contender(variant: str, args, device):
    """(step function, its optimizer) for `variant` or the plain step."""
    torch.manual_seed(0)
    model = build_mae(args.model).to(device)
    if variant != "plain":
        model = wrap(model, variant, device)
    optimizer = adamw(model, OptimConfig(), device)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16)
                if device.type == "cuda" and variant != "no_autocast" else contextlib.nullcontext())
    return model, optimizer, autocast


def timed(step, steps: int, device) -> float:
    """images/s of `steps` calls of step()."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - start)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--quick", action="store_true", help="a smoke run: 4 steps, 2 repeats")
    args = p.parse_args(argv)
    header(machine())
    if args.device == "cuda" and not torch.cuda.is_available():
        for variant in VARIANTS:
            not_measured(f"{ROW}: {variant}", WHAT, None, "no CUDA device")
        return 0
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    args.model = args.model or ("mae_vit_base_patch16" if cuda else "mae_vit_test")
    args.batch_size = args.batch_size or (256 if cuda else 4)
    if args.quick:
        args.steps, args.warmup, args.repeats = 4, 1, 2
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29517")
    torch.distributed.init_process_group("nccl" if cuda else "gloo", rank=0, world_size=1)
    size = build_mae(args.model).patch_embed.img_size[0]
    num_patches = (size // build_mae(args.model).patch_embed.patch_size[0]) ** 2
    g = torch.Generator(device=device).manual_seed(0)
    images = torch.randn(args.batch_size, 3, size, size, device=device, generator=g)
    noise = torch.rand(args.batch_size, num_patches, device=device, generator=g)

    runs = {}
    for variant in ("plain", *VARIANTS):
        model, optimizer, autocast = contender(variant, args, device)

        def step(model=model, optimizer=optimizer, autocast=autocast):
            with autocast:
                loss = model(images, mask_ratio=0.75, noise=noise)[0]
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        runs[variant] = step
        timed(step, args.warmup, device)
    rates = {v: [] for v in runs}
    for steps in split(args.steps, args.repeats):  # interleaved: drift hits every variant alike
        for variant, step in runs.items():
            rates[variant].append(timed(step, steps, device) * args.batch_size)
    print(f"plain: {sorted(rates['plain'])[len(rates['plain']) // 2]:.0f} img/s ({args.model}, batch {args.batch_size}, "
          f"{'bf16 autocast' if cuda else 'fp32'})")
    for variant in VARIANTS:
        ratio, low, high = paired_ratio(rates[variant], rates["plain"])
        result(f"{ROW}: {variant}", WHAT, f"{sorted(rates[variant])[len(rates[variant]) // 2]:.0f} vs "
               f"{sorted(rates['plain'])[len(rates['plain']) // 2]:.0f} img/s (repeats {low:.2f}-{high:.2f}x)",
               ratio=ratio, note=f"{args.model}, batch {args.batch_size}, {device.type}")
    torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
