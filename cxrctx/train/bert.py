"""Text encoders: the built-in BERT-style encoder, or a local Hugging Face BERT + WordPiece.

`text_model=DIR` points at a local BERT checkpoint (config.json, weights, vocab.txt), e.g. a
copy of bert-base-uncased or a clinical BERT. It is read with `local_files_only=True`:
nothing is ever downloaded. Its WordPiece vocabulary then replaces the word-level one, so
the encoder sees the tokens it was pretrained on (the decoder shares that vocabulary).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cxrctx.errors import CxrctxError
from cxrctx.io import atomic_write_text

_HINT = "pip install transformers (reads a local BERT folder; never downloads)"


class TextEncoder(nn.Module):
    """BERT-style encoder: token + position embeddings, post-LN GELU transformer, [CLS] pooling."""

    def __init__(
        self, vocab_size: int, dim: int, layers: int, heads: int, max_len: int, dropout: float
    ):
        super().__init__()
        self.width = dim
        self.tok = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.pos = nn.Embedding(max_len, dim)
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(
            dim, heads, 4 * dim, dropout, activation="gelu", batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(ids.shape[1], device=ids.device)
        x = self.drop(self.norm(self.tok(ids) + self.pos(pos)))
        x = self.encoder(x, src_key_padding_mask=ids.eq(0))
        return x[:, 0]


def _check_dir(path: str | Path) -> Path:
    p = Path(path)
    if not (p / "config.json").is_file():
        raise CxrctxError(f"{p}: not a local Hugging Face BERT folder (no config.json)")
    if not (p / "vocab.txt").is_file():
        raise CxrctxError(f"{p}: the BERT folder has no WordPiece vocabulary (vocab.txt)")
    return p


class HFBertEncoder(nn.Module):
    """A local `transformers` BERT; the [CLS] hidden state is the text embedding."""

    def __init__(self, path: str | Path):
        super().__init__()
        p = _check_dir(path)
        try:
            from transformers import BertModel
        except ImportError as e:
            raise CxrctxError(f"text_model needs transformers: {_HINT}") from e
        try:
            self.bert = BertModel.from_pretrained(
                str(p), local_files_only=True, add_pooling_layer=False
            )
        except (OSError, ValueError) as e:
            raise CxrctxError(f"{p}: cannot load the BERT checkpoint ({e})") from e
        self.width = int(self.bert.config.hidden_size)
        self.max_len = int(self.bert.config.max_position_embeddings)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out = self.bert(input_ids=ids, attention_mask=ids.ne(0).long())
        return out.last_hidden_state[:, 0]


class WordPieceTokenizer:
    """BERT's WordPiece vocabulary (`tokenizers`); [CLS] = begin, [SEP] = end, [PAD] = 0."""

    def __init__(self, vocab: list[str], lowercase: bool = True):
        try:
            from tokenizers import BertWordPieceTokenizer
        except ImportError as e:
            raise CxrctxError(f"a WordPiece vocabulary needs tokenizers: {_HINT}") from e
        if not vocab or vocab[0] != "[PAD]":
            raise CxrctxError("a WordPiece vocabulary must have [PAD] at id 0 (as BERT's)")
        index = {w: i for i, w in enumerate(vocab)}
        missing = [t for t in ("[UNK]", "[CLS]", "[SEP]") if t not in index]
        if missing:
            raise CxrctxError(f"the WordPiece vocabulary lacks {', '.join(missing)}")
        self.vocab, self.lowercase = list(vocab), lowercase
        self.pad_id, self.unk_id = 0, index["[UNK]"]
        self.bos_id, self.eos_id = index["[CLS]"], index["[SEP]"]
        self._wp = BertWordPieceTokenizer(vocab=index, lowercase=lowercase)

    def __len__(self) -> int:
        return len(self.vocab)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> WordPieceTokenizer:
        p = _check_dir(path)
        vocab = p.joinpath("vocab.txt").read_text(encoding="utf-8").splitlines()
        lower = True
        tc = p / "tokenizer_config.json"
        if tc.is_file():
            lower = bool(json.loads(tc.read_text(encoding="utf-8")).get("do_lower_case", True))
        return cls(vocab, lowercase=lower)

    def encode(self, text: str, max_len: int) -> list[int]:
        """[CLS] pieces [SEP], truncated to max_len ([SEP] kept), padded with 0."""
        ids = self._wp.encode(text, add_special_tokens=False).ids[: max_len - 2]
        ids = [self.bos_id, *ids, self.eos_id]
        return ids + [self.pad_id] * (max_len - len(ids))

    def decode(self, ids: Iterable[int]) -> str:
        keep: list[int] = []
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            if i not in (self.pad_id, self.bos_id) and 0 <= i < len(self.vocab):
                keep.append(i)
        text = self._wp.decode(keep, skip_special_tokens=True)
        text = re.sub(r"\s+([.,;:!?%)])", r"\1", text)
        return re.sub(r"(^|[.!?]\s+)([a-z])", lambda m: m.group(1) + m.group(2).upper(), text)

    def save(self, path: str | Path) -> None:
        data = {"type": "wordpiece", "lowercase": self.lowercase, "vocab": self.vocab}
        atomic_write_text(path, json.dumps(data, indent=0) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> WordPieceTokenizer:
        try:
            data: dict[str, Any] = json.loads(Path(path).read_text(encoding="utf-8"))
            return cls(list(data["vocab"]), lowercase=bool(data.get("lowercase", True)))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CxrctxError(f"{path}: unreadable tokenizer ({e})") from e


def make_text_encoder(cfg: Any, vocab_size: int) -> TextEncoder | HFBertEncoder:
    """The configured text encoder: a local BERT (`text_model`) or the built-in one."""
    if cfg.text_model:
        enc = HFBertEncoder(cfg.text_model)
        if enc.max_len < cfg.max_tokens:
            raise CxrctxError(
                f"{cfg.text_model}: BERT takes {enc.max_len} positions, max_tokens is {cfg.max_tokens}"
            )
        if enc.bert.config.vocab_size != vocab_size:
            raise CxrctxError(
                f"{cfg.text_model}: BERT has {enc.bert.config.vocab_size} token embeddings but vocab.txt {vocab_size}"
            )
        return enc
    return TextEncoder(
        vocab_size, cfg.text_dim, cfg.text_layers, cfg.text_heads, cfg.max_tokens, cfg.dropout
    )
