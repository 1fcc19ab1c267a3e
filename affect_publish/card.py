"""The model card (README.md) of a published run: Hub metadata plus the sections a reader needs
to trust and use the weights, every number read from the run's own files.

Sections: what the model is and how it was made, how to load it, training data, evaluation,
the training configuration (collapsed), intended use, limitations, licence and data terms.
"""
from __future__ import annotations

import json
from pathlib import Path

import yaml
from huggingface_hub import ModelCard, ModelCardData

from affect_publish.licences import Dataset
from affect_publish.lineage import ancestors, feature_sources, hub_id, named, starting_point
from affect_publish.mixture import SYNTHETIC, datasets, excluded, parts, synthetic
from affect_publish.results import Data, mae_config, results
from affect_publish.runs import Run, title

PLACEHOLDER_REPO = "USER/NAME"
# the task's tags; datasets are tagged only when the run's inputs name them (`datasets:`)
TAGS = {"pretrain": ["masked-autoencoder", "vision-transformer", "face"],
        "finetune": ["facial-expression-recognition", "vision-transformer", "face"],
        "eri": ["emotion-intensity", "multimodal", "abaw"]}
PURPOSE = {
    "pretrain": "a ViT face encoder pre-trained as a masked autoencoder on face crops",
    "finetune": "a ViT face encoder fine-tuned, with a two-layer head, to classify facial expressions "
                "(AffectNet's classes)",
    "eri": "a late-fusion model that estimates emotion intensities (0 to 1) in a video from its visual, audio and "
           "text features (ABAW's intensity tasks: ERI on Hume-Reaction's format, EMI on Hume-Vidmimic2's; its "
           "task and outputs are under Model)",
}
INTENDED_USE = {
    "pretrain": "Research on face analysis: a starting point for fine-tuning (expressions, action units, "
                "affect) or a frozen feature extractor for face crops framed like the training crops.",
    "finetune": "Research on facial expression recognition, and a frozen face encoder for downstream affect "
                "models (stage 3 of this lineage extracts one pooled feature per face image with it).",
    "eri": "Research on emotion intensity estimation from video (ABAW's ERI and EMI tasks), reproducing and "
           "extending the ABAW 2023 ERI challenge models.",
}
LIMITATIONS = {
    "pretrain": "Trained on face crops only: features of other images are not meaningful. The training loss is "
                "not a measure of downstream quality; evaluate on the task at hand.",
    "finetune": "Expression labels such as AffectNet's are mostly single annotations of web images; expression "
                "categories are culturally loaded and a facial expression is not a felt emotion. Accuracy may differ across "
                "demographic groups, which this evaluation does not measure.",
    "eri": "The Hume datasets' intensities are annotations of people reacting to (or mimicking) videos, from a "
           "limited set of countries; the model estimates how a reaction looks and sounds, not what a person feels. It needs features "
           "from the same encoders, sampled the same way, as in training (see config.json).",
}
COMMON_LIMITATIONS = ("Not for decisions about people (hiring, education, policing, health, surveillance): "
                      "affect recognition from faces is unreliable for individuals and such uses are excluded "
                      "by the data licences anyway.")


def build_card(run: Run, folder: Path, *, repo_id: str | None, license: str, base_model: str | None) -> ModelCard:
    """The card for `folder` (already holding the weights) of `run`."""
    lineage = ancestors(run.root, run.record)
    used = _datasets(run, lineage)
    made_up = synthetic(run.root, run.record) or any(synthetic(root, record) for root, record in lineage)
    data = evaluation_data(run)
    found = results(run, data)
    name = repo_id.split("/")[-1] if repo_id else run.root.name
    base = base_model or hub_id(_started_from(run))
    encoder = "encoder" in run.files
    meta = ModelCardData(
        model_name=name, license=license, datasets=[d.key for d in used] or None, metrics=found.metrics,
        tags=["affect-lineage", *TAGS[run.stage], *(["synthetic-data"] if made_up else [])],
        library_name="timm" if encoder else "pytorch", pipeline_tag="image-feature-extraction" if encoder else None,
        base_model=base, eval_results=found.eval_results or None)
    figure = "\n\n![confusion matrix](confusion_matrix.png)" if (folder / "confusion_matrix.png").is_file() else ""
    intro = (f"{PURPOSE[run.stage][0].upper()}{PURPOSE[run.stage][1:]}: {run.title} of the affect-lineage "
             "training suite, which reproduces the visual lineage of *Multi-modal Emotion Reaction Intensity "
             "Estimation with Temporal Augmentation* (Qiu et al., ABAW 2023).")
    if made_up:
        intro += (f"\n\n**Trained on synthetic data.** {_synthetic_note(run, lineage)} These weights "
                  "demonstrate the pipeline; they are not a model of real faces or reactions.")
    body = "\n\n".join([
        f"# {name}", intro,
        "## Model", _model_section(run, folder, lineage, base),
        "## How to load", _loading(run, repo_id or PLACEHOLDER_REPO),
        "## Training data", _data_section(run, lineage),
        "## Evaluation", found.markdown + figure,
        "## Training configuration", _config_section(run),
        "## Intended use", INTENDED_USE[run.stage],
        "## Limitations", f"{LIMITATIONS[run.stage]} {COMMON_LIMITATIONS}",
        "## Licence", _licence_section(license, used, _untraced(run, lineage), made_up),
    ])
    return ModelCard(f"---\n{meta.to_yaml()}\n---\n\n{body}\n")


def _synthetic_note(run: Run, lineage) -> str:
    runs = [(run.root, run.record)] + list(lineage)
    which = [f"`{root.name}` ({title(record)})" for root, record in runs if synthetic(root, record)]
    return f"The run{'s' if len(which) > 1 else ''} {', '.join(which)} used synthetic data: the built-in " \
           "drawn faces and generated reaction videos (in the public datasets' layouts, shared/builtin_data.py), " \
           "or images generated in the stream (data.synthetic=true)."


def evaluation_data(run: Run) -> Data:
    """The data the run's numbers are on, as its inputs name it (a dataset only when they do)."""
    names = [p.origin for p in parts(run.root, run.record)]
    if any(n == SYNTHETIC for n in names):
        return Data(SYNTHETIC, "synthetic")
    real = _datasets(run, [])
    if real:
        return Data(real[0].name, real[0].key)
    return Data("data not on record", "unknown")


def _datasets(run: Run, lineage) -> list[Dataset]:
    """The datasets behind the weights: the run's own and those of every earlier run found."""
    found = datasets(run.root, run.record)
    for root, record in lineage:
        found += datasets(root, record)
    return list(dict.fromkeys(found))


def _started_from(run: Run) -> dict | None:
    """The input the weights were trained from; stage 3b trains from scratch (on features)."""
    return starting_point(run.record)


def _untraced(run: Run, lineage) -> str | None:
    """The checkpoint at the start of the lineage found here, if any: its data is not on record."""
    _, record = lineage[-1] if lineage else (run.root, run.record)
    start = starting_point(record)
    return None if start is None or "run" in start else named(start)


def _table(rows: list[tuple[str, str]]) -> str:
    return "\n".join(["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows])


def _model_section(run: Run, folder: Path, lineage, base: str | None) -> str:
    cfg = json.loads((folder / "config.json").read_text())
    rows = [("lineage stage", run.title), ("weights", run.about), ("run", f"`{run.root.name}`")]
    rows += _encoder_rows(cfg) if "encoder" in run.files else _eri_rows(cfg)
    if run.stage == "pretrain":
        rows.append(("masking", f"{run.config['model']['mask_ratio']:.0%} of the patches"))
        mae = mae_config(run)
        if mae:
            rows.append(("MAE decoder (not published)", f"depth {mae.get('decoder_depth')}, width "
                         f"{mae.get('decoder_embed_dim')}, norm_pix_loss {mae.get('norm_pix_loss')}"))
    if "head" in run.files:
        rows.append(("expression head", "`expression_head/head.safetensors` (see How to load)"))
    start = named(_started_from(run))
    rows.append(("started from", f"`{start}`" if start else "random initialisation"))
    if base:
        rows.append(("base model", f"[{base}](https://huggingface.co/{base})"))
    rows += [("earlier run", f"`{root.name}` ({title(record)})") for root, record in lineage]
    return _table(rows)


def _encoder_rows(cfg: dict) -> list[tuple[str, str]]:
    """What timm's config.json says about the encoder and its input."""
    args, pcfg = cfg.get("model_args", {}), cfg.get("pretrained_cfg", {})
    shape = ", ".join(f"{k} {args[k]}" for k in ("embed_dim", "depth", "num_heads", "patch_size") if k in args)
    size = "x".join(str(s) for s in pcfg.get("input_size", [])[1:])
    return [("architecture", f"timm `{cfg['architecture']}` ({shape}), pooling {cfg.get('global_pool', '?')}, "
                             f"{cfg.get('num_features', '?')}-d features"),
            ("input", f"{size} RGB face crops, mean {list(pcfg.get('mean', []))}, std {list(pcfg.get('std', []))}, "
                      f"{pcfg.get('interpolation', 'bicubic')} resize")]


def _eri_rows(cfg: dict) -> list[tuple[str, str]]:
    """What save_eri_model's config.json says about the ERI model's inputs and outputs."""
    rows = [("task", f"{cfg['task']} ({cfg['dataset']}'s format)")] if cfg.get("task") else []
    rows += [("modalities", ", ".join(cfg["modalities"])),
            ("inputs", ", ".join(f"{m} {v['dim']}-d" for m, v in cfg["inputs"].items())
             + " features per step (sources under Training data)"),
            ("outputs", ", ".join(cfg["emotions"]) + " (sigmoid, 0 to 1)"),
            ("visual frames", f"{cfg['frames_per_video']} per video, the centre of each of as many equal segments")]
    if cfg.get("max_audio_steps"):
        rows.append(("audio steps", f"at most {cfg['max_audio_steps']}, evenly spread"))
    rows += [(f"{m} input", v["features"]) for m, v in cfg["inputs"].items() if v.get("features")]
    return rows


def _config_section(run: Run) -> str:
    text = yaml.safe_dump(run.config, sort_keys=False).rstrip()
    return ("<details>\n<summary>the run's resolved configuration (run.json; paths relative to the run folder)"
            f"</summary>\n\n```yaml\n{text}\n```\n\n</details>")


def _loading(run: Run, repo: str) -> str:
    if run.stage == "pretrain":
        return "\n".join([
            "```python", "import timm", "",
            f'encoder = timm.create_model("hf-hub:{repo}", pretrained=True).eval()',
            "config = timm.data.resolve_data_config({}, model=encoder)  # input size, mean, std of the face crops",
            "transform = timm.data.create_transform(**config)",
            "tokens = encoder.forward_features(transform(face).unsqueeze(0))  # (1, 1 + patches, D)",
            "```", "",
            "A downloaded copy loads with `timm.create_model(\"local-dir:FOLDER\", pretrained=True)`. "
            "To fine-tune it on AffectNet (stage 2): "
            f"`finetune_affectnet/main.py --config ... model.encoder=hf-hub:{repo}`."])
    if run.stage == "finetune":
        return "\n".join([
            "The repository's root is the fine-tuned encoder in timm's layout (pooled features):", "",
            "```python", "import timm", "",
            f'encoder = timm.create_model("hf-hub:{repo}", pretrained=True).eval()',
            "config = timm.data.resolve_data_config({}, model=encoder)",
            "features = encoder(timm.data.create_transform(**config)(face).unsqueeze(0))  # (1, D)",
            "```", "",
            "The whole classifier (encoder + expression head), with affect-lineage installed:", "",
            "```python", "from huggingface_hub import snapshot_download",
            "from finetune_affectnet.model import load_classifier", "",
            f'model = load_classifier(snapshot_download("{repo}"))',
            "logits = model(images)  # images normalised with model.encoder_info.mean / .std",
            "labels = [model.class_names[i] for i in logits.argmax(-1)]",
            "```", "",
            "As the frozen encoder of stage 3: `eri_downstream/extract.py visual --encoder FOLDER` with "
            "FOLDER a download of this repository."])
    return "\n".join([
        "With affect-lineage installed:", "",
        "```python", "import json", "import torch", "from huggingface_hub import snapshot_download",
        "from eri_downstream.model import load_eri_model", "",
        f'folder = snapshot_download("{repo}")',
        "model = load_eri_model(folder)",
        'config = json.load(open(f"{folder}/config.json"))',
        "# per modality: features (B, T, D) zero-padded at the end, and a mask (B, T), True on real steps",
        "batch = {}",
        'for m, spec in config["inputs"].items():',
        '    steps = config["frames_per_video"] if m == "visual" else 1 if spec.get("features") else 50',
        '    batch[m] = torch.zeros(1, steps, spec["dim"])  # stand-in for the video\'s features',
        '    batch[f"{m}_mask"] = torch.ones(1, steps, dtype=torch.bool)',
        'intensities = model(batch)  # (1, len(config["emotions"])) in config["emotions"] order',
        "```", "",
        "Features come from `eri_downstream/extract.py` with the encoders named in config.json "
        "(`inputs`); `eri_downstream.data.FeatureDataset` samples and pads them as in training."])


def _data_section(run: Run, lineage) -> str:
    rows = ["| source | data | use | samples |", "|---|---|---|--:|"]
    for p in parts(run.root, run.record):
        samples = f"{p.samples:,}" if p.samples is not None else "-"
        rows.append(f"| {p.name} | {p.origin} | {p.use} | {samples} |")
    text = "\n".join(rows)
    files, count = excluded(run.record)
    if files:
        text += (f"\n\nLeakage guard: {'' if count is None else f'{count:,} '}faces within a perceptual-hash "
                 f"distance of AffectNet's held-out faces were skipped (`{'`, `'.join(files)}`).")
    if any(d.key == "affectnet" for d in datasets(run.root, run.record)) and run.stage == "pretrain":
        text += "\n\nAffectNet's validation split, the field's test set, is held out: never pretrained on."
    sources = feature_sources(run.record)
    if sources:
        made = [f"{m} `{named(s) or 'unknown'}`" + (f" (weights fingerprint {s['fingerprint']})"
                                                   if "fingerprint" in s else "") for m, s in sources.items()]
        text += f"\n\nFeatures made by: {'; '.join(made)}."
    for root, record in lineage:
        names = ", ".join(d.name for d in datasets(root, record))
        if synthetic(root, record):
            names = ", ".join(filter(None, [names, SYNTHETIC]))
        text += f"\n\nEarlier in the lineage, `{root.name}` ({title(record)}) used: {names or 'no data on record'}."
    return text + "\n\nSample counts are those the runs recorded in their run.json (from the shard manifests and " \
                  "the feature store); `-` where they were not recorded."


def _licence_section(license: str, used: list[Dataset], untraced: str | None, made_up: bool) -> str:
    lines = [f"The weights are released under `{license}`"
             + (" (Creative Commons Attribution-NonCommercial 4.0)" if license == "cc-by-nc-4.0" else "") + "."]
    if used:
        lines[0] += (" They are derived from data licensed for research use only, so the terms of every dataset "
                     "below bind them as well: no commercial use.")
        lines += ["", "| dataset | terms |", "|---|---|"]
        lines += [f"| [{d.name}]({d.url}) | {d.terms} |" for d in used]
    elif made_up:
        lines[0] += " The lineage on record trained on synthetic data only: no dataset's terms bind them."
    else:
        lines[0] += " No dataset is on record for this run."
    if untraced:
        lines += ["", f"The lineage starts from `{untraced}`, whose training run is not on record here: the "
                  "terms of the data behind it apply as well (see its own card or source)."]
    return "\n".join(lines)
