"""Stage-2 model: encoder loading (shared.encoders), the classifier, its optimizer groups, export.

Everything starts from a tiny timm ViT (32 px, 8 px patches, width 32, 2 blocks) saved in the
three offline forms: a timm folder, an official-MAE-format .pth, a .safetensors state dict.
"""
from __future__ import annotations

import argparse

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.models import VisionTransformer

from finetune_affectnet.model import (ExpressionClassifier, build_classifier, export_classifier,
                                      load_classifier, param_groups)
from shared import encoders
from shared.encoders import IMAGENET_MEAN, load_encoder, load_frozen_encoder, preprocess
from shared.errors import UserError
from shared.export import save_timm_folder

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=0,
            global_pool="token")
ARCH = "vit_base_patch16_224"  # the named timm family; TINY's arguments set every size
FACE_MEAN, FACE_STD = (0.499, 0.410, 0.366), (0.297, 0.270, 0.265)
CLASSES = ["neutral", "happy", "sad", "surprise", "fear", "disgust", "anger"]


@pytest.fixture(scope="module")
def vit() -> VisionTransformer:
    torch.manual_seed(0)
    model = VisionTransformer(**TINY).eval()
    with torch.no_grad():  # non-trivial norm, so "kept" and "fresh" differ
        model.norm.weight.uniform_(0.5, 1.5)
        model.norm.bias.normal_()
    return model


@pytest.fixture(scope="module")
def specs(vit, tmp_path_factory) -> dict:
    """{"folder", "pth", "safetensors"}: the same weights as a stage-1 export would hold them."""
    root = tmp_path_factory.mktemp("encoders")
    folder = save_timm_folder(vit, root / "encoder", architecture=ARCH, model_args=TINY,
                              mean=FACE_MEAN, std=FACE_STD)
    mae = dict(vit.state_dict())
    mae.update({"mask_token": torch.randn(1, 1, 16), "decoder_embed.weight": torch.randn(16, 32),
                "decoder_embed.bias": torch.zeros(16), "decoder_pos_embed": torch.zeros(1, 17, 16),
                "decoder_norm.weight": torch.ones(16), "decoder_pred.weight": torch.randn(192, 16)})
    torch.save({"model": mae, "args": argparse.Namespace(model="mae_tiny"), "epoch": 3}, root / "mae.pth")
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(root / "enc.safetensors"))
    return {"folder": folder, "pth": root / "mae.pth", "safetensors": root / "enc.safetensors"}


def _load(spec, kind, **kw):
    extra = {} if kind == "folder" else dict(architecture=ARCH, model_args=TINY)
    return load_encoder(spec, **extra, **kw)


def _images(n=3, size=32, seed=1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", ["folder", "pth", "safetensors"])
def test_every_kind_loads_the_same_encoder(vit, specs, kind):
    encoder, info = _load(specs[kind], kind, pool="token")
    assert info.kind == ("folder" if kind == "folder" else "file")
    ours, ref = encoder.state_dict(), vit.state_dict()
    assert ours.keys() == ref.keys()
    assert all(torch.equal(ours[k], ref[k]) for k in ref)
    assert info.unused == () and info.pool == "token" and info.embed_dim == 32
    assert info.input_size == (3, 32, 32)
    assert info.mean == (FACE_MEAN if kind == "folder" else IMAGENET_MEAN)
    if kind == "pth":  # the MAE decoder is named, not loaded
        assert "mask_token" in info.report.ignored and "decoder_embed.weight" in info.report.ignored
    with torch.no_grad():
        torch.testing.assert_close(encoder.eval()(_images()), vit(_images()), rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["folder", "pth"])
def test_avg_pool_gets_a_fresh_fc_norm_and_reports_the_unused_norm(vit, specs, kind):
    encoder, info = _load(specs[kind], kind, pool="avg")
    assert isinstance(encoder.norm, torch.nn.Identity) and encoder.global_pool == "avg"
    assert torch.equal(encoder.fc_norm.weight, torch.ones(32))
    assert torch.equal(encoder.fc_norm.bias, torch.zeros(32))
    assert info.unused == ("norm.bias", "norm.weight")
    assert {"fc_norm.weight", "fc_norm.bias"} <= set(info.report.missing)
    assert "norm.weight" in info.summary() and "fc_norm" in info.summary()
    assert torch.equal(encoder.blocks[1].mlp.fc2.weight, vit.blocks[1].mlp.fc2.weight)


def test_token_pool_keeps_the_pretrained_norm(vit, specs):
    encoder, info = _load(specs["folder"], "folder", pool="token")
    assert isinstance(encoder.fc_norm, torch.nn.Identity)
    assert torch.equal(encoder.norm.weight, vit.norm.weight) and not info.report.missing


def test_pos_embed_is_interpolated_for_another_size(vit, specs):
    encoder, info = _load(specs["pth"], "pth", pool="avg", img_size=48)
    assert encoder.pos_embed.shape == (1, 1 + 6 * 6, 32)
    assert info.report.interpolated == ["pos_embed 4x4->6x6"]
    assert torch.equal(encoder.pos_embed[:, :1], vit.pos_embed[:, :1])  # cls slot kept
    assert info.input_size == (3, 48, 48) and info.model_args["img_size"] == 48
    assert encoder(_images(2, 48)).shape == (2, 32)


def test_timm_name_goes_through_timm_pretrained(vit, monkeypatch):
    calls = []

    def fake_create_model(name, pretrained=False, **kwargs):  # the hub is unreachable here
        calls.append((name, pretrained))
        model = VisionTransformer(**{**TINY, **kwargs})
        if pretrained:
            model.load_state_dict(vit.state_dict())
        return model

    monkeypatch.setattr(encoders.timm, "create_model", fake_create_model)
    encoder, info = load_encoder("vit_base_patch16_224.mae", pool="avg")
    assert calls[0] == ("vit_base_patch16_224.mae", True) and calls[1] == ("vit_base_patch16_224", False)
    assert info.kind == "timm" and info.architecture == "vit_base_patch16_224"
    assert torch.equal(encoder.pos_embed, vit.pos_embed) and info.unused == ("norm.bias", "norm.weight")


def test_bad_specs_are_one_line_errors(specs, tmp_path):
    with pytest.raises(UserError, match="neither a folder"):
        load_encoder("no_such_model_or_path")
    with pytest.raises(UserError, match="not found"):
        load_encoder(tmp_path / "missing.pth")
    with pytest.raises(UserError, match="weight files only"):
        load_encoder(specs["folder"], architecture=ARCH)
    with pytest.raises(UserError, match="pooling"):
        load_encoder(specs["folder"], pool="max")


def test_classifier_shapes_and_head_init(specs):
    model, info = build_classifier(specs["folder"], 7, hidden_dim=512, dropout=0.1)
    assert info.pool == "avg" and model.encoder.blocks[1].drop_path1.drop_prob == pytest.approx(0.1)
    x = _images(4)
    assert model(x).shape == (4, 7) and model.features(x).shape == (4, 32)
    fc1, fc2 = model.head.fc1, model.head.fc2
    assert fc1.weight.shape == (512, 32) and fc2.weight.shape == (7, 512)
    assert 1.5e-5 < fc2.weight.std().item() < 2.5e-5
    assert not fc1.bias.any() and not fc2.bias.any()
    single, _ = build_classifier(specs["folder"], 8, hidden_dim=0)
    linears = [m for m in single.head.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 1 and linears[0].weight.shape == (8, 32) and single(x).shape == (4, 8)


def test_linear_probe_encoder_is_frozen_and_stays_in_eval(specs):
    model, info = build_classifier(specs["folder"], 7, linear_probe=True)
    assert info.pool == "token"  # the MAE linear-probe protocol uses the cls token
    model.train()
    assert not model.encoder.training and model.head.training
    assert not any(p.requires_grad for p in model.encoder.parameters())
    bn = model.head.bn
    assert isinstance(bn, torch.nn.BatchNorm1d) and not bn.affine and bn.eps == 1e-6
    assert model(_images(4)).shape == (4, 7)
    grouped = {id(p) for g in param_groups(model, weight_decay=0.05, layer_decay=0.75) for p in g["params"]}
    assert grouped == {id(p) for p in model.head.parameters()}


def _group_of(groups) -> dict[int, dict]:
    return {id(p): g for g in groups for p in g["params"]}


@pytest.mark.parametrize("pool", ["avg", "token"])
def test_param_groups_layer_decay_and_no_decay(specs, pool):
    model, _ = build_classifier(specs["folder"], 7, pool=pool)
    decay, n_blocks = 0.5, 2
    groups = _group_of(param_groups(model, weight_decay=0.05, layer_decay=decay))
    names = dict(model.named_parameters())
    assert set(groups) == {id(p) for p in names.values()}

    def layer(name):
        if name.startswith(("encoder.cls_token", "encoder.pos_embed", "encoder.patch_embed")):
            return 0
        if name.startswith("encoder.blocks."):
            return int(name.split(".")[2]) + 1
        return n_blocks + 1  # encoder.norm / fc_norm and the head come after the blocks

    for name, p in names.items():
        g = groups[id(p)]
        assert g["lr_scale"] == decay ** (n_blocks + 1 - layer(name)), name
        no_decay = p.ndim <= 1 or name in ("encoder.pos_embed", "encoder.cls_token")
        assert g["weight_decay"] == (0.0 if no_decay else 0.05), name
    assert groups[id(names["encoder.patch_embed.proj.weight"])]["weight_decay"] == 0.05
    flat = param_groups(model, weight_decay=0.05, layer_decay=1.0)
    assert all(g["lr_scale"] == 1.0 for g in flat)


@pytest.mark.parametrize("linear_probe", [False, True])
def test_export_round_trip(specs, tmp_path, linear_probe):
    torch.manual_seed(0)
    model, info = build_classifier(specs["folder"], 7, linear_probe=linear_probe, dropout=0.2)
    with torch.no_grad():  # move the head (and the BatchNorm statistics) off their init
        for p in model.head.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        model.train()(_images(8, seed=5))
    model.eval()
    out = export_classifier(model, info, tmp_path / "export", class_names=CLASSES,
                            mean=FACE_MEAN, std=FACE_STD, crop_pct=0.875, interpolation="bicubic",
                            extra={"val_top1": 0.5})
    loaded = load_classifier(out)
    x = _images(5, seed=2)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=1e-6)
        assert isinstance(loaded, ExpressionClassifier) and loaded.linear_probe == linear_probe
        assert loaded.class_names == CLASSES and loaded.encoder_info.mean == FACE_MEAN

        plain = timm.create_model(f"local-dir:{out / 'encoder'}", pretrained=True).eval()
        torch.testing.assert_close(plain(x), model.features(x), rtol=0, atol=1e-6)

        frozen, finfo = load_frozen_encoder(out / "encoder")
        assert finfo.pool == info.pool and finfo.std == FACE_STD
        assert not any(p.requires_grad for p in frozen.parameters())
        frozen.train()
        assert not frozen.encoder.training
        torch.testing.assert_close(frozen(x), model.features(x), rtol=0, atol=1e-6)
    uint8 = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    assert preprocess(uint8, finfo, "cpu").shape == (2, 3, 32, 32)


def test_token_pool_from_an_avg_export_is_refused(specs, tmp_path):
    model, info = build_classifier(specs["folder"], 7)
    out = export_classifier(model, info, tmp_path / "export", class_names=CLASSES,
                            mean=FACE_MEAN, std=FACE_STD, crop_pct=1.0, interpolation="bicubic")
    with pytest.raises(UserError, match="average pooling"):
        load_encoder(out / "encoder", pool="token")
    encoder, again = load_encoder(out / "encoder", pool="avg")  # fc_norm comes back trained
    assert not again.report.missing and again.unused == ()
