"""Byte-pair encoding (BPE) from scratch: train, encode, decode.

BPE (Sennrich et al., 2016) starts from single characters and repeatedly merges the most
frequent adjacent pair of symbols into a new symbol, until the vocabulary has the size asked
for. This module is character-level with SentencePiece-style word marks: text is split on
whitespace and every word gets a leading ``▁``, so ``"the cat"`` is trained and encoded as the
words ``▁the`` and ``▁cat``, and decoding turns each ``▁`` back into a space. A character never
seen in training encodes to ``<unk>`` (byte-level BPE, :mod:`companion.byte_bpe` on the same
merge machinery, starts from the 256 bytes instead and never needs one).

It reproduces the Hugging Face ``tokenizers`` library exactly: a ``BpeTrainer`` with the
pre-tokenisation of :func:`to_hf_tokenizer` learns the same merges in the same order (both
pick the most frequent pair, and among equally frequent pairs the one with the smallest pair
of ids, where ids are ``<unk>``, then the characters sorted by code point, then merged tokens
in the order they were made), and both encode to the same ids.

>>> tok = BPETokenizer.train("low low low lower lower newest newest widest", vocab_size=18)
>>> tok.merges      # ('l','o') and ('▁','l') both occur 5 times: 'l' < '▁', so ('l','o') wins
[('l', 'o'), ('▁', 'lo'), ('▁lo', 'w'), ('e', 's'), ('es', 't'), ('e', 'r')]
>>> tok.tokenize("lowest newer")
['▁low', 'est', '▁', 'n', 'e', 'w', 'er']
>>> tok.decode(tok.encode("lowest newer"))
'lowest newer'
"""

from __future__ import annotations

import heapq
import operator
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

SPACE = "▁"  # U+2581, marks the start of a word, as in SentencePiece
UNK = "<unk>"

Pair = tuple[int, int]


def pre_tokenize(text: str) -> list[str]:
    """Split on whitespace and mark every word with a leading ``▁``: 'the cat' -> ['▁the', '▁cat']."""
    return [SPACE + word for word in text.split()]


def count_words(texts: str | Iterable[str], split: Callable[[str], list[str]] | None = None) -> Counter:
    """Frequency of every pre-tokenised word (`split`, default `pre_tokenize`) in a text or texts."""
    split = pre_tokenize if split is None else split
    if isinstance(texts, str):
        texts = [texts]
    counts: Counter = Counter()
    for text in texts:
        counts.update(split(text))
    return counts


def merge_word(word: list[int], pair: Pair, new_id: int) -> tuple[list[int], list[tuple[Pair, int]]]:
    """Replace every occurrence of `pair` in `word` (left to right) by `new_id`.

    Returns the new word and the changes of pair counts it caused, as (pair, +1/-1) items:
    merging (b, c) in a b c d removes (a, b), (b, c), (c, d) and adds (a, bc), (bc, d).
    """
    a, b = pair
    out: list[int] = []
    changes: list[tuple[Pair, int]] = []
    i = 0
    while i < len(word):
        try:
            j = word.index(a, i)  # jump to the next `a` (a fast scan in C)
        except ValueError:
            break
        out.extend(word[i:j])
        if j + 1 < len(word) and word[j + 1] == b:
            changes.append((pair, -1))
            if out:
                changes.append(((out[-1], a), -1))
                changes.append(((out[-1], new_id), 1))
            if j + 2 < len(word):
                changes.append(((b, word[j + 2]), -1))
                changes.append(((new_id, word[j + 2]), 1))
            out.append(new_id)
            i = j + 2
        else:
            out.append(a)
            i = j + 1
    out.extend(word[i:])
    return out, changes


def train_bpe(word_counts: Mapping[str, int], vocab_size: int, *,
              special_tokens: tuple[str, ...] = (UNK,),
              alphabet: Iterable[str] = ()) -> tuple[list[str], list[tuple[str, str]]]:
    """Learn BPE merges from pre-tokenised word frequencies until the vocabulary has `vocab_size` tokens.

    The vocabulary starts as the special tokens, then every character of the words and of
    `alphabet` (kept even if unseen: the 256 bytes of byte-level BPE) sorted by code point.
    Each step merges the most frequent adjacent pair (ties: the smallest pair of ids). Pair
    counts are updated incrementally, only in the words that contain the merged pair, and a
    heap with lazy deletion finds the most frequent pair. Returns (vocab, merges).
    """
    vocab = list(special_tokens)
    for char in sorted({c for w in word_counts for c in w} | set(alphabet)):
        if char not in vocab:
            vocab.append(char)
    token_to_id = {t: i for i, t in enumerate(vocab)}

    words = [[token_to_id[c] for c in w] for w in word_counts]
    counts = list(word_counts.values())
    pair_counts: Counter = Counter()
    where: defaultdict[Pair, set[int]] = defaultdict(set)  # pair -> indices of words containing it
    for index, (word, count) in enumerate(zip(words, counts)):
        for pair in zip(word, word[1:]):
            pair_counts[pair] += count
            where[pair].add(index)
    heap = [(-count, pair) for pair, count in pair_counts.items()]
    heapq.heapify(heap)

    merges: list[tuple[str, str]] = []
    while len(vocab) < vocab_size and heap:
        neg_count, pair = heapq.heappop(heap)
        if -neg_count != pair_counts[pair]:  # a stale entry: the count changed after it was pushed
            continue
        if pair_counts[pair] <= 0:
            break
        new_token = vocab[pair[0]] + vocab[pair[1]]
        if new_token not in token_to_id:  # two different merges can spell the same token
            token_to_id[new_token] = len(vocab)
            vocab.append(new_token)
        new_id = token_to_id[new_token]
        merges.append((vocab[pair[0]], vocab[pair[1]]))

        changed: set[Pair] = set()
        for index in sorted(where.pop(pair)):
            word, changes = merge_word(words[index], pair, new_id)
            if not changes:  # the pair left this word after an earlier merge
                continue
            words[index] = word
            for changed_pair, delta in changes:
                pair_counts[changed_pair] += delta * counts[index]
                changed.add(changed_pair)
                if delta > 0:
                    where[changed_pair].add(index)
        pair_counts[pair] = 0
        for changed_pair in changed:
            if pair_counts[changed_pair] > 0:
                heapq.heappush(heap, (-pair_counts[changed_pair], changed_pair))
    return vocab, merges


@dataclass
class BPETokenizer:
    """A trained character-level BPE tokenizer: `vocab[i]` is the token of id i, `merges` in order."""

    vocab: list[str]
    merges: list[tuple[str, str]]
    unk_token: str = UNK
    token_to_id: dict[str, int] = field(init=False, repr=False)
    ranks: dict[Pair, tuple[int, int]] = field(init=False, repr=False)  # pair -> (rank, new id)

    def __post_init__(self) -> None:
        self.token_to_id = {t: i for i, t in enumerate(self.vocab)}
        self.ranks = {}
        for rank, (a, b) in enumerate(self.merges):
            pair = (self.token_to_id[a], self.token_to_id[b])
            self.ranks.setdefault(pair, (rank, self.token_to_id[a + b]))
        self._cache: dict[str, list[int]] = {}

    @classmethod
    def train(cls, data: str | Iterable[str] | Mapping[str, int], vocab_size: int) -> BPETokenizer:
        """Train on a text, an iterable of texts, or a word-frequency dict (words already ``▁``-marked)."""
        word_counts = data if isinstance(data, Mapping) else count_words(data)
        vocab, merges = train_bpe(word_counts, vocab_size)
        return cls(vocab, merges)

    def __len__(self) -> int:
        return len(self.vocab)

    def encode_word(self, word: str) -> list[int]:
        """Apply the merges to one pre-tokenised word, lowest rank first, as they were learned."""
        if word in self._cache:
            return self._cache[word]
        unk = self.token_to_id.get(self.unk_token)
        ids = [self.token_to_id.get(c, unk) for c in word]
        ids = [i for i in ids if i is not None]  # no id and no <unk>: dropped, as in `tokenizers`
        while len(ids) >= 2:
            pairs = [p for p in zip(ids, ids[1:]) if p in self.ranks]
            if not pairs:
                break
            pair = min(pairs, key=lambda p: self.ranks[p][0])
            ids, _ = merge_word(ids, pair, self.ranks[pair][1])
        self._cache[word] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """Text -> token ids."""
        return [i for word in pre_tokenize(text) for i in self.encode_word(word)]

    def tokenize(self, text: str) -> list[str]:
        """Text -> token strings."""
        return [self.vocab[i] for i in self.encode(text)]

    def decode(self, ids: Iterable[int]) -> str:
        """Token ids -> text: concatenate, turn every ``▁`` into a space, drop the first space."""
        text = "".join(self.vocab[self._check_id(i)] for i in ids).replace(SPACE, " ")
        return text[1:] if text.startswith(" ") else text

    def _check_id(self, i: int) -> int:
        """`i` if it is an id of the vocabulary; a negative id would otherwise count from the end."""
        i, n = operator.index(i), len(self.vocab)  # a numpy or tensor id too, but not a float
        if not 0 <= i < n:
            raise ValueError(f"token id {i} is not in the vocabulary: ids run from 0 to {n - 1} (vocab_size "
                             f"{n}); were these ids made by another tokenizer?")
        return i


def to_hf_tokenizer(bpe: BPETokenizer):
    """The same tokenizer as a Hugging Face `tokenizers.Tokenizer` (BPE model, same pre-tokenisation)."""
    from tokenizers import Tokenizer, decoders, models

    hf = Tokenizer(models.BPE(vocab=dict(bpe.token_to_id), merges=list(bpe.merges), unk_token=bpe.unk_token))
    hf.pre_tokenizer = hf_pre_tokenizer()
    hf.decoder = decoders.Metaspace(replacement=SPACE, prepend_scheme="always")
    return hf


def hf_merges(tokenizer) -> list[tuple[str, str]]:
    """The merges of a `tokenizers.Tokenizer` with a BPE model, as pairs (either JSON format)."""
    import json

    merges = json.loads(tokenizer.to_str())["model"]["merges"]
    return [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]


def hf_pre_tokenizer():
    """`tokenizers` pre-tokeniser equal to :func:`pre_tokenize`: split on whitespace, then prefix ``▁``."""
    from tokenizers import pre_tokenizers

    return pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme="always", split=False),
    ])
