"""Images per second per CPU worker: the reference MAE input pipeline against this project's.

Compared, on the very same JPEG bytes, in one process with one thread (what a single
DataLoader worker does):

(a) reference: facebookresearch/mae `main_pretrain.py` -- torchvision `ImageFolder` with the
    default PIL loader, `RandomResizedCrop(224, scale=(0.2, 1.0), bicubic)`, horizontal flip,
    `ToTensor`, ImageNet `Normalize`, through a `DataLoader(batch_size=B, shuffle=True,
    num_workers=0, drop_last=True)` (float32 batches, normalised on the CPU);
(b) ours: `shared.stream.FaceStream` in resampled mode reading webdataset shards, augment
    `Augment(kind="mae", size=224)` (bicubic, as the MAE recipe; bilinear is reported as an extra
    line), num_workers=0 (uint8 channels-last batches; normalisation happens on the device).
    Also extra lines: the same stream with `output="decoded"` (the worker decodes and draws the
    crop; crop, resize and flip are left to the GPU) and `output="jpeg"` (the worker only reads
    the JPEG header and draws the crop, leaving decode and resize to the GPU; `gpu_input.py`),
    and the bytes per image each output sends to the device.

Why: pretraining is input-bound on CPU-poor GPU nodes, so the number that matters is how many
images one loader worker delivers per second. The target is ours >= 2x the reference.

The images: N synthetic CelebA faces (`shared.synthetic.write_celeba`) converted by the real
converter (`python -m shared.shards celeba`, defaults: 256x256 crops, JPEG quality 95); the
JPEG bytes are then copied out of the shards into `imagefolder/faces/<key>.jpg` for the
reference, so both pipelines decode identical files. Synthetic faces are smoother than photos,
so their JPEGs are smaller and decode somewhat faster than real ones; both pipelines decode
the same bytes, so the ratio is what to read. `--kind photo` uses the harder set instead: the
same faces noise-textured to photo-sized JPEGs (30-55 KB; `face_data.py`).

Timing: each pipeline is one long-lived batch iterator, warmed up with a few batches; then the
repeats are interleaved (reference, ours, ours-bilinear, reference, ...) so drift on a shared
machine hits all of them alike, each repeat times one pass worth of images (N // B batches),
and the median repeat is reported; a ratio is the median of the per-repeat ratios (each repeat
times the pipelines back to back). `--breakdown` adds per-stage costs (decode, resize,
to-tensor, collation) measured on the same bytes.

    python benchmarks/input_pipeline.py [--images N] [--batch-size B] [--repeats R] [--kind faces|photo]
                                        [--workdir DIR] [--breakdown] [--quick]
"""
from __future__ import annotations

import argparse
import io
import itertools
import random
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import PIL
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image, features
from torch.utils.data import DataLoader
from torchvision import datasets, transforms
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import InterpolationMode

from shared.stream import Augment, FaceStream, StreamConfig, build_sources
from shared.stream.decode import augment_image, random_resized_crop
from shared.stream.reading import ErrorLog, read_shard
from common import header, paired_ratio, parse_sized_args, result, verdict
from face_data import KINDS, make_dataset, shard_paths
from hardware import machine

IMAGE_SIZE = 224
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
WARMUP_BATCHES = 3
TARGET_RATIO = 2.0
QUICK = dict(images=256, batch_size=32, repeats=3)


# ----------------------------------------------------------------------------- pipelines


def reference_transform() -> transforms.Compose:
    """main_pretrain.py's transform_train (interpolation=3 is PIL bicubic)."""
    return transforms.Compose([
        transforms.RandomResizedCrop(IMAGE_SIZE, scale=(0.2, 1.0), interpolation=InterpolationMode.BICUBIC),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
    ])


def reference_batches(folder: Path, batch_size: int) -> Iterator[int]:
    """Endless batch sizes from the reference pipeline (a new shuffled epoch when one ends)."""
    dataset = datasets.ImageFolder(str(folder), transform=reference_transform())
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=0, drop_last=True)
    for _ in itertools.count():
        for images, _labels in loader:
            yield images.shape[0]


def our_stream(shards: Path, batch_size: int, batches: int, interpolation: str, output: str) -> FaceStream:
    sources = build_sources({"celeba": str(shards)}, pretraining=True)
    config = StreamConfig(mode="resampled", batch_size=batch_size, batches_per_epoch=batches, num_workers=0,
                          augment=Augment(kind="mae", size=IMAGE_SIZE, interpolation=interpolation), output=output)
    return FaceStream(sources, config)


def our_batches(shards: Path, batch_size: int, batches: int, interpolation: str,
                output: str = "pixels") -> Iterator[int]:
    """`batches` batch sizes from FaceStream (resampled, one epoch long enough for the run)."""
    for batch in our_stream(shards, batch_size, batches, interpolation, output):
        yield len(batch["key"])


def transfer_bytes(shards: Path, batch_size: int, output: str) -> float:
    """Bytes per image that one batch of `output` carries to the device (images or plan)."""
    batch = next(iter(our_stream(shards, batch_size, 1, "bicubic", output)))
    tensors = [batch["image"]] if "image" in batch else [v for v in batch["plan"].values() if torch.is_tensor(v)]
    return sum(t.numel() * t.element_size() for t in tensors) / len(batch["key"])


# ----------------------------------------------------------------------------- timing


@dataclass
class Result:
    name: str
    rates: list[float]  # images per second, one per repeat

    @property
    def median(self) -> float:
        return statistics.median(self.rates)


def take(batches: Iterator[int], n: int) -> int:
    """Pull n batches; returns the number of images they held."""
    return sum(next(batches) for _ in range(n))


def time_pipelines(pipelines: dict[str, Iterator[int]], batches_per_repeat: int, repeats: int) -> list[Result]:
    """Warm each pipeline up, then time interleaved repeats of `batches_per_repeat` batches."""
    for batches in pipelines.values():
        take(batches, WARMUP_BATCHES)
    results = {name: Result(name, []) for name in pipelines}
    for _ in range(repeats):
        for name, batches in pipelines.items():
            start = time.perf_counter()
            images = take(batches, batches_per_repeat)
            results[name].rates.append(images / (time.perf_counter() - start))
    return list(results.values())


# ----------------------------------------------------------------------------- breakdown


def per_image_us(fn: Callable[[int], object], n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        fn(i)
    return (time.perf_counter() - start) / n * 1e6


def collate_us(stack: Callable[[list], object], items: list, batch_size: int) -> float:
    """Microseconds per image of stacking `items` into batches of `batch_size` (reused cyclically)."""
    batches = max(1, len(items) // batch_size)
    start = time.perf_counter()
    for b in range(batches):
        stack([items[(b * batch_size + j) % len(items)] for j in range(batch_size)])
    return (time.perf_counter() - start) / (batches * batch_size) * 1e6


def crop_boxes(blobs: list[bytes]) -> list[tuple[int, int, int, int]]:
    """One RandomResizedCrop box (x0, y0, x1, y1) per image, drawn as `Augment` draws them."""
    rng, boxes = random.Random(0), []
    for data in blobs:
        width, height = Image.open(io.BytesIO(data)).size
        left, top, w, h = random_resized_crop(width, height, (0.2, 1.0), (3 / 4, 4 / 3), rng)
        boxes.append((left, top, left + w, top + h))
    return boxes


def torch_resize(image: torch.Tensor, box: tuple[int, int, int, int], mode: str) -> torch.Tensor:
    """Crop a (3, H, W) uint8 channels-last tensor to `box` (a view) and resize it to 224."""
    x0, y0, x1, y1 = box
    crop = image.unsqueeze(0)[:, :, y0:y1, x0:x1]
    return F.interpolate(crop, size=(IMAGE_SIZE, IMAGE_SIZE), mode=mode, antialias=True)


def breakdown(folder: Path, shards: Path, batch_size: int, n: int = 512) -> dict[str, list[tuple[str, float]]]:
    """Microseconds per image of each stage, on the first n JPEGs with the same crop boxes."""
    blobs = [p.read_bytes() for p in sorted((folder / "faces").iterdir())[:n]]
    n, boxes, side = len(blobs), crop_boxes(blobs), (IMAGE_SIZE, IMAGE_SIZE)
    decoded = [Image.open(io.BytesIO(b)).convert("RGB") for b in blobs]
    resized = [im.resize(side, Image.BICUBIC, box=box) for im, box in zip(decoded, boxes)]
    arrays = [np.asarray(im) for im in resized]
    to_tensor = transforms.ToTensor()
    normalize = transforms.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD)
    floats = [to_tensor(im) for im in resized]
    jpeg_tensors = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
    decoded_tensors = [decode_jpeg(t, mode=ImageReadMode.RGB) for t in jpeg_tensors]  # (3, H, W), channels-last
    reference, rng = reference_transform(), random.Random(0)
    ours = {mode: Augment(kind="mae", size=IMAGE_SIZE, interpolation=mode) for mode in ("bicubic", "bilinear")}
    return {
        "reference (torchvision + PIL)": [
            ("JPEG decode 256x256 q95, PIL (open + convert RGB)",
             per_image_us(lambda i: Image.open(io.BytesIO(blobs[i])).convert("RGB"), n)),
            ("crop then resize -> 224, bicubic",
             per_image_us(lambda i: decoded[i].crop(boxes[i]).resize(side, Image.BICUBIC), n)),
            ("ToTensor", per_image_us(lambda i: to_tensor(resized[i]), n)),
            ("Normalize", per_image_us(lambda i: normalize(floats[i]), n)),
            (f"torch.stack float32 (default_collate, B={batch_size})", collate_us(torch.stack, floats, batch_size)),
            ("all but file I/O and collation: decode + transform",
             per_image_us(lambda i: reference(Image.open(io.BytesIO(blobs[i])).convert("RGB")), n)),
        ],
        "ours (shared/stream)": [
            ("tar reading (read_shard, per sample)", read_shards_us(shards, n)),
            ("JPEG decode, torchvision.io.decode_jpeg (incl. bytes -> tensor)",
             per_image_us(lambda i: decode_jpeg(torch.frombuffer(bytearray(blobs[i]), dtype=torch.uint8),
                                                mode=ImageReadMode.RGB), n)),
            ("crop view + F.interpolate uint8 channels-last, bicubic, antialias",
             per_image_us(lambda i: torch_resize(decoded_tensors[i], boxes[i], "bicubic"), n)),
            ("crop view + F.interpolate uint8 channels-last, bilinear, antialias",
             per_image_us(lambda i: torch_resize(decoded_tensors[i], boxes[i], "bilinear"), n)),
            (f"np.stack + torch.from_numpy, uint8 (B={batch_size})",
             collate_us(lambda xs: torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2), arrays, batch_size)),
            ("augment_image, bicubic (decode .. crop, resize, flip)",
             per_image_us(lambda i: augment_image(blobs[i], ours["bicubic"], rng), n)),
            ("augment_image, bilinear",
             per_image_us(lambda i: augment_image(blobs[i], ours["bilinear"], rng), n)),
        ],
    }


def read_shards_us(shards: Path, n: int) -> float:
    """Microseconds per sample of reading raw samples out of the shards (no decoding)."""
    samples = (s for path in shard_paths(shards) for s in read_shard(str(path), ErrorLog()))
    start = time.perf_counter()
    count = sum(1 for _ in itertools.islice(samples, n))
    return (time.perf_counter() - start) / count * 1e6


# ----------------------------------------------------------------------------- report


def versions() -> dict[str, str]:
    turbo = features.version("libjpeg_turbo")
    jpeg = f"libjpeg-turbo {turbo}" if turbo else f"libjpeg {features.version('jpg')}"
    return {"torchvision": torchvision.__version__, "Pillow": f"{PIL.__version__} ({jpeg})", "numpy": np.__version__}


def report(results: list[Result], args: argparse.Namespace, batches_per_repeat: int, mean_kb: float,
           sent: dict[str, float]) -> None:
    header(machine(**versions()))
    print(f"data:    {args.images} synthetic CelebA faces{', noise-textured (photo-sized)' if args.kind == 'photo' else ''}"
          f" -> face-shards celeba (256x256, JPEG q95, mean {mean_kb:.1f} KB); the same bytes as an ImageFolder "
          f"for the reference")
    print(f"timing:  1 process, num_workers=0, torch threads {torch.get_num_threads()}, batch {args.batch_size}, "
          f"warm-up {WARMUP_BATCHES} batches, {args.repeats} interleaved repeats x {batches_per_repeat} batches "
          f"({batches_per_repeat * args.batch_size} images), median")
    print()
    print(f"{'pipeline':58s} {'img/s':>8s} {'min..max':>15s} {'ms/img':>7s}")
    for r in results:
        print(f"{r.name:58s} {r.median:8.1f} {min(r.rates):7.1f}..{max(r.rates):<7.1f} {1000 / r.median:7.2f}")
    reference, ours, ours_bilinear, ours_decoded, ours_jpeg = results
    ratio = paired_ratio(ours.rates, reference.rates)[0]
    passed = verdict(ratio, TARGET_RATIO)
    print()
    print("ratios: the median of the per-repeat ratios (each repeat times the pipelines back to back)")
    print(f"ratio ours/reference (bicubic, like for like): {paired(ours, reference)}   "
          f"target >= {TARGET_RATIO:g}x: {passed}")
    print(f"ratio ours bilinear/reference (extra):         {paired(ours_bilinear, reference)}")
    print(f"ratio ours output=decoded/reference (extra):   {paired(ours_decoded, reference)}")
    print(f"ratio ours output=jpeg/reference (extra):      {paired(ours_jpeg, reference)}")
    print()
    print("to the device per image: " + ", ".join(f"output={o} {b / 1024:.1f} KB" for o, b in sent.items()))
    kind = "" if args.kind == "faces" else f", {args.kind}"
    result(f"input_pipeline{kind}", "images/s of one CPU worker, FaceStream vs the reference MAE pipeline (bicubic)",
           f"{ours.median:.1f} vs {reference.median:.1f} img/s", ratio=ratio, target=f"≥ {TARGET_RATIO:g}x",
           verdict=passed, note=f"{args.images} images ({mean_kb:.1f} KB), batch {args.batch_size}, {args.repeats} repeats")
    for name, r in (("pixels", ours), ("decoded", ours_decoded), ("jpeg", ours_jpeg)):
        result(f"input_pipeline{kind} output={name}", "images/s of one CPU loader worker making this stream output",
               f"{r.median:.0f} img/s per worker; {sent[name] / 1024:.1f} KB per image to the device",
               ratio=r.median, unit="img/s", note=f"{mean_kb:.1f} KB JPEGs")


def paired(a: Result, b: Result) -> str:
    """The ratio a/b as the median over repeats, its spread, and the ratio of the median rates."""
    ratio, low, high = paired_ratio(a.rates, b.rates)
    return f"{ratio:.2f}x (per repeat {low:.2f}..{high:.2f}; ratio of the median rates {a.median / b.median:.2f}x)"


def print_breakdown(sections: dict[str, list[tuple[str, float]]]) -> None:
    print()
    print("per-stage cost, one thread (us per image):")
    for title, rows in sections.items():
        print(f"  {title}")
        for name, us in rows:
            print(f"    {name:66s} {us:8.1f}")


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000, help="face images to generate (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size of both pipelines (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats per pipeline; the median is reported "
                                                               "(default %(default)s)")
    parser.add_argument("--kind", choices=KINDS, default="faces",
                        help="faces: the smooth synthetic faces (~12.5 KB); photo: noise-textured, photo-sized (30-55 KB)")
    parser.add_argument("--workdir", type=Path, help="keep the data here (default: a temporary folder, removed)")
    parser.add_argument("--breakdown", action="store_true", help="also time each stage (decode, resize, collate)")
    args = parse_sized_args(parser, argv, QUICK)
    if args.images < 10 or not 1 <= args.batch_size <= args.images or args.repeats < 1:
        parser.error("need --images >= 10, 1 <= --batch-size <= --images, --repeats >= 1")
    return args


def run(args: argparse.Namespace, workdir: Path) -> None:
    shards, folder = make_dataset(workdir, args.images, args.kind)
    mean_kb = statistics.mean(p.stat().st_size for p in (folder / "faces").iterdir()) / 1024
    batches_per_repeat = max(1, args.images // args.batch_size)
    ours_total = WARMUP_BATCHES + args.repeats * batches_per_repeat
    pipelines = {
        "reference: ImageFolder + torchvision MAE transform, bicubic": reference_batches(folder, args.batch_size),
        "ours: FaceStream resampled, Augment mae, bicubic": our_batches(shards, args.batch_size, ours_total, "bicubic"),
        "ours: FaceStream resampled, Augment mae, bilinear (extra)": our_batches(shards, args.batch_size, ours_total,
                                                                                 "bilinear"),
        "ours: output=decoded, resize left to the GPU (extra)": our_batches(shards, args.batch_size, ours_total,
                                                                           "bicubic", "decoded"),
        "ours: output=jpeg, decode + resize left to the GPU (extra)": our_batches(shards, args.batch_size, ours_total,
                                                                                 "bicubic", "jpeg"),
    }
    results = time_pipelines(pipelines, batches_per_repeat, args.repeats)
    sent = {output: transfer_bytes(shards, args.batch_size, output) for output in ("pixels", "decoded", "jpeg")}
    report(results, args, batches_per_repeat, mean_kb, sent)
    if args.breakdown:
        print_breakdown(breakdown(folder, shards, args.batch_size))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        run(args, args.workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="input-pipeline-") as tmp:
            run(args, Path(tmp))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
