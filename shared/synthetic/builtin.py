"""Built-in face datasets for stages 1 and 2: drawn faces in the published raw layouts.

`write_builtin_faces(root)` writes, under `root`:

    affectnet/   AffectNet layout (Manually_Annotated_Images/<int>/<hex>.jpg,
                 Manually_Annotated_file_lists/training.csv with header, validation.csv
                 without): every picture shows the expression of its label (8 classes, balanced),
                 with the drawn face box, its 68 landmarks and a class-typical valence/arousal
    celeba/      aligned CelebA layout (img_align_celeba/NNNNNN.jpg 178x218, partition,
                 5-point landmarks, identities): random expressions, for pretraining
    casia/       CASIA-WebFace identity folders (CASIA-WebFace/<7 digits>/<nnn>.jpg, 250x250):
                 one drawn person per folder, random expressions, for pretraining

They go through the real converters (`face-shards affectnet|celeba|casia-webface ROOT --out DIR`)
as a user's downloads would, without rejects. Each picture is drawn from its own seed
(seed, dataset, index), so the result does not depend on how many processes draw it.
"""

from __future__ import annotations

import os
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Callable
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path

import numpy as np

from shared.synthetic.expressions import CLASS_NAMES, Framing, expression_jpeg, random_framing, random_look
from shared.synthetic.layouts.affectnet import write_list as write_affectnet_list
from shared.synthetic.layouts.common import Planted, write_bytes

AFFECTNET_IMAGES = "Manually_Annotated_Images"
AFFECTNET_LISTS = "Manually_Annotated_file_lists"
CELEBA_SIZE = (178, 218)
CASIA_SIZE = (250, 250)
# Typical (valence, arousal) of each class at full intensity, after the circumplex model of
# affect; individual faces scatter around it.
AFFECT = np.array([(0.0, 0.0), (0.8, 0.45), (-0.7, -0.3), (0.2, 0.8), (-0.6, 0.7),
                   (-0.7, 0.3), (-0.65, 0.65), (-0.45, 0.2)])
CHUNK = 64  # pictures per task handed to a worker process


def item_rng(seed: int, dataset: str, index: int) -> np.random.Generator:
    """The generator of one picture: the same (seed, dataset, index) draws the same picture."""
    return np.random.default_rng([seed, zlib.crc32(dataset.encode()), index])


@dataclass(frozen=True)
class _Item:
    """One picture to draw and where to write it; a look_seed fixes the person drawn."""

    path: Path
    seed: int
    dataset: str
    index: int
    code: int
    intensity: float
    size: tuple[int, int] | None = None
    centred: tuple[float, float] | None = None  # face box fraction of the picture, aligned layouts
    look_seed: int | None = None


def _aligned_framing(rng: np.random.Generator, size: tuple[int, int],
                     fraction: tuple[float, float]) -> Framing:
    # aligned datasets centre the face and level the eyes: little jitter, little rotation
    width, height = size
    w, h = round(width * fraction[0] * rng.uniform(0.95, 1.05)), round(height * fraction[1])
    dx, dy = (int(v) for v in rng.integers(-3, 4, size=2))
    return Framing(size, ((width - w) // 2 + dx, (height - h) // 2 + dy, w, h),
                   float(rng.uniform(-3, 3)), int(rng.integers(85, 96)))


def _draw(item: _Item) -> tuple[tuple[int, int, int, int], list[list[float]]]:
    rng = item_rng(item.seed, item.dataset, item.index)
    if item.centred is not None:
        framing = _aligned_framing(rng, item.size, item.centred)
    else:
        framing = random_framing(rng, item.size)
    look = None if item.look_seed is None else random_look(item_rng(item.seed, "look", item.look_seed))
    data, points, framing = expression_jpeg(rng, item.code, item.intensity, framing=framing, look=look)
    write_bytes(item.path, data)
    return framing.box, points.round(2).tolist()


def _draw_chunk(items: list[_Item]) -> list:
    return [_draw(item) for item in items]


@dataclass
class _Plan:
    """A dataset ready to draw: its record, its pictures, and what writes its lists afterwards."""

    planted: Planted
    items: list[_Item]
    finish: Callable[[list], None]  # gets the (box, landmarks) of every item, in order


def _context():
    # fork where there is one: it starts at once and, unlike spawn, does not re-run the caller's
    # main module, so a plain script may call the writers without a __main__ guard. The children
    # only draw with numpy and PIL, nothing a forked thread state could deadlock.
    return get_context("fork" if "fork" in get_all_start_methods() else None)


def _run(plans: list[_Plan], workers: int | None) -> list[Planted]:
    """Draw every plan's pictures (in worker processes when `workers` > 1), then finish each."""
    items = [item for plan in plans for item in plan.items]
    chunks = [items[i:i + CHUNK] for i in range(0, len(items), CHUNK)]
    workers = min(workers or 1, len(chunks))
    if workers <= 1:
        drawn = [r for chunk in chunks for r in _draw_chunk(chunk)]
    else:
        with ProcessPoolExecutor(workers, mp_context=_context()) as pool:
            drawn = [r for chunk in pool.map(_draw_chunk, chunks) for r in chunk]
    start = 0
    for plan in plans:
        plan.finish(drawn[start:start + len(plan.items)])
        start += len(plan.items)
    return [plan.planted for plan in plans]


def _random_expression(rng: np.random.Generator) -> tuple[int, float]:
    # pretraining pictures: any class at any intensity, neutral-leaning like web photos
    return int(rng.integers(0, len(CLASS_NAMES))), float(rng.uniform(0, 1) ** 1.5)


def write_builtin_affectnet(root: Path | str, *, per_class_train: int = 80, per_class_val: int = 25,
                            seed: int = 0, workers: int | None = None) -> Planted:
    """AffectNet layout with `per_class_*` pictures of each of the 8 classes per split.

    Non-neutral faces show their class at intensity 0.6-1. Keys of the result are the
    subDirectory_filePath values; faces[key] holds box, expression, valence, arousal, landmarks.
    """
    return _run([_plan_affectnet(Path(root), per_class_train, per_class_val, seed)], workers)[0]


def _plan_affectnet(root: Path, per_class_train: int, per_class_val: int, seed: int) -> _Plan:
    planted = Planted(root=root, image_dir=root / AFFECTNET_IMAGES)
    rng = item_rng(seed, "builtin-affectnet-plan", 0)
    items, meta = [], []
    for split, per_class in (("train", per_class_train), ("val", per_class_val)):
        for code in rng.permutation(np.repeat(np.arange(len(CLASS_NAMES)), per_class)):
            intensity = 0.0 if code == 0 else float(rng.uniform(0.6, 1.0))
            valence, arousal = np.clip(AFFECT[code] * max(intensity, 0.3) + rng.normal(0, 0.1, 2), -1, 1)
            key = f"{int(rng.integers(1, 12))}/{rng.bytes(20).hex()}.jpg"
            items.append(_Item(planted.image_dir / key, seed, "builtin-affectnet", len(items), int(code),
                               intensity))
            meta.append((split, key, int(code), round(float(valence), 4), round(float(arousal), 4)))

    def finish(drawn: list) -> None:
        rows: dict[str, list[list[str]]] = {"train": [], "val": []}
        for (split, key, code, valence, arousal), (box, points) in zip(meta, drawn):
            landmarks = ";".join(f"{v:.2f}" for point in points for v in point)
            rows[split].append([key, *map(str, box), landmarks, str(code), f"{valence:.4f}",
                                f"{arousal:.4f}"])
            planted.listed(split)
            planted.accept(key, split, box=box, expression=code, valence=valence, arousal=arousal,
                           landmarks=points)
        write_affectnet_list(root / AFFECTNET_LISTS / "training.csv", rows["train"], header=True)
        write_affectnet_list(root / AFFECTNET_LISTS / "validation.csv", rows["val"], header=False)

    return _Plan(planted, items, finish)


def _five_points(points: list[list[float]]) -> list[tuple[int, int]]:
    """CelebA's eyes, nose tip and mouth corners from the 68 iBUG points."""
    p = np.asarray(points)
    five = [p[36:42].mean(0), p[42:48].mean(0), p[30], p[48], p[54]]
    return [(round(x), round(y)) for x, y in five]


def write_builtin_celeba(root: Path | str, *, n: int = 750, seed: int = 0,
                         workers: int | None = None) -> Planted:
    """Aligned CelebA layout: `n` pictures, 80 / 10 / 10 % train / val / test (contiguous).

    People recur (about three pictures each, identity numbers as in identity_CelebA.txt);
    expressions are random. faces[key] holds identity and the 5 landmarks.
    """
    return _run([_plan_celeba(Path(root), n, seed)], workers)[0]


def _plan_celeba(root: Path, n: int, seed: int) -> _Plan:
    planted = Planted(root=root, image_dir=root / "img_align_celeba")
    rng = item_rng(seed, "builtin-celeba-plan", 0)
    n_held = max(1, n // 10)
    codes = [0] * (n - 2 * n_held) + [1] * n_held + [2] * n_held
    people = rng.choice(np.arange(1, 10_178), size=max(1, n // 3), replace=False)
    identities = [int(rng.choice(people)) for _ in range(n)]
    items = []
    for index in range(n):
        code, intensity = _random_expression(rng)
        items.append(_Item(planted.image_dir / f"{index + 1:06d}.jpg", seed, "builtin-celeba", index,
                           code, intensity, CELEBA_SIZE, (0.56, 0.6), look_seed=identities[index]))

    def finish(drawn: list) -> None:
        partition, landmark_lines, identity_lines = [], [], []
        for index, (_, points) in enumerate(drawn):
            key = f"{index + 1:06d}.jpg"
            five = _five_points(points)
            partition.append(f"{key} {codes[index]}\n")
            landmark_lines.append(key + " " + "".join(f"{v:>5d}" for point in five for v in point) + "\n")
            identity_lines.append(f"{key} {identities[index]}\n")
            split = ("train", "val", "test")[codes[index]]
            planted.listed(split)
            planted.accept(key, split, box=None, identity=identities[index], landmarks=five)
        (root / "list_eval_partition.txt").write_text("".join(partition))
        header = ("lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y "
                  "leftmouth_x leftmouth_y rightmouth_x rightmouth_y")
        (root / "list_landmarks_align_celeba.txt").write_text(f"{n}\n{header}\n" + "".join(landmark_lines))
        (root / "identity_CelebA.txt").write_text("".join(identity_lines))

    return _Plan(planted, items, finish)


def write_builtin_casia(root: Path | str, *, n_ids: int = 75, per_id: int = 10, seed: int = 0,
                        workers: int | None = None) -> Planted:
    """CASIA-WebFace identity folders: `n_ids` drawn people, `per_id` pictures each, 250x250."""
    return _run([_plan_casia(Path(root), n_ids, per_id, seed)], workers)[0]


def _plan_casia(root: Path, n_ids: int, per_id: int, seed: int) -> _Plan:
    planted = Planted(root=root, image_dir=root / "CASIA-WebFace")
    rng = item_rng(seed, "builtin-casia-plan", 0)
    ids = sorted(f"{int(i):07d}" for i in rng.choice(10_000_000, size=n_ids, replace=False))
    items = []
    for person, identity in enumerate(ids):
        for number in range(1, per_id + 1):
            code, intensity = _random_expression(rng)
            items.append(_Item(planted.image_dir / identity / f"{number:03d}.jpg", seed, "builtin-casia",
                               len(items), code, intensity, CASIA_SIZE, (0.44, 0.56),
                               look_seed=100_000 + person))

    def finish(drawn: list) -> None:
        for item in items:
            planted.listed("train")
            planted.accept(f"{item.path.parent.name}/{item.path.name}", "train", box=None,
                           identity=item.path.parent.name)

    return _Plan(planted, items, finish)


@dataclass
class BuiltinFaces:
    """What `write_builtin_faces` wrote: one `Planted` per dataset folder, and how long it took."""

    root: Path
    datasets: dict[str, Planted] = field(default_factory=dict)
    seconds: float = 0.0

    def folder(self, name: str) -> Path:
        return self.datasets[name].root

    @property
    def counts(self) -> dict[str, dict[str, int]]:
        """Pictures per dataset and split."""
        return {name: dict(planted.expected) for name, planted in self.datasets.items()}


def write_builtin_faces(root: Path | str, *, per_class_train: int = 80, per_class_val: int = 25,
                        celeba: int = 750, casia_ids: int = 75, casia_per_id: int = 10, seed: int = 0,
                        workers: int | None = None) -> BuiltinFaces:
    """Write the built-in AffectNet, CelebA and CASIA-WebFace folders under `root`.

    Defaults: 8 x (80 + 25) expression faces, 750 + 750 pretraining faces. Convert with
    `face-shards affectnet ROOT/affectnet`, `celeba ROOT/celeba`, `casia-webface ROOT/casia`.
    `workers` processes draw (default: one per core).
    """
    root = Path(root)
    workers = os.cpu_count() if workers is None else workers
    start = time.perf_counter()
    plans = [_plan_affectnet(root / "affectnet", per_class_train, per_class_val, seed),
             _plan_celeba(root / "celeba", celeba, seed),
             _plan_casia(root / "casia", casia_ids, casia_per_id, seed)]
    written = _run(plans, workers)
    return BuiltinFaces(root, dict(zip(("affectnet", "celeba", "casia"), written)),
                        time.perf_counter() - start)
