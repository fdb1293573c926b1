"""Byte-level BPE (GPT-2's tokenizer) from scratch, on the merge machinery of companion.bpe.

Three steps turn a text into token ids. GPT-2's regular expression cuts it into pieces
(contractions, words and numbers with the space before them, runs of punctuation, spaces);
each piece is encoded in UTF-8 and every byte is written as one printable character of
:func:`bytes_to_unicode` (the space, byte 32, as ``Ġ``); BPE merges, learned by
:func:`companion.bpe.train_bpe` from an alphabet of all 256 byte characters, glue the
characters into tokens. Any string is a sequence of bytes, so nothing is ever unknown, as long
as the vocabulary holds all 256 bytes (SmolLM2's lacks 21; like ``tokenizers``, `encode` drops
a byte that has no id).

It reproduces the Hugging Face ``tokenizers`` library: a ``BpeTrainer`` with the 256-byte
initial alphabet and the ``ByteLevel`` pre-tokeniser of :func:`to_hf_tokenizer` learns the
same merges in the same order, gives the same ids and encodes to the same ids.

>>> tok = ByteBPETokenizer.train("low low low lower lower newest newest widest", vocab_size=262)
>>> tok.merges      # ('l','o') and ('o','w') both occur 5 times: 'l' < 'o', so ('l','o') wins
[('l', 'o'), ('lo', 'w'), ('Ġ', 'low'), ('e', 's'), ('es', 't'), ('e', 'r')]
>>> tok.tokenize("lowest 低")
['low', 'est', 'Ġ', 'ä', '½', 'İ']
>>> tok.decode(tok.encode("lowest 低"))
'lowest 低'
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache

import regex

from companion.bpe import BPETokenizer, count_words, hf_merges, train_bpe

# GPT-2's pre-tokeniser (also that of the `tokenizers` ByteLevel pre-tokeniser)
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
GPT2_SPLIT = regex.compile(GPT2_PATTERN)


def pre_tokenize(text: str) -> list[str]:
    """Cut text into GPT-2's pieces: "I'm  here!" -> ['I', "'m", ' ', ' here', '!']."""
    return GPT2_SPLIT.findall(text)


@cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table: printable bytes map to themselves, the 68 others to U+0100 on."""
    table = {b: chr(b) for b in [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]}
    for n, b in enumerate(b for b in range(256) if b not in table):
        table[b] = chr(0x100 + n)
    return table


@cache
def unicode_to_bytes() -> dict[str, int]:
    """The inverse table: a byte character -> its byte value."""
    return {c: b for b, c in bytes_to_unicode().items()}


def to_symbols(piece: str) -> str:
    """A piece of text as its UTF-8 bytes, one printable character each: ' 低' -> 'Ġä½İ'."""
    table = bytes_to_unicode()
    return "".join(table[b] for b in piece.encode("utf-8"))


def count_pieces(texts: str | Iterable[str]) -> Counter:
    """Frequency of every pre-tokenised piece, written as byte characters."""
    counts = count_words(texts, split=pre_tokenize)
    return Counter({to_symbols(piece): n for piece, n in counts.items()})


@dataclass
class ByteBPETokenizer(BPETokenizer):
    """A byte-level BPE tokenizer; trained here, ids 0-255 are the bytes, then the merged tokens."""

    unk_token: str | None = None

    @classmethod
    def train(cls, data: str | Iterable[str] | Mapping[str, int], vocab_size: int) -> ByteBPETokenizer:
        """Train on a text, an iterable of texts, or piece frequencies from :func:`count_pieces`."""
        counts = data if isinstance(data, Mapping) else count_pieces(data)
        vocab, merges = train_bpe(counts, vocab_size, special_tokens=(),
                                  alphabet=bytes_to_unicode().values())
        return cls(vocab, merges)

    @classmethod
    def from_hf(cls, tokenizer) -> ByteBPETokenizer:
        """The vocabulary and merges of a `tokenizers` byte-level BPE (SmolLM2's, GPT-2's)."""
        model = json.loads(tokenizer.to_str())["model"]
        vocab = sorted(model["vocab"], key=model["vocab"].get)
        if [model["vocab"][t] for t in vocab] != list(range(len(vocab))):
            raise ValueError("the tokenizer's ids are not 0, 1, ..., n-1: not a plain BPE vocabulary")
        return cls(vocab, hf_merges(tokenizer))

    def encode(self, text: str) -> list[int]:
        """Text -> token ids: pre-tokenise, write each piece as bytes, apply the merges."""
        return [i for piece in pre_tokenize(text) for i in self.encode_word(to_symbols(piece))]

    def decode(self, ids: Iterable[int]) -> str:
        """Token ids -> text: the tokens' bytes, decoded as UTF-8 (a cut character becomes �)."""
        byte_of = unicode_to_bytes()
        data = bytes(byte_of[c] for i in ids for c in self.vocab[self._check_id(i)])
        return data.decode("utf-8", errors="replace")


def hf_byte_level():
    """The `tokenizers` ByteLevel pre-tokeniser equal to :func:`pre_tokenize` + :func:`to_symbols`."""
    from tokenizers import pre_tokenizers

    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


def hf_trainer(vocab_size: int):
    """A `tokenizers` BpeTrainer that learns what :meth:`ByteBPETokenizer.train` learns."""
    from tokenizers import pre_tokenizers, trainers

    return trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                               special_tokens=[], show_progress=False)


def to_hf_tokenizer(bpe: ByteBPETokenizer):
    """The same tokenizer as a Hugging Face `tokenizers.Tokenizer` (BPE model, ByteLevel pre-tokeniser)."""
    from tokenizers import Tokenizer, decoders, models

    hf = Tokenizer(models.BPE(vocab=dict(bpe.token_to_id), merges=list(bpe.merges)))
    hf.pre_tokenizer = hf_byte_level()
    hf.decoder = decoders.ByteLevel()
    return hf
