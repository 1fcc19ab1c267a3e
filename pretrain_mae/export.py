"""Export a pretrained MAE: its encoder as a plain timm model folder, the whole MAE as safetensors.

    python -m pretrain_mae.export CHECKPOINT --out DIR [--model NAME] [--mean M M M --std S S S]

CHECKPOINT is a training state folder (`<run>/checkpoints/step_N`, whose config.yaml names the
model and the normalisation), a full-MAE .safetensors written by `save_mae` (it names its
configuration) or an official-format .pth ({'model': state_dict, 'args': Namespace}, e.g. facebookresearch/mae or
MAE-Face), whose configuration is `--model` or, when omitted, the one named configuration
whose tensor shapes it fits. Writes

    DIR/encoder/config.json + model.safetensors   timm.create_model('local-dir:DIR/encoder', pretrained=True)
    DIR/mae.safetensors                           load_mae_safetensors(): encoder + decoder

(the second only when the checkpoint has a decoder: an encoder-only one would be half at init).
Training calls `export_mae(mae, DIR, mean=..., std=..., config=...)`, which writes the same.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import timm
import torch
import yaml

from pretrain_mae.model import MaskedAutoencoder, build_mae, encoder_config, list_models
from shared.checkpoints import DECODER_PREFIXES, LoadReport, load_into, load_state_dict_file
from shared.encoders import IMAGENET_MEAN, IMAGENET_STD
from shared.errors import UserError, run_cli
from shared.export import read_safetensors, save_safetensors, save_timm_folder



def mae_encoder(mae: MaskedAutoencoder) -> torch.nn.Module:
    """A plain timm VisionTransformer with the MAE's encoder weights (decoder left behind)."""
    cfg = encoder_config(mae)
    encoder = timm.create_model(cfg["architecture"], pretrained=False, **cfg["model_args"])
    weights = {k: v for k, v in mae.state_dict().items() if not k.startswith(DECODER_PREFIXES)}
    # same names by construction; pos_embed becomes a trainable table here, as when the
    # reference fine-tunes (timm's ViT has no fixed-table option)
    encoder.load_state_dict(weights, strict=True)
    return encoder.eval()


def save_mae(mae: MaskedAutoencoder, path, **extra) -> Path:
    """The full MAE with the metadata that rebuilds it (name, constructor arguments, timm arch)."""
    meta = {"model_name": mae.model_name, "mae_config": mae.mae_config,
            "timm_architecture": mae.timm_architecture, **extra}
    return save_safetensors(mae, path, meta)


def load_mae_safetensors(path) -> MaskedAutoencoder:
    """Rebuild and fill the MAE saved by `save_mae`."""
    tensors, meta = read_safetensors(path)
    if "mae_config" not in meta:
        raise UserError(f"{path} has no 'mae_config' metadata: not written by save_mae")
    mae = MaskedAutoencoder(**json.loads(meta["mae_config"]))
    mae.model_name = meta.get("model_name", "custom")
    mae.timm_architecture = meta.get("timm_architecture", mae.timm_architecture)
    mae.load_state_dict(tensors, strict=True)
    return mae


def infer_model_name(state_dict: dict[str, torch.Tensor]) -> str:
    """The named configuration whose tensor shapes the checkpoint fits (built on 'meta')."""
    fits = []
    for name in list_models():
        with torch.device("meta"):
            shapes = {k: v.shape for k, v in build_mae(name).state_dict().items()}
        if all(k in shapes and shapes[k] == v.shape for k, v in state_dict.items()
               if not k.startswith(("head.", "fc_norm."))):
            fits.append(name)
    if len(fits) != 1:
        found = f"it fits {', '.join(fits)}" if fits else "it fits none of them"
        raise UserError(f"cannot tell which MAE configuration this checkpoint is ({found}); pass --model")
    return fits[0]


def load_mae_checkpoint(path, name: str | None = None) -> tuple[MaskedAutoencoder, dict, LoadReport | None]:
    """(mae, metadata, load report) from a save_mae file (report None) or another checkpoint."""
    path = Path(path)
    if path.is_dir() and (path / "config.yaml").is_file() and (path / "model.safetensors").is_file():
        return _from_training_state(path)
    if path.suffix == ".safetensors" and name is None:
        _, meta = read_safetensors(path)
        if "mae_config" in meta:
            return load_mae_safetensors(path), meta, None
    state_dict = load_state_dict_file(path)
    mae = build_mae(name or infer_model_name(state_dict))
    return mae, {}, load_into(mae, state_dict)


def _from_training_state(folder: Path) -> tuple[MaskedAutoencoder, dict, LoadReport]:
    """A state written by pretrain_mae/main.py: its config rebuilds the model exactly."""
    config = yaml.safe_load((folder / "config.yaml").read_text())
    mae = build_mae(config["model"]["name"], **config["model"].get("overrides", {}))
    report = load_into(mae, load_state_dict_file(folder / "model.safetensors"))
    data = config.get("data", {})
    meta = {k: json.dumps(data[k]) for k in ("mean", "std") if k in data}
    return mae, {**meta, "training_config": config}, report


def _parse(argv):
    parser = argparse.ArgumentParser(prog="python -m pretrain_mae.export", description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", help="training state folder, full-MAE .safetensors or official-format .pth")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--model", help=f"configuration of a .pth, one of {', '.join(list_models())} "
                        "(default: the one the checkpoint's shapes fit)")
    for stat in ("mean", "std"):
        parser.add_argument(f"--{stat}", type=float, nargs=3,
                            help=f"normalisation {stat} (default: the checkpoint's, else ImageNet's)")
    return parser.parse_args(argv)


def export_mae(mae: MaskedAutoencoder, out_dir, *, mean, std, interpolation: str = "bicubic",
               config: dict | None = None, full: bool = True) -> Path:
    """OUT/encoder (timm folder) and, when `full`, OUT/mae.safetensors; `config` (e.g. the
    training configuration) is stored in the full file's metadata. Returns OUT. The folder's
    pretrained_cfg records the preprocessing the MAE trained with: whole stored face crops
    (crop_pct 1.0) resized to its input with `interpolation`, normalised with `mean` / `std`."""
    out = Path(out_dir)
    cfg = encoder_config(mae)
    save_timm_folder(mae_encoder(mae), out / "encoder", architecture=cfg["architecture"],
                     model_args=cfg["model_args"], mean=mean, std=std, crop_pct=1.0, interpolation=interpolation,
                     extra_cfg={"tag": mae.model_name})
    if full:
        extra = {"training_config": config} if config is not None else {}
        save_mae(mae, out / "mae.safetensors", mean=list(mean), std=list(std), **extra)
    return out


def _trained_interpolation(meta: dict) -> str:
    """The resize interpolation of the training configuration a checkpoint carries (a dict from a
    training state, JSON text in a save_mae file); bicubic, the MAE recipe's, when it has none."""
    config = meta.get("training_config") or {}
    config = json.loads(config) if isinstance(config, str) else config
    return (config.get("data") or {}).get("interpolation", "bicubic")


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    mae, meta, report = load_mae_checkpoint(args.checkpoint, args.model)
    mean = args.mean or json.loads(meta.get("mean", "null")) or IMAGENET_MEAN
    std = args.std or json.loads(meta.get("std", "null")) or IMAGENET_STD
    full = report is None or not report.encoder_only  # an encoder-only file has no decoder to save
    out = export_mae(mae, args.out, mean=mean, std=std, interpolation=_trained_interpolation(meta),
                     config=meta.get("training_config"), full=full)
    print(f"{args.checkpoint}: " + (report.summary() if report else "full MAE, rebuilt from its metadata"))
    print(f"encoder -> {out / 'encoder'} (timm.create_model('local-dir:{out / 'encoder'}', pretrained=True))")
    print(f"full MAE -> {out / 'mae.safetensors'}" if full else
          "no decoder in the checkpoint: full-MAE file not written")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
