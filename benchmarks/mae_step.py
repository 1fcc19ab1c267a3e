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
interleaved (ours, transformers, ours, ...) so drift on a shared machine hits both alike; the
median repeat is reported, with the per-repeat ratio spread. The target is ours >= 1.0x.

On CUDA: bf16 autocast by default, peak memory (torch.cuda.max_memory_allocated, this model's
own share), and MFU = achieved FLOP/s / peak bf16 FLOP/s. The FLOPs per image are 56.3 GFLOP
for ViT-B/16 at 224 with 75 % masking (forward + backward; the project's reference notes say ~56)
and `mae_flops_per_image` (matmuls only, forward x 3) for any other configuration. Peak bf16
dense TFLOP/s: A100 312, H100 SXM 989, H100 PCIe 756, H200 989 (the reference notes give
about 790 measured on an H200); `--peak-tflops` overrides.

    python benchmarks/mae_step.py [--model NAME] [--img-size S] [--batch-size B] [--steps N]
                                  [--warmup W] [--repeats R] [--device auto|cpu|cuda]
                                  [--dtype auto|fp32|bf16] [--compile] [--peak-tflops T]
                                  [--hf-attn sdpa|eager] [--profile]
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import platform
import shlex
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

import timm
import torch
import torch.nn as nn

from hardware import cores, cpu_model
from pretrain_mae.hf_interop import to_transformers
from pretrain_mae.model import MaskedAutoencoder, build_mae
from shared.training.config import OptimConfig
from shared.training.optim import adamw

TARGET_RATIO = 1.0
MASK_RATIO = 0.75
# ViT-B/16, 224 px, 75 % masking (49 of 196 patches kept), decoder 512 x 8: forward + backward
REFERENCE_GFLOP_VIT_B16 = 56.3
VIT_B16_224 = dict(img_size=224, patch_size=16, in_chans=3, embed_dim=768, depth=12, num_heads=12,
                   decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16, mlp_ratio=4.0)
# dense bf16 tensor-core peaks (datasheet); searched in order in torch.cuda.get_device_name()
PEAK_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H200", 989.0), ("H100", 989.0), ("A100", 312.0))
H200_MEASURED_TFLOPS = 790.0  # the project's reference notes: what an H200 is measured to sustain

CPU_DEFAULTS = dict(model="mae_vit_tiny_patch16", batch_size=16, steps=56, warmup=3, repeats=14)
CUDA_DEFAULTS = dict(model="mae_vit_base_patch16", batch_size=256, steps=50, warmup=10, repeats=5)


# ----------------------------------------------------------------------------- FLOPs


def mae_forward_flops(model: MaskedAutoencoder, mask_ratio: float = MASK_RATIO) -> dict[str, float]:
    """Matmul FLOPs (2 per multiply-add) of one image's forward pass, by part.

    Encoder on the 1 + K visible tokens (K = int(L * (1 - mask_ratio))), decoder on all 1 + L.
    Per block on T tokens of width D, hidden H = mlp_ratio * D: qkv 3D^2 + proj D^2 + MLP 2DH
    multiply-adds per token, and QK^T + AV 2 T^2 D for the attention. The patch embedding runs on
    all L patches (before masking). Norms, GELU, softmax and the loss are not counted.
    """
    c = model.mae_config
    p, ch = c["patch_size"], c["in_chans"]
    length = (c["img_size"] // p) ** 2
    kept = int(length * (1 - mask_ratio))

    def blocks(depth: int, tokens: int, width: int) -> tuple[float, float]:
        hidden = int(width * c["mlp_ratio"])
        linear = 2 * tokens * (4 * width * width + 2 * width * hidden)
        attention = 2 * 2 * tokens * tokens * width
        return depth * linear, depth * attention

    enc_lin, enc_att = blocks(c["depth"], 1 + kept, c["embed_dim"])
    dec_lin, dec_att = blocks(c["decoder_depth"], 1 + length, c["decoder_embed_dim"])
    return {
        "patch embedding": 2 * length * p * p * ch * c["embed_dim"],
        "encoder linears": enc_lin,
        "encoder attention": enc_att,
        "decoder_embed": 2 * (1 + kept) * c["embed_dim"] * c["decoder_embed_dim"],
        "decoder linears": dec_lin,
        "decoder attention": dec_att,
        "decoder_pred": 2 * (1 + length) * c["decoder_embed_dim"] * p * p * ch,
    }


def mae_flops_per_image(model: MaskedAutoencoder, mask_ratio: float = MASK_RATIO) -> float:
    """FLOPs of one image's training step: matmul FLOPs of the forward pass x 3 (backward = 2x)."""
    return 3 * sum(mae_forward_flops(model, mask_ratio).values())


def flops_used_for_mfu(model: MaskedAutoencoder, mask_ratio: float) -> tuple[float, str]:
    c = model.mae_config
    if mask_ratio == MASK_RATIO and all(c[k] == v for k, v in VIT_B16_224.items()):
        return REFERENCE_GFLOP_VIT_B16 * 1e9, f"{REFERENCE_GFLOP_VIT_B16} GFLOP (ViT-B/16 constant)"
    flops = mae_flops_per_image(model, mask_ratio)
    return flops, f"{flops / 1e9:.4g} GFLOP (mae_flops_per_image)"


def peak_tflops(gpu_name: str, override: float | None) -> tuple[float | None, str]:
    if override is not None:
        return override, f"{override:g} TFLOP/s (--peak-tflops)"
    for key, value in PEAK_BF16_TFLOPS:
        if key.lower() in gpu_name.lower():
            return value, f"{value:g} TFLOP/s ({key} bf16 dense, datasheet)"
    return None, "unknown GPU: pass --peak-tflops for MFU"


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


def split(steps: int, repeats: int) -> list[int]:
    base, extra = divmod(steps, repeats)
    return [base + (i < extra) for i in range(repeats)]


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


def machine(device: torch.device) -> str:
    import transformers

    text = (f"{cpu_model()}, {cores()}; Python {platform.python_version()}, "
            f"torch {torch.__version__}, transformers {transformers.__version__}, timm {timm.__version__}")
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(device if device.type == "cuda" else 0)
        text += (f"; GPU {props.name} ({props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}, "
                 f"{torch.cuda.device_count()} visible)")
    else:
        text += "; no GPU"
    return text


def report(contenders, args, device, dtype_name, mae, hf, loss_gap, flops_info) -> None:
    ours, theirs = contenders
    c = mae.mae_config
    length = mae.patch_embed.num_patches
    kept = int(length * (1 - MASK_RATIO))
    print(f"machine: {machine(device)}")
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
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
    ratio = ours.median / theirs.median
    ratios = [a / b for a, b in zip(ours.rates, theirs.rates)]
    verdict = "PASS" if ratio >= TARGET_RATIO else "BELOW"
    print()
    print(f"ratio ours/transformers: {ratio:.3f}x (per repeat: median {statistics.median(ratios):.3f}, "
          f"{min(ratios):.3f}..{max(ratios):.3f})   target >= {TARGET_RATIO:g}x: {verdict}")
    print()
    forward = mae_forward_flops(mae, MASK_RATIO)
    analytic = mae_flops_per_image(mae, MASK_RATIO)
    parts = ", ".join(f"{k} {v / 1e9:.4g}" for k, v in forward.items())
    print(f"FLOPs:   mae_flops_per_image = {analytic / 1e9:.4g} GFLOP per image (forward {analytic / 3e9:.4g} x 3; "
          f"forward GFLOP: {parts})")
    flops, flops_text = flops_info
    print(f"         used for MFU: {flops_text}")
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
            extra = f" ({100 * achieved / H200_MEASURED_TFLOPS:.1f} % of the ~{H200_MEASURED_TFLOPS:g} measured)"
        print(f"  {x.name:48s} {achieved:7.1f} TFLOP/s  {mfu}{extra}  "
              f"peak memory {x.peak_bytes / 2**30:.2f} GiB")
    print("  (peak memory: torch.cuda.max_memory_allocated over one step, minus the other model's resident "
          "params + optimizer state)")


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
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch.cuda.is_available() is False")
    for key, value in (CUDA_DEFAULTS if args.device == "cuda" else CPU_DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.dtype == "auto":
        args.dtype = "bf16" if args.device == "cuda" else "fp32"
    if args.batch_size < 1 or args.steps < 1 or args.warmup < 0 or not 1 <= args.repeats <= args.steps:
        parser.error("need --batch-size >= 1, --steps >= 1, --warmup >= 0, 1 <= --repeats <= --steps")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
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
