"""Hume-Reaction reading (both layouts) and the synthetic videos the later stage-3 tests use."""
from __future__ import annotations

import shutil

import av
import numpy as np
import pytest
import soundfile
from PIL import Image

from eri_downstream.dataset import EMOTIONS, load_dataset, read_table, summary, write_table
from shared.errors import UserError
from shared.synthetic.reactions import face_photo, write_hume_reaction

LAYOUTS = ("abaw5", "muse")


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """{layout: PlantedVideos}, written once for this module (read-only for tests)."""
    return {layout: write_hume_reaction(tmp_path_factory.mktemp(layout), layout=layout, seed=3)
            for layout in LAYOUTS}


@pytest.fixture
def abaw5_copy(planted, tmp_path):
    """A writable copy of the ABAW5 tree, for tests that damage its table."""
    dst = tmp_path / "abaw5"
    shutil.copytree(planted["abaw5"].root, dst)
    return dst


def _decode_frames(path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.astype(float).ravel(), b.astype(float).ravel())[0, 1])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_load_dataset_matches_what_was_planted(planted, layout):
    p = planted[layout]
    entries = load_dataset(p.root)
    by_id = {e.file_id: e for e in entries}
    assert len(by_id) == len(entries)
    for split in ("train", "val", "test"):
        assert sorted(e.file_id for e in entries if e.split == split) == sorted(p.ids[split])
    for file_id, e in by_id.items():
        assert isinstance(e.file_id, str) and len(e.file_id) == 5 and e.file_id.startswith("0")
        assert e.bracketed == f"[{file_id}]"
        if p.labels[file_id] is None:
            assert e.labels is None
        else:
            assert e.labels == pytest.approx(p.labels[file_id], abs=1e-9)
        assert e.mp4 is not None and e.mp4.is_file() and e.mp4.name == f"{file_id}.mp4"
        folder = e.mp4.parent.parent
        assert folder == (p.root.resolve() / e.split if layout == "abaw5" else p.root.resolve())
        if file_id in p.missing_wav:
            assert e.wav is None
        else:
            assert e.wav == folder / "wav" / f"{file_id}.wav"
        if layout == "abaw5":
            assert (e.age, e.country) == (p.age[file_id], p.country[file_id])
    assert all(e.labels is None for e in entries if e.split == "test")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_summary_counts_media(planted, layout):
    lines = summary(load_dataset(planted[layout].root)).splitlines()
    # split, videos, labelled, mp4, no-mp4, wav, no-wav: the last train wav is missing
    assert lines[1].split() == ["train", "3", "3", "3", "0", "2", "1"]
    assert lines[2].split() == ["val", "2", "2", "2", "0", "2", "0"]
    assert lines[3].split() == ["test", "2", "0", "2", "0", "2", "0"]


def test_table_round_trip_keeps_string_ids(planted, tmp_path):
    entries = load_dataset(planted["muse"].root)
    write_table(entries, tmp_path / "videos.csv")
    assert read_table(tmp_path / "videos.csv") == entries
    first_id = next(line.split(",")[0]
                    for line in (tmp_path / "videos.csv").read_text().splitlines()[1:])
    assert first_id.startswith("0") and len(first_id) == 5


def test_muse_media_in_split_folders_are_found(planted, tmp_path):
    """MuSe copies also come with media sorted into split folders (devel for val)."""
    p = planted["muse"]
    root = tmp_path / "muse"
    root.mkdir()
    for name in ("labels.csv", "partition.csv"):
        shutil.copy(p.root / name, root / name)
    for split, folder in (("train", "train"), ("val", "devel"), ("test", "test")):
        for kind in ("mp4", "wav"):
            (root / folder / kind).mkdir(parents=True)
            for file_id in p.ids[split]:
                if (p.root / kind / f"{file_id}.{kind}").exists():
                    shutil.copy(p.root / kind / f"{file_id}.{kind}", root / folder / kind)
    entries = {e.file_id: e for e in load_dataset(root)}
    val_id = p.ids["val"][1]
    assert entries[val_id].mp4 == root.resolve() / "devel" / "mp4" / f"{val_id}.mp4"
    assert entries[p.missing_wav[0]].wav is None
    assert all(e.mp4 is not None for e in entries.values())


def _edit_lines(path, edit) -> list[str]:
    """Rewrite a text file through `edit(lines) -> lines`; returns the original lines."""
    lines = path.read_text().splitlines()
    path.write_text("\n".join(edit(list(lines))) + "\n")
    return lines


def test_missing_column_is_one_user_error(abaw5_copy):
    _edit_lines(abaw5_copy / "data_info.csv",
                lambda lines: [",".join(c for i, c in enumerate(line.split(",")) if i != 7)
                               for line in lines])  # drops the Fear column
    with pytest.raises(UserError, match="data_info.csv: missing column.*Fear") as err:
        load_dataset(abaw5_copy)
    assert "\n" not in str(err.value)


def test_non_numeric_label_names_the_row(abaw5_copy):
    def spoil(lines: list[str]) -> list[str]:
        row = next(i for i, line in enumerate(lines) if ",Train," in line)
        cells = lines[row].split(",")
        cells[2] = "high"  # the Adoration cell
        lines[row] = ",".join(cells)
        return lines

    before = _edit_lines(abaw5_copy / "data_info.csv", spoil)
    line = 1 + next(i for i, text in enumerate(before) if ",Train," in text)
    with pytest.raises(UserError, match=rf"data_info.csv line {line}: Adoration = 'high'"):
        load_dataset(abaw5_copy)


def test_short_row_and_bad_split_are_user_errors(abaw5_copy):
    table = abaw5_copy / "data_info.csv"
    original = _edit_lines(table, lambda lines: lines + ["[99999],Train,0.5"])
    with pytest.raises(UserError, match=rf"data_info.csv line {len(original) + 1}: 11 fields"):
        load_dataset(abaw5_copy)
    first = original[1].split(",")
    first[1] = "Training"
    table.write_text("\n".join([original[0], ",".join(first), *original[2:]]) + "\n")
    with pytest.raises(UserError, match="data_info.csv line 2: unknown split 'Training'"):
        load_dataset(abaw5_copy)


def test_neither_layout_names_both_expected_files(tmp_path):
    with pytest.raises(UserError, match="data_info.csv.*labels.csv.*partition.csv"):
        load_dataset(tmp_path)


def test_muse_with_partition_missing_names_it(planted, tmp_path):
    shutil.copy(planted["muse"].root / "labels.csv", tmp_path / "labels.csv")
    with pytest.raises(UserError, match="partition.csv not found"):
        load_dataset(tmp_path)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_mp4_streams_are_real_h264_and_aac(planted, layout):
    p = planted[layout]
    for e in load_dataset(p.root):
        with av.open(str(e.mp4)) as container:
            video = container.streams.video[0]
            assert video.codec_context.name == "h264"
            assert video.average_rate == p.fps
            assert (video.codec_context.width, video.codec_context.height) == p.size
            assert sum(1 for _ in container.decode(video=0)) == p.n_frames
            audio = container.streams.audio
            if e.file_id in p.no_audio_track:
                assert len(audio) == 0
                continue
            assert len(audio) == 1 and audio[0].codec_context.name == "aac"
            assert audio[0].sample_rate == p.sample_rates[e.file_id]
            assert audio[0].layout.nb_channels == p.channels[e.file_id]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_wav_files_hold_the_planted_tone(planted, layout):
    p = planted[layout]
    assert {p.sample_rates[i] for i in p.sample_rates} == {16_000, 44_100}
    for e in load_dataset(p.root):
        if e.wav is None:
            continue
        info = soundfile.info(str(e.wav))
        assert info.subtype == "PCM_16"
        assert (info.samplerate, info.channels) == (p.sample_rates[e.file_id],
                                                    p.channels[e.file_id])
        assert info.frames == round(p.seconds * info.samplerate)
        samples, rate = soundfile.read(str(e.wav), always_2d=True)
        spectrum = np.abs(np.fft.rfft(samples[:, 0]))
        peak = np.fft.rfftfreq(len(samples), 1 / rate)[spectrum.argmax()]
        assert abs(peak - p.tones[e.file_id]) <= 2


def test_face_boxes_show_the_pasted_photo(planted):
    p = planted["abaw5"]
    width, height = p.size
    for e in load_dataset(p.root):
        frames = _decode_frames(e.mp4)
        boxes = p.boxes[e.file_id]
        if boxes is None:
            # background only: every colour channel is flat up to the planted noise
            assert e.file_id in p.no_face
            assert all(frame.reshape(-1, 3).std(axis=0).max() < 12 for frame in frames)
            continue
        assert len(boxes) == len(frames) == p.n_frames
        assert len({box for box in boxes}) > 1, "the face should move or change size"
        photo = Image.fromarray(face_photo(p.photos[e.file_id]))
        other = Image.fromarray(face_photo(next(n for n in ("astronaut", "grace_hopper")
                                                if n != p.photos[e.file_id])))
        for frame, (x, y, w, h) in zip(frames, boxes):
            assert 0 <= x and x + w <= width and 0 <= y and y + h <= height
            crop = frame[y:y + h, x:x + w]
            assert _correlation(crop, np.asarray(photo.resize((w, h)))) > 0.95
            assert _correlation(crop, np.asarray(other.resize((w, h)))) < 0.6
            shifted = np.roll(frame, (h // 2, w // 2), axis=(0, 1))[y:y + h, x:x + w]
            assert _correlation(shifted, np.asarray(photo.resize((w, h)))) < 0.6


def test_quirks_sit_on_distinct_videos_and_labels_have_six_decimals(planted):
    p = planted["abaw5"]
    quirky = [*p.no_face, *p.no_audio_track, *p.missing_wav]
    assert len(set(quirky)) == 3
    stereo = [i for i, n in p.channels.items() if n == 2]
    assert len(stereo) == 1 and stereo[0] not in p.no_audio_track + p.missing_wav
    text = (p.root / "data_info.csv").read_text()
    for file_id in p.ids["train"] + p.ids["val"]:
        assert all(f"{v:.6f}" in text for v in p.labels[file_id])
        assert all(0 <= v <= 1 for v in p.labels[file_id])
    assert len(EMOTIONS) == 7 and all(p.labels[i] is None for i in p.ids["test"])
