"""The expression classifier of stage 2: the face encoder plus the paper's two linear layers.

    logits = head(encoder(x))    x: normalised (B, 3, H, W) -> pooled (B, D) -> logits (B, C)

Two recipes:
  - fine-tuning (the paper): average pooling with a fresh fc_norm, Linear(D, hidden) -> GELU ->
    Dropout -> Linear(hidden, C), last layer trunc_normal(std 2e-5) as the MAE fine-tuning
    code, drop path 0.1, layer-wise lr decay (`param_groups`);
  - linear probe (the MAE protocol): frozen encoder kept in eval mode, cls-token pooling,
    BatchNorm1d(D, affine=False, eps=1e-6) + Linear(D, C), weight std 0.01.

`export_classifier` writes OUT/encoder (a timm folder that stage 3 and timm load) and
OUT/head.safetensors; `load_classifier(OUT)` rebuilds the same model.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from timm.layers import trunc_normal_
from timm.optim import param_groups_layer_decay
from torch import nn

from shared.encoders import EncoderInfo, load_encoder, stored_pool
from shared.errors import UserError
from shared.export import read_safetensors, save_safetensors, save_timm_folder

log = logging.getLogger("finetune_affectnet")

HEAD_FORMAT = "expression-head/1"
KINDS = ("mlp", "linear_probe")


class MLPHead(nn.Module):
    """The paper's two linear layers; hidden_dim 0 leaves one Linear (timm's plain head)."""

    def __init__(self, in_dim: int, num_classes: int, *, hidden_dim: int = 512, dropout: float = 0.0,
                 init_std: float = 2e-5):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden_dim) if hidden_dim else nn.Identity()
        self.act = nn.GELU() if hidden_dim else nn.Identity()
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden_dim or in_dim, num_classes)
        if hidden_dim:
            trunc_normal_(self.fc1.weight, std=0.02)  # timm's ViT init for inner Linear layers
            nn.init.zeros_(self.fc1.bias)
        # tiny last layer: initial logits ~0, so the pretrained features are not disturbed early
        trunc_normal_(self.fc2.weight, std=init_std)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(self.act(self.fc1(x))))  # (B, D) -> (B, C)


class LinearProbeHead(nn.Module):
    """MAE linear probing: a parameter-free BatchNorm whitens the frozen features first."""

    def __init__(self, in_dim: int, num_classes: int, *, init_std: float = 0.01):
        super().__init__()
        self.bn = nn.BatchNorm1d(in_dim, affine=False, eps=1e-6)
        self.fc = nn.Linear(in_dim, num_classes)
        trunc_normal_(self.fc.weight, std=init_std)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn(x))  # (B, D) -> (B, C)


class ExpressionClassifier(nn.Module):
    """`encoder` (timm VisionTransformer, num_classes 0, pooled output) + `head`."""

    def __init__(self, encoder: nn.Module, num_classes: int, *, hidden_dim: int = 512,
                 dropout: float = 0.0, head_init_std: float | None = None, linear_probe: bool = False,
                 class_names: list[str] | None = None):
        super().__init__()
        if class_names is not None and len(class_names) != num_classes:
            raise UserError(f"{len(class_names)} class names for {num_classes} classes")
        self.encoder = encoder
        self.num_classes = num_classes
        self.embed_dim = encoder.embed_dim
        self.hidden_dim = 0 if linear_probe else hidden_dim
        self.dropout = 0.0 if linear_probe else dropout
        self.linear_probe = linear_probe
        self.class_names = list(class_names) if class_names is not None else None
        if linear_probe:
            self.encoder.requires_grad_(False)
            self.encoder.eval()
            std = 0.01 if head_init_std is None else head_init_std
            self.head = LinearProbeHead(self.embed_dim, num_classes, init_std=std)
        else:
            self.head = MLPHead(self.embed_dim, num_classes, hidden_dim=hidden_dim, dropout=dropout,
                                init_std=2e-5 if head_init_std is None else head_init_std)

    @property
    def kind(self) -> str:
        return "linear_probe" if self.linear_probe else "mlp"

    def train(self, mode: bool = True) -> "ExpressionClassifier":
        super().train(mode)
        if self.linear_probe:
            self.encoder.eval()  # frozen features: no dropout / drop path, whatever the mode
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised (B, 3, H, W) -> pooled features (B, D)."""
        return self.encoder(x)  # num_classes 0: timm's forward stops after pooling (+ fc_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised (B, 3, H, W) -> logits (B, C)."""
        return self.head(self.features(x))

    # timm's optimizer helpers read these; names carry the "encoder." prefix of this wrapper
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {f"encoder.{n}" for n in self.encoder.no_weight_decay()}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Layer ids: embeddings 0, block i -> i + 1, everything else (norm, fc_norm, head)
        unmatched -> last, as the MAE reference. timm's own ViT matcher instead merges the
        final `norm` into the last block; non-capturing groups because timm turns every
        captured group into a number."""
        return dict(stem=r"^encoder\.(?:cls_token|reg_token|pos_embed|patch_embed|norm_pre)",
                    blocks=r"^encoder\.blocks\.(\d+)")


def build_classifier(encoder_spec, num_classes: int, *, pool: str | None = None, hidden_dim: int = 512,
                     dropout: float = 0.0, drop_path_rate: float = 0.1, head_init_std: float | None = None,
                     linear_probe: bool = False, architecture: str | None = None, img_size: int | None = None,
                     model_args: dict | None = None, class_names: list[str] | None = None,
                     ) -> tuple[ExpressionClassifier, EncoderInfo]:
    """A classifier on the encoder of `encoder_spec` (see shared.encoders.load_encoder).

    Defaults follow the recipe: fine-tuning pools "avg" and inits the last layer with std 2e-5;
    the linear probe pools "token" (MAE main_linprobe), std 0.01, and has no drop path.
    """
    pool = pool or ("token" if linear_probe else "avg")
    drop_path_rate = 0.0 if linear_probe else drop_path_rate  # a frozen encoder runs in eval
    encoder, info = load_encoder(encoder_spec, pool=pool, drop_path_rate=drop_path_rate,
                                 architecture=architecture, img_size=img_size, model_args=model_args)
    log.info("encoder %s", info.summary())  # what was loaded, left at init, ignored, interpolated
    model = ExpressionClassifier(encoder, num_classes, hidden_dim=hidden_dim, dropout=dropout,
                                 head_init_std=head_init_std, linear_probe=linear_probe,
                                 class_names=class_names)
    return model, info


def param_groups(model: ExpressionClassifier, *, weight_decay: float, layer_decay: float) -> list[dict]:
    """AdamW groups with `lr_scale` = layer_decay ** (L + 1 - layer_id) (L blocks) and no weight
    decay on 1-D params, pos_embed and cls_token; frozen params left out. The schedule
    multiplies each group's lr by its `lr_scale` (shared.training.schedule.set_lr)."""
    return param_groups_layer_decay(model, weight_decay=weight_decay, layer_decay=layer_decay,
                                    no_weight_decay_list=sorted(model.no_weight_decay()))


def export_classifier(model: ExpressionClassifier, info: EncoderInfo, out_dir, *, class_names,
                      mean, std, crop_pct: float, interpolation: str, extra: dict | None = None) -> Path:
    """OUT/encoder (timm folder, the encoder's pooling) + OUT/head.safetensors. The folder's
    pretrained_cfg records the evaluation preprocessing the run scored with (`mean`, `std`, the
    centre `crop_pct` and `interpolation` at the encoder's input size), which stage 3 applies."""
    out = Path(out_dir)
    if len(class_names) != model.num_classes:
        raise UserError(f"{len(class_names)} class names for {model.num_classes} classes")
    args = {**info.model_args, "global_pool": info.pool, "num_classes": 0}
    save_timm_folder(model.encoder, out / "encoder", architecture=info.architecture, model_args=args,
                     mean=mean, std=std, crop_pct=crop_pct, interpolation=interpolation)
    meta = {"head_format": HEAD_FORMAT, "kind": model.kind, "class_names": list(class_names),
            "num_classes": model.num_classes, "embed_dim": model.embed_dim,
            "hidden_dim": model.hidden_dim, "dropout": model.dropout, "pool": info.pool,
            "extra": extra or {}}
    save_safetensors(model.head, out / "head.safetensors", meta)
    return out


PUBLISHED_HEAD = "expression_head/head.safetensors"  # beside the timm encoder of a published folder


def load_classifier(out_dir) -> ExpressionClassifier:
    """The classifier written by `export_classifier` (OUT/encoder + OUT/head.safetensors) or
    published by `affect-publish` (the timm encoder at the root + expression_head/), in eval
    mode, with `class_names` and `encoder_info` (mean, std, input size) attached."""
    out = Path(out_dir)
    head, encoder_dir = out / "head.safetensors", out / "encoder"
    if not head.is_file() and (out / PUBLISHED_HEAD).is_file():
        head, encoder_dir = out / PUBLISHED_HEAD, out
    if not head.is_file():
        raise UserError(f"{out}: no head.safetensors or {PUBLISHED_HEAD}; give a stage-2 export or published folder")
    tensors, meta = read_safetensors(head)
    if meta.get("head_format") != HEAD_FORMAT or meta.get("kind") not in KINDS:
        raise UserError(f"{head} was not written by export_classifier")
    encoder, info = load_encoder(encoder_dir, pool=stored_pool(encoder_dir))
    model = ExpressionClassifier(encoder, int(meta["num_classes"]), hidden_dim=int(meta["hidden_dim"]),
                                 dropout=float(meta["dropout"]), linear_probe=meta["kind"] == "linear_probe",
                                 class_names=json.loads(meta["class_names"]))
    model.head.load_state_dict(tensors, strict=True)
    model.encoder_info = info
    return model.eval()
