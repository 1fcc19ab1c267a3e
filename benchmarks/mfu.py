"""FLOPs of an MAE training step and the peak bf16 throughput of GPUs: model FLOP utilisation.

MFU = images/s x FLOPs per image / peak dense bf16 FLOP/s. The FLOPs per image are 56.3 GFLOP for
ViT-B/16 at 224 px with 75 % masking (forward + backward; the project's reference notes say ~56)
and `mae_flops_per_image` (matmuls only, forward x 3) for any other configuration.

Peaks are the datasheets' dense bf16 tensor-core figures (the datasheets lead with the 2:4 sparse
ones, twice as high): A100 312, H100 SXM 989, H100 PCIe 756, H100 NVL 835, H200 (SXM) 989,
H200 NVL 835 TFLOP/s. The H200 has the H100 SXM's GH100 compute (989 dense, 1,979 sparse); the
~790 TFLOP/s the reference notes give for an H200 is 80 % of that, not a peak. MFU is against
the datasheet peak; on an H200 the fraction of 790 is printed beside it.

The target (>= 45 % MFU, "~6,300 images/s on an H200") is stated against 790 TFLOP/s for an H200
(45 % of 790 TFLOP/s / 56.3 GFLOP = 6,314 images/s; against 989 it would be 7,905), so the
verdict uses `target_peak_tflops`: 790 on an H200, the datasheet peak elsewhere.
"""
from __future__ import annotations

MASK_RATIO = 0.75
# ViT-B/16, 224 px, 75 % masking (49 of 196 patches kept), decoder 512 x 8: forward + backward
REFERENCE_GFLOP_VIT_B16 = 56.3
VIT_B16_224 = dict(img_size=224, patch_size=16, in_chans=3, embed_dim=768, depth=12, num_heads=12,
                   decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16, mlp_ratio=4.0)
# dense bf16, TFLOP/s; searched in this order in torch.cuda.get_device_name() (variants first)
PEAK_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H200 NVL", 835.0), ("H200", 989.0),
                    ("H100", 989.0), ("GH200", 989.0), ("A100", 312.0))
H200_SUSTAINED_TFLOPS = 790.0  # the reference notes' figure for one H200
MFU_TARGET_PERCENT = 45.0


def mae_forward_flops(model, mask_ratio: float = MASK_RATIO) -> dict[str, float]:
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


def mae_flops_per_image(model, mask_ratio: float = MASK_RATIO) -> float:
    """FLOPs of one image's training step: matmul FLOPs of the forward pass x 3 (backward = 2x)."""
    return 3 * sum(mae_forward_flops(model, mask_ratio).values())


def flops_used_for_mfu(model, mask_ratio: float = MASK_RATIO) -> tuple[float, str]:
    c = model.mae_config
    if mask_ratio == MASK_RATIO and all(c[k] == v for k, v in VIT_B16_224.items()):
        return REFERENCE_GFLOP_VIT_B16 * 1e9, f"{REFERENCE_GFLOP_VIT_B16} GFLOP (ViT-B/16 constant)"
    flops = mae_flops_per_image(model, mask_ratio)
    return flops, f"{flops / 1e9:.4g} GFLOP (mae_flops_per_image)"


def peak_tflops(gpu_name: str, override: float | None = None) -> tuple[float | None, str]:
    if override is not None:
        return override, f"{override:g} TFLOP/s (--peak-tflops)"
    for key, value in PEAK_BF16_TFLOPS:
        if key.lower() in gpu_name.lower():
            return value, f"{value:g} TFLOP/s ({key} bf16 dense, datasheet)"
    return None, "unknown GPU: pass --peak-tflops for MFU"


def target_peak_tflops(gpu_name: str, override: float | None = None) -> tuple[float | None, str]:
    """The peak the MFU target is stated against: 790 TFLOP/s on an H200 (not NVL), else `peak_tflops`."""
    if override is None and "h200" in gpu_name.lower() and "nvl" not in gpu_name.lower():
        return H200_SUSTAINED_TFLOPS, f"{H200_SUSTAINED_TFLOPS:g} TFLOP/s (H200, the target's basis; datasheet 989)"
    return peak_tflops(gpu_name, override)
