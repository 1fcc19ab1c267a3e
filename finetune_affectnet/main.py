"""Stage 2: fine-tune a face encoder on AffectNet expressions (or train a linear probe on it).

    accelerate launch finetune_affectnet/main.py --config finetune_affectnet/configs/vit_base_affectnet.yaml \
        model.encoder=runs/mae_vit_base_faces/export/encoder
    accelerate launch finetune_affectnet/main.py --config ... --resume auto

Any config key can be overridden as key=value (see finetune_affectnet/config.py).
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import torch
from timm.utils import ModelEmaV3

from finetune_affectnet.config import FinetuneConfig, resume_keys
from finetune_affectnet.data import build_streams, class_counts, class_set
from finetune_affectnet.evaluate import predict, save_report, write_report
from finetune_affectnet.model import build_classifier, export_classifier, param_groups
from finetune_affectnet.record import write_record
from finetune_affectnet.regularize import Objective
from shared import builtin_data
from shared.atomic import write_yaml
from shared.config import load_config, parse_cli, print_config, to_dict
from shared.errors import UserError, run_cli
from shared.launcher import launch
from shared.training.batching import split_global_batch
from shared.training.checkpoint import Checkpointer
from shared.training.images import normalize
from shared.training.loop import Hook, train
from shared.training.per_sample import per_sample_draws
from shared.training.preemption import EXIT_REQUEUE, StopRequest
from shared.training.schedule import scaled_lr, warmup_cosine
from shared.training.setup import init_tracking, log_images, make_accelerator
from shared.training.wrappers import gathered, prepare, refuse_sharding, unwrap

log = logging.getLogger("finetune_affectnet")
METRICS = ("top1", "balanced_accuracy", "macro_f1")


def main(argv=None) -> int:
    args = parse_cli(argv, __doc__)
    cfg = load_config(FinetuneConfig, args.config, args.overrides)
    if args.print_config:
        return print_config(cfg)
    if args.resume:
        cfg.run.resume = args.resume
    if cfg.eval.metric not in METRICS:
        raise UserError(f"eval.metric={cfg.eval.metric!r}; expected one of {METRICS}")
    if not cfg.model.encoder:
        raise UserError("no encoder: set model.encoder to a stage-1 export folder, an official MAE .pth or a timm name")
    acc = make_accelerator(cfg.run)
    run_dir = Path(cfg.run.output_dir)
    if not cfg.data.shards:  # said (and made, once) before any other work
        shards = builtin_data.made_once(acc, builtin_data.face_shards, "expression faces (AffectNet layout)",
                                        part="shards", own="data.shards")
        cfg.data.shards = str(shards["affectnet"])

    label_map, class_names = class_set(cfg.data)

    def build():  # also an empty copy of the model, for FSDP's gathered weights
        return build_classifier(cfg.model.encoder, len(class_names), pool=cfg.model.pool,
                                hidden_dim=cfg.model.hidden_dim, dropout=cfg.model.dropout,
                                drop_path_rate=cfg.model.drop_path, head_init_std=cfg.model.head_init_std,
                                linear_probe=cfg.model.linear_probe, architecture=cfg.model.architecture,
                                img_size=cfg.data.image_size)

    model, info = build()
    if cfg.model.grad_checkpointing:
        model.encoder.set_grad_checkpointing(True)
    mean, std = tuple(cfg.data.mean or info.mean), tuple(cfg.data.std or info.std)
    image_size = cfg.data.image_size or info.input_size[-1]
    evaluated = dict(crop_pct=cfg.data.crop_pct, interpolation=cfg.data.interpolation)  # recorded in the exports
    micro, accum, samples_per_step = split_global_batch(cfg.data.global_batch, acc.num_processes,
                                                        cfg.data.batch_size, cfg.optim.grad_accum)
    train_stream, val_stream = build_streams(cfg.data, image_size=image_size, mean=mean, seed=cfg.run.seed,
                                             rank=acc.process_index, world_size=acc.num_processes,
                                             pin_memory=acc.device.type == "cuda", micro_batch=micro,
                                             global_batch=samples_per_step)
    counts = class_counts(train_stream, label_map, len(class_names))
    total_steps = (math.ceil(cfg.epochs * sum(counts) / samples_per_step) if cfg.epochs else cfg.run.total_steps)
    peak_lr = scaled_lr(cfg.optim.base_lr, samples_per_step, cfg.optim.lr)
    optimizer = torch.optim.AdamW(param_groups(model, weight_decay=cfg.optim.weight_decay, layer_decay=cfg.layer_decay),
                                  lr=0.0, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps,
                                  fused=cfg.optim.fused if cfg.optim.fused is not None else acc.device.type == "cuda")
    draws = per_sample_draws(model, cfg.run.seed, samples_per_step)  # drop path / dropout per sample
    if cfg.ema_decay:
        refuse_sharding(acc, "ema_decay (an EMA of the weights; ema_decay=null turns it off)")
    ema = ModelEmaV3(model, decay=cfg.ema_decay, device=acc.device) if cfg.ema_decay else None
    model, optimizer = prepare(acc, model, optimizer, cfg.run)
    if ema is not None:
        acc.register_for_checkpointing(ema)

    mixing = (cfg.data.mixup > 0 or cfg.data.cutmix > 0) and not cfg.model.linear_probe
    class_weights = None
    if cfg.data.balance == "loss":
        n = torch.tensor(counts, dtype=torch.float, device=acc.device).clamp(min=1)
        class_weights = n.sum() / (len(counts) * n)
    objective = Objective(num_classes=len(class_names), seed=cfg.run.seed, reprob=cfg.data.reprob,
                          mixup=cfg.data.mixup if mixing else 0.0, cutmix=cfg.data.cutmix if mixing else 0.0,
                          label_smoothing=cfg.data.label_smoothing, class_weights=class_weights)

    checkpointer = Checkpointer(acc, run_dir, cfg.run.keep_last)
    resolved = to_dict(cfg)
    best = {"value": -math.inf}
    start_step, state = checkpointer.restore(cfg.run.resume, train_stream, resolved, resume_keys(cfg))
    if state is not None and (run_dir / "best" / "report.json").is_file():
        best_report = json.loads((run_dir / "best" / "report.json").read_text())
        best = {"value": best_report[cfg.eval.metric], "step": best_report["step"]}
    if acc.is_main_process:
        write_yaml(run_dir / "config.yaml", resolved)
        StopRequest.clear_markers(run_dir)
    stop = StopRequest(acc, run_dir, check_every=cfg.run.stop_check_every)
    init_tracking(acc, cfg.run, resolved, name=run_dir.name)
    log.info("%s -> %d classes (%s); %d steps of %d images, peak lr %.2e; training samples per class %s",
             info.source, len(class_names), ", ".join(class_names), total_steps, samples_per_step, peak_lr, counts)

    def loss_fn(model, batch, micro_step):
        x = normalize(batch["image"], mean, std, acc.device)
        y = batch["label"].to(acc.device, non_blocking=True)
        step, a = divmod(micro_step, accum)  # where the rows sit in the global step: per-sample draws
        first = (acc.process_index * accum + a) * micro
        positions = list(range(first, first + x.shape[0]))
        draws.set(step, torch.tensor(positions))
        return objective(model, x, y, batch["valid"], step, positions), {}

    def trained():  # the weights evaluated and exported (every process: FSDP gathers its shards)
        return ema.module if ema is not None else gathered(acc, model, lambda: build()[0])

    def evaluate(step):
        results, predicted = {}, {}
        for name, net in (("model", model), ("ema", ema.module if ema is not None else None)):
            if net is None:
                continue
            predicted[name] = predict(acc, net, val_stream, mean, std)
            if acc.is_main_process:
                out = run_dir / "eval" / f"step_{step:08d}" / name
                results[name] = write_report(predicted[name], class_names, out, step=step,
                                             extra={"split": cfg.data.val_split, "weights": name})
        net = trained()
        if not acc.is_main_process:
            return
        chosen = "ema" if ema is not None else "model"
        report = results[chosen]
        acc.log({f"val/{w}/{m}": r[m] for w, r in results.items() for m in METRICS}, step=step)
        log.info("step %d, %s weights: top-1 %.4f, balanced accuracy %.4f, macro-F1 %.4f", step, chosen,
                 report["top1"], report["balanced_accuracy"], report["macro_f1"])
        if report[cfg.eval.metric] > best["value"]:
            best.update(value=report[cfg.eval.metric], step=step)
            export_classifier(net, info, run_dir / "best", class_names=class_names, mean=mean, std=std, **evaluated,
                              extra={"step": step, "metric": cfg.eval.metric, "config": resolved})
            rgb = save_report(report, run_dir / "best", predictions=predicted[chosen],
                              title=f"best: {cfg.eval.metric} {report[cfg.eval.metric]:.3f} at step {step}")
            log_images(acc, {"confusion_matrix": rgb}, step)

    hooks = []
    if ema is not None:
        hooks.append(Hook(1, lambda step: ema.update(unwrap(acc, model), step=step)))
    if cfg.eval.every:
        hooks.append(Hook(cfg.eval.every, evaluate))
    step = train(acc, model, optimizer, train_stream, loss_fn, total_steps=total_steps,
                 lr_at=lambda s: warmup_cosine(s, peak=peak_lr, total_steps=total_steps,
                                               warmup_steps=cfg.optim.warmup_steps, min_lr=cfg.optim.min_lr),
                 checkpointer=checkpointer, config=resolved, samples_per_step=samples_per_step,
                 start_step=start_step, grad_accum=accum, grad_clip=cfg.optim.grad_clip,
                 log_every=cfg.run.log_every, save_every=cfg.run.save_every, hooks=hooks,
                 metrics_file=run_dir / "metrics.jsonl", stop=stop, max_nonfinite_steps=cfg.run.max_nonfinite_steps)
    if stop.stopped_at is not None and step < total_steps:  # stopped early: state saved, ask for a requeue
        stop.acknowledge()
        acc.end_training()
        return EXIT_REQUEUE
    if step >= total_steps:
        if not cfg.eval.every or step % cfg.eval.every:
            evaluate(step)
        net = trained()
        if acc.is_main_process:
            export_classifier(net, info, run_dir / "export", class_names=class_names, mean=mean, std=std, **evaluated,
                              extra={"step": step, "config": resolved})
            log.info("best %s %.4f at step %s (run_dir/best); final weights exported to %s", cfg.eval.metric,
                     best["value"], best.get("step"), run_dir / "export")
            write_record(cfg, resolved, run_dir, step, "ema" if ema is not None else "model")
    acc.wait_for_everyone()
    acc.end_training()
    return 0


def entry() -> None:
    """`affect-finetune`: this stage on one process or several, ending with its own line and status
    (`accelerate launch`'s options first; see shared/launcher.py)."""
    raise SystemExit(launch(main, "finetune_affectnet.main", "affect-finetune"))


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
