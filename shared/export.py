"""Write trained weights in forms other tools load directly.

- `save_timm_folder`: a timm model folder, config.json + model.safetensors, written by timm's
  own `save_for_hf(safe_serialization=True)`; anyone loads it back with
  `timm.create_model('local-dir:' + folder, pretrained=True)` (timm >= 1.0.16), with the
  preprocessing (mean, std, input size, interpolation, crop) in its `pretrained_cfg`.
- `save_safetensors` / `read_safetensors`: one .safetensors file with string metadata (model
  name, configuration JSON) enough to rebuild the model that wrote it.

Nothing here knows about a stage's model classes (shared/ never imports a stage package).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from shared.atomic import files_into, write_safetensors
from shared.errors import UserError

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".ckpt", ".npz", ".h5")
# Provenance of the timm default config the encoder was created from, which is not ours.
FOREIGN_CFG_KEYS = ("url", "hf_hub_id", "hf_hub_filename", "tag", "license", "paper_ids",
                    "paper_name", "notes", "origin_url", "source", "file", "state_dict")


def save_timm_folder(encoder: torch.nn.Module, out_dir, *, architecture: str, model_args: dict,
                     mean, std, extra_cfg: dict | None = None, crop_pct: float = 1.0,
                     interpolation: str = "bicubic") -> Path:
    """Write `encoder` (a timm model, num_classes 0) as a timm folder and return its path.

    `architecture` + `model_args` must rebuild the encoder with `timm.create_model`;
    `extra_cfg` adds pretrained_cfg fields (e.g. {"tag": "mae_face", "license": ...}).
    Face crops are already framed, hence crop_pct 1.0 by default.
    """
    from timm.models import save_for_hf

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stale = [p.name for p in out_dir.iterdir()
             if p.name != "model.safetensors" and p.name.endswith(WEIGHT_SUFFIXES)]
    if stale:  # timm would pick one of several weight files by its own order: keep one
        raise UserError(f"{out_dir} already holds other weight files ({', '.join(sorted(stale))}); "
                        "export into an empty folder")
    in_chans = model_args.get("in_chans", 3)
    size = model_args.get("img_size", 224)
    size = (size, size) if isinstance(size, int) else tuple(size)
    # the source's test-time sizes describe its own training, not these weights
    cfg = {k: v for k, v in dict(getattr(encoder, "pretrained_cfg", None) or {}).items()
           if k not in FOREIGN_CFG_KEYS + ("test_input_size", "test_crop_pct", "test_pool_size")}
    cfg.update(architecture=architecture, first_conv=cfg.get("first_conv", "patch_embed.proj"),
               classifier=cfg.get("classifier", "head"), fixed_input_size=True, num_classes=0,
               input_size=(in_chans, *size), mean=tuple(mean), std=tuple(std), interpolation=interpolation,
               crop_pct=crop_pct, crop_mode="center", **(extra_cfg or {}))
    previous = getattr(encoder, "pretrained_cfg", None)
    encoder.pretrained_cfg = cfg  # what save_for_hf writes from (every timm >= 1.0.16); restored below
    try:
        with files_into(out_dir) as staging:  # each file appears whole or not at all
            save_for_hf(encoder, str(staging), model_args=dict(model_args), safe_serialization=True)
    finally:
        if previous is None:
            del encoder.pretrained_cfg
        else:
            encoder.pretrained_cfg = previous
    weights = [p.name for p in out_dir.iterdir() if p.name.endswith(WEIGHT_SUFFIXES)]
    assert weights == ["model.safetensors"], weights  # save_for_hf(safe_serialization=True)
    return out_dir


def save_safetensors(model: torch.nn.Module, path, metadata: dict) -> Path:
    """All of `model`'s state (buffers included) to one file; metadata values become strings
    (non-strings as JSON, keys sorted). Written atomically and canonically (shared.atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": "pt"}
    meta.update({k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in metadata.items()})
    return write_safetensors(path, model.state_dict(), meta)


def read_safetensors(path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a .safetensors file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
        return load_file(str(path), device="cpu"), metadata
    except Exception as err:  # safetensors raises its own error types for corrupt headers
        raise UserError(f"cannot read {path} as safetensors: {str(err).splitlines()[0][:200]}") from None
