"""Stage 3a audio, transcript and text: media decoding, and the encoders loaded the real way
(`from_pretrained` on a folder) from tiny random-weight models built offline."""
from __future__ import annotations


import av
import numpy as np
import pytest
import soundfile
import torch

from eri_downstream.audio import AudioEncoder, AudioError, load_audio, model_fingerprint, subsample_steps
from eri_downstream.text import TextEncoder, Transcriber
from shared.errors import UserError
from tiny_hf import SENTENCES, save_deberta, save_hubert, save_speech2text, save_whisper




def tone(seconds: float, rate: int, amplitudes=(0.5, 0.3)) -> np.ndarray:
    """(C, N) float32 440 Hz sine, one amplitude per channel; their mean is the expected mono."""
    t = np.arange(int(seconds * rate)) / rate
    return np.stack([a * np.sin(2 * np.pi * 440 * t) for a in amplitudes]).astype(np.float32)


def noise(seconds: float) -> np.ndarray:
    return (0.1 * np.random.default_rng(0).standard_normal(int(seconds * 16000))).astype(np.float32)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x))))


def write_mp4(path, seconds: float, audio: bool = True, rate: int = 48000) -> None:
    """A Hume-like .mp4: a tiny h264 video track and, optionally, a stereo AAC track."""
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=10)
        video.width = video.height = 32
        video.pix_fmt = "yuv420p"
        sound = out.add_stream("aac", rate=rate, layout="stereo") if audio else None
        for i in range(int(seconds * 10)):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 8 * i % 256, np.uint8), format="rgb24")
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        if sound is None:
            return
        data = tone(seconds, rate)
        for start in range(0, data.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data[:, start:start + 1024]),
                                               format="fltp", layout="stereo")
            frame.sample_rate = rate
            out.mux(sound.encode(frame))
        out.mux(sound.encode(None))


# -- loading ---------------------------------------------------------------------------------
def test_load_wav_stereo_44k(tmp_path):
    soundfile.write(tmp_path / "a.wav", tone(1.5, 44100).T, 44100)
    wave = load_audio(tmp_path / "a.wav")
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(wave.size - 24000) <= 240
    assert rms(wave) == pytest.approx(0.4 / np.sqrt(2), rel=0.02)  # the channels' average


def test_load_mp4_audio_track(tmp_path):
    # PyAV's muxer does not flag the AAC encoder's 1024 priming samples, so the decoded
    # track is ~36 ms long; 5 s keeps that under 1 % (FFmpeg-made files flag and drop it)
    write_mp4(tmp_path / "a.mp4", 5.0)
    wave = load_audio(tmp_path / "a.mp4")
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(wave.size - 80000) <= 800
    assert rms(wave[4000:-4000]) == pytest.approx(0.4 / np.sqrt(2), rel=0.1)


def test_unreadable_audio_raises(tmp_path):
    write_mp4(tmp_path / "silent_film.mp4", 1.0, audio=False)
    with pytest.raises(AudioError, match="no audio track"):
        load_audio(tmp_path / "silent_film.mp4")
    for name in ("junk.wav", "junk.mp4"):
        (tmp_path / name).write_bytes(b"not media at all" * 10)
        with pytest.raises(AudioError):
            load_audio(tmp_path / name)
    with pytest.raises(AudioError, match="no such file"):
        load_audio(tmp_path / "missing.wav")


# -- HuBERT ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hubert(tmp_path_factory):
    return save_hubert(tmp_path_factory.mktemp("hubert"))


def test_audio_encoder_frames(hubert):
    encoder = AudioEncoder(str(hubert))
    assert encoder.frames_per_second == 50 and encoder.hidden_size == 32
    features = encoder.encode(noise(2.0))
    assert features.dtype == torch.float32 and features.shape == (99, 32)  # (32000 - 400) // 320 + 1
    assert encoder.encode(np.zeros(100, np.float32)).shape == (1, 32)  # padded to one receptive field


def test_audio_encoder_chunks(hubert):
    """Chunks lie on the one-pass frame grid, so lengths agree exactly; values do not (attention,
    the positional convolution and the group norm see one chunk only), so only shapes are compared."""
    wave = noise(2.3)
    whole = AudioEncoder(str(hubert)).encode(wave)
    chunked = AudioEncoder(str(hubert), chunk_seconds=0.5).encode(wave)
    assert chunked.shape == whole.shape == (114, 32)
    assert torch.isfinite(chunked).all()
    assert torch.equal(AudioEncoder(str(hubert), chunk_seconds=3.0).encode(wave), whole)


def test_audio_encoder_layer(hubert):
    wave = noise(1.0)
    first = AudioEncoder(str(hubert), layer=0).encode(wave)
    assert first.shape == (49, 32) and not torch.allclose(first, AudioEncoder(str(hubert)).encode(wave))
    with pytest.raises(UserError, match="layer"):
        AudioEncoder(str(hubert), layer=3)


def test_subsample_steps():
    features = torch.arange(1000.0)[:, None].repeat(1, 4)
    kept = subsample_steps(features, 800)
    assert kept.shape == (800, 4) and kept[0, 0] == 0 and kept[-1, 0] == 999
    assert (kept[1:, 0] > kept[:-1, 0]).all()
    assert subsample_steps(features[:500], 800).shape == (500, 4)


def test_model_fingerprint(hubert, tmp_path):
    assert model_fingerprint(str(hubert)) == model_fingerprint(str(hubert))
    assert model_fingerprint(str(hubert)) != model_fingerprint(str(save_hubert(tmp_path / "other", seed=1)))
    assert len(model_fingerprint("nobody/not-cached-here")) == 16


# -- DeBERTa ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def deberta(tmp_path_factory):
    return save_deberta(tmp_path_factory.mktemp("deberta"))


def test_text_encoder(deberta):
    encoder = TextEncoder(str(deberta))
    assert encoder.hidden_size == 32
    text = "the lazy fox sells shells"
    tokens = encoder.tokenizer(text).input_ids
    assert tokens[0] == encoder.tokenizer.cls_token_id and tokens[-1] == encoder.tokenizer.sep_token_id
    features = encoder.encode(text)
    assert features.dtype == torch.float32 and features.shape == (len(tokens), 32)
    for empty in ("", "  \n"):
        assert torch.equal(encoder.encode(empty), torch.zeros(1, 32))
    pooled = TextEncoder(str(deberta), pooling="mean")
    assert torch.allclose(pooled.encode(text), features.mean(0, keepdim=True), atol=1e-6)
    assert torch.equal(pooled.encode(" "), torch.zeros(1, 32))
    assert TextEncoder(str(deberta), max_length=8).encode(" ".join(SENTENCES)).shape == (8, 32)
    with pytest.raises(UserError, match="pooling"):
        TextEncoder(str(deberta), pooling="max")


# -- speech to text --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def speech2text(tmp_path_factory):
    return save_speech2text(tmp_path_factory.mktemp("s2t"))


@pytest.fixture(scope="module")
def whisper(tmp_path_factory):
    return save_whisper(tmp_path_factory.mktemp("whisper"))


@pytest.mark.parametrize("kind", ["speech2text", "whisper"])
def test_transcriber(kind, request):
    transcriber = Transcriber(kind, model=str(request.getfixturevalue(kind)), window_seconds=1.0)
    assert isinstance(transcriber.transcribe(noise(1.0)), str)  # random weights: any text
    assert isinstance(transcriber.transcribe(noise(2.5)), str)  # three windows
    assert transcriber.transcribe(np.zeros(16000, np.float32)) == ""
    assert transcriber.transcribe(np.zeros(0, np.float32)) == ""


def test_whisper_prompt(whisper):
    """A multilingual Whisper is told the language and to transcribe, never left to translate."""
    transcriber = Transcriber("whisper", model=str(whisper), language="en")
    assert transcriber._prompt() == {"language": "en", "task": "transcribe"}
    inputs = transcriber.processor.feature_extractor(noise(1.0), sampling_rate=16000, return_tensors="pt")
    out = transcriber.model.generate(input_features=inputs.input_features, return_dict_in_generate=True,
                                     **transcriber._prompt())
    tokens = transcriber.processor.tokenizer.convert_ids_to_tokens(out.sequences[0, :4].tolist())
    assert tokens == ["<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>"]


def test_unknown_asr_kind():
    with pytest.raises(UserError, match="unknown speech-to-text kind"):
        Transcriber("kaldi")
