"""Stage 1: masked-autoencoder pretraining of the face ViT.

    accelerate launch pretrain_mae/main.py --config pretrain_mae/configs/vit_base_faces.yaml
    accelerate launch pretrain_mae/main.py --config ... --resume auto        # after a kill
    python pretrain_mae/main.py --config pretrain_mae/configs/tiny_cpu.yaml run.total_steps=50

Any config key can be overridden as key=value (see pretrain_mae/config.py).
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import torch

from pretrain_mae.config import PretrainConfig, resume_keys
from pretrain_mae.data import build_data
from pretrain_mae.export import export_mae
from pretrain_mae.model import build_mae
from pretrain_mae.record import write_record
from pretrain_mae.visualize import reconstruction_figure
from shared import builtin_data
from shared.atomic import write_yaml
from shared.checkpoints import load_into, load_state_dict_file
from shared.encoders import load_encoder, spec_kind, stored_pool
from shared.config import load_config, parse_cli, print_config, to_dict
from shared.errors import run_cli
from shared.launcher import launch
from shared.stream.reading import derive_seed
from shared.training.batching import split_global_batch
from shared.training.checkpoint import Checkpointer
from shared.training.device_input import DeviceBatches
from shared.training.images import normalize
from shared.training.loop import Hook, train
from shared.training.per_sample import per_sample_draws
from shared.training.preemption import EXIT_REQUEUE, StopRequest
from shared.training.optim import adamw
from shared.training.schedule import scaled_lr, warmup_cosine
from shared.training.setup import init_tracking, log_images, make_accelerator
from shared.training.wrappers import gathered, prepare

log = logging.getLogger("pretrain_mae")


def mask_noise(seed: int, step: int, offset: int, batch: int, global_batch: int, num_patches: int, device):
    """The masking noise (batch, num_patches) of the samples at positions offset .. offset + batch
    - 1 of global step `step`. Drawn for the whole global batch from a generator seeded by the
    step, so every sample gets the same mask on any number of processes, with any accumulation,
    and after a resume."""
    g = torch.Generator(device=device).manual_seed(derive_seed(seed, "mask", step) % 2**63)
    noise = torch.rand(global_batch, num_patches, generator=g, device=device)
    return noise[offset:offset + batch]


def mae_loss(model, x: torch.Tensor, noise: torch.Tensor, valid: torch.Tensor, mask_ratio: float) -> torch.Tensor:
    """The MAE loss of the valid samples (padding at the end of an exact epoch, unreadable images
    left out) as their sum / the micro-batch size: the steps' losses then do not depend on how
    a step is split over processes and micro-batches."""
    if valid.all():
        return model(x, mask_ratio=mask_ratio, noise=noise)[0]
    if not valid.any():  # still a forward and backward: every rank reduces the same gradients
        return model(x, mask_ratio=mask_ratio, noise=noise)[0] * 0.0
    keep = valid.to(x.device)
    return model(x[keep], mask_ratio=mask_ratio, noise=noise[keep])[0] * keep.sum() / x.shape[0]


def initial_weights(spec: str) -> dict[str, torch.Tensor]:
    """A weight file as it is (official MAE / MAE-Face .pth, .safetensors: decoder included when
    it has one); a timm folder or model name: its encoder (the decoder starts from init)."""
    if spec_kind(spec) == "file":
        return load_state_dict_file(spec)
    encoder, _ = load_encoder(spec, pool=stored_pool(spec) if spec_kind(spec) == "folder" else "token")
    return encoder.state_dict()  # a fine-tuned (avg-pooled) folder: fc_norm, no norm; load_into says so


def main(argv=None) -> int:
    args = parse_cli(argv, __doc__)
    cfg = load_config(PretrainConfig, args.config, args.overrides)
    if args.print_config:
        return print_config(cfg)
    if args.resume:
        cfg.run.resume = args.resume
    acc = make_accelerator(cfg.run)
    run_dir = Path(cfg.run.output_dir)
    if not cfg.data.sources and not cfg.data.synthetic:  # said (and made, once) before any other work
        shards = builtin_data.made_once(acc, builtin_data.face_shards, "faces (AffectNet, CelebA, CASIA-WebFace "
                                        "layouts)", part="shards", own="data.sources")
        cfg.data.sources = {name: str(folder) for name, folder in shards.items()}

    model = build_mae(cfg.model.name, **cfg.model.overrides)
    if cfg.model.init:
        report = load_into(model, initial_weights(cfg.model.init))
        log.info("initialised from %s: %s", cfg.model.init, report.summary())
    if cfg.model.grad_checkpointing:
        model.set_grad_checkpointing(True)
    model.set_fast_norm(cfg.model.fast_norm)
    image_size = model.patch_embed.img_size[0]
    num_patches = model.patch_embed.num_patches

    micro, accum, samples_per_step = split_global_batch(cfg.data.global_batch, acc.num_processes,
                                                        cfg.data.batch_size, cfg.optim.grad_accum)
    data = build_data(cfg.data, image_size=image_size, seed=cfg.run.seed, rank=acc.process_index,
                      world_size=acc.num_processes, pin_memory=acc.device.type == "cuda", micro_batch=micro,
                      global_batch=samples_per_step, device_type=acc.device.type)
    data = DeviceBatches(data, acc.device, thread=cfg.data.prepare_in_thread)  # images on the device (made there too)
    total_steps = math.ceil(cfg.total_samples / samples_per_step) if cfg.total_samples else cfg.run.total_steps
    peak_lr = scaled_lr(cfg.optim.base_lr, samples_per_step, cfg.optim.lr)
    draws = per_sample_draws(model, cfg.run.seed, samples_per_step)  # drop path per sample, if any
    optimizer = adamw(model, cfg.optim, acc.device)
    model, optimizer = prepare(acc, model, optimizer, cfg.run)

    checkpointer = Checkpointer(acc, run_dir, cfg.run.keep_last)
    resolved = to_dict(cfg)
    start_step, _ = checkpointer.restore(cfg.run.resume, data, resolved, resume_keys(cfg))
    if acc.is_main_process:
        write_yaml(run_dir / "config.yaml", resolved)
        StopRequest.clear_markers(run_dir)
    stop = StopRequest(acc, run_dir, check_every=cfg.run.stop_check_every)
    init_tracking(acc, cfg.run, resolved, name=run_dir.name)
    log.info("%s: %d steps of %d images (peak lr %.2e) on %d process(es), %d micro-batch(es) of %d each",
             cfg.model.name, total_steps, samples_per_step, peak_lr, acc.num_processes, accum, micro)

    last_images: list[torch.Tensor] = []

    def loss_fn(model, batch, micro_step):
        last_images[:] = [batch["image"]]
        x = normalize(batch["image"], cfg.data.mean, cfg.data.std, acc.device)
        step, a = divmod(micro_step, accum)
        first = (acc.process_index * accum + a) * micro  # the rows' positions in the global step
        noise = mask_noise(cfg.run.seed, step, first, x.shape[0], samples_per_step, num_patches, acc.device)
        rows, valid = torch.arange(first, first + x.shape[0]), batch["valid"]
        draws.set(step, rows[valid] if valid.any() else rows)
        return mae_loss(model, x, noise, batch["valid"], cfg.model.mask_ratio), {}

    def build():  # an empty copy of the model, for FSDP's gathered weights
        return build_mae(cfg.model.name, **cfg.model.overrides)

    def figure(step):
        net = gathered(acc, model, build)  # every process: FSDP gathers its shards
        if net is None or not last_images:
            return
        images = last_images[0][: cfg.figures.images]
        path = run_dir / "figures" / f"reconstruction_{step:08d}.png"
        rgb = reconstruction_figure(net, images, mean=cfg.data.mean, std=cfg.data.std,
                                    mask_ratio=cfg.model.mask_ratio, seed=cfg.run.seed, path=path,
                                    title=f"{cfg.model.name}, step {step}")
        log_images(acc, {"reconstruction": rgb}, step)

    hooks = [Hook(cfg.figures.every, figure)] if cfg.figures.every else []
    step = train(acc, model, optimizer, data, loss_fn, total_steps=total_steps,
                 lr_at=lambda s: warmup_cosine(s, peak=peak_lr, total_steps=total_steps,
                                               warmup_steps=cfg.optim.warmup_steps, min_lr=cfg.optim.min_lr),
                 checkpointer=checkpointer, config=resolved, samples_per_step=samples_per_step,
                 start_step=start_step, stop_after=cfg.stop_after, grad_accum=accum,
                 grad_clip=cfg.optim.grad_clip, log_every=cfg.run.log_every, save_every=cfg.run.save_every,
                 hooks=hooks, metrics_file=run_dir / "metrics.jsonl", stop=stop,
                 max_nonfinite_steps=cfg.run.max_nonfinite_steps)
    if stop.stopped_at is not None and step < total_steps:  # stopped early: state saved, ask for a requeue
        stop.acknowledge()
        acc.end_training()
        return EXIT_REQUEUE
    if step < total_steps and acc.is_main_process:  # stop_after: this job's share is done, the run is not
        log.warning("stopped after %d step(s) as asked (stop_after=%d): step %d of %d, the run is incomplete and "
                    "not exported; its state is %s; continue it with the same command and --resume auto",
                    step - start_step, cfg.stop_after, step, total_steps, checkpointer.latest())
    final = gathered(acc, model, build) if step >= total_steps else None
    if final is not None:
        out = export_mae(final, run_dir / "export", mean=cfg.data.mean, std=cfg.data.std,
                         interpolation=cfg.data.interpolation, config=resolved)
        log.info("exported the encoder (timm folder) and the full MAE to %s", out)
        write_record(cfg, resolved, run_dir, step)
    acc.wait_for_everyone()
    acc.end_training()
    return 0


def entry() -> None:
    """`affect-pretrain`: this stage on one process or several, ending with its own line and status
    (`accelerate launch`'s options first; see shared/launcher.py)."""
    raise SystemExit(launch(main, "pretrain_mae.main", "affect-pretrain"))


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
