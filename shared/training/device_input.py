"""Stream batches to images on the device: the copy, and optionally the decode and augmentation.

A GPU node often has fewer CPU cores per GPU than JPEG decoding at the GPU's training rate
needs. The stream can therefore hand over less finished work (`StreamConfig.output`):

- "pixels":  augmented uint8 crops; here they are only copied (pinned memory, non-blocking);
- "decoded": decoded images with the crop box and flip drawn in the worker; cropped, resized
             (antialiased, as `F.interpolate(..., antialias=True)` does on the CPU) and flipped here;
- "jpeg":    JPEG bytes with the same draws; decoded here too (`torchvision.io.decode_jpeg` on
             CUDA: nvJPEG, batched, on the hardware decoder where the GPU has one).

The crop boxes and flips are drawn in the workers from the per-sample RNG, exactly as for
"pixels", so the three give the same crops and flips and the stream position (and a resume) is
the same for all; pixels differ only by resampling rounding (at most a level or two of 255).

`DeviceBatches` wraps a stream: its batches carry "image" as uint8 (B, 3, S, S) on the device,
prepared on a side CUDA stream so the copies, decoding and resizing overlap the training step
queued before them. Everything also runs on CPU tensors, which is how it is tested.
"""
from __future__ import annotations

import logging
import queue
import threading
from typing import Iterator

import torch
from torchvision.io import ImageReadMode, decode_jpeg

from ..stream.decode import decode_image

log = logging.getLogger(__name__)

# The stream output a stage reads on each kind of device when it is not set ("auto"). On CUDA the
# workers make the pixels: on one H200 with 14 workers at the eager ViT-B/16 step (3,526 images/s
# on on-device data) pixels fed 0.93x, jpeg 0.87x (the training thread waited 53 % of the time:
# nvJPEG's batched decode returns only when done, holding back the next step's queueing) and
# decoded 0.76x (the workers still decode, and ship the full images). benchmarks/README.md, "Input
# paths", has the reasons and what remains to measure (the compiled step, photo-sized JPEGs,
# DeviceBatches(thread=True)).
AUTO_OUTPUT = {"cuda": "pixels"}


def auto_output(device_type: str) -> str:
    """The stream output for "auto" on `device_type` (AUTO_OUTPUT; "pixels" elsewhere)."""
    return AUTO_OUTPUT.get(device_type, "pixels")


# ----------------------------------------------------------------------------- resampling


def _filter(x: torch.Tensor, interpolation: str) -> torch.Tensor:
    """The antialiasing kernels of PyTorch's (and PIL's) resize: triangle, or Keys cubic a=-0.5."""
    x = x.abs()
    if interpolation == "bilinear":
        return (1 - x).clamp(min=0)
    a = -0.5
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def resize_weights(start: torch.Tensor, length: torch.Tensor, extent: int, size: int, interpolation: str,
                   flip: torch.Tensor | None = None) -> torch.Tensor:
    """(B, size, extent) matrices that resample, along one axis, the window [start, start + length)
    of a line of `extent` pixels to `size` pixels: the antialiased weights of
    `F.interpolate(crop, size, mode=interpolation, antialias=True)`, written densely so that a
    whole batch of different crops is two batched matmuls. `flip` reverses the output order."""
    # float32 is what PyTorch's own kernel uses for float images; float64 on the CPU, where tests
    # compare against it, costs nothing there and halves the rounding noise
    dtype = torch.float64 if start.device.type == "cpu" else torch.float32
    start, length = start.to(dtype), length.to(dtype)
    scale = length / size  # (B,)
    support = (2.0 if interpolation == "bicubic" else 1.0) * scale.clamp(min=1.0)
    invscale = 1.0 / scale.clamp(min=1.0)
    center = scale[:, None] * (torch.arange(size, device=start.device, dtype=dtype) + 0.5)  # (B, S)
    lo = torch.floor(center - support[:, None] + 0.5).clamp(min=0)
    hi = torch.minimum(torch.floor(center + support[:, None] + 0.5), length[:, None])
    t = torch.arange(extent, device=start.device, dtype=dtype)[None, None] - start[:, None, None]
    inside = (t >= lo[..., None]) & (t < hi[..., None])  # the taps PyTorch's kernel visits
    w = torch.where(inside, _filter((t - center[..., None] + 0.5) * invscale[:, None, None], interpolation), 0.0)
    total = w.sum(-1, keepdim=True)
    w = w / torch.where(total == 0, 1.0, total)  # no taps only past an undecodable image's edge: black
    if flip is not None:
        w = torch.where(flip[:, None, None], w.flip(1), w)
    return w


def crop_resize_flip(images: torch.Tensor, box: torch.Tensor, flip: torch.Tensor, size: int,
                     interpolation: str = "bicubic", dtype: torch.dtype | None = None) -> torch.Tensor:
    """uint8 (B, 3, H, W) images, boxes (B, 4) as (left, top, w, h), flips (B,) -> uint8 (B, 3, S, S).

    Horizontal pass, rounding to 0..255, vertical pass, rounding: the order and the intermediate
    rounding of PyTorch's uint8 resize, so the results agree to a level or two. `dtype` is the
    matmul precision: float16 on CUDA by default (tensor cores; exact on 0..255 and a few
    thousandths off in the weights), float32 elsewhere."""
    if dtype is None:
        dtype = torch.float16 if images.device.type == "cuda" else torch.float32
    b, _, height, width = images.shape
    box, flip = box.to(images.device, non_blocking=True), flip.to(images.device, non_blocking=True)
    wx = resize_weights(box[:, 0], box[:, 2], width, size, interpolation, flip).to(dtype)
    wy = resize_weights(box[:, 1], box[:, 3], height, size, interpolation).to(dtype)
    x = images.to(dtype)
    x = torch.matmul(x, wx.transpose(1, 2)[:, None]).round_().clamp_(0, 255)  # (B, 3, H, S)
    x = torch.matmul(wy[:, None], x).round_().clamp_(0, 255)  # (B, 3, S, S)
    return x.to(torch.uint8)


# ----------------------------------------------------------------------------- decoding


def _decode_jpegs(blobs: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Batched decode on `device`. When the batch fails (a JPEG with a valid header and corrupt
    data), image by image: on `device`, else on the CPU (libjpeg-turbo tolerates more, e.g. a
    truncated scan), else black. Failing on every image means the device cannot decode at all
    (e.g. torchvision without nvJPEG): that is an error, not something to work around quietly."""
    try:
        return decode_jpeg(blobs, mode=ImageReadMode.RGB, device=device)
    except RuntimeError as exn:
        batch_error = exn
    out, failed = [], 0
    for blob in blobs:
        try:
            out.append(decode_jpeg(blob, mode=ImageReadMode.RGB, device=device))
            continue
        except RuntimeError:
            failed += 1
        try:
            out.append(decode_image(blob.numpy().tobytes()).to(device))
        except Exception as exn:  # noqa: BLE001 - one unreadable image must not end the run
            log.warning("unreadable JPEG replaced by a black image: %s", exn)
            out.append(torch.zeros(3, 1, 1, dtype=torch.uint8, device=device))
    if failed == len(blobs) > 1:
        raise RuntimeError(f"decoding JPEGs on {device} failed for every image of a batch ({batch_error}); "
                           "decode them in the loader workers instead (data.device_decode=false)")
    log.warning("%d of %d JPEGs of a batch could not be decoded on %s (%s): decoded on the CPU or left black",
                failed, len(blobs), device, batch_error)
    return out


def unpack_images(plan: dict, device: torch.device) -> torch.Tensor:
    """The plan's images, uncropped, as uint8 (B, 3, H, W) on `device`, zero-padded at the bottom
    and right to the largest (crop boxes never reach the padding)."""
    data, offsets = plan["data"], plan["offsets"].tolist()
    shapes, jpeg = plan["shape"].tolist(), plan["jpeg"].tolist()
    n = len(shapes)
    if not any(jpeg) and len({tuple(s) for s in shapes}) == 1:  # the usual "decoded" batch: one copy, no gather
        h, w = shapes[0]
        return data.to(device, non_blocking=True).view(n, h, w, 3).permute(0, 3, 1, 2)
    images: list[torch.Tensor | None] = [None] * n
    coded = [i for i in range(n) if jpeg[i]]
    if coded:
        if device.type == "cuda":
            # torchvision decodes on its own CUDA stream into memory allocated on the current one;
            # finishing the current stream's earlier work first keeps that memory free of readers
            torch.cuda.current_stream(device).synchronize()
        decoded = _decode_jpegs([data[offsets[i]:offsets[i + 1]] for i in coded], device)
        for i, image in zip(coded, decoded):
            images[i] = image
    if len(coded) < n:
        on_device = data.to(device, non_blocking=True)
        for i in range(n):
            if not jpeg[i]:
                h, w = shapes[i]
                images[i] = on_device[offsets[i]:offsets[i + 1]].view(h, w, 3).permute(2, 0, 1)
    if len({tuple(im.shape) for im in images}) == 1:
        return torch.stack(images)
    height, width = max(im.shape[1] for im in images), max(im.shape[2] for im in images)
    out = torch.zeros(n, 3, height, width, dtype=torch.uint8, device=device)
    for i, image in enumerate(images):
        out[i, :, :image.shape[1], :image.shape[2]] = image
    return out


def plan_to_images(plan: dict, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A stream batch's "plan" -> uint8 (B, 3, S, S) on `device`: decode if needed, crop, resize, flip."""
    device = torch.device(device)
    images = unpack_images(plan, device)
    with torch.autocast(device.type, enabled=False):  # the resampling precision is chosen here
        return crop_resize_flip(images, plan["box"], plan["flip"], plan["size"], plan["interpolation"], dtype)


# ----------------------------------------------------------------------------- the wrapper


class DeviceBatches:
    """A stream whose batches carry "image" as uint8 (B, 3, S, S) on `device`, from pixels or
    from a plan. Position, length and error counts are the stream's: a resume is unchanged.

    On CUDA each batch is prepared on a side stream, and the training stream waits for it only
    where it uses the images: the host keeps queueing work, so the copy (from pinned memory),
    the decode and the resize run while the previous step computes. On other devices the
    batch is prepared in line; "pixels" batches on the CPU pass through untouched.

    `thread=True` prepares the batches in a background thread, `depth` ahead. nvJPEG's batched
    decode returns only when the batch is decoded (torchvision synchronises its stream), and a
    decode in the training thread holds back the queueing of the next step; in a thread it
    overlaps it. The batches are the same, in the same order; `state_dict` is the stream's
    position after the last batch handed out, not after those prepared ahead of it.
    """

    def __init__(self, data, device: torch.device | str, thread: bool = False, depth: int = 2):
        self.data, self.device = data, torch.device(device)
        self.thread, self.depth = thread, depth
        self._side = None
        self._position: dict | None = None  # threaded: the stream's state with the last batch handed out

    def __len__(self) -> int:
        return len(self.data)

    def __getattr__(self, name: str):
        """Everything else (error counts, messages, ...) is the stream's, where it has it."""
        if name == "data":  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        attr = getattr(self.data, name)
        if name != "load_saved_states":
            return attr

        def load_saved_states(*args, **kwargs):  # an exact stream's resume: its position is the stream's again
            self._position = None
            return attr(*args, **kwargs)
        return load_saved_states

    def state_dict(self) -> dict:
        return dict(self._position) if self._position is not None else self.data.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self._position = None
        self.data.load_state_dict(state)

    def prepare(self, batch: dict) -> dict:
        batch = dict(batch)
        if "plan" in batch:
            batch["image"] = plan_to_images(batch.pop("plan"), self.device)
        else:
            batch["image"] = batch["image"].to(self.device, non_blocking=True)
        return batch

    def _prepared(self) -> Iterator[tuple[dict, torch.cuda.Event | None]]:
        """(batch with "image" on the device, the event after its preparation on CUDA)."""
        if self.device.type != "cuda":
            for batch in self.data:
                yield self.prepare(batch), None
            return
        if self._side is None:
            self._side = torch.cuda.Stream(self.device)
        for batch in self.data:
            with torch.cuda.stream(self._side):
                batch = self.prepare(batch)
                ready = torch.cuda.Event()
                ready.record(self._side)
            yield batch, ready

    def _handed_out(self, batch: dict, ready) -> dict:
        if ready is not None:
            main = torch.cuda.current_stream(self.device)
            main.wait_event(ready)
            batch["image"].record_stream(main)  # its memory is not reused before the step is done with it
        return batch

    def __iter__(self) -> Iterator[dict]:
        if self.thread:
            yield from self._threaded()
            return
        for batch, ready in self._prepared():
            yield self._handed_out(batch, ready)

    def _threaded(self) -> Iterator[dict]:
        ahead: queue.Queue = queue.Queue(maxsize=self.depth)
        stop = threading.Event()
        end = object()

        def put(item) -> bool:
            while not stop.is_set():
                try:
                    ahead.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def work() -> None:
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)  # the current device is per thread
            try:
                for batch, ready in self._prepared():
                    if not put((batch, ready, self.data.state_dict())):
                        return
                put(end)
            except BaseException as exn:  # noqa: BLE001 - raised again in the training thread
                put(exn)

        worker = threading.Thread(target=work, name="device-batches", daemon=True)
        worker.start()
        try:
            while (item := ahead.get()) is not end:
                if isinstance(item, BaseException):
                    raise item
                batch, ready, self._position = item
                yield self._handed_out(batch, ready)
            self._position = None  # a whole pass: the stream's own position (the next epoch)
        finally:
            stop.set()
            worker.join(timeout=60)
