"""A deterministic word-level tokenizer built from the training sentences.

The paper uses a BERT-based text encoder but no BERT vocabulary can be downloaded here, so
the vocabulary is the training split's words (lower case; punctuation as tokens), most
frequent first, ties alphabetical. It is saved as `RUN/tokenizer.json` and reused by
generation. Token 0 is padding; [CLS] doubles as BOS (BERT-style pooling position).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from cxrctx.errors import CxrctxError
from cxrctx.io import atomic_write_text

PAD, UNK, BOS, EOS = "[PAD]", "[UNK]", "[CLS]", "[EOS]"
SPECIALS = (PAD, UNK, BOS, EOS)
_TOKEN_RE = re.compile(r"[a-z]+(?:'[a-z]+)?|\d+(?:\.\d+)?|[^\sa-z\d]")


def words(text: str) -> list[str]:
    return _TOKEN_RE.findall(text.lower())


class Tokenizer(Protocol):
    """What the model, the dataset and generation need from a tokenizer."""

    vocab: list[str]
    pad_id: int
    bos_id: int
    eos_id: int

    def __len__(self) -> int: ...
    def encode(self, text: str, max_len: int) -> list[int]: ...
    def decode(self, ids: Iterable[int]) -> str: ...
    def save(self, path: str | Path) -> None: ...


class WordTokenizer:
    def __init__(self, vocab: list[str]):
        if tuple(vocab[: len(SPECIALS)]) != SPECIALS:
            raise CxrctxError("tokenizer vocabulary must start with the special tokens")
        self.vocab = list(vocab)
        self.index = {w: i for i, w in enumerate(self.vocab)}
        self.pad_id, self.unk_id, self.bos_id, self.eos_id = 0, 1, 2, 3

    def __len__(self) -> int:
        return len(self.vocab)

    @classmethod
    def build(
        cls,
        texts: Iterable[str],
        *,
        extra: Iterable[str] = (),
        min_freq: int = 1,
        max_size: int = 20000,
    ) -> WordTokenizer:
        counts: Counter[str] = Counter()
        for t in texts:
            counts.update(words(t))
        for t in extra:  # always in the vocabulary (lesion names for LCA)
            for w in words(t):
                counts[w] = max(counts[w], min_freq)
        kept = sorted(
            (w for w, c in counts.items() if c >= min_freq), key=lambda w: (-counts[w], w)
        )
        return cls([*SPECIALS, *kept[: max(0, max_size - len(SPECIALS))]])

    def encode(self, text: str, max_len: int) -> list[int]:
        """[CLS] w1 … wn [EOS], truncated to max_len (EOS kept), padded with 0."""
        ids = [self.index.get(w, self.unk_id) for w in words(text)][: max_len - 2]
        ids = [self.bos_id, *ids, self.eos_id]
        return ids + [self.pad_id] * (max_len - len(ids))

    def decode(self, ids: Iterable[int]) -> str:
        out: list[str] = []
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            if i in (self.pad_id, self.bos_id):
                continue
            out.append(self.vocab[i] if 0 <= i < len(self.vocab) else UNK)
        text = " ".join(out)
        text = re.sub(r"\s+([.,;:!?%)])", r"\1", text)
        text = re.sub(r"([(])\s+", r"\1", text)
        # capitalise sentence starts
        return re.sub(r"(^|[.!?]\s+)([a-z])", lambda m: m.group(1) + m.group(2).upper(), text)

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps({"type": "word", "vocab": self.vocab}, indent=0) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> WordTokenizer:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            return cls(list(data["vocab"]))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CxrctxError(f"{path}: unreadable tokenizer ({e})") from e


def load_tokenizer(path: str | Path) -> Tokenizer:
    """The run's tokenizer from `tokenizer.json` (word-level, or WordPiece from a local BERT)."""
    try:
        kind = json.loads(Path(path).read_text(encoding="utf-8")).get("type", "word")
    except (OSError, ValueError, AttributeError) as e:
        raise CxrctxError(f"{path}: unreadable tokenizer ({e})") from e
    if kind == "wordpiece":
        from cxrctx.train.bert import WordPieceTokenizer

        return WordPieceTokenizer.load(path)
    return WordTokenizer.load(path)
