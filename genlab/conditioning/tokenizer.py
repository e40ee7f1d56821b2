"""A CLIP tokenizer learned from a caption corpus: byte-level BPE (Sennrich et al., arXiv:1508.07909) in CLIP's
own layout (Radford et al., arXiv:2103.00020, sec. 2.5), so any Unicode text tokenizes.

CLIP's vocabulary is the 256 byte symbols, the same 256 ending a word (`</w>`), one symbol per learned merge,
then `<|startoftext|>` and `<|endoftext|>`. The merges are learned here with the `tokenizers` BPE trainer on
the pre-tokenized captions (transformers' `CLIPTokenizer.train_new_from_iterator`); every byte symbol, with and
without `</w>`, is then put in the vocabulary, as in CLIP, so that an emoji, NUL or right-to-left text never
falls back to the unknown token. The result is a plain transformers `CLIPTokenizer` (`vocab.json` +
`merges.txt`), loaded by `CLIPTokenizer.from_pretrained` and diffusers' `StableDiffusionPipeline` alike.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from transformers import CLIPTokenizer

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
WORD_END = "</w>"


def byte_symbols() -> list[str]:
    """GPT-2's printable stand-ins for the 256 bytes, in CLIP's vocabulary order."""
    from tokenizers import pre_tokenizers

    alphabet = set(pre_tokenizers.ByteLevel.alphabet())
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    symbols, extra = [chr(b) for b in printable], 0
    for byte in range(256):
        if byte not in printable:
            symbols.append(chr(256 + extra))
            extra += 1
    assert set(symbols) == alphabet, "tokenizers' byte alphabet is not GPT-2's"
    return symbols


def train_clip_tokenizer(texts: Iterable[str], vocab_size: int = 4096, max_length: int = 32) -> CLIPTokenizer:
    """A `CLIPTokenizer` with `vocab_size` entries (bytes, bytes + `</w>`, merges, the two specials) learned on
    `texts`, padding and cutting at `max_length` tokens (the text encoder's positions)."""
    symbols = byte_symbols()
    base = len(symbols) * 2 + 2
    if vocab_size <= base:
        raise ValueError(f"vocab_size must exceed {base} (the byte symbols and the two specials), got {vocab_size}")
    learner = CLIPTokenizer().train_new_from_iterator(list(texts), vocab_size=vocab_size)
    merges = json.loads(learner.backend_tokenizer.to_str())["model"]["merges"]  # [[left, right], ...] in order
    vocab = {symbol: i for i, symbol in enumerate(symbols + [s + WORD_END for s in symbols])}
    kept = []
    for left, right in merges:
        if left not in vocab or right not in vocab:
            continue  # a merge of a symbol dropped for room: it could never apply
        if left + right not in vocab:
            if len(vocab) + 2 >= vocab_size:
                break
            vocab[left + right] = len(vocab)
        kept.append((left, right))
    vocab[BOS], vocab[EOS] = len(vocab), len(vocab) + 1
    return CLIPTokenizer(vocab=vocab, merges=kept, model_max_length=max_length)

