from collections import Counter

from companion.corpora import (load_chinese_reviews, load_movie_reviews, load_peoples_daily, load_polarity,
                               parse_peoples_daily_line)


def _no_overlap(splits):
    seen = {name: set(splits[name]["text"]) for name in splits}
    names = list(seen)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not (seen[a] & seen[b]), (a, b)


def test_polarity_sizes_balance_and_labels():
    data = load_polarity()
    assert {k: len(v) for k, v in data.items()} == {"train": 3200, "validation": 400, "test": 400}
    assert Counter(data["test"]["label"]) == {0: 200, 1: 200}
    assert data["train"].features["label"].names == ["negative", "positive"]
    assert all(text and text == text.strip() for text in data["validation"]["text"])


def test_polarity_split_is_fixed():
    assert load_polarity()["test"][0] == load_polarity()["test"][0]


def test_polarity_splits_do_not_share_rows():
    data = load_polarity()
    total = sum(len(v) for v in data.values())
    assert total == 4000
    # The corpus has a few repeated sentences; the split is by row, so only those may recur.
    test_texts = set(data["test"]["text"])
    assert len(test_texts & set(data["train"]["text"])) <= 5


def test_movie_reviews():
    data = load_movie_reviews()
    assert {k: len(v) for k, v in data.items()} == {"train": 1350, "validation": 75, "test": 75}
    _no_overlap(data)
    words = sum(len(t.split()) for t in data["train"]["text"])
    assert 900_000 < words < 1_100_000


def test_peoples_daily():
    data = load_peoples_daily()
    assert sum(len(v) for v in data.values()) == 19484
    row = data["train"][0]
    assert "".join(row["words"]) == row["text"]
    assert len(row["words"]) == len(row["tags"])


def test_parse_line():
    assert parse_peoples_daily_line("迈向/v  充满/v  希望/n\n") == (["迈向", "充满", "希望"], ["v", "v", "n"])
    assert parse_peoples_daily_line("   \n") == ([], [])
    assert parse_peoples_daily_line("a/b/nx") == (["a/b"], ["nx"])


def test_chinese_reviews_deduplicated_balanced_and_fixed():
    data = load_chinese_reviews()
    assert {k: len(v) for k, v in data.items()} == {"train": 4000, "validation": 500, "test": 500}
    assert Counter(data["test"]["label"]) == {0: 250, 1: 250}
    assert data["train"].features["label"].names == ["negative", "positive"]
    _no_overlap(data)  # each line once: no sentence is in two splits
    texts = [t for split in data.values() for t in split["text"]]
    assert len(set(texts)) == len(texts) and all(t and t == t.strip() for t in texts)
    assert load_chinese_reviews()["test"][:5] == data["test"][:5]


def test_chinese_reviews_full_drops_conflicts():
    data = load_chinese_reviews(per_class=None)
    labels = Counter(label for split in data.values() for label in split["label"])
    assert labels == {1: 8332, 0: 9031}  # distinct lines, minus the 47 found in both files
    texts = [t for split in data.values() for t in split["text"]]
    assert len(set(texts)) == len(texts)
