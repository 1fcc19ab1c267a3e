"""The MAE model against the reference algorithm, with transformers' ViTMAE as the numerical oracle."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from timm.optim import param_groups_weight_decay

from pretrain_mae.hf_interop import to_transformers
from pretrain_mae.model import MaskedAutoencoder, build_mae, list_models, sincos_2d
from shared.errors import UserError

# patch 4 on a 24 px image: 36 patches, 9 kept; widths that are not powers of two; mlp 3
ODD = dict(img_size=24, patch_size=4, embed_dim=24, depth=1, num_heads=3,
           decoder_embed_dim=20, decoder_depth=2, decoder_num_heads=2, mlp_ratio=3.0)


@pytest.mark.parametrize("overrides", [{}, ODD], ids=["mae_vit_test", "p4_img24"])
@pytest.mark.parametrize("norm_pix", [True, False])
def test_matches_transformers_vitmae(overrides, norm_pix):
    torch.manual_seed(0)
    mae = build_mae("mae_vit_test", norm_pix_loss=norm_pix, **overrides).eval()
    hf = to_transformers(mae)
    size = mae.mae_config["img_size"]
    imgs = torch.randn(3, 3, size, size)
    noise = torch.rand(3, mae.patch_embed.num_patches)
    with torch.no_grad():
        loss, pred, mask = mae(imgs, mask_ratio=0.75, noise=noise)
        ref = hf(pixel_values=imgs, noise=noise)
    assert torch.equal(mask, ref.mask)
    torch.testing.assert_close(pred, ref.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(loss, ref.loss, atol=1e-5, rtol=0)


def test_masking_semantics():
    x = torch.randn(4, 36, 5)
    noise = torch.rand(4, 36)
    x_masked, mask, ids_restore = MaskedAutoencoder.random_masking(x, 0.75, noise)
    assert x_masked.shape == (4, 9, 5)  # int(36 * 0.25)
    assert (mask.sum(1) == 27).all()
    for n in range(4):
        kept = torch.argsort(noise[n])[:9]  # lowest noise is kept, in noise order
        assert torch.equal(x_masked[n], x[n, kept])
        expected = torch.ones(36)
        expected[kept] = 0  # 1 = removed, indexed in the original patch order
        assert torch.equal(mask[n], expected)
        assert torch.equal(torch.argsort(torch.argsort(noise[n])), ids_restore[n])
    again = MaskedAutoencoder.random_masking(x, 0.75, noise.clone())
    assert all(torch.equal(a, b) for a, b in zip((x_masked, mask, ids_restore), again))
    # the reference's int() truncation: 196 patches keep 49
    assert MaskedAutoencoder.random_masking(torch.zeros(1, 196, 1), 0.75)[0].shape[1] == 49


def test_patchify_order_and_round_trip():
    mae = build_mae("mae_vit_test")  # 32 px, p = 8, grid 4 x 4
    p, c, side = 8, 3, 32
    img = torch.zeros(1, c, side, side, dtype=torch.float64)
    for ch in range(c):
        for y in range(side):
            for x in range(side):
                img[0, ch, y, x] = ch + 10 * x + 1000 * y
    patches = mae.patchify(img)
    assert patches.shape == (1, 16, p * p * c)
    for ch, y, x in [(0, 0, 0), (2, 5, 30), (1, 31, 9), (2, 17, 17)]:
        patch = (y // p) * 4 + x // p  # (h, w) row-major
        within = ((y % p) * p + x % p) * c + ch  # (p, q, c)
        assert patches[0, patch, within] == img[0, ch, y, x]
    assert torch.equal(mae.unpatchify(patches), img)
    rand = torch.randn(2, 3, 32, 32)
    assert torch.equal(mae.unpatchify(mae.patchify(rand)), rand)


def numpy_sincos(dim: int, h: int, w: int) -> np.ndarray:
    """Element by element: channel k < dim/2 -> column, else row; within a half, the first
    quarter sin, the second cos, at frequency 10000 ** -(i / (dim/4))."""
    quarter = dim // 4

    def value(t, k):
        row, col = t // w, t % w
        pos = np.where(k < dim // 2, col, row).astype(np.float64)
        kk = k % (dim // 2)
        freq = 1.0 / 10000.0 ** ((kk % quarter) / quarter)
        return np.where(kk < quarter, np.sin(pos * freq), np.cos(pos * freq))
    return np.fromfunction(value, (h * w, dim), dtype=np.int64)


@pytest.mark.parametrize("dim,h,w", [(32, 4, 4), (20, 6, 6), (16, 3, 5)])
def test_sincos_table(dim, h, w):
    table = sincos_2d(dim, (h, w))
    assert table.shape == (1, 1 + h * w, dim) and table.dtype == torch.float32
    assert torch.equal(table[0, 0], torch.zeros(dim))  # cls slot
    np.testing.assert_allclose(table[0, 1:].numpy(), numpy_sincos(dim, h, w), atol=1e-7, rtol=0)
    grid = table[0, 1:].reshape(h, w, dim)
    assert torch.equal(grid[0, :, : dim // 2], grid[-1, :, : dim // 2])  # first half: column only
    assert torch.equal(grid[:, 0, dim // 2:], grid[:, -1, dim // 2:])  # second half: row only


def test_position_tables_fixed():
    mae = build_mae("mae_vit_test")
    assert torch.equal(mae.pos_embed, sincos_2d(32, (4, 4)))
    assert torch.equal(mae.decoder_pos_embed, sincos_2d(16, (4, 4)))
    assert not mae.pos_embed.requires_grad and not mae.decoder_pos_embed.requires_grad


def test_init_statistics():
    torch.manual_seed(0)
    mae = build_mae("mae_vit_test", embed_dim=256, num_heads=4, depth=1,
                    decoder_embed_dim=128, decoder_num_heads=4)
    for name, m in mae.named_modules():
        if isinstance(m, torch.nn.Linear):
            bound = math.sqrt(6 / (m.in_features + m.out_features))
            assert m.weight.abs().max() <= bound, name
            assert abs(m.weight.std().item() / (bound / math.sqrt(3)) - 1) < 0.1, name
            assert torch.equal(m.bias, torch.zeros_like(m.bias)), name
        elif isinstance(m, torch.nn.LayerNorm):
            assert m.eps == 1e-6, name
            assert torch.equal(m.weight, torch.ones_like(m.weight)) and not m.bias.any(), name
    w = mae.patch_embed.proj.weight  # xavier over the flattened (D, C*p*p) matrix
    bound = math.sqrt(6 / (w[0].numel() + w.shape[0]))
    assert w.abs().max() <= bound and abs(w.std().item() / (bound / math.sqrt(3)) - 1) < 0.1
    for token in (mae.cls_token, mae.mask_token):
        assert 0.016 < token.std().item() < 0.024 and abs(token.mean().item()) < 0.006


def test_state_dict_keys_are_the_official_names():
    with torch.device("meta"):
        mae = build_mae("mae_vit_base_patch16")
    sd = mae.state_dict()
    block = [f"{m}.{t}" for m in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
             for t in ("weight", "bias")]
    expected = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias",
                "norm.weight", "norm.bias", "decoder_embed.weight", "decoder_embed.bias",
                "mask_token", "decoder_pos_embed", "decoder_norm.weight", "decoder_norm.bias",
                "decoder_pred.weight", "decoder_pred.bias"}
    expected |= {f"blocks.{i}.{b}" for i in range(12) for b in block}
    expected |= {f"decoder_blocks.{i}.{b}" for i in range(8) for b in block}
    assert set(sd) == expected
    shapes = {"pos_embed": (1, 197, 768), "decoder_pos_embed": (1, 197, 512), "mask_token": (1, 1, 512),
              "patch_embed.proj.weight": (768, 3, 16, 16), "decoder_pred.weight": (768, 512),
              "blocks.0.attn.qkv.weight": (2304, 768), "decoder_blocks.0.mlp.fc1.weight": (2048, 512)}
    assert {k: tuple(sd[k].shape) for k in shapes} == shapes


def test_registry_and_errors():
    assert {"mae_vit_base_patch16", "mae_vit_large_patch16", "mae_vit_huge_patch14",
            "mae_vit_small_patch16", "mae_vit_base_patch14", "mae_vit_large_patch14", "mae_vit_test",
            "mae_vit_tiny_patch16"} <= set(list_models())
    with pytest.raises(UserError, match="mae_vit_base_patch16"):
        build_mae("mae_vit_base_patch61")
    with pytest.raises(UserError, match="embed_dims"):
        build_mae("mae_vit_test", embed_dims=64)
    with pytest.raises(UserError, match="not divisible"):
        build_mae("mae_vit_test", num_heads=3)
    assert build_mae("mae_vit_test", norm_pix_loss=False).norm_pix_loss is False


def test_weight_decay_groups_follow_the_reference():
    mae = build_mae("mae_vit_test")
    assert mae.no_weight_decay() == set()
    groups = param_groups_weight_decay(mae, 0.05, no_weight_decay_list=mae.no_weight_decay())
    named = {id(p): n for n, p in mae.named_parameters()}
    decayed = {named[id(p)] for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    exempt = {named[id(p)] for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    assert {"cls_token", "mask_token", "patch_embed.proj.weight", "decoder_pred.weight"} <= decayed
    assert "norm.weight" in exempt and "blocks.0.attn.qkv.bias" in exempt
    assert not {"pos_embed", "decoder_pos_embed"} & (decayed | exempt)  # frozen: in no group


def test_encoder_unmasked_equals_forward_features():
    mae = build_mae("mae_vit_test").eval()
    imgs = torch.randn(2, 3, 32, 32)
    ordered = torch.arange(16.0).expand(2, 16)  # identity shuffle
    with torch.no_grad():
        latent, mask, _ = mae.forward_encoder(imgs, 0.0, ordered)
        assert not mask.any()
        torch.testing.assert_close(latent, mae.forward_features(imgs), atol=1e-6, rtol=0)


def test_gradient_checkpointing_same_loss_and_grads():
    torch.manual_seed(0)
    mae = build_mae("mae_vit_test")
    imgs, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    grads = []
    for enabled in (False, True):
        mae.set_grad_checkpointing(enabled)
        mae.zero_grad()
        loss, _, _ = mae(imgs, noise=noise)
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in mae.parameters() if p.requires_grad]))
    torch.testing.assert_close(grads[0][0], grads[1][0], atol=0, rtol=0)
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("overrides", [{}, ODD], ids=["mae_vit_test", "p4_img24"])
@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16_autocast"])
def test_scatter_decoder_input_is_the_reference_gather(overrides, bf16):
    """The default decoder input (one scatter) against the reference's cat + gather + cat: the same
    forward bit for bit, in float32 and under autocast, and the same gradients (the mask token's
    summed in another order)."""
    torch.manual_seed(0)
    mae = build_mae("mae_vit_test", **overrides)
    size = mae.mae_config["img_size"]
    imgs, noise = torch.randn(3, 3, size, size), torch.rand(3, mae.patch_embed.num_patches)
    runs = []
    for scatter in (False, True):
        mae.decoder_scatter = scatter
        mae.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            latent, _, ids_restore = mae.forward_encoder(imgs, 0.75, noise)
            tokens = mae._decoder_input_scatter if scatter else mae._decoder_input_gather
            decoder_input = tokens(mae.decoder_embed(latent), ids_restore)
            loss, pred, mask = mae(imgs, noise=noise)
        loss.backward()
        runs.append((decoder_input.detach(), loss.detach(), pred.detach(),
                     {n: p.grad.clone() for n, p in mae.named_parameters() if p.grad is not None}))
    (x0, loss0, pred0, grads0), (x1, loss1, pred1, grads1) = runs
    assert x0.dtype == x1.dtype == torch.float32 and x0.shape == (3, 1 + mae.patch_embed.num_patches, x0.shape[-1])
    assert torch.equal(x0, x1) and torch.equal(loss0, loss1) and torch.equal(pred0, pred1)
    assert set(grads0) == set(grads1)
    for name, grad in grads0.items():
        if name == "mask_token":
            torch.testing.assert_close(grads1[name], grad, rtol=1e-5, atol=1e-8)
        else:
            assert torch.equal(grads1[name], grad), name


def test_fast_norm_is_the_plain_norm_in_fp32_and_a_bf16_norm_under_autocast():
    torch.manual_seed(0)
    mae = build_mae("mae_vit_test")
    imgs, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    with torch.no_grad():
        plain = mae(imgs, noise=noise)[0]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            plain_bf16, norm_out = mae(imgs, noise=noise)[0], mae.decoder_norm(torch.randn(2, 5, 16))
        mae.set_fast_norm(True)
        assert torch.equal(mae(imgs, noise=noise)[0], plain)  # no autocast: F.layer_norm, as before
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast_bf16, fast_out = mae(imgs, noise=noise)[0], mae.decoder_norm(torch.randn(2, 5, 16))
    assert norm_out.dtype == torch.float32 and fast_out.dtype == torch.bfloat16  # autocast's fp32 norm, or not
    assert not torch.equal(fast_bf16, plain_bf16)
    torch.testing.assert_close(fast_bf16, plain_bf16, rtol=2e-2, atol=0)
