"""The preprocessing steps: each is (is this video done?, do this video), run by `run_step`
over this process's share of the videos, with a progress bar and a failure summary."""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from accelerate.utils import gather_object
from tqdm import tqdm

from eri_downstream.dataset import VideoEntry
from eri_downstream.store import FeatureStore, fingerprint_files, text_hash
from shared.errors import RunError, UserError

log = logging.getLogger("eri_downstream.extract")
STEPS = ("faces", "visual", "audio", "transcripts", "text")  # `all`: the paper's inputs, in order
EXTRA_STEPS = ("sentence",)  # a lever's input, run by name only


@dataclass
class Step:
    is_done: Callable[[VideoEntry], bool]
    work: Callable[[VideoEntry], str]  # returns an outcome ("ok", "no-face", ...); raises on failure
    finish: Callable[[dict[str, str]], None] = lambda results: None  # main process, after all ranks
    results: dict[str, str] = field(default_factory=dict)  # file_id -> value kept for `finish`
    # file_id -> why a video that was done is incomplete (a damaged file decoded in part);
    # listed in the failures file with the failures
    notes: dict[str, str] = field(default_factory=dict)


def run_step(name: str, entries: list[VideoEntry], store: FeatureStore, args, state) -> dict:
    step = BUILDERS[name](store, args, state.device)
    mine = entries[state.process_index::state.num_processes]
    outcomes, failures, skipped = Counter(), {}, []
    bar = tqdm(mine, desc=f"{name} [{state.process_index}]", unit="video", position=state.process_index,
               dynamic_ncols=True, leave=state.is_main_process)
    for entry in bar:
        if not args.overwrite and step.is_done(entry):
            outcomes["already done"] += 1
            skipped.append(entry.file_id)
            continue
        try:
            outcomes[step.work(entry)] += 1
        except Exception as err:  # noqa: BLE001 - one bad video is reported, never fatal to the step
            failures[entry.file_id] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    mine_report = (dict(outcomes), failures, step.notes, step.results, skipped)
    reports = gather_object([mine_report]) if state.num_processes > 1 else [mine_report]
    total, all_failures, all_notes, all_results, all_skipped = Counter(), {}, {}, {}, set()
    for counts, fails, notes, results, done in reports:
        total.update(counts)
        all_failures.update(fails)
        all_notes.update(notes)
        all_results.update(results)
        all_skipped.update(done)
    if state.is_main_process:
        step.finish(all_results)
        # what an earlier run listed for the videos this run left as they were still holds
        earlier = {k: v for k, v in store.read_failures(name).items() if k in all_skipped}
        listed = {**earlier, **all_notes, **all_failures}
        path = store.write_failures(name, listed)
        counted = ", ".join(f"{n} {what}" for what, n in sorted(total.items()))
        log.info("%s: %s%s", name, counted or "nothing to do",
                 f"; {len(all_failures)} failed, {len(listed)} listed in {path}" if listed else "")
    state.wait_for_everyone()
    return {"outcomes": dict(total), "failures": all_failures, "notes": all_notes}


def save_features(store: FeatureStore, step: str, file_id: str, features: torch.Tensor, **metadata) -> None:
    """Store features, refusing NaN or infinite values (a failure of this video, listed in the
    step's failures), which training would otherwise spread to every weight. The check is on
    the stored float16 values: a value beyond 65504 overflows to infinity there."""
    stored = features.detach().to("cpu", torch.float16)
    finite = torch.isfinite(stored)
    if not finite.all():
        raise RunError(f"{int((~finite).sum())} of {stored.numel()} {step} feature values are NaN or infinite "
                       "in float16; nothing written")
    store.save(step, file_id, stored, **metadata)


def faces_step(store: FeatureStore, args, device) -> Step:
    from eri_downstream.faces import extract_faces, make_detector, save_face_track
    from shared.face_crop import FaceCrop
    try:  # bad values stop here, before any video is read
        FaceCrop(size=args.size, margin=args.margin)
    except ValueError as err:
        raise UserError(f"face crop: {err}") from None
    detector = make_detector(args.detector, device=device)

    def work(entry: VideoEntry) -> str:
        if entry.mp4 is None:
            raise FileNotFoundError("no mp4 for this video")
        track = extract_faces(entry.mp4, detector, fps=args.fps, size=args.size, margin=args.margin,
                              batch_size=args.batch_size)
        save_face_track(track, store.faces(entry.file_id))
        if track.damage:
            step.notes[entry.file_id] = f"partial: {track.damage}"
            return f"{track.status} (partial video)"
        return track.status
    step = Step(lambda e: store.faces(e.file_id).is_file(), work)
    return step


def visual_step(store: FeatureStore, args, device) -> Step:
    from eri_downstream.faces import load_face_track
    from eri_downstream.visual import FrameEncoder
    if not args.encoder:
        raise UserError("the visual step needs --encoder: the stage-2 export folder (e.g. runs/.../best/encoder)")
    folder = Path(args.encoder)
    encode = FrameEncoder(folder, device)
    weights = [p for p in sorted(folder.iterdir()) if p.suffix == ".safetensors"] + [folder / "config.json"]
    fingerprint = fingerprint_files(*weights)
    # a cache made with other frame preprocessing (or before it was recorded) is made again
    current = dict(fingerprint=fingerprint, preprocess=encode.preprocess.describe())

    def work(entry: VideoEntry) -> str:
        if not store.faces(entry.file_id).is_file():
            raise FileNotFoundError("no face track: run the faces step first")
        track = load_face_track(store.faces(entry.file_id))
        meta = dict(source=str(folder), **current)
        if track.status != "ok":
            save_features(store, "visual", entry.file_id, torch.zeros(1, encode.info.embed_dim),
                          status=track.status, **meta)
            return track.status
        frames = torch.from_numpy(track.crops).permute(0, 3, 1, 2)  # (T, 3, S, S) uint8
        features = torch.cat([encode(batch) for batch in frames.split(args.batch_size)])  # (T, D)
        save_features(store, "visual", entry.file_id, features, status="ok", **meta)
        return "ok"
    return Step(lambda e: store.is_current("visual", e.file_id, **current), work)


def audio_step(store: FeatureStore, args, device) -> Step:
    from eri_downstream.audio import AudioEncoder, load_audio, model_fingerprint
    encoder = AudioEncoder(args.audio_model, device=device, chunk_seconds=args.chunk_seconds)
    fingerprint = model_fingerprint(args.audio_model)

    def work(entry: VideoEntry) -> str:
        source = entry.wav or entry.mp4
        if source is None:
            raise FileNotFoundError("neither a wav nor an mp4 for this video")
        damage: list[str] = []
        features = encoder.encode(load_audio(source, damage=damage))  # (T, 768), 50 per second
        save_features(store, "audio", entry.file_id, features, source=args.audio_model, fingerprint=fingerprint,
                      status="ok", from_file=str(source))
        if damage:
            step.notes[entry.file_id] = f"partial: {'; '.join(damage)}"
        return ("ok" if entry.wav else "ok (mp4 audio track)") + (" (partial)" if damage else "")
    step = Step(lambda e: store.is_current("audio", e.file_id, fingerprint=fingerprint), work)
    return step


def transcripts_step(store: FeatureStore, args, device) -> Step:
    from eri_downstream.audio import load_audio
    from eri_downstream.text import Transcriber
    existing = store.read_transcripts()
    texts: dict[str, str] = {}  # this process's new transcripts, gathered for `finish`
    transcriber = []  # loaded on the first video without a transcript: given ones need no ASR model

    def work(entry: VideoEntry) -> str:
        source = entry.wav or entry.mp4
        if source is None:
            raise FileNotFoundError("neither a wav nor an mp4 for this video")
        if not transcriber:
            transcriber.append(Transcriber(args.asr, model=args.asr_model, device=device))
        damage: list[str] = []
        texts[entry.file_id] = transcriber[0].transcribe(load_audio(source, damage=damage))
        if damage:
            step.notes[entry.file_id] = f"partial: {'; '.join(damage)}"
        return ("ok" if texts[entry.file_id] else "ok (no speech)") + (" (partial)" if damage else "")

    def finish(new: dict[str, str]) -> None:
        store.write_transcripts({**existing, **new})  # corrections made by hand are kept
    step = Step(lambda e: e.file_id in existing, work, finish, texts)
    return step


def text_step(store: FeatureStore, args, device) -> Step:
    """DeBERTa token features of each transcript (the paper's text input), in <store>/text."""
    return _encoded_transcripts(store, "text", args.text_model, None, args, device)


def sentence_step(store: FeatureStore, args, device) -> Step:
    """One sentence embedding per transcript (any Hugging Face text encoder, tokens mean-pooled
    as sentence-transformers pool them), in <store>/sentence: stage 3b's data.text_features=sentence."""
    return _encoded_transcripts(store, "sentence", args.sentence_model, "mean", args, device)


def _encoded_transcripts(store: FeatureStore, name: str, model: str, pooling: str | None, args, device) -> Step:
    from eri_downstream.audio import model_fingerprint
    from eri_downstream.text import TextEncoder
    encoder = TextEncoder(model, device=device, max_length=args.max_length, pooling=pooling)
    fingerprint = model_fingerprint(model)
    transcripts = store.read_transcripts()

    def expected(entry: VideoEntry) -> dict[str, str]:
        return {"fingerprint": fingerprint, "transcript_sha1": text_hash(transcripts.get(entry.file_id, ""))}

    def work(entry: VideoEntry) -> str:
        if entry.file_id not in transcripts:
            raise KeyError("no transcript: run the transcripts step first")
        text = transcripts[entry.file_id]
        save_features(store, name, entry.file_id, encoder.encode(text), source=model,
                      status="ok" if text.strip() else "no-speech", **expected(entry))
        return "ok" if text.strip() else "no speech (zeros)"
    return Step(lambda e: store.is_current(name, e.file_id, **expected(e)), work)


BUILDERS = {"faces": faces_step, "visual": visual_step, "audio": audio_step,
            "transcripts": transcripts_step, "text": text_step, "sentence": sentence_step}
