"""The weights part of the Hub-ready folder of each stage (card.py adds README.md).

    stage 1, 2   config.json + model.safetensors: the run's timm export folder, copied byte for
                 byte, which `timm.create_model("hf-hub:USER/NAME", pretrained=True)` loads
    stage 2      + expression_head/head.safetensors (the head, its class names in the metadata) in
                 a subfolder, so that the encoder stays the one weight file timm and
                 shared.encoders see; + confusion_matrix.png of the reported evaluation
    stage 3b     model.safetensors + config.json, written by eri_downstream.model.save_eri_model

Publishing spans all stages, so this module reaches into a stage package (for stage 3b only,
imported where it is used): the stage's own code is what rebuilds its model.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from safetensors.torch import load_file

from shared.errors import RunError
from shared.publish.lineage import feature_sources
from shared.publish.runs import Run

HEAD = "expression_head/head.safetensors"


def write_weights(run: Run, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    {"pretrain": _encoder, "finetune": _classifier, "eri": _eri}[run.stage](run, out)


def _encoder(run: Run, out: Path) -> None:
    for name in ("config.json", "model.safetensors"):
        shutil.copyfile(run.weights / name, out / name)


def _classifier(run: Run, out: Path) -> None:
    _encoder(run, out)
    (out / HEAD).parent.mkdir()
    shutil.copyfile(run.head, out / HEAD)
    figure = run.report.parent / "confusion_matrix.png"
    if figure.is_file():
        shutil.copyfile(figure, out / "confusion_matrix.png")


def _eri_model(run: Run):
    """Stage 3b: the ERIModel of the run's best weights. Feature sizes come from the weights
    themselves, so the feature store need not be here."""
    from eri_downstream.model import ERIModel, ERIModelConfig, input_dims
    state = load_file(str(run.weights))
    model_cfg, data = run.config.get("model", {}), run.config.get("data", {})
    # as training built it: K frame slots from the data, then the overrides; sizes as trained
    sizes = {"num_frames": data.get("k", 32), **model_cfg.get("overrides", {}), **input_dims(state)}
    model = ERIModel(ERIModelConfig(modalities=model_cfg["modalities"], **sizes))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        reason = " ".join(str(err).split())[:300]
        raise RunError(f"{run.weights} does not fit the model its config.yaml describes: {reason}") from None
    return model.eval()


def _eri(run: Run, out: Path) -> None:
    from eri_downstream.dataset import EMOTIONS
    from eri_downstream.model import save_eri_model
    model = _eri_model(run)
    data, sources = run.config.get("data", {}), feature_sources(run.config)
    inputs = {m: {"dim": getattr(model.config, f"{m}_dim"), **sources.get(m, {})} for m in model.config.modalities}
    save_eri_model(model, out, extra={
        "emotions": list(EMOTIONS), "inputs": inputs, "frames_per_video": data.get("k"),
        "max_audio_steps": data.get("max_audio_steps")})
