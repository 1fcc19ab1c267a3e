"""Training-step images per second: our MaskedAutoencoder against transformers' ViTMAEForPreTraining.

Compared in one process, on the same device, with the same configuration and the same work:

(a) ours: `pretrain_mae.model.build_mae(name)` -- timm VisionTransformer encoder + MAE decoder;
(b) transformers: `ViTMAEForPreTraining` built from a `ViTMAEConfig` with the same widths,
    depths, heads, MLP ratio, patch and image size, layer_norm_eps 1e-6, qkv bias, the same
    norm_pix_loss, mask_ratio 0.75, no dropout, attn_implementation "sdpa" (ViTMAE declares
    `_supports_sdpa`), holding exactly our weights (copied, so both compute the same function;
    the script checks that the two losses agree on the first batch).

One step is forward + loss + backward + AdamW step + zero_grad, for both with the same optimizer
(`shared.training.optim.adamw`: timm's weight-decay groups, betas (0.9, 0.95), fused kernels on
CUDA), the same batch of images and, at step i, the same masking noise for both (both models
take `noise=`), so both keep exactly the same patches.

Timing: each model is warmed up, then the timed steps are split into repeats that are
interleaved (ours, transformers, ours, ...) so drift on a shared machine hits both alike; each
model's median repeat is reported, and the ratio is the median of the per-repeat ratios (each
repeat times both back to back), with its spread. The target is ours >= 1.0x.

On CUDA (the GPU step benchmark: ViT-B/16, bf16 autocast, batch 256, fused AdamW): peak memory
(torch.cuda.max_memory_allocated, this model's own share; target <= 40 GiB) and MFU (see
`mfu.py`: 56.3 GFLOP per image, dense bf16 peaks from the GPU name; `--peak-tflops` overrides).
`--device cuda` on a machine without CUDA prints NOT MEASURED and exits 0.

    python benchmarks/mae_step.py [--model NAME] [--img-size S] [--batch-size B] [--steps N]
                                  [--warmup W] [--repeats R] [--device auto|cpu|cuda]
                                  [--dtype auto|fp32|bf16] [--compile] [--peak-tflops T]
                                  [--hf-attn sdpa|eager] [--profile] [--quick]
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import statistics
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

import timm
import torch
import torch.nn as nn

from common import header, not_measured, paired_ratio, result, split, verdict
from hardware import machine
from mfu import H200_SUSTAINED_TFLOPS, MASK_RATIO, MFU_TARGET_PERCENT, flops_used_for_mfu, mae_flops_per_image, \
    mae_forward_flops, peak_tflops, target_peak_tflops
from pretrain_mae.hf_interop import to_transformers
from pretrain_mae.model import MaskedAutoencoder, build_mae
from shared.training.config import OptimConfig
from shared.training.optim import adamw

TARGET_RATIO = 1.0
PEAK_MEMORY_TARGET_GIB = 40.0

CPU_DEFAULTS = dict(model="mae_vit_tiny_patch16", batch_size=16, steps=56, warmup=3, repeats=14)
CUDA_DEFAULTS = dict(model="mae_vit_base_patch16", batch_size=256, steps=50, warmup=10, repeats=5)
QUICK = {"cpu": dict(batch_size=8, steps=4, warmup=1, repeats=2), "cuda": dict(steps=10, warmup=3, repeats=2)}
ROW = {"cpu": "mae_step (CPU)", "cuda": "mae_step (GPU)"}


# ----------------------------------------------------------------------------- transformers twin


# ----------------------------------------------------------------------------- the step


@dataclass
class Contender:
    name: str
    module: nn.Module  # the uncompiled model (parameters, memory accounting)
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (imgs, noise) -> loss
    optimizer: torch.optim.Optimizer
    rates: list[float] = field(default_factory=list)  # images/s, one per timed repeat
    peak_bytes: int | None = None  # CUDA: own params + optimizer state + the step's peak over that
    steps_done: int = 0

    @property
    def median(self) -> float:
        return statistics.median(self.rates)


def make_contenders(mae: MaskedAutoencoder, hf: nn.Module, args, device: torch.device) -> list[Contender]:
    ours_call: nn.Module | Callable = mae
    hf_call: nn.Module | Callable = hf
    if args.compile:
        ours_call, hf_call = torch.compile(mae), torch.compile(hf)

    def ours_loss(imgs, noise):
        return ours_call(imgs, mask_ratio=MASK_RATIO, noise=noise)[0]

    def hf_loss(imgs, noise):
        return hf_call(pixel_values=imgs, noise=noise).loss

    lr = OptimConfig().base_lr * args.batch_size / 256  # the MAE recipe's linear scaling
    contenders = []
    for name, module, fn in (("ours: pretrain_mae MaskedAutoencoder (timm ViT)", mae, ours_loss),
                             ("transformers: ViTMAEForPreTraining", hf, hf_loss)):
        opt = adamw(module, OptimConfig(), device)
        for group in opt.param_groups:
            group["lr"] = lr
        contenders.append(Contender(name, module, fn, opt))
    return contenders


def train_step(c: Contender, imgs: torch.Tensor, noise: torch.Tensor, autocast) -> torch.Tensor:
    with autocast():
        loss = c.loss_fn(imgs, noise)
    loss.backward()
    c.optimizer.step()
    c.optimizer.zero_grad(set_to_none=True)
    return loss


def resident_bytes(c: Contender) -> int:
    """Parameters, buffers and optimizer state that stay allocated between steps."""
    tensors = [*c.module.parameters(), *c.module.buffers()]
    tensors += [v for state in c.optimizer.state.values() for v in state.values() if torch.is_tensor(v)]
    return sum(t.numel() * t.element_size() for t in tensors if t.device.type == "cuda")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_steps(c: Contender, n: int, imgs: torch.Tensor, noises: torch.Tensor, autocast) -> None:
    for _ in range(n):
        train_step(c, imgs, noises[c.steps_done % len(noises)], autocast)
        c.steps_done += 1


def measure(contenders: list[Contender], imgs, noises, autocast, args, device) -> None:
    """Warm up each, record CUDA peaks, then interleave the timed repeats."""
    batch = imgs.shape[0]
    for c in contenders:
        run_steps(c, args.warmup, imgs, noises, autocast)
    sync(device)
    if device.type == "cuda":  # one more step each, alone, for its memory peak
        for c in contenders:
            others = sum(resident_bytes(o) for o in contenders if o is not c)
            torch.cuda.reset_peak_memory_stats(device)
            run_steps(c, 1, imgs, noises, autocast)
            sync(device)
            c.peak_bytes = torch.cuda.max_memory_allocated(device) - others
    per_repeat = split(args.steps, args.repeats)
    for steps in per_repeat:
        for c in contenders:
            sync(device)
            start = time.perf_counter()
            run_steps(c, steps, imgs, noises, autocast)
            sync(device)
            c.rates.append(steps * batch / (time.perf_counter() - start))


def check_same_function(contenders: list[Contender], imgs, noise, autocast) -> float:
    """|loss_ours - loss_transformers| on the first batch, before any step."""
    with torch.no_grad():
        losses = []
        for c in contenders:
            with autocast():
                losses.append(c.loss_fn(imgs, noise).float().item())
    return abs(losses[0] - losses[1])


def profile(contenders: list[Contender], imgs, noises, autocast, device, rows: int = 18) -> None:
    from torch.profiler import ProfilerActivity, profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    for c in contenders:
        run_steps(c, 1, imgs, noises, autocast)
        sync(device)
        with torch_profile(activities=activities) as prof:
            run_steps(c, 2, imgs, noises, autocast)
            sync(device)
        print()
        print(f"profile, 2 steps: {c.name}")
        print(prof.key_averages().table(sort_by=key, row_limit=rows, max_name_column_width=48))


# ----------------------------------------------------------------------------- report


def attention_of_ours(mae: MaskedAutoencoder) -> str:
    fused = mae.blocks[0].attn.fused_attn
    return ("timm Attention, one fused qkv Linear -> "
            + ("F.scaled_dot_product_attention" if fused else "eager softmax(QK^T)V"))


def attention_of_theirs(hf) -> str:
    impls = {hf.vit.config._attn_implementation, hf.decoder.config._attn_implementation}
    impl = "/".join(sorted(str(i) for i in impls))
    what = "F.scaled_dot_product_attention" if impl == "sdpa" else impl
    return f"ViTMAEAttention, separate q/k/v Linears -> attn_implementation={impl!r} ({what})"


def report(contenders, args, device, dtype_name, mae, hf, loss_gap, flops_info) -> None:
    import transformers

    ours, theirs = contenders
    c = mae.mae_config
    length = mae.patch_embed.num_patches
    kept = int(length * (1 - MASK_RATIO))
    header(machine(transformers=transformers.__version__, timm=timm.__version__))
    print(f"model:   {args.model}, img {c['img_size']} px, patch {c['patch_size']}, encoder {c['embed_dim']} x "
          f"{c['depth']} ({c['num_heads']} heads), decoder {c['decoder_embed_dim']} x {c['decoder_depth']} "
          f"({c['decoder_num_heads']} heads), mlp {c['mlp_ratio']:g}, norm_pix_loss {mae.norm_pix_loss}, "
          f"mask {MASK_RATIO} ({kept} of {length} patches kept); "
          f"{sum(p.numel() for p in mae.parameters() if p.requires_grad) / 1e6:.2f} M trainable params")
    print(f"attn:    ours: {attention_of_ours(mae)}")
    print(f"         transformers: {attention_of_theirs(hf)}")
    fused = any(g.get("fused") for g in ours.optimizer.param_groups)
    print(f"step:    device {device.type}, {dtype_name}"
          f"{' autocast' if dtype_name == 'bf16' else ''}, torch.compile {'on' if args.compile else 'off'}, "
          f"torch threads {torch.get_num_threads()}; forward + backward + AdamW "
          f"({'fused' if fused else 'not fused'}, wd 0.05, betas (0.9, 0.95)) + zero_grad; batch {args.batch_size}, "
          f"same images and same per-step noise for both")
    print(f"timing:  warm-up {args.warmup} steps each, {args.steps} timed steps each in {args.repeats} interleaved "
          f"repeats ({'/'.join(map(str, split(args.steps, args.repeats)))} steps), median repeat")
    print(f"check:   |loss ours - loss transformers| on the first batch = {loss_gap:.2e}")
    print()
    print(f"{'model':50s} {'img/s':>9s} {'min..max':>19s} {'ms/step':>8s}")
    for x in contenders:
        ms = 1000 * args.batch_size / x.median
        print(f"{x.name:50s} {x.median:9.2f} {min(x.rates):9.2f}..{max(x.rates):<9.2f} {ms:8.1f}")
    ratio, low, high = paired_ratio(ours.rates, theirs.rates)
    passed = verdict(ratio, TARGET_RATIO)
    print()
    print(f"ratio ours/transformers: {ratio:.3f}x (median of the {args.repeats} per-repeat ratios, {low:.3f}..{high:.3f}; "
          f"ratio of the median rates {ours.median / theirs.median:.3f})   target >= {TARGET_RATIO:g}x: {passed}")
    print()
    forward = mae_forward_flops(mae, MASK_RATIO)
    analytic = mae_flops_per_image(mae, MASK_RATIO)
    parts = ", ".join(f"{k} {v / 1e9:.4g}" for k, v in forward.items())
    print(f"FLOPs:   mae_flops_per_image = {analytic / 1e9:.4g} GFLOP per image (forward {analytic / 3e9:.4g} x 3; "
          f"forward GFLOP: {parts})")
    flops, flops_text = flops_info
    print(f"         used for MFU: {flops_text}")
    what = (f"training step img/s, ours vs transformers ViTMAE ({args.model}, batch {args.batch_size}, {dtype_name}"
            f"{', compiled' if args.compile else ''})")
    result(ROW[device.type], what, f"{ours.median:.2f} vs {theirs.median:.2f} img/s", ratio=ratio,
           target=f"≥ {TARGET_RATIO:g}x", verdict=passed,
           note=f"median of {args.repeats} per-repeat ratios, {low:.3f}..{high:.3f}")
    if device.type != "cuda":
        achieved = [x.median * flops / 1e12 for x in contenders]
        print(f"         achieved: ours {achieved[0] * 1e3:.1f} GFLOP/s, transformers {achieved[1] * 1e3:.1f} GFLOP/s "
              f"(no MFU on CPU)")
        return
    name = torch.cuda.get_device_name(device)
    peak, peak_text = peak_tflops(name, args.peak_tflops)
    print(f"GPU:     {name}; peak used: {peak_text}")
    for x in contenders:
        achieved = x.median * flops / 1e12
        mfu = f"MFU {100 * achieved / peak:.1f} %" if peak else "MFU n/a"
        extra = ""
        if peak and "H200" in name and args.peak_tflops is None:
            extra = f" ({100 * achieved / H200_SUSTAINED_TFLOPS:.1f} % of the ~{H200_SUSTAINED_TFLOPS:g} sustained)"
        print(f"  {x.name:48s} {achieved:7.1f} TFLOP/s  {mfu}{extra}  "
              f"peak memory {x.peak_bytes / 2**30:.2f} GiB")
    print("  (peak memory: torch.cuda.max_memory_allocated over one step, minus the other model's resident "
          "params + optimizer state)")
    achieved = ours.median * flops / 1e12
    basis, basis_text = target_peak_tflops(name, args.peak_tflops)
    if basis:
        mfu = 100 * achieved / basis
        needed = MFU_TARGET_PERCENT / 100 * basis * 1e12 / flops
        print(f"MFU target: >= {MFU_TARGET_PERCENT:g} % of {basis_text} = {needed:.0f} img/s; ours {mfu:.1f} %: "
              f"{verdict(mfu, MFU_TARGET_PERCENT)}")
        result("mae_step (GPU) MFU", f"ours, {flops_text} x img/s / {basis_text}",
               f"{achieved:.1f} TFLOP/s, {ours.median:.0f} img/s on {name}", ratio=mfu, unit="%",
               target=f"≥ {MFU_TARGET_PERCENT:g} % ({needed:.0f} img/s)", verdict=verdict(mfu, MFU_TARGET_PERCENT),
               note=f"{100 * achieved / peak:.1f} % of {peak_text}" if peak else "")
    gib = ours.peak_bytes / 2**30
    result("mae_step (GPU) peak memory", f"ours, batch {args.batch_size}, max_memory_allocated over one step",
           f"{gib:.2f} GiB on {name}", ratio=gib, unit="GiB", target=f"≤ {PEAK_MEMORY_TARGET_GIB:g} GiB",
           verdict=verdict(gib, PEAK_MEMORY_TARGET_GIB, higher_is_better=False))


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a pretrain_mae/model_configs name (default: mae_vit_tiny_patch16 on CPU, "
                                        "mae_vit_base_patch16 on CUDA)")
    parser.add_argument("--img-size", type=int, help="override the model's img_size (default: the model's, 224)")
    parser.add_argument("--batch-size", type=int, help="default 16 on CPU, 256 on CUDA")
    parser.add_argument("--steps", type=int, help="timed steps per model, split into the repeats "
                                                  "(default 56 on CPU, 50 on CUDA)")
    parser.add_argument("--warmup", type=int, help="untimed steps per model first (default 3 on CPU, 10 on CUDA)")
    parser.add_argument("--repeats", type=int, help="interleaved timed repeats (default 14 on CPU, 5 on CUDA)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--dtype", choices=("auto", "fp32", "bf16"), default="auto",
                        help="auto: bf16 autocast on CUDA, fp32 on CPU")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models")
    parser.add_argument("--peak-tflops", type=float, help="peak bf16 TFLOP/s for MFU (default: from the GPU name)")
    parser.add_argument("--hf-attn", choices=("sdpa", "eager"), default="sdpa",
                        help="transformers' attn_implementation (default %(default)s)")
    parser.add_argument("--profile", action="store_true", help="also print a torch.profiler table of 2 steps each")
    parser.add_argument("--quick", action="store_true", help="a short smoke run: fewer steps (and batch 8 on CPU)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    defaults = {**(CUDA_DEFAULTS if args.device == "cuda" else CPU_DEFAULTS), **(QUICK[args.device] if args.quick else {})}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.dtype == "auto":
        args.dtype = "bf16" if args.device == "cuda" else "fp32"
    if args.batch_size < 1 or args.steps < 1 or args.warmup < 0 or not 1 <= args.repeats <= args.steps:
        parser.error("need --batch-size >= 1, --steps >= 1, --warmup >= 0, 1 <= --repeats <= --steps")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        header(machine())
        config = f"{args.model}, batch {args.batch_size}, {args.dtype}"
        for name, what, target in (
                (ROW["cuda"], f"training step img/s, ours vs transformers ViTMAE ({config})", f"≥ {TARGET_RATIO:g}x"),
                ("mae_step (GPU) MFU", f"ours, 56.3 GFLOP/img x img/s / bf16 peak ({config})",
                 f"≥ {MFU_TARGET_PERCENT:g} %"),
                ("mae_step (GPU) peak memory", f"ours, max_memory_allocated over one step ({config})",
                 f"≤ {PEAK_MEMORY_TARGET_GIB:g} GiB")):
            not_measured(name, what, target, "no CUDA device")
        return 0
    if importlib.util.find_spec("transformers") is None:
        raise SystemExit("transformers is not installed: pip install -e '.[eri]' (or pip install transformers)")
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    overrides = {"img_size": args.img_size} if args.img_size else {}
    mae = build_mae(args.model, **overrides)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = to_transformers(mae, args.hf_attn)
    mae.to(device).train()
    hf.to(device).train()

    size = mae.mae_config["img_size"]
    gen = torch.Generator().manual_seed(args.seed)
    imgs = torch.randn(args.batch_size, 3, size, size, generator=gen).to(device)
    n_noise = args.warmup + args.steps + 4  # a fresh mask for every step either model takes
    noises = torch.rand(n_noise, args.batch_size, mae.patch_embed.num_patches, generator=gen).to(device)

    if args.dtype == "bf16":
        def autocast():
            return torch.autocast(device.type, dtype=torch.bfloat16)
    else:
        autocast = contextlib.nullcontext

    contenders = make_contenders(mae, hf, args, device)
    loss_gap = check_same_function(contenders, imgs, noises[0], autocast)
    flops_info = flops_used_for_mfu(mae, MASK_RATIO)
    measure(contenders, imgs, noises, autocast, args, device)
    report(contenders, args, device, args.dtype, mae, hf, loss_gap, flops_info)
    if args.profile:
        profile(contenders, imgs, noises, autocast, device)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
