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

Levers (`levers.py`; ours only unless said): `--compile` / `--compile-mode M` (both models),
`--fast-norm`, `--bf16-weights`, `--cuda-graph`, `--reference-decoder` (the reference's cat +
gather decoder input instead of the scatter). `--fast` is the configuration a stage-1 run can use
(both compiled, ours with the fast LayerNorm) against the issue's targets: ours >= 1.5x
transformers compiled and >= 7,000 images/s (50 % of the H200's ~790 TFLOP/s).

    python benchmarks/mae_step.py [--model NAME] [--img-size S] [--batch-size B] [--steps N]
                                  [--warmup W] [--repeats R] [--device auto|cpu|cuda]
                                  [--dtype auto|fp32|bf16] [--compile] [--peak-tflops T]
                                  [--hf-attn sdpa|eager] [--profile] [--quick] [--fast]
                                  [--compile-mode M] [--compile-backend B] [--fast-norm]
                                  [--bf16-weights] [--cuda-graph] [--reference-decoder]
"""
from __future__ import annotations

import argparse
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
from levers import Levers, autocast_for, build_step
from mfu import H200_SUSTAINED_TFLOPS, MASK_RATIO, MFU_TARGET_PERCENT, flops_used_for_mfu, mae_flops_per_image, \
    mae_forward_flops, peak_tflops, target_peak_tflops
from pretrain_mae.hf_interop import to_transformers
from pretrain_mae.model import MaskedAutoencoder, build_mae

TARGET_RATIO = 1.0
PEAK_MEMORY_TARGET_GIB = 40.0

CPU_DEFAULTS = dict(model="mae_vit_tiny_patch16", batch_size=16, steps=56, warmup=3, repeats=14)
CUDA_DEFAULTS = dict(model="mae_vit_base_patch16", batch_size=256, steps=50, warmup=10, repeats=5)
QUICK = {"cpu": dict(batch_size=8, steps=4, warmup=1, repeats=2), "cuda": dict(steps=10, warmup=3, repeats=2)}
ROW = {"cpu": "mae_step (CPU)", "cuda": "mae_step (GPU)"}
# --fast: ours with the levers a stage-1 run can turn on, against transformers compiled
FAST_ROW, FAST_RATIO, FAST_IMAGES_PER_S = "mae_step fast (GPU)", 1.5, 7000.0


# ----------------------------------------------------------------------------- the step


@dataclass
class Contender:
    name: str
    module: nn.Module  # the uncompiled model (parameters, memory accounting)
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (imgs, noise) -> loss, in autocast
    step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # one training step
    optimizer: object
    rates: list[float] = field(default_factory=list)  # images/s, one per timed repeat
    peak_bytes: int | None = None  # CUDA: own params + optimizer state + the step's peak over that
    steps_done: int = 0

    @property
    def median(self) -> float:
        return statistics.median(self.rates)


def our_levers(args) -> Levers:
    return Levers(decoder_scatter=not args.reference_decoder, fast_norm=args.fast_norm,
                  bf16_weights=args.bf16_weights, compile_mode=args.compile_mode,
                  compile_backend=args.compile_backend, cuda_graph=args.cuda_graph)


def make_contenders(mae: MaskedAutoencoder, hf: nn.Module, args, device: torch.device) -> list[Contender]:
    """Ours with its levers; transformers eager or compiled (the same mode), with the same AdamW."""
    ours = build_step(mae, our_levers(args), device, args.batch_size, args.dtype)
    theirs = build_step(hf, Levers(compile_mode=args.compile_mode, compile_backend=args.compile_backend), device,
                        args.batch_size, args.dtype)
    autocast = autocast_for(device, args.dtype)

    def hf_loss(imgs, noise):
        with autocast():
            return theirs.forward(pixel_values=imgs, noise=noise).loss

    theirs.loss = hf_loss  # transformers' forward takes pixel_values and returns an output object
    return [Contender("ours: pretrain_mae MaskedAutoencoder (timm ViT)", mae, ours.loss, ours, ours.optimizer),
            Contender("transformers: ViTMAEForPreTraining", hf, hf_loss, theirs, theirs.optimizer)]


def resident_bytes(c: Contender) -> int:
    """Parameters, buffers and optimizer state that stay allocated between steps."""
    tensors = [*c.module.parameters(), *c.module.buffers()]
    tensors += [v for state in c.optimizer.state.values() for v in state.values() if torch.is_tensor(v)]
    tensors += getattr(c.optimizer, "masters", [])  # bf16 weights: their float32 masters
    return sum(t.numel() * t.element_size() for t in tensors if t.device.type == "cuda")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_steps(c: Contender, n: int, imgs: torch.Tensor, noises: torch.Tensor) -> None:
    for _ in range(n):
        c.step(imgs, noises[c.steps_done % len(noises)])
        c.steps_done += 1


def measure(contenders: list[Contender], imgs, noises, args, device) -> None:
    """Warm up each, record CUDA peaks, then interleave the timed repeats."""
    batch = imgs.shape[0]
    for c in contenders:
        run_steps(c, args.warmup, imgs, noises)
    sync(device)
    if device.type == "cuda":  # one more step each, alone, for its memory peak
        for c in contenders:
            others = sum(resident_bytes(o) for o in contenders if o is not c)
            torch.cuda.reset_peak_memory_stats(device)
            run_steps(c, 1, imgs, noises)
            sync(device)
            c.peak_bytes = torch.cuda.max_memory_allocated(device) - others
    per_repeat = split(args.steps, args.repeats)
    for steps in per_repeat:
        for c in contenders:
            sync(device)
            start = time.perf_counter()
            run_steps(c, steps, imgs, noises)
            sync(device)
            c.rates.append(steps * batch / (time.perf_counter() - start))


def check_same_function(contenders: list[Contender], imgs, noise) -> float:
    """|loss_ours - loss_transformers| on the first batch, before any step."""
    with torch.no_grad():
        losses = [c.loss_fn(imgs, noise).float().item() for c in contenders]
    return abs(losses[0] - losses[1])


def profile(contenders: list[Contender], imgs, noises, device, rows: int = 18) -> None:
    from torch.profiler import ProfilerActivity, profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    for c in contenders:
        run_steps(c, 1, imgs, noises)
        sync(device)
        with torch_profile(activities=activities) as prof:
            run_steps(c, 2, imgs, noises)
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


def rows(args, device_type: str) -> dict[str, tuple[str, str, float]]:
    """The summary rows of this run: kind -> (row name, target in words, target value)."""
    if args.fast:
        return {"ratio": (FAST_ROW, f"≥ {FAST_RATIO:g}x", FAST_RATIO),
                "rate": (f"{FAST_ROW} img/s", f"≥ {FAST_IMAGES_PER_S:,.0f} img/s", FAST_IMAGES_PER_S),
                "memory": (f"{FAST_ROW} peak memory", f"≤ {PEAK_MEMORY_TARGET_GIB:g} GiB", PEAK_MEMORY_TARGET_GIB)}
    return {"ratio": (ROW[device_type], f"≥ {TARGET_RATIO:g}x", TARGET_RATIO),
            "mfu": ("mae_step (GPU) MFU", f"≥ {MFU_TARGET_PERCENT:g} %", MFU_TARGET_PERCENT),
            "memory": ("mae_step (GPU) peak memory", f"≤ {PEAK_MEMORY_TARGET_GIB:g} GiB", PEAK_MEMORY_TARGET_GIB)}


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
          f"{' autocast' if dtype_name == 'bf16' else ''}, torch threads {torch.get_num_threads()}; forward + "
          f"backward + AdamW ({'fused' if fused else 'not fused'}, wd 0.05, betas (0.9, 0.95)) + zero_grad; batch "
          f"{args.batch_size}, same images and same per-step noise for both")
    mode = theirs.step.levers.compile_mode
    print(f"levers:  ours: {ours.step.levers.describe()}; transformers: "
          f"{f'torch.compile mode={mode}' if mode else 'eager'}")
    print(f"timing:  warm-up {args.warmup} steps each, {args.steps} timed steps each in {args.repeats} interleaved "
          f"repeats ({'/'.join(map(str, split(args.steps, args.repeats)))} steps), median repeat")
    print(f"check:   |loss ours - loss transformers| on the first batch = {loss_gap:.2e}")
    print()
    print(f"{'model':50s} {'img/s':>9s} {'min..max':>19s} {'ms/step':>8s}")
    for x in contenders:
        ms = 1000 * args.batch_size / x.median
        print(f"{x.name:50s} {x.median:9.2f} {min(x.rates):9.2f}..{max(x.rates):<9.2f} {ms:8.1f}")
    targets = rows(args, device.type)
    name, target_text, target = targets["ratio"]
    ratio, low, high = paired_ratio(ours.rates, theirs.rates)
    passed = verdict(ratio, target) if device.type == "cuda" or not args.fast else "INFO"  # CPU: the code path only
    print()
    print(f"ratio ours/transformers: {ratio:.3f}x (median of the {args.repeats} per-repeat ratios, {low:.3f}..{high:.3f}; "
          f"ratio of the median rates {ours.median / theirs.median:.3f})   target {target_text}: {passed}")
    print()
    forward = mae_forward_flops(mae, MASK_RATIO)
    analytic = mae_flops_per_image(mae, MASK_RATIO)
    parts = ", ".join(f"{k} {v / 1e9:.4g}" for k, v in forward.items())
    print(f"FLOPs:   mae_flops_per_image = {analytic / 1e9:.4g} GFLOP per image (forward {analytic / 3e9:.4g} x 3; "
          f"forward GFLOP: {parts})")
    flops, flops_text = flops_info
    print(f"         used for MFU: {flops_text}")
    compiled = f", compiled{'' if args.compile_mode == 'default' else ' ' + str(args.compile_mode)}" \
        if args.compile_mode else ""
    what = (f"training step img/s, ours vs transformers ViTMAE ({args.model}, batch {args.batch_size}, {dtype_name}"
            f"{compiled}{'; ours: ' + ours.step.levers.describe() if args.fast else ''})")
    result(name, what, f"{ours.median:.2f} vs {theirs.median:.2f} img/s", ratio=ratio, target=target_text,
           verdict=passed, note=f"median of {args.repeats} per-repeat ratios, {low:.3f}..{high:.3f}")
    if device.type != "cuda":
        achieved = [x.median * flops / 1e12 for x in contenders]
        print(f"         achieved: ours {achieved[0] * 1e3:.1f} GFLOP/s, transformers {achieved[1] * 1e3:.1f} GFLOP/s "
              f"(no MFU on CPU)")
        return
    report_gpu(contenders, args, device, flops_info, targets)


def report_gpu(contenders, args, device, flops_info, targets) -> None:
    """MFU and peak memory, and their summary rows."""
    ours = contenders[0]
    flops, flops_text = flops_info
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
    if "rate" in targets:
        row, text, target = targets["rate"]
        mfu = f"{100 * achieved / basis:.1f} % of {basis_text}" if basis else ""
        result(row, f"ours, images/s of the fast step ({args.model}, batch {args.batch_size})",
               f"{ours.median:.0f} img/s on {name}", ratio=ours.median, unit="img/s", target=text,
               verdict=verdict(ours.median, target), note=mfu)
    if basis and "mfu" in targets:
        row, text, target = targets["mfu"]
        mfu = 100 * achieved / basis
        needed = target / 100 * basis * 1e12 / flops
        print(f"MFU target: {text} of {basis_text} = {needed:.0f} img/s; ours {mfu:.1f} %: {verdict(mfu, target)}")
        result(row, f"ours, {flops_text} x img/s / {basis_text}",
               f"{achieved:.1f} TFLOP/s, {ours.median:.0f} img/s on {name}", ratio=mfu, unit="%",
               target=f"{text} ({needed:.0f} img/s)", verdict=verdict(mfu, target),
               note=f"{100 * achieved / peak:.1f} % of {peak_text}" if peak else "")
    row, text, target = targets["memory"]
    gib = ours.peak_bytes / 2**30
    result(row, f"ours, batch {args.batch_size}, max_memory_allocated over one step", f"{gib:.2f} GiB on {name}",
           ratio=gib, unit="GiB", target=text, verdict=verdict(gib, target, higher_is_better=False))


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
    parser.add_argument("--compile", action="store_true", help="torch.compile both models (mode: --compile-mode)")
    parser.add_argument("--compile-mode", choices=("default", "reduce-overhead", "max-autotune",
                                                   "max-autotune-no-cudagraphs"),
                        help="torch.compile both models with this mode (implies --compile)")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend (CPU smoke: aot_eager)")
    parser.add_argument("--fast-norm", action="store_true", help="ours: timm's LayerNorm in the autocast dtype")
    parser.add_argument("--bf16-weights", action="store_true", help="ours: bf16 weights, float32 masters in AdamW")
    parser.add_argument("--cuda-graph", action="store_true", help="ours: the whole step as one CUDA graph")
    parser.add_argument("--reference-decoder", action="store_true",
                        help="ours: the reference's cat + gather decoder input (default: one scatter)")
    parser.add_argument("--fast", action="store_true",
                        help="the stage-1 fast configuration against the issue's targets: both compiled, ours with "
                             "the fast LayerNorm; >= 1.5x transformers and >= 7,000 img/s")
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
    if args.fast:
        args.compile, args.fast_norm = True, True
    if args.compile and args.compile_mode is None:
        args.compile_mode = "default"
    if args.cuda_graph and args.device != "cuda":
        parser.error("--cuda-graph needs --device cuda")
    if args.batch_size < 1 or args.steps < 1 or args.warmup < 0 or not 1 <= args.repeats <= args.steps:
        parser.error("need --batch-size >= 1, --steps >= 1, --warmup >= 0, 1 <= --repeats <= --steps")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        header(machine())
        config = f"{args.model}, batch {args.batch_size}, {args.dtype}"
        for name, target_text, _ in rows(args, "cuda").values():
            not_measured(name, f"ours vs transformers ViTMAE ({config}{', fast' if args.fast else ''})", target_text,
                         "no CUDA device")
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

    contenders = make_contenders(mae, hf, args, device)
    loss_gap = check_same_function(contenders, imgs, noises[0])
    flops_info = flops_used_for_mfu(mae, MASK_RATIO)
    measure(contenders, imgs, noises, args, device)
    report(contenders, args, device, args.dtype, mae, hf, loss_gap, flops_info)
    if args.profile:
        profile(contenders, imgs, noises, device)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
