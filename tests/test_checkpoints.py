"""Checkpoint reading (safe pickles only), loading with reports, and the export round trips."""
from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from timm.layers import resample_abs_pos_embed

from pretrain_mae.export import export_mae, load_mae_safetensors, mae_encoder, main, save_mae
from pretrain_mae.model import build_mae, encoder_config, sincos_2d
from shared.checkpoints import load_into, load_state_dict_file, load_timm_folder
from shared.errors import UserError, run_cli
from shared.export import read_safetensors, save_timm_folder

ROOT = Path(__file__).resolve().parents[1]
DECODER = ("decoder_", "mask_token")
MEAN, STD = (0.499, 0.410, 0.366), (0.297, 0.270, 0.265)


def official(path: Path, sd: dict) -> Path:
    """The facebookresearch/mae (and MAE-Face) layout: training args pickled beside the model."""
    args = argparse.Namespace(model="mae_vit_test", mask_ratio=0.75, norm_pix_loss=True, lr=None)
    torch.save({"model": sd, "args": args, "epoch": 3, "optimizer": {"state": {}, "param_groups": []}}, path)
    return path


def same_outputs(a, b, imgs, noise) -> bool:
    with torch.no_grad():
        outputs = zip(a.eval()(imgs, noise=noise), b.eval()(imgs, noise=noise))  # loss, pred, mask
        return all(torch.equal(x, y) for x, y in outputs)


@pytest.fixture
def mae():
    torch.manual_seed(0)
    return build_mae("mae_vit_test").eval()


@pytest.fixture
def batch():
    return torch.randn(2, 3, 32, 32), torch.rand(2, 16)


def test_official_pth_loads_weights_only(tmp_path, mae, batch):
    path = official(tmp_path / "checkpoint-3.pth", mae.state_dict())
    sd = load_state_dict_file(path)
    assert set(sd) == set(mae.state_dict())
    fresh = build_mae("mae_vit_test")
    report = load_into(fresh, sd)
    assert not report.missing and not report.unexpected and not report.encoder_only
    assert same_outputs(fresh, mae, *batch)


def test_wrappers_and_module_prefix(tmp_path, mae):
    torch.save({"state_dict": {f"module.{k}": v for k, v in mae.state_dict().items()}}, tmp_path / "a.pt")
    assert set(load_state_dict_file(tmp_path / "a.pt")) == set(mae.state_dict())
    with pytest.raises(UserError, match="no state dict"):
        torch.save({"epoch": 3}, tmp_path / "b.pth")
        load_state_dict_file(tmp_path / "b.pth")
    with pytest.raises(UserError, match="not found"):
        load_state_dict_file(tmp_path / "missing.pth")


def test_encoder_only_finetune_checkpoint(tmp_path, mae):
    sd = {k: v for k, v in mae.state_dict().items() if not k.startswith(DECODER)}
    sd |= {"head.weight": torch.randn(7, 32), "head.bias": torch.zeros(7),
           "fc_norm.weight": torch.ones(32), "fc_norm.bias": torch.zeros(32)}
    path = official(tmp_path / "finetuned.pth", sd)
    fresh = build_mae("mae_vit_test")
    decoder_before = {k: v.clone() for k, v in fresh.state_dict().items() if k.startswith(DECODER)}
    report = load_into(fresh, load_state_dict_file(path))
    assert report.encoder_only
    assert set(report.missing) == set(decoder_before)
    assert sorted(report.ignored) == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]
    assert "decoder left at init" in report.summary() and "ignored 4" in report.summary()
    for k, v in fresh.state_dict().items():
        expected = decoder_before[k] if k in decoder_before else mae.state_dict()[k]
        assert torch.equal(v, expected), k


def test_pos_embed_other_grid(mae):
    big = build_mae("mae_vit_test", img_size=48)  # 6 x 6 grid
    # into the MAE, whose table is fixed sin-cos: recomputed for its own grid, not interpolated
    fresh = build_mae("mae_vit_test")
    report = load_into(fresh, big.state_dict())
    assert report.recomputed == ["pos_embed 6x6->4x4", "decoder_pos_embed 6x6->4x4"]
    assert torch.equal(fresh.pos_embed, sincos_2d(32, (4, 4)))
    # into a plain timm ViT, whose table is learned: bicubic on the grid, cls slot kept
    vit = mae_encoder(mae)
    state = {k: v for k, v in big.state_dict().items()}
    state["pos_embed"] = torch.randn(1, 37, 32)
    report = load_into(vit, state)
    assert report.interpolated == ["pos_embed 6x6->4x4"] and "decoder_pos_embed" in " ".join(report.ignored)
    expected = resample_abs_pos_embed(state["pos_embed"], (4, 4), (6, 6), num_prefix_tokens=1,
                                      interpolation="bicubic", antialias=False)
    torch.testing.assert_close(vit.pos_embed.data, expected, atol=1e-6, rtol=0)
    assert torch.equal(vit.pos_embed.data[0, 0], state["pos_embed"][0, 0])


def test_other_architecture_names_keys(mae):
    wide = build_mae("mae_vit_test", embed_dim=48)
    with pytest.raises(UserError, match=r"shape mismatch.*cls_token \(1, 1, 48\) vs model \(1, 1, 32\)"):
        load_into(build_mae("mae_vit_test"), wide.state_dict())
    deep = build_mae("mae_vit_test", depth=3)
    with pytest.raises(UserError, match=r"12 unexpected: blocks\.2\."):
        load_into(build_mae("mae_vit_test"), deep.state_dict())
    report = load_into(build_mae("mae_vit_test"), deep.state_dict(), strict_encoder=False)
    assert len(report.unexpected) == 12


class Evil:
    """Runs a shell command when unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("how", ["torch.save", "pickle.dump"])
def test_malicious_pickle_refused(tmp_path, mae, how):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    if how == "torch.save":  # zip format, the payload beside real weights
        torch.save({"model": mae.state_dict(), "args": Evil(marker)}, path)
    else:  # legacy raw pickle
        with open(path, "wb") as f:
            pickle.dump({"args": Evil(marker), "model": {}}, f, protocol=2)
    with pytest.raises(UserError, match=r"refusing to load .*evil.pth: it needs (posix|os|nt)\.system"):
        load_state_dict_file(path)
    assert not marker.exists()


def test_timm_folder_round_trip(tmp_path, mae):
    cfg = encoder_config(mae)
    folder = save_timm_folder(mae_encoder(mae), tmp_path / "enc", architecture=cfg["architecture"],
                              model_args=cfg["model_args"], mean=MEAN, std=STD)
    assert sorted(os.listdir(folder)) == ["config.json", "model.safetensors"]
    vit = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    assert type(vit) is timm.models.VisionTransformer and vit.num_classes == 0
    pcfg = vit.pretrained_cfg
    assert tuple(pcfg["mean"]) == MEAN and tuple(pcfg["std"]) == STD
    assert tuple(pcfg["input_size"]) == (3, 32, 32) and pcfg["num_classes"] == 0
    assert pcfg["interpolation"] == "bicubic" and pcfg["crop_pct"] == 1.0 and "tag" not in pcfg
    imgs = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        features = vit.forward_features(imgs)
        torch.testing.assert_close(features, mae.forward_features(imgs), atol=1e-6, rtol=0)
        latent, _, _ = mae.forward_encoder(imgs, 0.0, torch.arange(16.0).expand(2, 16))
        torch.testing.assert_close(features, latent, atol=1e-6, rtol=0)
    assert torch.equal(load_timm_folder(folder).pos_embed, vit.pos_embed)
    (folder / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(UserError, match="other weight files"):
        save_timm_folder(mae_encoder(mae), folder, architecture=cfg["architecture"],
                         model_args=cfg["model_args"], mean=MEAN, std=STD)


def test_full_mae_safetensors_round_trip(tmp_path, mae, batch):
    path = save_mae(mae, tmp_path / "mae.safetensors", mean=list(MEAN))
    _, meta = read_safetensors(path)
    assert meta["model_name"] == "mae_vit_test" and meta["mean"] == "[0.499, 0.41, 0.366]"
    assert json.loads(meta["mae_config"])["embed_dim"] == 32
    back = load_mae_safetensors(path)
    assert back.model_name == "mae_vit_test" and back.mae_config == mae.mae_config
    assert back.timm_architecture == mae.timm_architecture
    assert same_outputs(back, mae, *batch)


def test_export_mae_after_training(tmp_path, mae, batch):
    trained = {"optim": {"lr": 1e-3}, "data": {"interpolation": "bilinear"}}
    out = export_mae(mae, tmp_path / "export", mean=MEAN, std=STD, interpolation="bilinear", config=trained)
    _, meta = read_safetensors(out / "mae.safetensors")
    assert json.loads(meta["training_config"]) == trained
    assert same_outputs(load_mae_safetensors(out / "mae.safetensors"), mae, *batch)
    assert tuple(load_timm_folder(out / "encoder").pretrained_cfg["mean"]) == MEAN
    # what it trained on: whole stored crops resized with the run's interpolation, recorded for stage 3
    cfg = json.loads((out / "encoder" / "config.json").read_text())["pretrained_cfg"]
    assert (cfg["crop_pct"], cfg["interpolation"], cfg["input_size"]) == (1.0, "bilinear", [3, *mae.patch_embed.img_size])
    # the command reads the interpolation from the training configuration the full file carries
    assert run_cli(main, [str(out / "mae.safetensors"), "--out", str(tmp_path / "again")]) == 0
    again = json.loads((tmp_path / "again" / "encoder" / "config.json").read_text())["pretrained_cfg"]
    assert (again["crop_pct"], again["interpolation"]) == (1.0, "bilinear")


def test_export_cli(tmp_path, mae, batch, capsys):
    pth = official(tmp_path / "checkpoint.pth", mae.state_dict())
    assert run_cli(main, [str(pth), "--out", str(tmp_path / "a")]) == 0  # configuration inferred
    assert same_outputs(load_mae_safetensors(tmp_path / "a" / "mae.safetensors"), mae, *batch)
    # its own output is accepted too, and the saved mean/std travel on unless overridden
    assert run_cli(main, [str(tmp_path / "a" / "mae.safetensors"), "--out", str(tmp_path / "b"),
                          "--mean", *map(str, MEAN), "--std", *map(str, STD)]) == 0
    assert run_cli(main, [str(tmp_path / "b" / "mae.safetensors"), "--out", str(tmp_path / "c")]) == 0
    vit = load_timm_folder(tmp_path / "c" / "encoder")
    assert tuple(vit.pretrained_cfg["std"]) == STD and vit.pretrained_cfg["tag"] == "mae_vit_test"
    encoder_only = official(tmp_path / "enc.pth", {k: v for k, v in mae.state_dict().items()
                                                   if not k.startswith(DECODER)})
    assert run_cli(main, [str(encoder_only), "--out", str(tmp_path / "d"), "--model", "mae_vit_test"]) == 0
    assert sorted(os.listdir(tmp_path / "d")) == ["encoder"]
    assert "full-MAE file not written" in capsys.readouterr().out
    assert run_cli(main, [str(pth), "--out", str(tmp_path / "e"), "--model", "mae_vit_tset"]) == 2


def test_export_cli_missing_file_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pretrain_mae.export", str(tmp_path / "none.pth"),
                           "--out", str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "checkpoint not found" in proc.stderr
    assert not (tmp_path / "out").exists()
