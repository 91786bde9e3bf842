"""An offline CLIP byte-level BPE tokenizer for the tiny zoo.

Real CLIP checkpoints ship a 49k-entry BPE vocabulary; the tiny models need the same
tokenizer class (transformers' CLIPTokenizer) with a small vocabulary, built here without
any download: all 256 byte symbols (alone and word-final), whole-word merges for a short
word list, and the start/end tokens, with end-of-text as the highest id as in CLIP. Any
text tokenizes: words outside the list fall back to bytes (so "sks" or a trigger string
such as "*[Z]&" still encode, as with a real CLIP tokenizer).
"""
from __future__ import annotations

from pathlib import Path

from transformers import CLIPTokenizer

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"

# Words the tiny models see in captions and prompts; others fall back to bytes.
WORDS = """
a an the of on in with and photo picture image drawing rendering close up number digit
zero one two three four five six seven eight nine handwritten blurry scanned printed
color colour colorful style font dark bright white black red green blue small large
sks dog cat toy face person object texture art painting
""".split()


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP reversible byte -> printable unicode map."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(printable, (chr(c) for c in chars)))


def _segment(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Apply BPE merges by rank, as the tokenizer does."""
    symbols = list(symbols)
    while len(symbols) > 1:
        pairs = [(ranks.get((a, b), 1 << 30), i) for i, (a, b) in enumerate(zip(symbols, symbols[1:]))]
        rank, i = min(pairs)
        if rank == 1 << 30:
            break
        symbols[i:i + 2] = [symbols[i] + symbols[i + 1]]
    return symbols


def build_vocab(words: list[str] = WORDS) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary and merge list: bytes, byte</w>, whole-word merges, BOS, EOS (last).

    Merges are added until every listed word encodes as a single token (merges learnt
    for one word can split another, so it repeats a few passes).
    """
    symbols = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for s in symbols:
        vocab[s] = len(vocab)
    for s in symbols:
        vocab[s + "</w>"] = len(vocab)
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    unique = sorted(dict.fromkeys(w.lower() for w in words), key=lambda w: (-len(w), w))
    for _ in range(8):
        changed = False
        for word in unique:
            chars = list(word)
            chars[-1] += "</w>"
            seg = _segment(chars, ranks)
            while len(seg) > 1:
                pair = (seg[0], seg[1])
                ranks[pair] = len(merges)
                merges.append(pair)
                vocab.setdefault(seg[0] + seg[1], len(vocab))
                seg = [seg[0] + seg[1]] + seg[2:]
                changed = True
        if not changed:
            break
    vocab[BOS] = len(vocab)
    vocab[EOS] = len(vocab)
    return vocab, merges


def build_tokenizer(max_length: int = 32, words: list[str] = WORDS) -> CLIPTokenizer:
    """A CLIPTokenizer with the tiny vocabulary, padding with EOS as SD 1.x does."""
    vocab, merges = build_vocab(words)
    tok = CLIPTokenizer(vocab=vocab, merges=merges)
    tok.model_max_length = max_length
    return tok


def save_tokenizer(tok: CLIPTokenizer, folder: str | Path) -> None:
    tok.save_pretrained(str(folder))






__all__ = ["build_tokenizer", "build_vocab", "save_tokenizer", "BOS", "EOS", "WORDS"]
