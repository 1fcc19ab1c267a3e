"""Stage 3b's levers: the Pearson-aware and CCC losses (values and gradients), modality dropout,
the sentence text input (stage 3a's `sentence` step), and the grid table comparing each lever
with the paper's recipe after training on a store whose labels are learnable."""
from __future__ import annotations

import csv
import re

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr

from eri_downstream.levers import ccc_per_column, drop_modalities, pearson_per_column, regression_loss
from run_utils import run_stage
from test_eri_train import store, tiny  # noqa: F401 - the synthetic store fixture and its overrides

MODALITIES = ("visual", "audio", "text")


def test_pearson_and_ccc_are_the_textbook_values():
    rng = np.random.default_rng(0)
    pred, target = rng.random((32, 7)), rng.random((32, 7))
    r = pearson_per_column(torch.tensor(pred), torch.tensor(target)).numpy()
    assert r == pytest.approx([pearsonr(pred[:, j], target[:, j])[0] for j in range(7)], abs=1e-9)
    # Lin (1989): population moments
    cov = ((pred - pred.mean(0)) * (target - target.mean(0))).mean(0)
    ccc = 2 * cov / (pred.var(0) + target.var(0) + (pred.mean(0) - target.mean(0)) ** 2)
    assert ccc_per_column(torch.tensor(pred), torch.tensor(target)).numpy() == pytest.approx(ccc, abs=1e-7)  # EPS
    shifted = torch.tensor(target) + 0.5  # Pearson ignores a shift, CCC does not
    assert pearson_per_column(shifted, torch.tensor(target)).numpy() == pytest.approx(np.ones(7))
    assert (ccc_per_column(shifted, torch.tensor(target)) < 0.9).all()
    assert regression_loss("mse+pearson", torch.tensor(pred), torch.tensor(target)).item() == pytest.approx(
        ((pred - target) ** 2).mean() + 1 - r.mean(), abs=1e-9)


@pytest.mark.parametrize("loss", ["mse+pearson", "ccc"])
def test_loss_gradients_match_finite_differences(loss):
    g = torch.Generator().manual_seed(1)
    pred = torch.rand(12, 7, dtype=torch.float64, generator=g, requires_grad=True)
    target = torch.rand(12, 7, dtype=torch.float64, generator=g)
    assert torch.autograd.gradcheck(lambda p: regression_loss(loss, p, target), (pred,), eps=1e-6, atol=1e-6)


def test_a_constant_column_gives_finite_values_and_gradients():
    pred = torch.rand(8, 7, requires_grad=True)
    target = torch.rand(8, 7)
    target[:, 2] = 0.5  # an emotion nobody in the batch shows
    for loss in ("mse+pearson", "ccc"):
        value = regression_loss(loss, pred, target)
        value.backward()
        assert torch.isfinite(value) and torch.isfinite(pred.grad).all(), loss
        pred.grad = None


def _batch(n: int) -> dict:
    batch = {"labels": torch.rand(n, 7)}
    for m, t in zip(MODALITIES, (8, 20, 4)):
        batch[m], batch[f"{m}_mask"] = torch.rand(n, t, 5) + 1, torch.ones(n, t, dtype=torch.bool)
    return batch


def test_modality_dropout_drops_at_the_rate_asked_and_never_everything():
    batch = _batch(4000)
    out = drop_modalities(batch, MODALITIES, 0.5, torch.Generator().manual_seed(0))
    gone = torch.stack([~out[f"{m}_mask"].any(1) for m in MODALITIES], 1)  # (B, 3)
    assert gone.sum(1).max() == 2  # never all three
    # each dropped with p = 0.5, except that one of the all-three (p^3 = 1/8) is restored
    assert gone.sum(1).float().mean().item() == pytest.approx(3 * 0.5 - 0.125, abs=0.05)
    for j, m in enumerate(MODALITIES):
        assert not out[m][gone[:, j]].any()  # dropped: zeros, exactly what missing features look like
        assert torch.equal(out[m][~gone[:, j]], batch[m][~gone[:, j]])  # kept: untouched
    assert batch["visual_mask"].all()  # the input batch is not modified
    nearly_all = drop_modalities(batch, MODALITIES, 0.99, torch.Generator().manual_seed(1))
    assert all(any(nearly_all[f"{m}_mask"][i].any() for m in MODALITIES) for i in range(4000))
    assert drop_modalities(batch, ("visual",), 0.9, torch.Generator()) is batch  # one modality: never dropped


def test_the_model_gives_finite_outputs_for_a_dropped_modality():
    from eri_downstream.model import ERIModel, ERIModelConfig
    model = ERIModel(ERIModelConfig(visual_dim=5, audio_dim=5, text_dim=5, num_frames=8)).eval()
    out = drop_modalities(_batch(6), MODALITIES, 0.6, torch.Generator().manual_seed(2))
    assert torch.isfinite(model(out)).all()


def test_sentence_step_stores_the_mean_of_the_text_tokens(tmp_path):
    """The `sentence` step is the text encoder's tokens mean-pooled: the mean of what the `text`
    step stores (up to float16), one [1, D] row per transcript, zeros for no speech."""
    from eri_downstream.extract import main
    from eri_downstream.store import FeatureStore
    from shared.synthetic.reactions import write_hume_reaction
    from tiny_hf import save_deberta
    planted = write_hume_reaction(tmp_path / "hume", seed=5)
    model, store = save_deberta(tmp_path / "deberta"), FeatureStore(tmp_path / "store")
    ids = sorted(i for split in planted.ids.values() for i in split)
    store.root.mkdir()
    store.write_transcripts({i: "" if n == 0 else f"a clip that says {n} things" for n, i in enumerate(ids)})
    common = ["--data", str(planted.root), "--store", str(store.root), "--text-model", str(model)]
    assert main(["text", *common]) == 0
    assert main(["sentence", *common, "--sentence-model", str(model)]) == 0
    for n, file_id in enumerate(ids):
        tokens, _ = store.load("text", file_id)
        sentence, meta = store.load("sentence", file_id)
        assert sentence.shape == (1, tokens.shape[1]) and meta["source"] == str(model)
        assert torch.allclose(sentence.float(), tokens.float().mean(0, keepdim=True), atol=2e-2)
        assert (n == 0) == (not sentence.any())


def test_the_grid_compares_the_paper_recipe_with_each_lever(store, tmp_path):  # noqa: F811
    """Every lever trains to a useful model on learnable data, and one table holds them all."""
    from eri_downstream.store import FeatureStore
    fs = FeatureStore(store)
    for path in (store / "text").glob("*.safetensors"):  # a sentence folder: one row per video
        tokens, _ = fs.load("text", path.stem)
        fs.save("sentence", path.stem, tokens.float().mean(0, keepdim=True), status="ok")
    proc = run_stage("eri_downstream/grid.py", "--levers", "--results", str(tmp_path / "results"),
                     *tiny(store, tmp_path / "grid", "epochs=8"), timeout=900)
    with open(tmp_path / "results" / "levers.csv", newline="") as f:  # not the tables' results.csv
        rows = {r["configuration"]: r for r in csv.DictReader(f)}
    assert rows["paper_vat"]["changes"] == "none" and rows["paper_vat"]["paper"] == "0.415"
    assert rows["ccc"]["changes"] == "loss=ccc" and rows["mse_pearson"]["changes"] == "loss=mse+pearson"
    assert rows["modality_dropout"]["changes"] == "modality_dropout=0.3"
    assert rows["sentence_text"]["changes"] == "data.text_features=sentence"
    for name, row in rows.items():
        assert float(row["ours"]) > 0.3, (name, row)  # labels follow the visual and audio features
    assert "| modality_dropout |" in proc.stdout


@pytest.mark.parametrize("override, said", [("loss=huber", "loss=huber: must be one of mse, mse+pearson, ccc"),
                                            ("modality_dropout=1.0", "modality_dropout=1.0: must be in [0, 1)"),
                                            ("data.text_features=words", "data.text_features=words: must be one of "
                                                                         "text, sentence")])
def test_a_lever_set_to_what_it_cannot_be_is_one_line(override, said, tmp_path):
    from eri_downstream.train import main
    from shared.errors import UserError
    with pytest.raises(UserError, match=re.escape(said)):
        main([override, f"run.output_dir={tmp_path / 'run'}"])
    assert not (tmp_path / "run").exists()


def test_the_sentence_input_is_named_in_errors_and_in_the_published_model(tmp_path):
    from types import SimpleNamespace
    from eri_downstream.record import feature_sources
    from eri_downstream.store import FeatureStore
    from eri_downstream.train import feature_dims
    from shared.errors import UserError
    fs = FeatureStore(tmp_path)
    fs.save("text", "00001", torch.zeros(3, 8), source="deberta", fingerprint="a")
    with pytest.raises(UserError, match=re.escape("run `eri_downstream/extract.py sentence` for this store")):
        feature_dims(tmp_path, ["text"], "00001", {"text": "sentence"})
    fs.save("sentence", "00001", torch.zeros(1, 4), source="minilm", fingerprint="b")
    assert feature_dims(tmp_path, ["text"], "00001", {"text": "sentence"}) == {"text_dim": 4}
    cfg = SimpleNamespace(model=SimpleNamespace(modalities=["text"]),
                          data=SimpleNamespace(store=str(tmp_path), text_features="sentence", end_to_end=False))
    found = feature_sources(cfg)["text"]
    assert found["source"] == "minilm" and found["features"].startswith("sentence: ")
    cfg.data.text_features = "text"
    assert feature_sources(cfg)["text"] == {"source": "deberta", "fingerprint": "a"}


def test_the_grid_names_the_valid_array_indices():
    from eri_downstream.grid import main
    from shared.errors import UserError
    with pytest.raises(UserError, match=re.escape("--index 9: expected 0 to 4")):
        main(["--levers", "--index", "9", "data.store=x"])
