"""Images made on the device (shared.training.device_input) against the CPU decode path: the same
crops and flips, pixels within resampling rounding; resume unchanged; the stage-1 switch."""
from __future__ import annotations

import dataclasses
import io
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from shared.errors import UserError
from shared.stream import Augment, FaceStream, StreamConfig, build_sources
from shared.stream.decode import augment_image, jpeg_size, pack_plans, plan_image, random_resized_crop
from shared.synthetic import face_jpeg
from shared.training.device_input import DeviceBatches, crop_resize_flip, plan_to_images, resize_weights

# PyTorch's uint8 resize rounds in integer arithmetic; ours in float: a level or two apart
MAX_LEVELS, MEAN_LEVELS = 2, 0.05


def faces(n: int = 12, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = [face_jpeg(rng, (256, 256), (40, 40, 170, 170)) for _ in range(n - 2)]
    out.append(face_jpeg(rng, (300, 200), (40, 30, 120, 120)))  # other sizes in one batch: padded
    out.append(face_jpeg(rng, (180, 240), (20, 50, 120, 120)))
    return out


def levels(a, b) -> tuple[int, float]:
    d = (torch.as_tensor(a).int() - torch.as_tensor(b).int()).abs()
    return d.max().item(), d.float().mean().item()


def test_jpeg_size_reads_the_frame_header():
    rng = np.random.default_rng(1)
    image = Image.open(io.BytesIO(face_jpeg(rng, (123, 77), (10, 10, 50, 50))))
    for options in ({}, {"progressive": True}, {"quality": 50, "subsampling": 0}):
        buf = io.BytesIO()
        image.save(buf, "JPEG", **options)
        assert jpeg_size(buf.getvalue()) == (123, 77)
    buf = io.BytesIO()
    image.convert("L").save(buf, "JPEG")
    assert jpeg_size(buf.getvalue()) == (123, 77)
    for bad in (b"\xff\xd8 garbage", b"\xff\xd8", b"\xff\xd8\xff\xda\x00\x02", buf.getvalue()[:-300]):
        with pytest.raises(ValueError):  # the last one is truncated: the CPU decoder refuses it too
            jpeg_size(bad)


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_batched_resize_matches_torch_antialiased_resize(interpolation):
    torch.manual_seed(0)
    images = (torch.rand(6, 3, 256, 256) * 255).round().to(torch.uint8)
    rng = random.Random(0)
    boxes = [random_resized_crop(256, 256, (0.05, 1.0), (3 / 4, 4 / 3), rng) for _ in range(5)] + [(0, 0, 256, 256)]
    flips = torch.tensor([False, True, False, True, False, True])
    out = crop_resize_flip(images, torch.tensor(boxes), flips, 224, interpolation)
    for i, (left, top, w, h) in enumerate(boxes):
        crop = images[i:i + 1, :, top:top + h, left:left + w].contiguous(memory_format=torch.channels_last)
        ref = F.interpolate(crop, size=(224, 224), mode=interpolation, antialias=True)[0]
        ref = ref.flip(-1) if flips[i] else ref
        worst, mean = levels(out[i], ref)  # noise, the worst case for rounding: more pixels one level off
        assert worst <= MAX_LEVELS and mean < 0.15, (i, worst, mean)
        # the weights alone, against PyTorch's float path: the same linear map
        wx = resize_weights(torch.tensor([left]), torch.tensor([w]), 256, 224, interpolation)
        wy = resize_weights(torch.tensor([top]), torch.tensor([h]), 256, 224, interpolation)
        ours_float = wy[:, None] @ images[i:i + 1].double() @ wx.transpose(1, 2)[:, None]
        ref_float = F.interpolate(crop.double(), size=(224, 224), mode=interpolation, antialias=True)
        assert torch.allclose(ours_float, ref_float, atol=1e-6)
    # half-precision matmuls (the CUDA default) stay within the same few levels
    half = crop_resize_flip(images, torch.tensor(boxes), flips, 224, interpolation, torch.float16)
    worst, mean = levels(half, out)
    assert worst <= 3 and mean < 0.2


@pytest.mark.parametrize("kind", ["mae", "resize", "eval"])
@pytest.mark.parametrize("output", ["jpeg", "decoded"])
def test_device_images_equal_the_cpu_decode_path(kind, output):
    blobs = faces()
    for interpolation in ("bicubic", "bilinear"):
        aug = Augment(kind=kind, size=96, interpolation=interpolation)
        cpu = np.stack([augment_image(b, aug, random.Random(i)) for i, b in enumerate(blobs)])  # (B, S, S, 3)
        plans = [plan_image(b, aug, random.Random(i), decode=output == "decoded") for i, b in enumerate(blobs)]
        assert all(p.jpeg == (output == "jpeg") for p in plans)
        device = plan_to_images(pack_plans(plans, aug), torch.device("cpu"))
        assert device.shape == (len(blobs), 3, 96, 96) and device.dtype == torch.uint8
        worst, mean = levels(device.permute(0, 2, 3, 1), cpu)
        assert worst <= MAX_LEVELS and mean < MEAN_LEVELS, (interpolation, worst, mean)
    if kind != "eval":
        assert 0 < sum(p.flip for p in plans) < len(plans)  # both flipped and unflipped images were compared


def test_placeholders_are_black_and_a_corrupt_jpeg_does_not_stop_the_batch():
    aug = Augment(kind="mae", size=32)
    good = faces(3)
    plans = [plan_image(b, aug, random.Random(i), decode=False) for i, b in enumerate(good)]
    data = bytearray(good[0])
    data[len(data) // 2:len(data) // 2 + 64] = b"\xff\x00" * 32  # header and end intact, scan damaged
    plans.append(dataclasses.replace(plans[0], payload=np.frombuffer(bytes(data), np.uint8)))
    out = plan_to_images(pack_plans([*plans, None], aug), torch.device("cpu"))
    assert out.shape == (5, 3, 32, 32)
    assert not out[-1].any()  # the padding entry of exact mode
    for bad in (b"\xff\xd8 garbage", good[0][:200]):  # refused in the worker, counted as the CPU path counts it
        with pytest.raises(ValueError):
            plan_image(bad, aug, random.Random(0), decode=False)


def stream(shards, output: str, **kw) -> FaceStream:
    sources = build_sources({"celeba": str(shards["celeba"]), "casia": str(shards["casia"])}, pretraining=True)
    config = dict(mode="resampled", batch_size=6, batches_per_epoch=5, num_workers=2, shuffle_buffer=8,
                  block_size=16, augment=Augment(kind="mae", size=48), seed=5, output=output)
    return FaceStream(sources, StreamConfig(**{**config, **kw}))


def test_stream_outputs_give_the_same_batches_and_resume_exactly(shards):
    pixels = list(DeviceBatches(stream(shards, "pixels"), "cpu"))
    for output in ("decoded", "jpeg"):
        made = list(DeviceBatches(stream(shards, output), "cpu"))
        assert len(made) == len(pixels) == 5
        for a, b in zip(pixels, made):
            assert a["key"] == b["key"] and torch.equal(a["label"], b["label"]) and "plan" not in b
            worst, mean = levels(a["image"], b["image"])
            assert worst <= MAX_LEVELS and mean < MEAN_LEVELS, (output, worst, mean)
    # the position is the stream's: stop after 2 batches, resume, get the rest bit for bit
    whole = [b["image"] for b in DeviceBatches(stream(shards, "jpeg"), "cpu")]
    first = DeviceBatches(stream(shards, "jpeg"), "cpu")
    it = iter(first)
    head = [next(it)["image"] for _ in range(2)]
    resumed = DeviceBatches(stream(shards, "jpeg"), "cpu")
    resumed.load_state_dict(first.state_dict())
    rest = [b["image"] for b in resumed]
    assert len(head + rest) == len(whole)
    assert all(torch.equal(a, b) for a, b in zip(head + rest, whole))
    assert resumed.errors == 0  # the stream's own attributes pass through


def test_device_outputs_need_a_resizing_augmentation():
    with pytest.raises(UserError, match="resizes on the device"):
        StreamConfig(batches_per_epoch=1, augment=Augment(kind="none"), output="jpeg")
    with pytest.raises(UserError, match="resizes on the device"):
        StreamConfig(batches_per_epoch=1, augment=Augment(kind="finetune", auto_augment="rand-m9-mstd0.5"),
                     output="decoded")
    with pytest.raises(UserError, match="stream output"):
        StreamConfig(batches_per_epoch=1, output="gpu")


@pytest.mark.parametrize("output", ["pixels", "jpeg"])
def test_batches_prepared_in_a_thread_are_the_same_and_so_is_the_position(shards, output):
    """thread=True: the same batches in the same order; the position saved after k batches is the
    position after the k handed out (the thread has prepared more), and resumes to the same rest."""
    whole = list(DeviceBatches(stream(shards, output, batches_per_epoch=6), "cpu"))
    threaded = DeviceBatches(stream(shards, output, batches_per_epoch=6), "cpu", thread=True, depth=3)
    epochs = []
    for epoch in range(2):
        epochs.append(list(threaded))
        assert len(epochs[-1]) == 6 and threaded.state_dict() == threaded.data.state_dict()  # a whole pass
        assert threaded.state_dict()["epoch"] == epoch + 1 and threaded.state_dict()["batch"] == 0
    assert all(a["key"] == b["key"] and torch.equal(a["image"], b["image"]) for a, b in zip(whole, epochs[0]))
    assert [b["key"] for b in epochs[1]] != [b["key"] for b in epochs[0]]
    first, inline = (DeviceBatches(stream(shards, output, batches_per_epoch=6), "cpu", thread=t) for t in (True, False))
    it, it_inline = iter(first), iter(inline)
    head = [next(it) for _ in range(2)]
    head_inline = [next(it_inline) for _ in range(2)]
    assert all(a["key"] == b["key"] and torch.equal(a["image"], b["image"]) for a, b in zip(head, head_inline))
    saved = first.state_dict()
    assert saved == inline.state_dict() and saved["batch"] == 2
    it.close()  # stops the thread, which had prepared batches beyond the second
    resumed = DeviceBatches(stream(shards, output, batches_per_epoch=6), "cpu", thread=True)
    resumed.load_state_dict(saved)
    rest = list(resumed)
    assert [b["key"] for b in head + rest] == [b["key"] for b in whole]
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(head + rest, whole))


def test_an_error_in_the_preparing_thread_reaches_the_training_thread(shards):
    class Broken:
        def __iter__(self):
            yield from stream(shards, "pixels")
            raise OSError("shard vanished")

        def state_dict(self):
            return {}

    batches = DeviceBatches(Broken(), "cpu", thread=True)
    with pytest.raises(OSError, match="shard vanished"):
        list(batches)


def test_the_input_path_is_one_setting_with_a_measured_default_per_device():
    from pretrain_mae.config import DataSection
    from pretrain_mae.data import stream_output
    from shared.training.device_input import AUTO_OUTPUT
    assert stream_output(DataSection(), "cuda") == AUTO_OUTPUT["cuda"] == "pixels"
    assert stream_output(DataSection(), "cpu") == "pixels"
    assert stream_output(DataSection(input_path="jpeg"), "cuda") == "jpeg"
    assert stream_output(DataSection(device_augment=True), "cuda") == "decoded"  # the older switches still work
    assert stream_output(DataSection(device_decode=True, device_augment=True, input_path="jpeg"), "cpu") == "jpeg"
    with pytest.raises(UserError, match="data.input_path=pixels contradicts data.device_decode=true"):
        stream_output(DataSection(input_path="pixels", device_decode=True), "cuda")
    with pytest.raises(UserError, match="expected auto, pixels, decoded, jpeg"):
        stream_output(DataSection(input_path="gpu"), "cuda")
