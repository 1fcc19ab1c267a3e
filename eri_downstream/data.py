"""Stage 3b inputs: videos from the feature store as padded, masked batches.

    dataset = FeatureDataset("features", entries, modalities=("visual", "audio"), k=32, train=True)
    loader = DataLoader(dataset, batch_size=16, collate_fn=collate)
    batch = mixup(next(iter(loader)), alpha=0.2, generator=torch.Generator().manual_seed(0))

Visual features are reduced to K frames by segment sampling (TSN style, the paper's temporal
augmentation); audio (HuBERT) and text (DeBERTa) sequences are kept whole, audio optionally
subsampled to `max_audio_steps` (the public code's 800). Sequences of different lengths are
padded in `collate`, with a mask that marks the real steps, so the model can ignore padding.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from eri_downstream.dataset import EMOTIONS, VideoEntry, read_table
from eri_downstream.store import FEATURE_STEPS, FeatureStore
from shared.errors import UserError


# -- segment sampling ------------------------------------------------------------------------
def segment_indices(length: int, k: int, *, train: bool, rng: random.Random | None = None) -> list[int]:
    """K frame indices, one per equal segment of `range(length)`, in increasing order.

    Segment i is [floor(i * length / k), floor((i + 1) * length / k)): every frame belongs to
    exactly one segment and segments differ in size by at most one frame.
    - training (`train=True`): a uniformly random frame of each segment, drawn from `rng`, so
      every epoch sees other frames of the same video (the paper's temporal augmentation);
    - evaluation: the centre frame of each segment, so predictions are reproducible.
    A video shorter than K has segments of a single frame that repeat: index i is
    floor(i * length / k), which uses every frame at least once and keeps their order (the
    public code's repetition of short videos); training then has nothing to draw.
    """
    if length <= 0:
        raise ValueError(f"cannot sample {k} frames from an empty sequence")
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    if length < k:
        return [i * length // k for i in range(k)]
    bounds = [i * length // k for i in range(k + 1)]  # k + 1 boundaries, bounds[-1] == length
    if train:
        rng = rng if rng is not None else random.Random()
        return [rng.randrange(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:])]
    return [(lo + hi - 1) // 2 for lo, hi in zip(bounds[:-1], bounds[1:])]


def even_indices(length: int, steps: int) -> list[int]:
    """At most `steps` evenly spread indices of range(length) (all of them when it is short)."""
    if length <= steps:
        return list(range(length))
    return segment_indices(length, steps, train=False)


# -- dataset ---------------------------------------------------------------------------------
class FeatureDataset(Dataset):
    """One video per item from the feature store.

    Items are dicts:
        "file_id":    str, the bare id ("00123")
        "labels":     float32 (E,) in the task's emotion order; zeros for unlabelled (test) videos, so a
                      batch never carries NaN into a loss; "has_labels" says which are real
        "has_labels": bool
        "<modality>": float32 (T, D); visual: exactly K sampled frames (T = K)

    Segment sampling draws from a `random.Random` seeded by (seed, epoch, index): the same
    item of the same epoch gets the same frames in any worker, rank or resumed run, and
    `set_epoch` moves every item to new frames.
    """

    def __init__(self, store: FeatureStore | str | Path, entries: Sequence[VideoEntry | str], *,
                 modalities: Sequence[str] = FEATURE_STEPS, k: int = 32, train: bool = False,
                 max_audio_steps: int | None = None, seed: int = 0, sources: dict[str, str] | None = None,
                 emotions: Sequence[str] = EMOTIONS):
        self.store = store if isinstance(store, FeatureStore) else FeatureStore(store)
        unknown = [m for m in modalities if m not in FEATURE_STEPS]
        if unknown or not modalities:
            raise UserError(f"unknown modalities {unknown or list(modalities)}; choose from {', '.join(FEATURE_STEPS)}")
        if max_audio_steps is not None and max_audio_steps <= 0:
            raise UserError(f"max_audio_steps must be positive or None, got {max_audio_steps}")
        self.entries = self._resolve(entries)
        self.modalities, self.k, self.train = tuple(modalities), k, train
        self.max_audio_steps, self.seed, self.epoch = max_audio_steps, seed, 0
        self.sources = dict(sources or {})  # modality -> the store folder it reads, when not its own
        self.emotions = tuple(emotions)  # the task's: an unlabelled video gets that many zeros

    def _resolve(self, entries: Sequence[VideoEntry | str]) -> list[VideoEntry]:
        """VideoEntry objects as given; bare ids are looked up in the store's videos.csv."""
        if all(isinstance(e, VideoEntry) for e in entries):
            return list(entries)
        if not self.store.table.is_file():
            raise UserError(f"{self.store.table} not found: run `eri_downstream/extract.py table` first")
        known = {e.file_id: e for e in read_table(self.store.table)}
        resolved = []
        for e in entries:
            if isinstance(e, VideoEntry):
                resolved.append(e)
                continue
            file_id = e.strip().removeprefix("[").removesuffix("]")
            if file_id not in known:
                raise UserError(f"video {e!r} is not listed in {self.store.table}")
            resolved.append(known[file_id])
        return resolved

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.entries)

    def _load(self, modality: str, file_id: str) -> torch.Tensor:
        """float32 (T, D), or a UserError naming the missing file and the step that writes it."""
        return self.stored_features(modality, file_id).float()

    def stored_features(self, modality: str, file_id: str) -> torch.Tensor:
        """(T, D) in the store's dtype (float16), checked as `_load` checks it."""
        step = self.sources.get(modality, modality)
        path = self.store.features(step, file_id)
        if not path.is_file():
            raise UserError(f"{path} is missing: run `eri_downstream/extract.py {step} --store "
                            f"{self.store.root}` (it writes the {step} features of every video)")
        features, _ = self.store.load(step, file_id)
        if features.ndim != 2 or features.shape[0] == 0:
            raise UserError(f"{path}: features of shape {tuple(features.shape)}, expected [T>0, D]; "
                            f"rerun the {step} step with --overwrite")
        finite = torch.isfinite(features)
        if not finite.all():  # never trained on: one NaN would turn every loss and weight into NaN
            raise UserError(f"{path}: {int((~finite).sum())} of {features.numel()} feature values are NaN or "
                            f"infinite; delete the file and rerun `eri_downstream/extract.py {step} --store "
                            f"{self.store.root}` (it redoes missing files)")
        return features

    def _select(self, modality: str, features: torch.Tensor, rng: random.Random) -> torch.Tensor:
        if modality == "visual":
            return features[self.frames(len(features), rng)]  # (K, D)
        return self.steps(modality, features)

    def frames(self, length: int, rng: random.Random) -> list[int]:
        """The K visual frames of a video of `length` frames (`segment_indices`)."""
        return segment_indices(length, self.k, train=self.train, rng=rng)

    def steps(self, modality: str, features: torch.Tensor) -> torch.Tensor:
        """Audio or text steps as the model sees them: audio subsampled to `max_audio_steps`."""
        if modality == "audio" and self.max_audio_steps is not None:
            return features[even_indices(len(features), self.max_audio_steps)]  # (<= max, 768)
        return features

    def item_rng(self, index: int, epoch: int | None = None) -> random.Random:
        """The random source of item `index` in `epoch` (default: the current one); str seeds hash
        with sha512: stable."""
        return random.Random(f"{self.seed}/{self.epoch if epoch is None else epoch}/{index}")

    def __getitem__(self, index: int) -> dict:
        entry = self.entries[index]
        rng = self.item_rng(index)
        labels = entry.labels if entry.labels is not None else [0.0] * len(self.emotions)
        item = {"file_id": entry.file_id, "labels": torch.tensor(labels, dtype=torch.float32),
                "has_labels": entry.labels is not None}
        for modality in self.modalities:
            item[modality] = self._select(modality, self._load(modality, entry.file_id), rng)
        return item


class FaceFrameDataset(FeatureDataset):
    """FeatureDataset whose visual input is the stored face crops themselves: uint8
    (K, 3, S, S) sampled frames, for training end to end through the frozen encoder with the
    paper's image augmentation (RandomRotation, RandomHorizontalFlip, ColorJitter), which a
    feature cache cannot give. Audio and text still come from the cache.

    The augmentation draws one set of parameters per video (torchvision v2 treats the K frames
    as a batch), from the torch RNG seeded by the item's own seed: reproducible in any worker
    and after a resume, and leaving the training process's RNG untouched.
    """

    def __init__(self, *args, augment: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.augment = augment and self.train
        self.transform = v2.Compose([v2.RandomRotation(10), v2.RandomHorizontalFlip(),
                                     v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2)])

    def _load(self, modality: str, file_id: str) -> torch.Tensor:
        if modality != "visual":
            return super()._load(modality, file_id)
        from eri_downstream.faces import load_face_track  # video stack only where frames are used
        path = self.store.faces(file_id)
        if not path.is_file():
            raise UserError(f"{path} is missing: run `eri_downstream/extract.py faces --store {self.store.root}`")
        track = load_face_track(path)
        if track.status != "ok" or len(track.crops) == 0:  # no face at all: one black frame
            return torch.zeros(1, 3, track.size, track.size, dtype=torch.uint8)
        return torch.from_numpy(track.crops).permute(0, 3, 1, 2).contiguous()  # (T, 3, S, S) uint8

    def __getitem__(self, index: int) -> dict:
        item = super().__getitem__(index)
        if self.augment and "visual" in item:
            seed = random.Random(f"{self.seed}/{self.epoch}/{index}/augment").getrandbits(63)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                item["visual"] = self.transform(item["visual"])
        return item


# -- batching --------------------------------------------------------------------------------
def _pad(sequences: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T_max, ...) zero-padded steps and (B, T_max) bool mask, True on real steps."""
    longest = max(len(s) for s in sequences)
    padded = sequences[0].new_zeros(len(sequences), longest, *sequences[0].shape[1:])
    mask = torch.zeros(len(sequences), longest, dtype=torch.bool)
    for i, s in enumerate(sequences):
        padded[i, :len(s)] = s
        mask[i, :len(s)] = True
    return padded, mask


def collate(samples: list[dict]) -> dict:
    """Items of FeatureDataset -> a batch: "file_id" list, "labels" (B, E), "has_labels" (B,),
    and per modality "<m>" (B, T_max, D) with "<m>_mask" (B, T_max)."""
    batch = {"file_id": [s["file_id"] for s in samples],
             "labels": torch.stack([s["labels"] for s in samples]),  # (B, E)
             "has_labels": torch.tensor([bool(s["has_labels"]) for s in samples])}  # (B,)
    for modality in FEATURE_STEPS:
        if modality in samples[0]:
            batch[modality], batch[f"{modality}_mask"] = _pad([s[modality] for s in samples])
    return batch


def _beta(alpha: float, generator: torch.Generator) -> float:
    """One Beta(alpha, alpha) draw determined by `generator` (torch's Beta takes no generator,
    so the generator seeds a numpy draw)."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def mixup(batch: dict, alpha: float, generator: torch.Generator) -> dict:
    """Mixup of a collated batch: x = lam * x + (1 - lam) * x[perm], same for labels, with one
    lam ~ Beta(alpha, alpha) per batch and one random permutation shared by every modality.

    Features are mixed per step: both samples are padded to the batch's T_max with zeros, so a
    step real in only one of them becomes that sample's step scaled by its weight. Masks are
    OR-ed (a step is real if it is real in either sample): dropping such steps (AND) would
    throw away the longer sample's content. "has_labels" is AND-ed (a mix with an unlabelled
    video has no complete target). "file_id" keeps the first sample's ids. The input batch is
    not modified.
    """
    if alpha <= 0:
        return batch
    lam = _beta(alpha, generator)
    perm = torch.randperm(len(batch["labels"]), generator=generator)
    moved = {}  # one copy per device: a copy from pageable host memory waits for the device's queue
    mixed = {}
    for key, value in batch.items():
        if not torch.is_tensor(value):
            mixed[key] = value
            continue
        if value.device not in moved:
            moved[value.device] = perm.to(value.device)
        other = value[moved[value.device]]
        if key.endswith("_mask"):
            mixed[key] = value | other
        elif value.dtype == torch.bool:
            mixed[key] = value & other
        else:
            mixed[key] = lam * value + (1 - lam) * other
    return mixed


__all__ = ["segment_indices", "even_indices", "FeatureDataset", "collate", "mixup"]
