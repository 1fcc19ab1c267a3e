"""Stage 3b: the multimodal ERI model, trained from the feature store.

    accelerate launch eri_downstream/train.py --config eri_downstream/configs/paper_vat.yaml data.store=features
    accelerate launch eri_downstream/train.py --config ... folds=5          # 5-fold CV over train + val, ensembled
    accelerate launch eri_downstream/train.py --config ... folds=5 fold=2   # one fold of it (a SLURM array task)
    accelerate launch eri_downstream/train.py --config ... --resume auto    # after a kill

Selects on the validation mean Pearson (the challenge metric: per emotion over the whole split,
then the mean), stops early after `patience` epochs without improvement, and writes per-emotion
reports, plots and test predictions in the submission format.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import torch
from accelerate.utils import gather_object
from safetensors import safe_open
from safetensors.torch import load_file
from timm.utils import ModelEmaV3
from torch.utils.data import DataLoader, DistributedSampler

from eri_downstream.config import RESUME_KEYS, ERIConfig
from eri_downstream.data import FaceFrameDataset, FeatureDataset, collate, mixup
from eri_downstream.dataset import read_table, splits_of, table_task
from eri_downstream.device_cache import DeviceCache, DeviceEpochLoader
from eri_downstream.folds import cv_folds
from eri_downstream.levers import LOSS_NAMES, drop_modalities, regression_loss
from eri_downstream.loader import EpochLoader
from eri_downstream.model import ERIModel, ERIModelConfig
from eri_downstream.reports import VALIDATION, _defined, cv_summary, report_for, say_constant_columns, write_fold_outputs
from eri_downstream.record import export_model, write_record
from eri_downstream.store import FeatureStore
from eri_downstream.tasks import Task, get_task
from eri_downstream.visual import FrameEncoder
from shared import builtin_data
from shared.atomic import write_json, write_safetensors, write_text, write_yaml
from shared.config import from_dict, load_config, parse_cli, print_config, to_dict
from shared.errors import UserError, run_cli
from shared.launcher import launch
from shared.recognise import described
from shared.stream.reading import derive_seed
from shared.training.checkpoint import Checkpointer, check_run_folder
from shared.training.loop import Hook, train
from shared.training.optim import adamw
from shared.training.preemption import EXIT_REQUEUE, StopRequest
from shared.training.schedule import cosine_restarts
from shared.training.setup import init_tracking, make_accelerator
from shared.training.wrappers import prepare, refuse_sharding, unwrap

log = logging.getLogger("eri_downstream.train")


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


class VisualFront:
    """End to end: face crops (B, K, 3, S, S) uint8 -> frozen-encoder features (B, K, D) on the
    device, through the FrameEncoder that also makes the visual cache."""

    def __init__(self, folder: str, device):
        self.encode = FrameEncoder(folder, device)
        self.info = self.encode.info

    def __call__(self, batch: dict) -> dict:
        frames = batch["visual"]
        b, k = frames.shape[:2]
        return {**batch, "visual": self.encode(frames.flatten(0, 1)).view(b, k, -1)}  # (B, K, D)


@torch.no_grad()
def predict(acc, net, dataset, batch_size: int, front=None, cache: DeviceCache | None = None) -> dict[str, np.ndarray]:
    """file_id -> (7,) predictions for every video of `dataset`, gathered from all ranks (the
    sampler's padding repeats videos; they are counted once). `cache`: the dataset's videos on
    the device, which then makes the same batches."""
    was_training = net.training
    net.eval()
    sampler = DistributedSampler(dataset, num_replicas=acc.num_processes, rank=acc.process_index, shuffle=False)
    # its own generator: a DataLoader draws its seed from the global RNG, and evaluating would
    # otherwise move the training's dropout masks (and make the device cache's run differ)
    batches = cache.batches(list(sampler), batch_size) if cache is not None else \
        DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate, generator=torch.Generator())
    mine = []
    for batch in batches:
        batch = to_device(batch, acc.device)
        out = net(front(batch) if front is not None and "visual" in batch else batch).float().cpu().numpy()
        mine += list(zip(batch["file_id"], out))
    net.train(was_training)
    everyone = gather_object(mine) if acc.num_processes > 1 else mine
    return {file_id: row for file_id, row in everyone}


def store_task(store: Path, name: str) -> Task:
    """The task of the store's table (its emotion columns); with `task` set, a UserError when the
    store holds another task's emotions."""
    task = table_task(store / "videos.csv")
    if name and task.emotions != get_task(name).emotions:
        raise UserError(f"task={name}: {store} holds the {task.name} task ({', '.join(task.emotions)}); "
                        f"give a store that stage 3a wrote for {name}, or leave task unset")
    return task


def feature_dims(store: Path, modalities, file_id: str, sources: dict[str, str]) -> dict[str, int]:
    """Each modality's feature size, read from one stored video (the encoders decide it);
    `sources`: the store folder a modality reads when not its own (data.text_features)."""
    dims = {}
    for modality in modalities:
        folder = sources.get(modality, modality)
        path = FeatureStore(store).features(folder, file_id)
        if not path.is_file():
            raise UserError(f"{path}: missing; run `eri_downstream/extract.py {folder}` for this store first")
        with safe_open(str(path), framework="pt") as f:
            dims[f"{modality}_dim"] = f.get_slice("features").get_shape()[-1]
    return dims


def run_fold(cfg: ERIConfig, acc, store: Path, train_entries, val_entries, test_entries, out: Path,
             resolved: dict, task: Task) -> dict | int:
    """Train on train_entries, select on val_entries; returns the result or EXIT_REQUEUE."""
    if (out / "report.json").is_file():  # a finished fold of an earlier job
        return json.loads((out / "report.json").read_text())
    modalities = tuple(cfg.model.modalities)
    front, sources = None, {"text": cfg.data.text_features}
    derived = {"num_frames": cfg.data.k,  # the temporal SE re-weights K frame slots: the data's K
               "num_outputs": len(task.emotions),  # one intensity per emotion of the store's task
               **feature_dims(store, [m for m in modalities if not (m == "visual" and cfg.data.end_to_end)],
                              train_entries[0].file_id, sources)}
    if cfg.data.end_to_end and "visual" in modalities:
        if not cfg.data.encoder:
            raise UserError("data.end_to_end needs data.encoder: the frozen encoder folder (stage-2 export)")
        front = VisualFront(cfg.data.encoder, acc.device)
        derived["visual_dim"] = front.info.embed_dim
    # through the config reader: a misspelt size is named with the closest valid one
    model = ERIModel(from_dict(ERIModelConfig, {**derived, **cfg.model.overrides, "modalities": modalities},
                               prefix="model.overrides."))

    def dataset(entries, train: bool):
        common = dict(modalities=modalities, k=cfg.data.k, train=train and cfg.data.temporal_augmentation,
                      max_audio_steps=cfg.data.max_audio_steps, seed=cfg.run.seed, sources=sources,
                      emotions=task.emotions)
        if front is not None:  # image augmentation only while training, never at evaluation
            return FaceFrameDataset(store, entries, augment=train and cfg.data.image_augmentation, **common)
        return FeatureDataset(store, entries, **common)

    order = dict(batch_size=cfg.data.batch_size, seed=cfg.run.seed, rank=acc.process_index, world_size=acc.num_processes)
    val_set, val_cache = dataset(val_entries, False), None
    if cfg.data.device_cache:
        if front is not None:
            raise UserError("data.device_cache holds stored features, data.end_to_end reads face crops: choose one")
        loader = DeviceEpochLoader(dataset(train_entries, True), device=acc.device, **order)
        val_cache = DeviceCache(val_set, acc.device)
    else:
        loader = EpochLoader(dataset(train_entries, True), collate_fn=collate, num_workers=cfg.data.num_workers, **order)
    say_constant_columns(val_entries, task, say=acc.is_main_process)
    steps_per_epoch = len(loader)
    total_steps = cfg.epochs * steps_per_epoch
    optimizer = adamw(model, cfg.optim, acc.device)
    ema = ModelEmaV3(model, decay=cfg.ema_decay, device=acc.device) if cfg.ema_decay else None
    model, optimizer = prepare(acc, model, optimizer, cfg.run)
    if ema is not None:
        acc.register_for_checkpointing(ema)

    out.mkdir(parents=True, exist_ok=True)
    checkpointer = Checkpointer(acc, out, cfg.run.keep_last)
    best = {"mean_pearson": -math.inf, "epoch": 0, "stale": 0}
    start_step, state = checkpointer.restore(cfg.run.resume, loader, resolved, RESUME_KEYS)
    if state is not None and (out / "best.json").is_file():
        best = json.loads((out / "best.json").read_text())
    if acc.is_main_process:
        StopRequest.clear_markers(out)
        if state is None:  # a fresh start: no epochs of an earlier run in the curves
            (out / VALIDATION).unlink(missing_ok=True)
    preempt = StopRequest(acc, out, check_every=cfg.run.stop_check_every)

    def loss_fn(model, batch, micro_step):
        batch = to_device(batch, acc.device)
        if front is not None:
            batch = front(batch)
        if cfg.data.mixup > 0:
            g = torch.Generator().manual_seed(derive_seed(cfg.run.seed, "mixup", micro_step) % 2**63)
            batch = mixup(batch, cfg.data.mixup, g)
        if cfg.modality_dropout > 0:
            g = torch.Generator().manual_seed(derive_seed(cfg.run.seed, "modality_dropout", micro_step) % 2**63)
            batch = drop_modalities(batch, modalities, cfg.modality_dropout, g)
        return regression_loss(cfg.loss, model(batch).float(), batch["labels"]), {}

    def evaluate(step):
        net = ema.module if ema is not None else unwrap(acc, model)
        report = report_for(predict(acc, net, val_set, cfg.data.batch_size, front, val_cache), val_entries, task)  # every rank
        epoch = step // steps_per_epoch
        # the mean over the emotions where Pearson is defined; the first evaluation is always kept,
        # so a finished run has best weights whatever its scores
        value = report["mean_defined"] if math.isfinite(report["mean_defined"]) else -math.inf
        improved = "step" not in best or value > best["mean_pearson"]
        best.update(stale=0 if improved else best["stale"] + 1)
        if improved:
            best.update(mean_pearson=value, epoch=epoch, step=step)
        if acc.is_main_process:
            acc.log({"val/mean_pearson": report["mean"], **{f"val/{k}": v for k, v in report["per_emotion"].items()}},
                    step=step)
            log.info("epoch %d: validation mean Pearson %.4f%s%s", epoch, report["mean"], _defined(report),
                     " (best)" if improved else "")
            # the learning-curve figure's validation line; rewritten whole, so a kill never leaves half a row
            earlier = (out / VALIDATION).read_text() if (out / VALIDATION).is_file() else ""
            write_text(out / VALIDATION, earlier + json.dumps({"epoch": epoch, "step": step, "mean": report["mean"],
                                                               "mean_defined": report["mean_defined"]}) + "\n")
            if improved:
                write_safetensors(out / "best.safetensors", net.state_dict())
                write_json(out / "best_report.json", report)
            write_json(out / "best.json", best, indent=None)

    def stop(step: int) -> bool:
        return preempt(step) or best["stale"] >= cfg.patience

    period = cfg.restart_epochs * steps_per_epoch
    step = train(acc, model, optimizer, loader, loss_fn, total_steps=total_steps,
                 lr_at=lambda s: cosine_restarts(s, peak=cfg.optim.lr, period=period, min_lr=cfg.optim.min_lr),
                 checkpointer=checkpointer, config=resolved, samples_per_step=cfg.data.batch_size * acc.num_processes,
                 start_step=start_step, grad_clip=cfg.optim.grad_clip, log_every=cfg.run.log_every,
                 save_every=cfg.run.save_every or steps_per_epoch, hooks=[Hook(steps_per_epoch, evaluate)]
                 + ([Hook(1, lambda s: ema.update(unwrap(acc, model), step=s))] if ema is not None else []),
                 metrics_file=out / "metrics.jsonl", stop=stop, max_nonfinite_steps=cfg.run.max_nonfinite_steps)
    if preempt.stopped_at is not None and best["stale"] < cfg.patience and step < total_steps:
        preempt.acknowledge()
        return EXIT_REQUEUE
    return finish_fold(cfg, acc, model, val_entries, test_entries, out, dataset, front, task)


def finish_fold(cfg, acc, model, val_entries, test_entries, out: Path, dataset, front, task: Task) -> dict:
    """The best weights' validation report, plots and test predictions."""
    net = ERIModel(unwrap(acc, model).config).to(acc.device)
    net.load_state_dict(load_file(str(out / "best.safetensors")))  # written by the first evaluation on
    val_pred = predict(acc, net, dataset(val_entries, False), cfg.data.batch_size, front)
    test_pred = predict(acc, net, dataset(test_entries, False), cfg.data.batch_size, front) if test_entries else {}
    report = report_for(val_pred, val_entries, task)
    report["best_epoch"] = json.loads((out / "best.json").read_text())["epoch"]
    # the predictions too: a finished fold is read back from here when a CV job is resumed
    result = {**report, "val_predictions": {k: v.tolist() for k, v in val_pred.items()},
              "test_predictions": {k: v.tolist() for k, v in test_pred.items()}}
    if acc.is_main_process:
        write_fold_outputs(out, result, val_pred, test_pred, val_entries, task, LOSS_NAMES[cfg.loss])
        export_model(net, out, cfg, Path(cfg.run.output_dir), task)  # the published form of these weights
    acc.wait_for_everyone()
    return result


def main(argv=None) -> int:
    args = parse_cli(argv, __doc__)
    cfg = load_config(ERIConfig, args.config, args.overrides)
    if args.print_config:
        return print_config(cfg)
    if args.resume:
        cfg.run.resume = args.resume
    if not cfg.data.store:
        builtin, found = builtin_data.feature_store(cfg.task)
        if not found:
            raise UserError(f"no data given (data.store) and no built-in feature store in "
                            f"{', '.join(str(p / builtin.name) for p in builtin_data.places())}: set data.store to a store "
                            "that stage 3a wrote, or write the built-in one with `affect-extract all --encoder ENCODER"
                            f"{' --task ' + cfg.task if cfg.task else ''}` (no --data); {builtin_data.ROOT_ENV}=DIR finds "
                            "built-in data made elsewhere (a demo's <its --out>/data)")
        builtin_data.say("reaction videos' feature store", builtin, True, own="data.store")
        cfg.data.store = str(builtin)
    store = Path(cfg.data.store)
    if not (store / "videos.csv").is_file():
        hint = described(store) or f"; stage 3a writes one: `affect-extract all --data RAW --store {store} --encoder ENC`"
        raise UserError(f"{store}: no videos.csv, so not a feature store{hint}")
    acc = make_accelerator(cfg.run)
    refuse_sharding(acc, "stage 3b (a model of a few MB)")
    run_dir = Path(cfg.run.output_dir)
    resolved = to_dict(cfg)
    if cfg.run.resume:  # the folder's own config.yaml is the last word on what ran there: checked, then replaced
        check_run_folder(run_dir, resolved, RESUME_KEYS, finished=finished(run_dir, cfg))
    if acc.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_yaml(run_dir / "config.yaml", resolved)
    init_tracking(acc, cfg.run, resolved, name=run_dir.name)
    task = store_task(store, cfg.task)
    by_split = splits_of(read_table(store / "videos.csv"), store / "videos.csv", need=() if cfg.folds else ("train", "val"))
    if cfg.folds:
        pool = by_split["train"] + by_split["val"]
        by_id = {e.file_id: e for e in pool}
        results = []
        for i, (train_ids, held_ids) in enumerate(cv_folds(pool, cfg.folds, seed=cfg.run.seed)):
            if cfg.fold is not None and i != cfg.fold:
                continue
            result = run_fold(cfg, acc, store, [by_id[f] for f in train_ids], [by_id[f] for f in held_ids],
                              by_split["test"], run_dir / f"fold_{i}", resolved, task)
            if result == EXIT_REQUEUE:
                return EXIT_REQUEUE
            results.append(result)
        if cfg.fold is None:
            summary = cv_summary(results, pool, run_dir, acc, task)
        else:
            summary = {"fold": cfg.fold, "mean_pearson": results[0]["mean"]}
    else:
        result = run_fold(cfg, acc, store, by_split["train"], by_split["val"], by_split["test"], run_dir, resolved, task)
        if result == EXIT_REQUEUE:
            return EXIT_REQUEUE
        summary = {"mean_pearson": result["mean"]}
    if acc.is_main_process:
        write_record(cfg, resolved, run_dir)
        log.info("done: %s", json.dumps(summary))
    acc.end_training()
    return 0


def finished(run_dir: Path, cfg: ERIConfig) -> bool:
    """Whether `run_dir` holds results of the run already, which run_fold reads back untrained."""
    if cfg.folds:  # any finished fold: it would be read back, whatever the settings now
        return any((run_dir / f"fold_{i}" / "report.json").is_file() for i in range(cfg.folds))
    return (run_dir / "report.json").is_file()


def entry() -> None:
    """`affect-train-eri`: this stage on one process or several, ending with its own line and status
    (`accelerate launch`'s options first; see shared/launcher.py)."""
    raise SystemExit(launch(main, "eri_downstream.train", "affect-train-eri"))


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
