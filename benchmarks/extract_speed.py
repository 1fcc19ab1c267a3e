"""Stage 3a speed: face detection + crop frames/s and visual-feature frames/s, and what they mean
for the 25,067 Hume-Reaction videos.

Videos: synthetic h264 clips of real public-domain face photos (shared.synthetic.reactions) at
the chosen resolution; faces kept at `--fps` frames per second, as `extract.py faces` does.
Visual features: a randomly initialised ViT-B/16 (timm `vit_base_patch16_224`, the paper's
encoder size) over 224x224 face crops, as `extract.py visual` does (bf16 on GPU).

The projection multiplies by an assumed mean clip length (`--seconds-per-video`): pass the real
one of your copy of the dataset.

    python benchmarks/extract_speed.py [--resolution 640x360] [--fps 6] [--device auto] [--quick]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import timm

from common import header, parse_sized_args, result
from eri_downstream.faces import extract_faces, make_detector
from shared.synthetic.reactions import write_hume_reaction
from hardware import machine

HUME_VIDEOS = 25_067  # 15,806 train + 4,657 val + 4,604 test
QUICK = dict(videos=1, seconds=1.0, batch_size=4, batches=1)


def face_rate(videos: list[Path], device: str, fps: float) -> tuple[float, int]:
    detector = make_detector("mtcnn", device=device)
    extract_faces(videos[0], detector, fps=fps)  # warm-up: model load, first call
    start, frames = time.perf_counter(), 0
    for video in videos:
        frames += len(extract_faces(video, detector, fps=fps).times)
    return frames / (time.perf_counter() - start), frames


@torch.no_grad()
def visual_rate(device: str, batch: int, batches: int) -> float:
    model = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0).to(device).eval()
    x = torch.randn(batch, 3, 224, 224, device=device)
    with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
        model(x)
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(batches):
            model(x)
        if device == "cuda":
            torch.cuda.synchronize()
    return batch * batches / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--resolution", default="640x360", help="video frame size WxH (default %(default)s)")
    p.add_argument("--videos", type=int, default=3, help="train videos to time (default %(default)s)")
    p.add_argument("--seconds", type=float, default=2.0, help="length of each synthetic video")
    p.add_argument("--video-fps", type=int, default=30)
    p.add_argument("--fps", type=float, default=6.0, help="face frames kept per second (extract.py --fps)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--batches", type=int, default=3)
    p.add_argument("--seconds-per-video", type=float, default=10.0, help="assumed mean Hume-Reaction clip length")
    p.add_argument("--device", default="auto")
    args = parse_sized_args(p, argv, QUICK)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    width, height = (int(v) for v in args.resolution.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        planted = write_hume_reaction(Path(tmp), n_train=max(3, args.videos), n_val=1, n_test=0,
                                      seconds=args.seconds, fps=args.video_fps, size=(width, height))
        videos = [Path(tmp) / "train" / "mp4" / f"{i}.mp4" for i in planted.ids["train"]
                  if i not in planted.no_face][: args.videos]
        faces_per_s, frames = face_rate(videos, device, args.fps)
    visual_per_s = visual_rate(device, args.batch_size, args.batches)
    per_video = args.seconds_per_video * args.fps
    header(machine(timm=timm.__version__))
    print(f"faces:   MTCNN + tracking + 224 crops, {width}x{height} h264, {args.fps:g} frames/s kept: "
          f"{faces_per_s:.1f} frames/s ({frames} frames)")
    print(f"visual:  ViT-B/16 (random weights), batch {args.batch_size}, {device}: {visual_per_s:.1f} frames/s")
    hours = {}
    for name, rate in (("faces", faces_per_s), ("visual", visual_per_s)):
        hours[name] = HUME_VIDEOS * per_video / rate / 3600
        print(f"projected {name} step for {HUME_VIDEOS} videos x {args.seconds_per_video:g} s x {args.fps:g} "
              f"frames/s on one process: {hours[name]:.1f} h")
    # no reference implementation to compare with: figures only
    result("extract_speed faces", f"stage-3a MTCNN + tracking + 224 crops, {width}x{height} h264 ({device})",
           f"{faces_per_s:.1f} frames/s; {hours['faces']:.1f} h for {HUME_VIDEOS} videos", ratio=faces_per_s,
           unit="frames/s", note=f"{frames} frames")
    result("extract_speed visual", f"stage-3a ViT-B/16 features, batch {args.batch_size} ({device})",
           f"{visual_per_s:.1f} frames/s; {hours['visual']:.1f} h for {HUME_VIDEOS} videos", ratio=visual_per_s,
           unit="frames/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
