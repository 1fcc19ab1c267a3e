"""Transcripts and text features for stage 3a.

The paper transcribes each clip with a speech-to-text model and encodes the transcript with
DeBERTa (1024-d tokens); a clip without speech gets zeros. Mean pooling over tokens is the
public code's variant (`pooling="mean"`).
"""
from __future__ import annotations

import numpy as np
import torch

from eri_downstream.audio import even_ranges
from shared.errors import UserError

ASR_MODELS = {"speech2text": "facebook/s2t-small-librispeech-asr", "whisper": "openai/whisper-small"}
POOLINGS = (None, "mean")
# peak below about -80 dBFS: digital silence, where ASR models only hallucinate
SILENCE_PEAK = 1e-4


class Transcriber:
    """Speech-to-text for one clip at a time: Speech2Text (the LibriSpeech model) or Whisper."""

    def __init__(self, kind: str = "speech2text", model: str | None = None, device: str = "cpu",
                 language: str = "en", dtype: torch.dtype | None = None, window_seconds: float = 30.0):
        if kind not in ASR_MODELS:
            raise UserError(f"unknown speech-to-text kind {kind!r}; expected one of {sorted(ASR_MODELS)}")
        if window_seconds <= 0:
            raise UserError(f"window_seconds must be positive, got {window_seconds}")
        model_cls, processor_cls = _classes(kind)
        self.kind, self.name, self.language = kind, model or ASR_MODELS[kind], language
        self.device = torch.device(device)
        self.processor = processor_cls.from_pretrained(self.name)
        self.model = model_cls.from_pretrained(self.name, dtype=dtype).to(self.device).eval()
        self.sample_rate: int = self.processor.feature_extractor.sampling_rate
        # Whisper's encoder sees exactly 30 s; Speech2Text was trained on LibriSpeech utterances
        # (under 35 s) and degrades on longer input, so both get windows of at most 30 s
        self.window = int(window_seconds * self.sample_rate)
        if kind == "whisper":  # its feature extractor would silently cut anything longer
            self.window = min(self.window, self.processor.feature_extractor.n_samples)

    @torch.no_grad()
    def transcribe(self, wave16k: np.ndarray) -> str:
        """The text spoken in a mono wave at `sample_rate`; "" for empty or silent audio.

        Long audio is cut into equal windows of at most `window_seconds`, each transcribed
        alone; silent windows are skipped and the texts joined with spaces.
        """
        wave = np.asarray(wave16k, dtype=np.float32).reshape(-1)
        texts = [self._window(wave[a:b]) for a, b in even_ranges(wave.size, self.window) if not _silent(wave[a:b])]
        return " ".join(t for t in texts if t)

    def _window(self, wave: np.ndarray) -> str:
        features = self.processor.feature_extractor(wave, sampling_rate=self.sample_rate, return_tensors="pt")
        inputs = {"input_features": features.input_features.to(self.device, self.model.dtype)}  # [1, F, frames]
        if "attention_mask" in features:
            inputs["attention_mask"] = features.attention_mask.to(self.device)
        ids = self.model.generate(**inputs, **self._prompt())  # [1, tokens]
        return self.processor.batch_decode(ids, skip_special_tokens=True)[0].strip()

    def _prompt(self) -> dict[str, str]:
        """Whisper multilingual models are told the language and task (else they guess the
        language per window and may translate); English-only Whisper and Speech2Text refuse these."""
        if self.kind == "whisper" and getattr(self.model.generation_config, "is_multilingual", False):
            return {"language": self.language, "task": "transcribe"}
        return {}


def _classes(kind: str):
    """(model class, processor class) for an ASR kind; imported late (transformers is slow to import)."""
    if kind == "whisper":
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        return WhisperForConditionalGeneration, WhisperProcessor
    from transformers import Speech2TextForConditionalGeneration, Speech2TextProcessor

    return Speech2TextForConditionalGeneration, Speech2TextProcessor


def _silent(wave: np.ndarray) -> bool:
    return wave.size == 0 or float(np.abs(wave).max()) < SILENCE_PEAK


class TextEncoder:
    """A text model's last hidden state over a transcript's tokens (DeBERTa-v3-large by default).

    Special tokens are kept ([CLS] ... [SEP] for DeBERTa): that is what the model saw in
    pre-training, [CLS] summarises the sentence, and the public code's mean pooling over the
    plain tokenizer output includes them as well.
    """

    def __init__(self, model: str = "microsoft/deberta-v3-large", device: str = "cpu", max_length: int = 512,
                 pooling: str | None = None, dtype: torch.dtype | None = None):
        from transformers import AutoModel, AutoTokenizer

        if pooling not in POOLINGS:
            raise UserError(f"unknown pooling {pooling!r}; expected one of {POOLINGS}")
        self.name, self.max_length, self.pooling = model, max_length, pooling
        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.model = AutoModel.from_pretrained(model, dtype=dtype).to(self.device).eval()

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    @torch.no_grad()
    def encode(self, text: str) -> torch.Tensor:
        """float32 [T, hidden] (tokens, special ones included), or [1, hidden] with mean pooling.

        A transcript with no words gives zeros [1, hidden]: the paper's "no speech" input.
        Tokens past `max_length` are cut (512 DeBERTa tokens is minutes of speech).
        """
        text = text.strip()
        if not text:
            return torch.zeros(1, self.hidden_size)
        tokens = self.tokenizer(text, truncation=True, max_length=self.max_length, return_tensors="pt")
        hidden = self.model(**tokens.to(self.device)).last_hidden_state[0].float().cpu()  # [T, hidden]
        return hidden.mean(dim=0, keepdim=True) if self.pooling == "mean" else hidden
