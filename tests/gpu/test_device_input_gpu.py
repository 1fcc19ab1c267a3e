"""The device input path on CUDA: the crops and flips the CPU path draws for the same seeds,
decoded by nvJPEG (output=jpeg) or copied as decoded pixels (output=decoded)."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from .gpu_utils import DEVICE, record, requires_gpu
from shared.stream import Augment
from shared.stream.decode import augment_image, pack_plans, plan_image
from shared.training.device_input import plan_to_images
from test_device_input import faces, levels

pytestmark = requires_gpu


@pytest.mark.parametrize("output", ["jpeg", "decoded"])
@pytest.mark.parametrize("kind", ["mae", "resize", "eval"])
def test_device_crops_equal_the_cpu_crops(kind, output):
    blobs = faces()
    aug = Augment(kind=kind, size=96)
    cpu = np.stack([augment_image(b, aug, random.Random(i)) for i, b in enumerate(blobs)])  # (B, S, S, 3)
    plans = [plan_image(b, aug, random.Random(i), decode=output == "decoded") for i, b in enumerate(blobs)]
    images = plan_to_images(pack_plans(plans, aug), torch.device(DEVICE))
    assert images.device.type == DEVICE and images.shape == (len(blobs), 3, 96, 96)
    worst, mean = levels(images.permute(0, 2, 3, 1).cpu(), cpu)
    record(f"device crops ({kind}, {output})", max_levels=worst, mean_levels=round(mean, 3))
    # the same crop and flip: another crop or a missed flip is tens of levels off on average.
    # nvJPEG's IDCT rounds unlike libjpeg's, so JPEGs decoded on the GPU may differ by a few levels
    assert mean < (1.0 if output == "jpeg" and DEVICE == "cuda" else 0.05), (worst, mean)
