"""Tiny random-weight Hugging Face models for the tests: the package's builders
(`shared.synthetic.hf_models`), loaded by the tests through `from_pretrained(folder)`."""
from shared.synthetic.hf_models import (
    SENTENCES, SMALL, WHISPER_SPECIAL, save_deberta, save_hubert, save_speech2text, save_whisper,
)

__all__ = ["SENTENCES", "SMALL", "WHISPER_SPECIAL", "save_deberta", "save_hubert", "save_speech2text", "save_whisper"]
