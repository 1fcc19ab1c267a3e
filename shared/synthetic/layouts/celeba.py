"""A tiny aligned CelebA in the published layout.

Layout::

    img_align_celeba/000001.jpg ...       178x218, face centred (box None)
    list_eval_partition.txt               "000001.jpg 0" (0 train, 1 val, 2 test)
    list_landmarks_align_celeba.txt       count line, header line, name + 10 ints
    list_bbox_celeba.txt                  count line, header line, name + 4 ints
    identity_CelebA.txt                   "000001.jpg 2880", no count or header

Splits are contiguous blocks, as in the real partition (train first, then val, then test).
Every third partition line separates its fields with a run of spaces; the other list files
right-align their numbers in runs of spaces, as published. The bbox file describes the
in-the-wild images, so its boxes are deliberately unrelated to (and mostly outside) the
aligned pictures; a converter must not crop aligned images with it.

Quirks: the middle train image is listed everywhere but missing on disk ("missing-image");
the first val image is garbage ("unreadable-image").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shared.synthetic.faces import face_jpeg, landmarks_5, random_skin
from shared.synthetic.layouts.common import (
    Planted, centred_box, corrupt_jpeg, dataset_rng, write_bytes,
)

IMAGES = "img_align_celeba"
SIZE = (178, 218)
SPLITS = ("train", "val", "test")
LANDMARK_HEADER = ("lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y "
                   "leftmouth_x leftmouth_y rightmouth_x rightmouth_y")
BBOX_HEADER = "image_id x_1 y_1 width height"
MAX_IDENTITY = 10_177


def _partition(n: int) -> list[int]:
    """Contiguous split codes: a fifth (at least 3) each for val and test, the rest train."""
    n_held_out = max(3, n // 5)
    n_train = n - 2 * n_held_out
    if n_train < 4:
        raise ValueError(f"CelebA needs at least 10 images, got {n}")
    return [0] * n_train + [1] * n_held_out + [2] * n_held_out


def _numbers_line(name: str, values: list[int]) -> str:
    # Published CelebA lists right-align each number in a 5-wide column after the name.
    return name + " " + "".join(f"{v:>5d}" for v in values) + "\n"


def _wild_bbox(rng: np.random.Generator) -> list[int]:
    # In-the-wild photos are far larger than 178x218: boxes start and reach well outside it.
    width = int(rng.integers(150, 500))
    return [int(rng.integers(50, 400)), int(rng.integers(30, 300)), width,
            int(width * rng.uniform(1.2, 1.5))]


def _list_file(count: int, header: str, lines: list[str]) -> str:
    return f"{count}\n{header}\n" + "".join(lines)


def write_celeba(root: Path, seed: int = 0, n: int = 30) -> Planted:
    """Write a tiny aligned CelebA under `root`; keys are image ids like `000001.jpg`.

    faces[key] carries "identity" (int) and "landmarks" (5 (x, y) int points, as written).
    """
    root = Path(root)
    rng = dataset_rng(seed, "celeba")
    planted = Planted(root=root, image_dir=root / IMAGES)
    codes = _partition(n)
    missing, unreadable = codes.count(0) // 2, codes.index(1)
    people = [int(i) for i in rng.integers(1, MAX_IDENTITY + 1, size=max(1, n // 3))]
    partition, landmark_lines, bbox_lines, identity_lines = [], [], [], []
    for index, code in enumerate(codes):
        key = f"{index + 1:06d}.jpg"
        split = SPLITS[code]
        skin = random_skin(rng)
        box = centred_box(rng, SIZE, 0.56, 0.58)
        identity = int(rng.choice(people))
        points = [(round(x), round(y)) for x, y in landmarks_5(box)]
        spaces = "   " if index % 3 == 2 else " "
        partition.append(f"{key}{spaces}{code}\n")
        landmark_lines.append(_numbers_line(key, [v for point in points for v in point]))
        bbox_lines.append(_numbers_line(key, _wild_bbox(rng)))
        identity_lines.append(f"{key} {identity}\n")
        planted.listed(split)
        if index == missing:
            planted.reject("missing-image", key)
        elif index == unreadable:
            write_bytes(planted.image_dir / key, corrupt_jpeg(rng))
            planted.reject("unreadable-image", key)
        else:
            write_bytes(planted.image_dir / key, face_jpeg(rng, SIZE, box, skin))
            planted.accept(key, split, box=None, skin=skin, identity=identity, landmarks=points)
    (root / "list_eval_partition.txt").write_text("".join(partition))
    (root / "list_landmarks_align_celeba.txt").write_text(
        _list_file(n, LANDMARK_HEADER, landmark_lines))
    (root / "list_bbox_celeba.txt").write_text(_list_file(n, BBOX_HEADER, bbox_lines))
    (root / "identity_CelebA.txt").write_text("".join(identity_lines))
    return planted
