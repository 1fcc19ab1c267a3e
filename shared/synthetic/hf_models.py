"""Tiny random-weight Hugging Face models in the hub layouts, built offline.

Each builder writes a folder with `save_pretrained`, so it loads through the real
`from_pretrained(folder)` path the extraction steps use with hub checkpoints:

- `save_hubert`: HubertModel + Wav2Vec2FeatureExtractor (facebook/hubert-base-ls960's layout);
- `save_deberta`: DebertaV2Model + a sentencepiece `spm.model` (microsoft/deberta-v3's layout),
  the tokenizer trained on `SENTENCES` and on transcripts like the built-in videos', so every
  emotion word of `builtin_reactions.VOCABULARY` is one token;
- `save_speech2text`: s2t-small's layout (sentencepiece.bpe.model + vocab.json + processor);
- `save_whisper`: a byte-level BPE with Whisper's special tokens and a generation config that
  knows them, as the hub's multilingual checkpoints do.

Hidden sizes are 32: features of the right kind and shape, not of any quality.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import sentencepiece as spm
import torch

SENTENCES = ["the quick brown fox jumps over the lazy dog", "she sells sea shells by the sea shore",
             "how much wood would a woodchuck chuck", "i am so happy to see this video"] * 4
WHISPER_SPECIAL = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|de|>", "<|translate|>",
                   "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]
SMALL = dict(encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
             encoder_ffn_dim=64, decoder_ffn_dim=64, d_model=32, max_target_positions=32)


def transcript_sentences(n: int = 300, seed: int = 0) -> list[str]:
    """Transcripts drawn as the built-in videos' are: their words, at their frequencies."""
    from shared.synthetic.builtin_reactions import sample_intensities, transcript

    rng = np.random.default_rng(seed)
    return [transcript(rng, sample_intensities(rng)) for _ in range(n)]


def save_hubert(folder, seed: int = 0) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor

    torch.manual_seed(seed)
    config = HubertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                          conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
    HubertModel(config).save_pretrained(folder)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, do_normalize=True).save_pretrained(folder)
    return folder


def save_deberta(folder, seed: int = 0) -> Path:
    """The hub layout of deberta-v3: config, weights and a sentencepiece `spm.model`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    from transformers import DebertaV2Config, DebertaV2Model

    # a vocabulary large enough for whole words: the emotion words are frequent in the
    # transcript sentences, so the unigram model keeps each as one piece
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(SENTENCES + transcript_sentences()), model_prefix=str(folder / "spm"),
        vocab_size=200, hard_vocab_limit=False, pad_id=0, unk_id=1, bos_id=2, eos_id=3, pad_piece="[PAD]",
        unk_piece="[UNK]", bos_piece="[CLS]", eos_piece="[SEP]", user_defined_symbols=["[MASK]"],
        minloglevel=2)
    pieces = spm.SentencePieceProcessor(model_file=str(folder / "spm.model")).get_piece_size()
    torch.manual_seed(seed)
    config = DebertaV2Config(vocab_size=pieces, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=64, max_position_embeddings=64, relative_attention=True,
                             position_buckets=16, pos_att_type=["p2c", "c2p"], position_biased_input=False)
    DebertaV2Model(config).save_pretrained(folder)
    return folder


def save_speech2text(folder, seed: int = 0) -> Path:
    """s2t-small's layout: sentencepiece.bpe.model + vocab.json (piece -> id) + processor + model."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    from transformers import (Speech2TextConfig, Speech2TextFeatureExtractor, Speech2TextForConditionalGeneration,
                              Speech2TextProcessor, Speech2TextTokenizer)

    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(SENTENCES), model_prefix=str(folder / "sentencepiece.bpe"), vocab_size=60,
        model_type="bpe", bos_id=0, pad_id=1, eos_id=2, unk_id=3, hard_vocab_limit=False, minloglevel=2)
    pieces = spm.SentencePieceProcessor(model_file=str(folder / "sentencepiece.bpe.model"))
    vocab = {pieces.id_to_piece(i): i for i in range(pieces.get_piece_size())}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    tokenizer = Speech2TextTokenizer(str(folder / "vocab.json"), str(folder / "sentencepiece.bpe.model"))
    Speech2TextProcessor(feature_extractor=Speech2TextFeatureExtractor(), tokenizer=tokenizer).save_pretrained(folder)
    config = Speech2TextConfig(vocab_size=len(vocab), conv_channels=16, max_source_positions=1500, bos_token_id=0,
                               pad_token_id=1, eos_token_id=2, decoder_start_token_id=2, **SMALL)
    torch.manual_seed(seed)
    model = Speech2TextForConditionalGeneration(config)
    model.generation_config.max_length = 8
    model.save_pretrained(folder)
    return folder


def save_whisper(folder, seed: int = 0) -> Path:
    """A byte-level BPE trained on a few sentences + Whisper's special tokens, and a generation
    config that knows them (as the hub's multilingual checkpoints do)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import (GenerationConfig, WhisperConfig, WhisperFeatureExtractor,
                              WhisperForConditionalGeneration, WhisperProcessor, WhisperTokenizer)

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator(SENTENCES, trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    merges = [tuple(pair) for pair in json.loads(bpe.to_str())["model"]["merges"]]
    tokenizer = WhisperTokenizer(vocab=bpe.get_vocab(), merges=merges)
    tokenizer.add_special_tokens({"additional_special_tokens": WHISPER_SPECIAL[1:]})
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in WHISPER_SPECIAL}
    WhisperProcessor(feature_extractor=WhisperFeatureExtractor(), tokenizer=tokenizer).save_pretrained(folder)
    end, start = ids["<|endoftext|>"], ids["<|startoftranscript|>"]
    config = WhisperConfig(vocab_size=len(tokenizer), num_mel_bins=80, max_source_positions=1500,
                           begin_suppress_tokens=None, suppress_tokens=None, bos_token_id=end, eos_token_id=end,
                           pad_token_id=end, decoder_start_token_id=start, **SMALL)
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        bos_token_id=end, eos_token_id=end, pad_token_id=end, decoder_start_token_id=start, max_length=12,
        is_multilingual=True, lang_to_id={t: ids[t] for t in ("<|en|>", "<|de|>")},
        task_to_id={"translate": ids["<|translate|>"], "transcribe": ids["<|transcribe|>"]},
        no_timestamps_token_id=ids["<|notimestamps|>"])
    model.save_pretrained(folder)
    return folder


BUILDERS = {"hubert": save_hubert, "deberta": save_deberta, "speech2text": save_speech2text,
            "whisper": save_whisper}


def save_tiny_models(root, names=("hubert", "deberta", "speech2text"), seed: int = 0) -> dict[str, Path]:
    """Each named model in `root/<name>`; name -> folder, to pass as --audio-model, --text-model,
    --asr-model."""
    root = Path(root)
    return {name: BUILDERS[name](root / name, seed=seed) for name in names}
