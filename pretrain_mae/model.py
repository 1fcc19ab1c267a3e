"""Masked autoencoder (He et al. 2022) on timm's VisionTransformer, numerically the reference.

The encoder *is* a timm `VisionTransformer` (class token, LayerNorm eps 1e-6, qkv bias, no
pre-norm, no head), so its parameter names are timm's and the official MAE checkpoint's:
cls_token, pos_embed, patch_embed.proj, blocks.i.*, norm. The decoder uses the reference
names: decoder_embed, mask_token, decoder_pos_embed, decoder_blocks.i, decoder_norm,
decoder_pred. `state_dict()` therefore has exactly the keys of facebookresearch/mae.

Shapes: N batch, L = h*w patches, K = int(L * (1 - mask_ratio)) kept patches,
D encoder width, Dd decoder width, P = p*p*in_chans pixels per patch.

Named configurations live in model_configs/<name>.json; `build_mae(name, **overrides)`.
"""
from __future__ import annotations

import difflib
import inspect
import json
from pathlib import Path

import torch
import torch.nn as nn
from einops import rearrange
from timm.layers import LayerNorm
from timm.models.vision_transformer import Block, VisionTransformer
from torch.utils.checkpoint import checkpoint

from shared.errors import UserError

CONFIG_DIR = Path(__file__).with_name("model_configs")


def sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """(M,) float64 positions -> (M, dim): sin of every frequency, then cos of every one."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))  # (dim/2,)
    angles = pos.to(torch.float64)[:, None] * omega[None, :]  # (M, dim/2)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def sincos_2d(dim: int, grid_size: tuple[int, int], cls_token: bool = True) -> torch.Tensor:
    """Fixed 2-D position table (1, [1 +] h*w, dim), float32, computed in float64.

    Tokens run row-major over (h, w) like the patches; the first dim/2 channels encode the
    column (w), the last dim/2 the row (h), as the reference's meshgrid(w, h) does. The cls
    slot is zeros: the class token carries no position.
    """
    gh, gw = grid_size
    rows, cols = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")  # (gh, gw)
    table = torch.cat([sincos_1d(dim // 2, cols.flatten()), sincos_1d(dim // 2, rows.flatten())], 1)
    if cls_token:
        table = torch.cat([torch.zeros(1, dim, dtype=torch.float64), table], dim=0)
    return table.float()[None]


class MaskedAutoencoder(VisionTransformer):
    """timm ViT encoder + the MAE decoder; `forward(imgs, mask_ratio, noise) -> (loss, pred, mask)`."""

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3,
                 embed_dim: int = 1024, depth: int = 24, num_heads: int = 16,
                 decoder_embed_dim: int = 512, decoder_depth: int = 8, decoder_num_heads: int = 16,
                 mlp_ratio: float = 4.0, norm_pix_loss: bool = False, drop_path_rate: float = 0.0):
        super().__init__(img_size=img_size, patch_size=patch_size, in_chans=in_chans,
                         num_classes=0, global_pool="token", class_token=True, pre_norm=False,
                         embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                         qkv_bias=True, drop_path_rate=drop_path_rate)  # timm LayerNorm: eps 1e-6
        # every constructor argument: rebuilds this model from a checkpoint's metadata
        self.mae_config = dict(
            img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim,
            depth=depth, num_heads=num_heads, decoder_embed_dim=decoder_embed_dim,
            decoder_depth=decoder_depth, decoder_num_heads=decoder_num_heads, mlp_ratio=mlp_ratio,
            norm_pix_loss=norm_pix_loss, drop_path_rate=drop_path_rate)
        self.model_name = "custom"  # set by build_mae
        self.timm_architecture = "vit_base_patch16_224"  # set by build_mae; see encoder_config
        self.norm_pix_loss = norm_pix_loss
        # how the decoder input is assembled: not architecture (the same function either way), so
        # not in mae_config; False is the reference's cat + gather, kept as the tests' oracle
        self.decoder_scatter = True
        self.pos_embed.requires_grad_(False)  # fixed sin-cos, as the reference
        num_patches = self.patch_embed.num_patches

        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(
            torch.zeros(1, num_patches + 1, decoder_embed_dim), requires_grad=False)
        self.decoder_blocks = nn.ModuleList([
            Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=True, norm_layer=LayerNorm)
            for _ in range(decoder_depth)])
        self.decoder_norm = LayerNorm(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size ** 2 * in_chans)
        self.initialize_mae_weights()

    def initialize_mae_weights(self) -> None:
        """The reference init, applied over timm's own (which it fully replaces)."""
        grid = self.patch_embed.grid_size
        with torch.no_grad():
            self.pos_embed.copy_(sincos_2d(self.pos_embed.shape[-1], grid))
            self.decoder_pos_embed.copy_(sincos_2d(self.decoder_pos_embed.shape[-1], grid))
        # the patch conv is a Linear on flattened patches: xavier over (D, C*p*p), not the 4-D fans.
        # Its bias keeps PyTorch's default init, as in the reference.
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        self.apply(_init_linear_and_norm)

    def set_fast_norm(self, enabled: bool = True) -> None:
        """timm's "fast" LayerNorm in every norm: under autocast it normalises in the autocast dtype
        (apex's fused kernel where installed) and returns it, instead of autocast's float32 norm
        and the cast of its output in front of the next matmul. A speed switch, not the reference's
        numerics under autocast (the input is rounded to bf16 before the statistics); without
        autocast it is `F.layer_norm` as before."""
        for m in self.modules():
            if isinstance(m, LayerNorm):
                m._fast_norm = enabled

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Nothing beyond the optimizer's own rule.

        timm's ViT exempts cls_token and pos_embed, but the reference MAE module has no such
        method: `param_groups_weight_decay` exempts only biases and 1-D params, so cls_token and
        mask_token are decayed, and the frozen pos embeddings get no gradient at all.
        """
        return set()

    # -- patches --------------------------------------------------------------------------
    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, L, p*p*C), each patch flattened in (p, q, c) order."""
        p = self.patch_embed.patch_size[0]
        return rearrange(imgs, "n c (h p) (w q) -> n (h w) (p q c)", p=p, q=p)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(N, L, p*p*C) -> (N, C, H, W), the inverse of `patchify` on this model's grid."""
        p = self.patch_embed.patch_size[0]
        h, w = self.patch_embed.grid_size
        return rearrange(x, "n (h w) (p q c) -> n c (h p) (w q)", h=h, w=w, p=p, q=p)

    @staticmethod
    def random_masking(x: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None):
        """Keep a random subset of int(L * (1 - mask_ratio)) patches per sample.

        x (N, L, D) -> x_masked (N, K, D); mask (N, L), 1 = removed, in the original patch
        order; ids_restore (N, L) undoes the shuffle. Same noise, same mask.
        """
        n, length, dim = x.shape
        keep = int(length * (1 - mask_ratio))
        if noise is None:
            noise = torch.rand(n, length, device=x.device)  # (N, L) in [0, 1)
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :keep]  # (N, K)
        x_masked = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, dim))
        mask = torch.ones(n, length, device=x.device)
        mask[:, :keep] = 0
        mask = torch.gather(mask, 1, ids_restore)  # back to patch order
        return x_masked, mask, ids_restore

    # -- forward --------------------------------------------------------------------------
    def _run_blocks(self, blocks, x: torch.Tensor) -> torch.Tensor:
        for block in blocks:
            if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x

    def forward_encoder(self, imgs: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None):
        x = self.patch_embed(imgs)  # (N, L, D)
        x = x + self.pos_embed[:, 1:, :]  # position before masking: kept tokens keep their place
        x, mask, ids_restore = self.random_masking(x, mask_ratio, noise)  # (N, K, D)
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)  # (N, 1, D)
        x = torch.cat([cls, x], dim=1)  # (N, 1+K, D)
        x = self._run_blocks(self.blocks, x)
        return self.norm(x), mask, ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        x = self.decoder_embed(latent)  # (N, 1+K, Dd)
        tokens = self._decoder_input_scatter if self.decoder_scatter else self._decoder_input_gather
        x = tokens(x, ids_restore)  # (N, 1+L, Dd)
        x = self._run_blocks(self.decoder_blocks, x)
        x = self.decoder_pred(self.decoder_norm(x))  # (N, 1+L, P)
        return x[:, 1:, :]  # drop cls

    def _decoder_input_gather(self, x: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """The reference's decoder input: (N, 1+K, Dd) embedded tokens -> (N, 1+L, Dd), mask tokens
        appended, unshuffled by a full-size gather, cls put back in front, positions added."""
        n, kept, dim = x.shape
        mask_tokens = self.mask_token.expand(n, ids_restore.shape[1] + 1 - kept, -1)  # (N, L-K, Dd)
        x_ = torch.cat([x[:, 1:, :], mask_tokens], dim=1)  # (N, L, Dd), shuffled order
        x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).expand(-1, -1, dim))  # patch order
        return torch.cat([x[:, :1, :], x_], dim=1) + self.decoder_pos_embed  # (N, 1+L, Dd)

    def _decoder_input_scatter(self, x: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """The same tensor as `_decoder_input_gather`, written once: a (1+L)-row table of
        mask token + position, broadcast over the batch, with the 1+K real tokens (+ their
        positions) scattered into their rows. The reference's three full-size copies (cat,
        gather, cat) and its full-size add become one full-size write; every value is the same
        sum of the same two operands, so the forward is bitwise equal (and the gradients equal
        up to the summation order of the mask token's gradient)."""
        n, kept, dim = x.shape
        length = ids_restore.shape[1]
        # the reference concatenates x with the fp32 mask token: under autocast that promotes
        dtype = torch.promote_types(x.dtype, self.mask_token.dtype)
        order = torch.arange(length, device=ids_restore.device).expand(n, -1)
        ids_shuffle = torch.empty_like(ids_restore).scatter_(1, ids_restore, order)  # inverse permutation
        rows = torch.cat([ids_restore.new_zeros(n, 1), ids_shuffle[:, :kept - 1] + 1], dim=1)  # (N, 1+K)
        pos = self.decoder_pos_embed[0]  # (1+L, Dd)
        real = x.to(dtype) + pos[rows]  # (N, 1+K, Dd)
        table = (self.mask_token + self.decoder_pos_embed).to(dtype)  # (1, 1+L, Dd)
        return table.expand(n, -1, -1).scatter(1, rows.unsqueeze(-1).expand(-1, -1, dim), real)

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error per patch, averaged over the removed patches only."""
        target = self.patchify(imgs)  # (N, L, P)
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)  # unbiased, as the reference
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        loss = ((pred - target) ** 2).mean(dim=-1)  # (N, L)
        return (loss * mask).sum() / mask.sum()

    def forward(self, imgs: torch.Tensor, mask_ratio: float = 0.75, noise: torch.Tensor | None = None):
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio, noise)
        pred = self.forward_decoder(latent, ids_restore)  # (N, L, P)
        loss = self.forward_loss(imgs, pred, mask)
        return loss, pred, mask


def _init_linear_and_norm(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


# -- factory: named configurations as data -----------------------------------------------
MAE_ARGS = tuple(p for p in inspect.signature(MaskedAutoencoder.__init__).parameters if p != "self")


def list_models() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def model_config(name: str) -> dict:
    """The JSON of a named configuration: {"timm_architecture", "model_args", ...}."""
    names = list_models()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.4)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise UserError(f"unknown MAE model {name!r}; {hint}known: {', '.join(names)}")
    return json.loads((CONFIG_DIR / f"{name}.json").read_text())


def build_mae(name: str, **overrides) -> MaskedAutoencoder:
    """The named configuration, with any constructor argument overridden."""
    cfg = model_config(name)
    unknown = sorted(set(overrides) - set(MAE_ARGS))
    if unknown:
        raise UserError(f"unknown MAE model argument(s) {', '.join(unknown)}; valid: {', '.join(MAE_ARGS)}")
    args = {**cfg["model_args"], **overrides}
    _check_args(name, args)
    model = MaskedAutoencoder(**args)
    model.model_name = name
    model.timm_architecture = cfg["timm_architecture"]
    return model


def _check_args(name: str, a: dict) -> None:
    problems = []
    if a["img_size"] % a["patch_size"]:
        problems.append(f"img_size {a['img_size']} is not a multiple of patch_size {a['patch_size']}")
    for width, heads in (("embed_dim", "num_heads"), ("decoder_embed_dim", "decoder_num_heads")):
        if a[width] % a[heads]:
            problems.append(f"{width} {a[width]} is not divisible by {heads} {a[heads]}")
        if a[width] % 4:  # sin-cos table: half per axis, sin and cos per half
            problems.append(f"{width} {a[width]} is not a multiple of 4")
    if problems:
        raise UserError(f"bad configuration for {name}: " + "; ".join(problems))


def encoder_config(model: MaskedAutoencoder) -> dict:
    """{"architecture", "model_args"} that rebuild the encoder as a plain timm ViT.

    Every architectural argument is explicit, so the timm name only picks the default
    pretrained config (it is the closest named timm model, e.g. vit_base_patch16_224).
    """
    c = model.mae_config
    args = dict(img_size=c["img_size"], patch_size=c["patch_size"], in_chans=c["in_chans"],
                embed_dim=c["embed_dim"], depth=c["depth"], num_heads=c["num_heads"],
                mlp_ratio=c["mlp_ratio"], qkv_bias=True, class_token=True,
                global_pool="token", num_classes=0)
    return {"architecture": model.timm_architecture, "model_args": args}
