"""Evaluation helpers of the fine-tuning chapters: entity-level scores, label alignment, mean ± std.

Named-entity recognition is scored on *entities*, not tags: an entity is a (type, start, end)
span read from BIO tags, and a predicted entity counts only if its type and both boundaries
match a gold entity exactly (the CoNLL convention, as in conlleval and seqeval). Word-level
segmentation scores live in `companion.segmentation.segmentation_scores`.

>>> bio_spans(["B-PER", "I-PER", "O", "B-LOC"])
[('PER', 0, 2), ('LOC', 3, 4)]
>>> gold = [["B-PER", "I-PER", "O", "B-LOC"]]
>>> pred = [["B-PER", "O", "O", "B-LOC"]]        # the person ends one word early
>>> scores = entity_scores(gold, pred)
>>> print(f"P={scores.precision:.4f} R={scores.recall:.4f} F1={scores.f1:.4f}")
P=0.5000 R=0.5000 F1=0.5000
>>> scores.per_type["support"].to_dict()
{'LOC': 1, 'PER': 1}
>>> align_labels_with_tokens([None, 0, 1, 1, None], [3, 7])   # [CLS] Pierre Vin ##ken [SEP]
[-100, 3, 7, -100, -100]
>>> mean_std([0.80, 0.82, 0.84])
'0.8200 ± 0.0200'
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

IGNORE_INDEX = -100  # the label torch.nn.functional.cross_entropy skips by default


def bio_spans(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """Entities (type, start, end-exclusive) of one sentence tagged with BIO (IOB2) tags.

    An I-X continues the entity before it only if that entity is also of type X; otherwise it
    starts a new X entity, as in conlleval and seqeval's default mode. So ["O", "I-PER"] holds
    one person and ["B-PER", "I-LOC"] a person then a place; IOB1 tags are read correctly too.
    """
    spans = []
    current = None  # [type, start] of the entity that is still open
    for i, tag in enumerate(tags):
        prefix, kind = _split_tag(tag, i)
        if current is not None and (prefix != "I" or kind != current[0]):
            spans.append((current[0], current[1], i))
            current = None
        if prefix != "O" and current is None:
            current = [kind, i]
    if current is not None:
        spans.append((current[0], current[1], len(tags)))
    return spans


def _split_tag(tag: str, position: int) -> tuple[str, str]:
    """'B-PER' -> ('B', 'PER'), 'O' -> ('O', ''); a clear error for anything else."""
    if not isinstance(tag, str):
        raise ValueError(f"tag {tag!r} at position {position} is not a string; "
                         "map label ids to tag names first (model.config.id2label) and drop -100 positions")
    if tag == "O":
        return "O", ""
    prefix, dash, kind = tag.partition("-")
    if prefix not in ("B", "I") or not dash or not kind:
        raise ValueError(f"tag {tag!r} at position {position} is not BIO; "
                         "expected 'O', 'B-TYPE' or 'I-TYPE' (convert BIOES/BMES tags to BIO first)")
    return prefix, kind


@dataclass(frozen=True)
class Scores:
    """Micro-averaged precision, recall and F1 over a corpus, and the counts behind them."""

    precision: float
    recall: float
    f1: float
    n_gold: int
    n_pred: int
    n_correct: int


@dataclass(frozen=True)
class EntityScores(Scores):
    """Micro-averaged entity precision, recall and F1, the counts behind them, and a per-type table."""

    per_type: pd.DataFrame = field(repr=False)  # index: type; columns: precision, recall, f1, support


def prf(correct: int, n_pred: int, n_gold: int) -> tuple[float, float, float]:
    """Precision, recall and F1 from counts; 0.0 where a ratio is 0/0 (as seqeval)."""
    # With nothing predicted (or nothing to find) the ratio is 0/0; call it 0.0 like seqeval,
    # so an empty prediction never looks perfect.
    precision = correct / n_pred if n_pred else 0.0
    recall = correct / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def micro_scores(gold: Sequence[set], pred: Sequence[set]) -> Scores:
    """Scores of predicted sets of items (entities, triples) against gold sets, one pair per text."""
    correct = sum(len(g & p) for g, p in zip(gold, pred, strict=True))
    n_gold, n_pred = sum(map(len, gold)), sum(map(len, pred))
    return Scores(*prf(correct, n_pred, n_gold), n_gold, n_pred, correct)


def entity_scores(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> EntityScores:
    """Entity-level scores of predicted BIO tags against gold ones, over a corpus of sentences.

    Entities are matched exactly (same sentence, type, start and end) and counted over the whole
    corpus (micro average). A ratio with a zero denominator is 0.0: no predicted entities give
    precision 0.0, no gold entities give recall 0.0, and F1 is 0.0 when both P and R are.
    The per-type table lists every type seen in gold or predictions; `support` counts gold entities.
    """
    for name, corpus in (("gold", gold), ("pred", pred)):
        if len(corpus) and isinstance(corpus[0], str):
            raise ValueError(f"{name} is a flat list of tags; pass a list of sentences, each a list of tags "
                             f"(wrap one sentence as [tags])")
    if len(gold) != len(pred):
        raise ValueError(f"gold has {len(gold)} sentences but pred has {len(pred)}; "
                         "pass one predicted tag list per gold sentence, in the same order")
    gold_entities, pred_entities = set(), set()
    for n, (gold_tags, pred_tags) in enumerate(zip(gold, pred)):
        if len(gold_tags) != len(pred_tags):
            raise ValueError(f"sentence {n}: gold has {len(gold_tags)} tags but pred has {len(pred_tags)}; "
                             "predict one tag per word (keep only the first subword of each word)")
        gold_entities.update((n, *span) for span in bio_spans(gold_tags))
        pred_entities.update((n, *span) for span in bio_spans(pred_tags))
    correct = gold_entities & pred_entities

    count = {name: Counter(entity[1] for entity in entities)
             for name, entities in (("gold", gold_entities), ("pred", pred_entities), ("correct", correct))}
    rows = {}
    for kind in sorted(count["gold"].keys() | count["pred"].keys()):
        p, r, f = prf(count["correct"][kind], count["pred"][kind], count["gold"][kind])
        rows[kind] = {"precision": p, "recall": r, "f1": f, "support": count["gold"][kind]}
    per_type = pd.DataFrame.from_dict(rows, orient="index", columns=["precision", "recall", "f1", "support"])
    per_type["support"] = per_type["support"].astype(int)  # an empty table would otherwise be float
    per_type.index.name = "type"

    precision, recall, f1 = prf(len(correct), len(pred_entities), len(gold_entities))
    return EntityScores(precision, recall, f1, n_gold=len(gold_entities), n_pred=len(pred_entities),
                        n_correct=len(correct), per_type=per_type)


def align_labels_with_tokens(word_ids: Sequence[int | None], word_labels: Sequence[int], *,
                             label_all_subwords: bool = False) -> list[int]:
    """Token labels from word labels, for a fast tokenizer's `encoding.word_ids()`.

    A word's label goes to its first subword; later subwords get -100 (or the word's label too,
    with `label_all_subwords=True`); special tokens (word id None) always get -100, which the
    cross-entropy loss skips. Keeping only positions whose label is not -100 then gives back one
    prediction per word, ready for `entity_scores`.
    """
    labels = []
    previous = None
    for word_id in word_ids:
        if word_id is None:
            labels.append(IGNORE_INDEX)
        elif not 0 <= word_id < len(word_labels):
            raise ValueError(f"word id {word_id} but only {len(word_labels)} word labels; "
                             "pass the word_ids() and the labels of the same example")
        elif word_id != previous or label_all_subwords:
            labels.append(word_labels[word_id])
        else:
            labels.append(IGNORE_INDEX)
        previous = word_id
    return labels


def accuracy(pred: Sequence, gold: Sequence) -> float:
    """Fraction of positions where `pred` equals `gold` (lists, numpy arrays or CPU tensors)."""
    pred, gold = np.asarray(pred), np.asarray(gold)
    if pred.shape != gold.shape:
        raise ValueError(f"pred has shape {pred.shape} but gold has shape {gold.shape}; "
                         "pass one prediction per gold label")
    if pred.size == 0:
        raise ValueError("accuracy of no examples is undefined; pass at least one prediction")
    return float((pred == gold).mean())


def mean_std(values: Sequence[float], *, digits: int = 4) -> str:
    """'0.8123 ± 0.0104': mean and sample standard deviation (ddof=1) of runs, e.g. over seeds.

    A single value has no sample standard deviation, so it is printed alone ('0.8123') rather than
    with a '± 0.0000' that would claim the runs agree perfectly.
    """
    values = np.asarray(values, dtype=float)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"expected a non-empty 1-D list of numbers, got shape {values.shape}")
    if values.size == 1:
        return f"{values[0]:.{digits}f}"
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"


# ----------------------------------------------------------------------------- generated text

def _words(text: str | Sequence[str]) -> list[str]:
    """A text split on whitespace, or a list of tokens as it is."""
    if isinstance(text, str):
        return text.split()
    if not all(isinstance(t, (str, int)) for t in text):
        raise TypeError("give a string or a list of tokens (strings or ids)")
    return list(text)


def _ngrams(words: Sequence, n: int) -> list[tuple]:
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]


def distinct_n(texts: Sequence[str | Sequence[str]], n: int) -> float:
    """Distinct-n (Li et al., 2016): distinct n-grams over all n-grams of all `texts` (0 if none).

    1.0 means no n-gram occurs twice across the outputs; low values mean the outputs repeat
    themselves or each other. Strings are split on whitespace.

    >>> round(distinct_n(["the cat sat", "the cat ran"], 1), 3)   # 4 distinct of 6 words
    0.667
    """
    if isinstance(texts, str):
        raise TypeError("give a list of texts, not one string")
    grams = [g for text in texts for g in _ngrams(_words(text), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repetition_rate(text: str | Sequence[str], n: int = 4) -> float:
    """Share of the n-grams of one output that repeat an earlier n-gram of it (Welleck et al.,
    2020, seq-rep-n: 1 - distinct/total); 0.0 for an output shorter than n.

    >>> round(repetition_rate("I like it . I like it . I like it .", n=4), 3)  # 5 of 9 seen before
    0.556
    """
    grams = _ngrams(_words(text), n)
    return 1 - len(set(grams)) / len(grams) if grams else 0.0
