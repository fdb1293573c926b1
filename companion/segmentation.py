"""Chinese word segmentation: a forward maximum-matching baseline and span-based scores.

Chinese is written without spaces, so "words" must be found. Forward maximum matching (正向
最大匹配) is the classic dictionary baseline: at each position take the longest dictionary word
that starts there (a single character if none does). Segmentations are scored by comparing
word *spans*: a predicted word counts as correct only if both its start and its end match a
gold word.

>>> vocab = {"自然", "自然语言", "语言", "处理", "我爱"}
>>> max_match("我爱自然语言处理", vocab, max_len=4)
['我爱', '自然语言', '处理']
>>> words_to_spans(["我爱", "自然语言", "处理"])
[(0, 2), (2, 6), (6, 8)]
>>> segmentation_scores([["我爱", "自然语言", "处理"]], [["我", "爱", "自然语言", "处理"]])
{'precision': 0.6666666666666666, 'recall': 0.5, 'f1': 0.5714285714285715}
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Container, Iterable, Sequence


def max_match(text: str, vocab: Container[str], max_len: int) -> list[str]:
    """Forward maximum matching: greedily take the longest word of `vocab` (up to `max_len` characters)."""
    words = []
    i = 0
    while i < len(text):
        for length in range(min(max_len, len(text) - i), 0, -1):
            candidate = text[i:i + length]
            if length == 1 or candidate in vocab:
                words.append(candidate)
                i += length
                break
    return words


def _checked(match: Callable[[str, Container[str], int], list[str]]) -> Callable[..., list[str]]:
    """`match` with max_len checked first: below 1 no length fits, and the loop would never end."""

    @functools.wraps(match)  # inspect.getsource still shows `match` itself: the chapter prints it
    def checked(text: str, vocab: Container[str], max_len: int) -> list[str]:
        if max_len < 1:
            raise ValueError("max_len must be at least 1 (the longest word to look up, in characters), "
                             f"got {max_len}: 1 gives single characters, max(map(len, vocab)) every word")
        return match(text, vocab, max_len)

    return checked


max_match = _checked(max_match)


def words_to_spans(words: Sequence[str]) -> list[tuple[int, int]]:
    """Character spans [start, end) of consecutive words: ['我', '爱你'] -> [(0, 1), (1, 3)]."""
    spans = []
    start = 0
    for word in words:
        spans.append((start, start + len(word)))
        start += len(word)
    return spans


def segmentation_scores(predicted: Iterable[Sequence[str]], gold: Iterable[Sequence[str]]) -> dict[str, float]:
    """Micro-averaged precision, recall and F1 of predicted words against gold words, over a corpus.

    `predicted` and `gold` are parallel lists of sentences, each a list of words; the words of a
    predicted sentence and of its gold sentence must concatenate to the same text.
    """
    correct = n_predicted = n_gold = 0
    for pred_words, gold_words in zip(predicted, gold, strict=True):
        if "".join(pred_words) != "".join(gold_words):
            raise ValueError(f"different texts: {''.join(pred_words)[:30]!r} vs {''.join(gold_words)[:30]!r}")
        pred_spans = set(words_to_spans(pred_words))
        gold_spans = set(words_to_spans(gold_words))
        correct += len(pred_spans & gold_spans)
        n_predicted += len(pred_spans)
        n_gold += len(gold_spans)
    precision = correct / n_predicted if n_predicted else 0.0
    recall = correct / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}
