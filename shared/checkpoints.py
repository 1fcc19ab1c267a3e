"""Read weight files safely and load them into a ViT / MAE with a clear report.

Formats read by `load_state_dict_file`:
  - `.safetensors` (no code can run);
  - `.pth` / `.pt` / `.bin` pickles through `torch.load(weights_only=True)`, allowing one
    extra global, `argparse.Namespace`, because the official MAE and MAE-Face checkpoints
    pickle their training arguments under 'args'. A pickle that needs any other global is
    refused before anything in it runs.
  - a timm folder (config.json + one weight file) is not a state dict: load it with
    `load_timm_folder(path)`, i.e. `timm.create_model('local-dir:' + path, pretrained=True)`.

`load_into(model, state_dict)` copies a checkpoint into a model whose parameter names follow
timm's ViT (and the MAE reference for the decoder), tolerating the usual differences between
pretraining and fine-tuning checkpoints and naming every other difference.
"""
from __future__ import annotations

import argparse
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from shared.errors import UserError

PICKLE_SUFFIXES = (".pth", ".pt", ".bin")
WRAPPER_KEYS = ("model", "state_dict", "model_ema")  # tried in this order
DECODER_PREFIXES = ("decoder_", "mask_token")  # MAE decoder (reference names)
HEAD_PREFIXES = ("head.", "fc_norm.")  # classifier of a fine-tuned ViT
NORM_PREFIX = "norm."  # the encoder's final norm, absent from global-pool fine-tuned checkpoints
POS_EMBED_KEYS = ("pos_embed", "decoder_pos_embed")


def load_state_dict_file(path, key: str | None = None) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file, unwrapped from {'model': ...} and without 'module.'."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        obj = load_file(str(path), device="cpu")
    elif path.suffix in PICKLE_SUFFIXES:
        obj = _load_pickle(path)
    else:
        raise UserError(f"{path}: unknown checkpoint type {path.suffix!r} "
                        f"(expected .safetensors, {', '.join(PICKLE_SUFFIXES)})")
    return _unwrap(obj, path, key)


def _load_pickle(path: Path):
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's message is a page long; the part that matters names the refused global
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        what = f"it needs {found.group(1)}" if found else "it needs objects that are not plain data"
        raise UserError(f"refusing to load {path}: {what} (a checkpoint may hold only tensors, "
                        "plain containers and argparse.Namespace; nothing in it was run)") from None
    except (RuntimeError, EOFError, OSError) as err:
        raise UserError(f"cannot read checkpoint {path}: {str(err).splitlines()[0][:300]}") from None


def _unwrap(obj, path: Path, key: str | None) -> dict[str, torch.Tensor]:
    if key is not None:
        if not isinstance(obj, dict) or key not in obj:
            raise UserError(f"{path} has no {key!r} entry")
        obj = obj[key]
    elif isinstance(obj, dict):
        for wrapper in WRAPPER_KEYS:
            if isinstance(obj.get(wrapper), dict):
                obj = obj[wrapper]
                break
    if not isinstance(obj, dict) or not obj or not all(torch.is_tensor(v) for v in obj.values()):
        raise UserError(f"{path} holds no state dict (looked for {', '.join(WRAPPER_KEYS)} "
                        f"or a plain name -> tensor mapping)")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_timm_folder(path, **kwargs):
    """A timm model from a folder with config.json + model.safetensors (timm >= 1.0.16)."""
    import timm
    if not (Path(path) / "config.json").is_file():
        raise UserError(f"{path} is not a timm model folder (no config.json)")
    return timm.create_model(f"local-dir:{path}", pretrained=True, **kwargs)


@dataclass
class LoadReport:
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # left at the model's init
    unexpected: list[str] = field(default_factory=list)  # in the checkpoint, not used
    ignored: list[str] = field(default_factory=list)  # heads / decoder the model does not have
    interpolated: list[str] = field(default_factory=list)  # "pos_embed 14x14->16x16"
    recomputed: list[str] = field(default_factory=list)  # fixed sin-cos kept for the new grid

    encoder_only: bool = False  # no decoder in the checkpoint, one in the model (left at init)
    pooled_finetune: bool = False  # a global-pool fine-tuned checkpoint: fc_norm, no norm (norm left at init)

    def summary(self) -> str:
        """One line: what was loaded, left at init, ignored, resized."""
        parts = [f"loaded {len(self.loaded)} tensors"]
        decoder = [k for k in self.missing if k.startswith(DECODER_PREFIXES)]
        others = [k for k in self.missing if not k.startswith(DECODER_PREFIXES)]
        if decoder:
            parts.append(f"decoder left at init ({len(decoder)} tensors"
                         + (", encoder-only checkpoint)" if self.encoder_only else ")"))
        if others:
            parts.append(f"{len(others)} left at init: {_few(others)}")
        if self.pooled_finetune:
            parts.append("a global-pool fine-tuned checkpoint (fc_norm + head, no norm): its fc_norm normalises "
                         "the averaged feature, not the tokens, so norm stays at init and fc_norm is not mapped")
        if self.ignored:
            parts.append(f"ignored {len(self.ignored)} not in the model: {_few(self.ignored)}")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected: {_few(self.unexpected)}")
        parts += [f"interpolated {s}" for s in self.interpolated]
        parts += [f"recomputed {s}" for s in self.recomputed]
        return "; ".join(parts)


def load_into(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], *,
              strict_encoder: bool = True) -> LoadReport:
    """Copy `state_dict` into `model` and say what happened.

    Tolerated and reported: a checkpoint without decoder (the decoder stays at init), decoder
    or classifier-head keys the model does not have, a model head missing from the checkpoint
    (a fresh head), a global-pool fine-tuned checkpoint (fc_norm + head, no final norm: the
    model's norm stays at init, as fc_norm acts on the averaged feature), and a pos_embed of another grid (bicubic on the grid, cls slot kept; a
    fixed, non-trainable table is instead kept as the model computed it for its own grid).
    Refused with a UserError: shapes that differ (another architecture) and, when
    `strict_encoder`, any other missing or unexpected key.
    """
    own = model.state_dict()
    report = LoadReport()
    to_load, mismatched = {}, []
    for k, v in state_dict.items():
        if k not in own:
            not_ours = k.startswith(DECODER_PREFIXES + HEAD_PREFIXES)  # e.g. MAE -> plain encoder
            (report.ignored if not_ours else report.unexpected).append(k)
        elif v.shape == own[k].shape:
            to_load[k] = v
        elif k in POS_EMBED_KEYS and v.ndim == 3 and v.shape[-1] == own[k].shape[-1]:
            param = dict(model.named_parameters()).get(k)
            fixed = param is None or not param.requires_grad  # a buffer or a frozen sin-cos table
            if not fixed:
                to_load[k] = _resize_pos_embed(v, model, own[k].shape[1])
            (report.recomputed if fixed else report.interpolated).append(
                f"{k} {_grid_str(v.shape[1], model)}->{_grid_str(own[k].shape[1], model)}")
        else:
            mismatched.append(f"{k} {tuple(v.shape)} vs model {tuple(own[k].shape)}")
    kept = {s.split()[0] for s in report.recomputed}
    report.missing = [k for k in own if k not in to_load and k not in kept]
    # a fresh head is normal; a missing decoder only when the checkpoint has none at all
    has_decoder = any(k.startswith(DECODER_PREFIXES) for k in state_dict)
    fresh = HEAD_PREFIXES if has_decoder else DECODER_PREFIXES + HEAD_PREFIXES
    # the MAE reference's global-pool fine-tuning deletes `norm` and trains a fresh `fc_norm`
    report.pooled_finetune = ("fc_norm.weight" in state_dict and "norm.weight" in own
                              and not any(k.startswith(NORM_PREFIX) for k in state_dict))
    fresh += (NORM_PREFIX,) if report.pooled_finetune else ()
    report.encoder_only = not has_decoder and any(k.startswith(DECODER_PREFIXES) for k in own)
    bad_missing = [k for k in report.missing if not k.startswith(fresh)]
    problems = []
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es): {_few(mismatched)}")
    if strict_encoder and bad_missing:
        problems.append(f"{len(bad_missing)} missing: {_few(bad_missing)}")
    if strict_encoder and report.unexpected:
        problems.append(f"{len(report.unexpected)} unexpected: {_few(report.unexpected)}")
    if problems:
        raise UserError("checkpoint does not fit this model (another architecture?): " + "; ".join(problems))
    model.load_state_dict(to_load, strict=False)
    report.loaded = sorted(to_load)
    return report


def _num_prefix(model: torch.nn.Module) -> int:
    return int(getattr(model, "num_prefix_tokens", 1))


def _grid_str(tokens: int, model: torch.nn.Module) -> str:
    side = _side(tokens - _num_prefix(model))
    return f"{side}x{side}" if side else f"{tokens} tokens"


def _side(n: int) -> int:
    side = int(round(n ** 0.5))
    return side if side * side == n else 0


def _resize_pos_embed(pos: torch.Tensor, model: torch.nn.Module, new_tokens: int) -> torch.Tensor:
    """(1, prefix + s*s, D) -> (1, new_tokens, D): bicubic on the square grid, prefix kept.

    As the MAE fine-tuning code: F.interpolate bicubic, align_corners False, no antialias.
    """
    prefix = _num_prefix(model)
    old, new = _side(pos.shape[1] - prefix), _side(new_tokens - prefix)
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", (new, new))
    if not old or not new or tuple(grid) != (new, new):
        raise UserError(f"cannot interpolate a position embedding of {pos.shape[1]} tokens "
                        f"to {new_tokens}: only square grids are supported")
    head, patches = pos[:, :prefix], pos[:, prefix:]
    patches = patches.reshape(1, old, old, -1).permute(0, 3, 1, 2).float()  # (1, D, s, s)
    patches = F.interpolate(patches, size=(new, new), mode="bicubic", align_corners=False)
    patches = patches.permute(0, 2, 3, 1).reshape(1, new * new, -1).to(pos.dtype)
    return torch.cat([head, patches], dim=1)


def _few(names: list[str], n: int = 4) -> str:
    more = f" (+{len(names) - n} more)" if len(names) > n else ""
    return ", ".join(names[:n]) + more
