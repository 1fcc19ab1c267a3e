"""One face-preprocessing contract from raw file to the frozen encoder: face-shards and stage 3a
cut the same face box into the same pixels (shared.face_crop), and stage 3a's frame encoder
prepares crops as the encoder's folder says stage 2 evaluated them (shared.eval_transform)."""
from __future__ import annotations

import io
import json

import av
import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F
from PIL import Image

from eri_downstream.faces import extract_faces, load_face_track, save_face_track
from eri_downstream.video import decode_frames
from eri_downstream.visual import FrameEncoder
from shard_utils import read_samples
from shared.export import save_timm_folder
from shared.face_crop import FaceCrop, crop_face, face_square, xywh_to_xyxy
from shared.shards.cli import main as face_shards
from shared.stream.decode import Augment, augment_image, centre_crop_box

W, H = 320, 240
BOX_XYWH = (150, 10, 90, 120)  # AffectNet's columns; the square (side 168) reaches above the picture
SIZE = 96


class FixedBox:
    """A detector that finds the face where the dataset says it is, in every frame."""
    name = "fixed"

    def detect(self, frames):
        return [[(xywh_to_xyxy(BOX_XYWH), 1.0)] for _ in frames]


def video_frame(tmp_path) -> tuple[np.ndarray, object]:
    """A short video of a textured photo; its first decoded frame (what stage 3a crops) and path."""
    picture = np.asarray(Image.fromarray(skimage.data.astronaut()).resize((W, H), Image.BICUBIC))
    path = tmp_path / "reaction.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=6)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        for _ in range(2):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")))
        out.mux(stream.encode())
    frames, _, _ = decode_frames(path)
    return frames[0], path


def affectnet_layout(root, frame: np.ndarray) -> None:
    """The decoded frame as a lossless AffectNet image with its face box in the list file."""
    (root / "Manually_Annotated_Images" / "1").mkdir(parents=True)
    Image.fromarray(frame).save(root / "Manually_Annotated_Images" / "1" / "face.png")
    lists = root / "Manually_Annotated_file_lists"
    lists.mkdir()
    row = ",".join(["1/face.png", *map(str, BOX_XYWH), "", "1", "0.5", "0.2"])
    (lists / "training.csv").write_text(row + "\n")
    (lists / "validation.csv").write_text(row.replace("face", "missing") + "\n")  # a reject, not a face


def test_face_shards_and_stage3a_cut_the_same_pixels(tmp_path):
    frame, video = video_frame(tmp_path)
    affectnet_layout(tmp_path / "affectnet", frame)
    assert face_shards(["affectnet", str(tmp_path / "affectnet"), "--out", str(tmp_path / "shards"),
                        "--size", str(SIZE), "--workers", "1", "--no-progress"]) == 0
    (sample,) = read_samples(tmp_path / "shards").values()
    manifest = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    assert manifest["face_crop"] == {"size": SIZE, "margin": 0.2, "resample": "bicubic",
                                     "square": "longer-side", "box": "xyxy"}
    square = face_square(xywh_to_xyxy(BOX_XYWH), 0.2, W, H)
    assert sample["meta"]["crop_box"] == pytest.approx(square, abs=0.01) and square[1] < 0  # padded at the top
    assert sample["meta"]["box"] == list(xywh_to_xyxy(BOX_XYWH))

    track = extract_faces(video, FixedBox(), size=SIZE)  # stage 3a's defaults otherwise: margin 0.2
    save_face_track(track, tmp_path / "faces.tar")  # stored as stage 3b and the visual step read it
    stored = load_face_track(tmp_path / "faces.tar").crops[0].astype(int)
    shard = np.asarray(Image.open(io.BytesIO(sample["jpg"])).convert("RGB")).astype(int)
    # both are the contract's crop of the same pixels, JPEG-encoded alike: a bilinear or
    # differently rounded crop differs by more than 1 level on average on this texture
    assert np.abs(stored - shard).mean() < 0.25
    assert np.abs(track.crops[0].astype(int) - np.asarray(crop_face(frame, xywh_to_xyxy(BOX_XYWH),
                                                                    FaceCrop(size=SIZE)))).max() == 0
    assert shard[:6].max() < 30  # the 14 px above the picture (8 of 96 rows) are black


def test_the_contract_takes_one_box_convention():
    with pytest.raises(ValueError, match="xyxy"):
        FaceCrop(box="xywh")
    with pytest.raises(ValueError, match="resample"):
        FaceCrop(resample="nearest")
    with pytest.raises(ValueError, match="no area"):
        face_square((10, 10, 5, 30), 0.2, 100, 100)  # an (x, y, w, h) box read as (x0, y0, x1, y1)
    assert face_square((0, 0, 40, 20), 0.25, 100, 100) == (-10, -20, 50, 40)  # side 60 around (20, 10)
    assert face_square(None, 0.2, 100, 60) == (20, 0, 80, 60)  # no box: the centred square


def encoder_folder(path, crop_pct: float | None, interpolation: str = "bicubic"):
    from timm.models.vision_transformer import VisionTransformer
    torch.manual_seed(0)
    args = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=0, global_pool="token")
    kwargs = {} if crop_pct is None else {"crop_pct": crop_pct}
    folder = save_timm_folder(VisionTransformer(**args), path, architecture="vit_tiny_patch16_224", model_args=args,
                              mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), interpolation=interpolation, **kwargs)
    if crop_pct is None:  # a folder that says nothing: timm's default applies (0.875)
        config = json.loads((folder / "config.json").read_text())
        del config["pretrained_cfg"]["crop_pct"]
        (folder / "config.json").write_text(json.dumps(config))
    return folder


def resized(frames: torch.Tensor, side: int) -> torch.Tensor:
    """The centred side x side square of uint8 (N, 3, 64, 64) frames, resized to 32 as stage 2's
    validation resizes (uint8, bicubic, antialiased)."""
    start = (64 - side) // 2
    crop = frames[..., start:start + side, start:start + side].contiguous(memory_format=torch.channels_last)
    return F.interpolate(crop, size=(32, 32), mode="bicubic", antialias=True).float()


@pytest.mark.parametrize("crop_pct, side", [(1.0, 64), (0.875, 56), (None, 56)])
def test_frame_encoder_applies_the_folders_crop_pct(tmp_path, crop_pct, side):
    frames = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 3, 64, 64), dtype=np.uint8))
    encode = FrameEncoder(encoder_folder(tmp_path / "encoder", crop_pct), torch.device("cpu"))
    assert centre_crop_box(64, 64, encode.preprocess.crop_pct) == ((64 - side) // 2, (64 - side) // 2, side, side)
    pixels = encode.preprocess.pixels(frames, "cpu")
    assert pixels.shape == (3, 3, 32, 32) and (pixels - resized(frames, side)).abs().max() <= 1
    with torch.no_grad():
        features = encode.encoder((pixels / 255 - 0.5) / 0.25)
    torch.testing.assert_close(encode(frames), features, rtol=0, atol=1e-5)
    other = resized(frames, 56 if side == 64 else 64)
    assert (pixels - other).abs().mean() > 5  # the crop share matters


def test_frame_encoder_prepares_crops_as_stage2_evaluates(tmp_path):
    """Stage 2's validation path (shared.stream.decode, eval) and the frame encoder agree within
    a level on the same stored crop, with the folder's interpolation."""
    crop = np.asarray(Image.fromarray(skimage.data.astronaut()).resize((64, 64), Image.BICUBIC))
    data = io.BytesIO()
    Image.fromarray(crop).save(data, format="JPEG", quality=95)
    for interpolation in ("bicubic", "bilinear"):
        encode = FrameEncoder(encoder_folder(tmp_path / interpolation, 0.875, interpolation), torch.device("cpu"))
        aug = Augment(kind="eval", size=32, crop_pct=0.875, interpolation=interpolation)
        stage2 = torch.from_numpy(augment_image(data.getvalue(), aug, None)).permute(2, 0, 1).float()
        decoded = torch.from_numpy(np.asarray(Image.open(data).convert("RGB")).copy()).permute(2, 0, 1)
        mine = encode.preprocess.pixels(decoded[None], "cpu")[0]
        assert (mine - stage2).abs().max() <= 1 and (mine - stage2).abs().mean() < 0.05


def test_bad_crop_settings_stop_the_faces_step_in_one_line(tmp_path):
    from argparse import Namespace
    from eri_downstream.steps import faces_step
    from eri_downstream.store import FeatureStore
    from shared.errors import UserError
    with pytest.raises(UserError, match="face crop: size 96 / margin -0.1"):
        faces_step(FeatureStore(tmp_path), Namespace(size=SIZE, margin=-0.1, detector="haar"), "cpu")
