"""Load a ViT face encoder from any form the lineage meets, pooled the way the next stage needs.

A spec is one of
  - a timm folder (config.json + one weight file): a stage-1 or stage-2 export;
  - a weight file: an official MAE / MAE-Face `.pth` ({'model': ..., 'args': Namespace}) or a
    `.safetensors` state dict; `architecture` (+ `model_args`) name the timm ViT it fits;
  - a timm model name, optionally tagged ("vit_base_patch16_224.mae") or "hf-hub:...".

Every kind ends the same way: a fresh timm VisionTransformer (num_classes 0, the requested
pooling) is built and the weights go through `shared.checkpoints.load_into`, so decoders and
heads are ignored, a position embedding of another grid is interpolated (bicubic, as the MAE
fine-tuning code) and everything is reported.

Pooling. timm's ViT with global_pool='avg' sets `norm` to Identity and adds a fresh `fc_norm`
LayerNorm after the average (exactly the MAE fine-tuning model, which deletes `norm`), so the
pretrained `norm.*` tensors have nowhere to go: they are listed in `EncoderInfo.unused`, not an
error. With global_pool='token' the cls token goes through the pretrained `norm`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import timm
import torch
from timm.models import VisionTransformer
from timm.models._registry import split_model_name_tag
from torch import nn

from shared.checkpoints import PICKLE_SUFFIXES, LoadReport, load_into, load_state_dict_file
from shared.errors import UserError
from shared.export import WEIGHT_SUFFIXES
from shared.recognise import described
from shared.training.images import normalize

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # what the official MAE / MAE-Face checkpoints used
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_ARCHITECTURE = "vit_base_patch16_224"
POOLS = ("avg", "token")


@dataclass
class EncoderInfo:
    source: str  # the spec as given
    kind: str  # "folder" | "file" | "timm"
    architecture: str  # timm name without tag; with model_args it rebuilds the encoder
    model_args: dict  # architecture arguments incl. global_pool, num_classes=0 (no drop path)
    embed_dim: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_size: tuple[int, int, int]  # (C, H, W)
    pool: str
    report: LoadReport
    unused: tuple[str, ...] = ()  # pretrained tensors the pooling has no use for (norm.*)

    def summary(self) -> str:
        """One line: where the weights came from and what loading them did."""
        line = f"{self.source} ({self.kind}, {self.architecture}, pool {self.pool}): {self.report.summary()}"
        if self.unused:
            line += f"; unused with avg pooling (fresh fc_norm instead): {', '.join(self.unused)}"
        return line


class _Source(NamedTuple):
    """Weights and what is needed to build the model they fit."""
    kind: str
    architecture: str
    model_args: dict
    state_dict: dict[str, torch.Tensor]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    pretrained_cfg: dict


def load_encoder(spec, *, pool: str = "avg", drop_path_rate: float = 0.0,
                 architecture: str | None = None, img_size: int | None = None,
                 model_args: dict | None = None) -> tuple[VisionTransformer, EncoderInfo]:
    """A timm VisionTransformer (num_classes 0, `pool` pooling) with the weights of `spec`.

    `architecture` and `model_args` (e.g. {"embed_dim": 768, "depth": 12}) apply to weight
    files only; `img_size` changes the input size (position embeddings interpolated).
    """
    if pool not in POOLS:
        raise UserError(f"unknown pooling {pool!r}: expected one of {', '.join(POOLS)}")
    kind = spec_kind(spec)
    if kind != "file" and (architecture or model_args):
        raise UserError(f"{spec}: --architecture / model arguments apply to weight files only "
                        "(a folder or timm name already names its architecture)")
    if kind == "folder":
        src = _from_folder(Path(spec))
    elif kind == "file":
        src = _from_file(Path(spec), architecture or DEFAULT_ARCHITECTURE, dict(model_args or {}))
    else:
        src = _from_timm(str(spec))
    return _build(str(spec), src, pool=pool, drop_path_rate=drop_path_rate, img_size=img_size)


def spec_kind(spec) -> str:
    """"folder", "file" or "timm"; a path that does not exist is an error, not a model name."""
    path = Path(spec)
    if path.is_dir():
        return "folder"
    if path.is_file() or path.suffix in PICKLE_SUFFIXES + (".safetensors",):
        return "file"  # a missing file is reported by load_state_dict_file
    name = str(spec)
    if name.startswith("hf-hub:") or timm.is_model(split_model_name_tag(name)[0]):
        return "timm"
    raise UserError(f"encoder {name!r} is neither a folder, a weight file nor a timm model name")


def stored_pool(folder) -> str:
    """The pooling an exported folder was saved with (config.json's global_pool)."""
    cfg = _read_config(Path(folder))
    pool = cfg.get("model_args", {}).get("global_pool", cfg.get("global_pool", "token"))
    if pool not in POOLS:
        raise UserError(f"{folder}: stored pooling {pool!r} is not supported ({', '.join(POOLS)})")
    return pool


def _read_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise UserError(f"{folder} is not a timm model folder (no config.json)"
                        + (described(folder) or "; give an exported encoder folder (a run's export/encoder)"))
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{path} is not valid JSON: {err}") from None
    if "architecture" not in cfg:
        raise UserError(f"{path} names no architecture")
    return cfg


def _from_folder(folder: Path) -> _Source:
    cfg = _read_config(folder)
    weights = sorted(p for p in folder.iterdir() if p.name.endswith(WEIGHT_SUFFIXES))
    if len(weights) != 1:  # timm would pick one by its own order; we refuse to guess
        found = ", ".join(p.name for p in weights) or "none"
        raise UserError(f"{folder} must hold exactly one weight file (found {found})")
    pcfg = dict(cfg.get("pretrained_cfg") or {})
    return _Source("folder", cfg["architecture"], dict(cfg.get("model_args") or {}),
                   load_state_dict_file(weights[0]), tuple(pcfg.get("mean", IMAGENET_MEAN)),
                   tuple(pcfg.get("std", IMAGENET_STD)), pcfg)


def _from_file(path: Path, architecture: str, model_args: dict) -> _Source:
    state = load_state_dict_file(path)
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if path.suffix == ".safetensors":  # a stage-1 save_mae file records its normalisation
        from safetensors import safe_open
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        mean = tuple(json.loads(meta["mean"])) if "mean" in meta else mean
        std = tuple(json.loads(meta["std"])) if "std" in meta else std
    return _Source("file", architecture, model_args, state, mean, std, {})


def _from_timm(name: str) -> _Source:
    """The real hub path: timm's own loader, in the model's stock form (its default pooling)."""
    try:
        stock = timm.create_model(name, pretrained=True, num_classes=0)
    except Exception as err:  # hub errors come in many types; the message names the cause
        raise UserError(f"cannot load timm model {name!r} with its pretrained weights: "
                        f"{str(err).splitlines()[0][:300] if str(err) else type(err).__name__}") from err
    pcfg = dict(getattr(stock, "pretrained_cfg", None) or {})
    architecture = pcfg.get("architecture") or split_model_name_tag(name.rsplit("/", 1)[-1])[0]
    factory_only = ("num_classes", "global_pool", "pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")
    args = {k: v for k, v in getattr(stock, "_model_args", {}).items() if k not in factory_only}
    return _Source("timm", architecture, args, stock.state_dict(), tuple(pcfg.get("mean", IMAGENET_MEAN)),
                   tuple(pcfg.get("std", IMAGENET_STD)), pcfg)


def _build(spec: str, src: _Source, *, pool: str, drop_path_rate: float,
           img_size: int | None) -> tuple[VisionTransformer, EncoderInfo]:
    args = {k: v for k, v in src.model_args.items() if k not in ("fc_norm", "drop_path_rate")}
    args.update(num_classes=0, global_pool=pool)  # fc_norm follows the pooling (timm's rule)
    if img_size is not None:
        args["img_size"] = img_size
    encoder = _create(src.architecture, drop_path_rate=drop_path_rate, **args)
    state, unused = _split_unused_norm(src.state_dict, encoder)
    if pool == "token" and "norm.weight" not in state and "fc_norm.weight" in state:
        raise UserError(f"{spec} was trained with average pooling (fc_norm, no final norm): "
                        "load it with pool='avg'")
    report = load_into(encoder, state)
    size = tuple(encoder.patch_embed.img_size)
    encoder.pretrained_cfg = {**src.pretrained_cfg, "mean": src.mean, "std": src.std,
                              "input_size": (encoder.patch_embed.proj.in_channels, *size)}
    info = EncoderInfo(source=spec, kind=src.kind, architecture=src.architecture, model_args=args,
                       embed_dim=encoder.embed_dim, mean=src.mean, std=src.std,
                       input_size=encoder.pretrained_cfg["input_size"], pool=pool, report=report,
                       unused=unused)
    return encoder, info


def _create(architecture: str, **kwargs) -> VisionTransformer:
    try:
        model = timm.create_model(architecture, pretrained=False, **kwargs)
    except (RuntimeError, TypeError) as err:  # unknown name / argument
        raise UserError(f"cannot build timm model {architecture!r}: {err}") from None
    if not isinstance(model, VisionTransformer):
        raise UserError(f"{architecture} is a {type(model).__name__}, not a timm VisionTransformer")
    return model


def _split_unused_norm(state: dict, encoder: VisionTransformer) -> tuple[dict, tuple[str, ...]]:
    """With avg pooling timm's `norm` is Identity: the pretrained final norm has no slot."""
    if not isinstance(encoder.norm, nn.Identity):
        return state, ()
    unused = tuple(sorted(k for k in state if k.startswith("norm.")))
    return {k: v for k, v in state.items() if k not in unused}, unused


class FrozenEncoder(nn.Module):
    """An encoder that never trains: no gradients, eval mode whatever its parent's mode."""

    def __init__(self, encoder: VisionTransformer):
        super().__init__()
        self.encoder = encoder.eval().requires_grad_(False)
        self.embed_dim = encoder.embed_dim

    def train(self, mode: bool = True) -> "FrozenEncoder":
        super().train(mode)
        self.encoder.eval()  # dropout / drop path off even inside a training model
        return self

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised (B, 3, H, W) -> pooled features (B, D)."""
        return self.encoder(x)  # num_classes 0: forward_head stops after pooling (+ fc_norm)


def load_frozen_encoder(folder) -> tuple[FrozenEncoder, EncoderInfo]:
    """Stage 3's encoder: an exported folder, its stored pooling, frozen, in eval mode."""
    encoder, info = load_encoder(folder, pool=stored_pool(folder))  # stored_pool: a folder only
    return FrozenEncoder(encoder), info


def preprocess(images: torch.Tensor, info: EncoderInfo, device) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> normalised float on `device`, with the encoder's mean / std."""
    if tuple(images.shape[1:]) != tuple(info.input_size):
        raise UserError(f"images of shape {tuple(images.shape[1:])} do not fit the encoder's input "
                        f"size {tuple(info.input_size)}")
    return normalize(images, info.mean, info.std, device)
