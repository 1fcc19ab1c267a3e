"""Stage 3b model: shapes, masking (padding invariance), causality, gradients, a tiny fit."""
from __future__ import annotations

import pytest
import torch

from eri_downstream.model import CausalTCN, ERIModel, ERIModelConfig, TemporalSE, masked_mean

# small sizes so the whole file runs in seconds on a CPU
TINY = dict(visual_dim=12, audio_dim=10, text_dim=14, branch_dim=8, num_frames=6, se_reduction=2,
            gru_hidden=8, tcn_channels=(16, 16), audio_heads=2, audio_ff=16, text_channels=8, text_heads=2,
            text_ff=16, fusion_hidden=8)
DIMS = {"visual": 12, "audio": 10, "text": 14}
SUBSETS = [("visual",), ("audio",), ("text",), ("visual", "audio"), ("visual", "audio", "text")]


def make_batch(modalities, lengths: dict, gen: torch.Generator, pad_to: dict | None = None) -> dict:
    """Padded batch; padded steps hold zeros (collate's convention)."""
    batch = {}
    for m in modalities:
        T = max(lengths[m]) if pad_to is None else pad_to[m]
        x = torch.zeros(len(lengths[m]), T, DIMS[m])
        mask = torch.zeros(len(lengths[m]), T, dtype=torch.bool)
        for i, n in enumerate(lengths[m]):
            x[i, :n] = torch.randn(n, DIMS[m], generator=gen)
            mask[i, :n] = True
        batch[m], batch[f"{m}_mask"] = x, mask
    return batch


def repad(batch: dict, extra: int, gen: torch.Generator, garbage: float | None = None) -> dict:
    """Append `extra` padded steps to every modality and fill *all* padded steps with garbage."""
    out = {}
    for key, value in batch.items():
        if key.endswith("_mask"):
            continue
        mask = batch[f"{key}_mask"]
        B, T, D = value.shape
        x = torch.cat([value, torch.zeros(B, extra, D)], 1)
        mask = torch.cat([mask, torch.zeros(B, extra, dtype=torch.bool)], 1)
        junk = 1e3 * torch.randn(x.shape, generator=gen) if garbage is None else torch.full(x.shape, garbage)
        out[key] = torch.where(mask[..., None], x, junk)
        out[f"{key}_mask"] = mask
    return out


LENGTHS = {"visual": [6, 3, 1], "audio": [9, 4, 2], "text": [5, 1, 3]}


@pytest.mark.parametrize("modalities", SUBSETS)
def test_shapes_and_range(modalities):
    torch.manual_seed(0)
    model = ERIModel(ERIModelConfig(modalities=modalities, **TINY)).eval()
    out = model(make_batch(modalities, LENGTHS, torch.Generator().manual_seed(1)))
    assert out.shape == (3, 7)
    assert torch.isfinite(out).all() and (out >= 0).all() and (out <= 1).all()
    assert set(model.branches) == set(modalities)


def test_default_sizes_build_and_run():
    model = ERIModel(ERIModelConfig()).eval()
    batch = {"visual": torch.randn(2, 32, 768), "visual_mask": torch.ones(2, 32, dtype=torch.bool),
             "audio": torch.randn(2, 50, 768), "audio_mask": torch.arange(50) < torch.tensor([[50], [20]]),
             "text": torch.zeros(2, 1, 1024), "text_mask": torch.ones(2, 1, dtype=torch.bool)}
    assert model(batch).shape == (2, 7)


def test_config_validation_and_canonical_order():
    cfg = ERIModelConfig(modalities=["audio", "visual"], tcn_channels=[32, 32], audio_heads=4)
    assert cfg.modalities == ("visual", "audio") and cfg.tcn_channels == (32, 32)
    for bad in [(), ("video",), ("audio", "audio")]:
        with pytest.raises(ValueError):
            ERIModelConfig(modalities=bad)


@pytest.mark.parametrize("garbage", [None, float("nan"), float("inf")])
def test_padding_invariance_all_branches(garbage):
    """Key test: more padding, with garbage in every padded step, changes nothing (eval mode)."""
    mods = ("visual", "audio", "text")
    torch.manual_seed(0)
    model = ERIModel(ERIModelConfig(modalities=mods, **TINY)).eval()
    gen = torch.Generator().manual_seed(2)
    batch = make_batch(mods, LENGTHS, gen)
    with torch.no_grad():
        ref = model(batch)
        for extra in (0, 1, 7):
            out = model(repad(batch, extra, gen, garbage))
            torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
        # each branch alone, too (the fused output could hide a branch that is constant)
        for m, branch in model.branches.items():
            padded = repad(batch, 5, gen, garbage)
            torch.testing.assert_close(branch(padded[m], padded[f"{m}_mask"]), branch(batch[m], batch[f"{m}_mask"]),
                                       atol=1e-5, rtol=0)


def test_sample_alone_equals_sample_in_padded_batch():
    mods = ("visual", "audio", "text")
    torch.manual_seed(0)
    model = ERIModel(ERIModelConfig(modalities=mods, **TINY)).eval()
    batch = make_batch(mods, LENGTHS, torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = model(batch)
        for i in range(3):
            single = {}
            for m in mods:
                n = LENGTHS[m][i]
                single[m], single[f"{m}_mask"] = batch[m][i:i + 1, :n], batch[f"{m}_mask"][i:i + 1, :n]
            torch.testing.assert_close(model(single), full[i:i + 1], atol=1e-5, rtol=0)


def test_temporal_se_ignores_padded_frames():
    torch.manual_seed(0)
    se = TemporalSE(num_frames=8, reduction=2)
    x = torch.randn(2, 8, 5)
    mask = torch.arange(8) < torch.tensor([[8], [3]])
    y = se(x, mask)
    x2 = torch.where(mask[..., None], x, torch.full_like(x, 1e6))  # garbage in the padded frames
    torch.testing.assert_close(se(x2, mask), y)
    assert (y[1, 3:] == 0).all()  # padded frames come out as zero
    # shorter batch (frame slots zero-extended) and longer, padding-only batch give the same result
    torch.testing.assert_close(se(x[1:, :3], mask[1:, :3]), y[1:, :3])
    long_x = torch.cat([x2, torch.randn(2, 4, 5)], 1)
    long_m = torch.cat([mask, torch.zeros(2, 4, dtype=torch.bool)], 1)
    torch.testing.assert_close(se(long_x, long_m)[:, :8], y)
    # real frames are actually re-weighted by a weight in (0, 1)
    ratio = y[0] / x[0]
    assert ((ratio > 0) & (ratio < 1)).all()
    with pytest.raises(ValueError, match="num_frames"):
        se(torch.randn(1, 9, 5), torch.ones(1, 9, dtype=torch.bool))


def test_causal_tcn_is_causal():
    torch.manual_seed(0)
    tcn = CausalTCN(4, [8, 8, 8], kernel=3, dropout=0.0).eval()
    x = torch.randn(2, 20, 4)
    y = tcn(x)
    assert y.shape == (2, 20, 8)
    for t in (0, 7, 19):
        x2 = x.clone()
        x2[:, t:] = torch.randn(2, 20 - t, 4)  # change the present and the future
        y2 = tcn(x2)
        torch.testing.assert_close(y2[:, :t], y[:, :t])  # the past is untouched
        assert not torch.allclose(y2[:, t], y[:, t])  # ... the present does react


def test_no_speech_text_and_missing_modality_are_finite():
    mods = ("visual", "audio", "text")
    torch.manual_seed(0)
    model = ERIModel(ERIModelConfig(modalities=mods, **TINY))
    batch = make_batch(mods, LENGTHS, torch.Generator().manual_seed(4))
    batch["text"], batch["text_mask"] = torch.zeros(3, 1, 14), torch.ones(3, 1, dtype=torch.bool)  # no speech
    batch["audio_mask"][1] = False  # video 1 has no audio at all
    batch["visual_mask"][2] = False  # video 2 has no frames
    out = model.train()(batch)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert masked_mean(torch.randn(1, 3, 2), torch.zeros(1, 3, dtype=torch.bool)).eq(0).all()


def test_mask_must_be_left_aligned():
    model = ERIModel(ERIModelConfig(modalities=("audio",), **TINY))
    with pytest.raises(ValueError, match="left-aligned"):
        model({"audio": torch.randn(1, 4, 10), "audio_mask": torch.tensor([[False, True, True, True]])})


@pytest.mark.parametrize("modalities", SUBSETS)
def test_gradients_reach_every_used_parameter(modalities):
    torch.manual_seed(0)
    model = ERIModel(ERIModelConfig(modalities=modalities, dropout=0.0, branch_dropout=0.0, **TINY))
    out = model(make_batch(modalities, LENGTHS, torch.Generator().manual_seed(5)))
    torch.nn.functional.mse_loss(out, torch.rand(3, 7)).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    unused = set(("visual", "audio", "text")) - set(modalities)
    assert not any(name.split(".")[1] in unused for name, _ in model.named_parameters())


def test_learns_a_simple_function():
    """targets = sigmoid of the mean over real frames of a few visual channels (+ an audio one):
    300 AdamW steps must cut the MSE to < 10 % of the best constant predictor's."""
    mods = ("visual", "audio", "text")
    torch.manual_seed(0)
    sizes = {**TINY, "gru_hidden": 16, "branch_dim": 16, "fusion_hidden": 32}  # no 8-d bottleneck for 7 targets
    model = ERIModel(ERIModelConfig(modalities=mods, dropout=0.0, branch_dropout=0.0, **sizes))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(6)

    def sample(B=32):
        lengths = {m: torch.randint(1, 7, (B,), generator=gen).tolist() for m in mods}
        batch = make_batch(mods, lengths, gen)
        v = masked_mean(batch["visual"], batch["visual_mask"])  # (B, 12)
        a = masked_mean(batch["audio"], batch["audio_mask"])  # (B, 10)
        signal = torch.cat([v[:, :6], a[:, :1]], 1)  # 7 targets, one channel each
        return batch, torch.sigmoid(3 * signal)

    test_batch, test_y = sample(256)
    baseline = ((test_y - test_y.mean(0)) ** 2).mean().item()  # MSE of the best constant
    for _ in range(300):
        batch, y = sample()
        loss = torch.nn.functional.mse_loss(model(batch), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        final = torch.nn.functional.mse_loss(model.eval()(test_batch), test_y).item()
    assert final < 0.1 * baseline, (final, baseline)
